"""The MedM-VL workloads of ``medvl bench --suite workloads``: W2D, W3D fine-tuning and I2D decoding.

Built in-process from configs (seeded random weights, synthetic seeded data written to a temporary
folder, no downloads) at the sizes of the comparison with MedM-VL (issue "faster than MedM-VL on
every workload"):

* **W2D** fine-tune through :func:`medvl.train.run_training`: Qwen2 LLM (hidden 512, 8 layers, 8 heads /
  2 KV heads, MLP 1408, vocabulary 8000, untied head) trained fully; CLIP tower (224 px, patch 16,
  hidden 384, 6 layers, 6 heads) frozen, features of layer -2 without CLS (196 tokens); 2-layer GELU
  MLP connector trained; batch 4; single-turn VQA samples of 263-286 tokens with ~17 supervised;
  AdamW, lr 2e-5, fp32.
* **W3D** fine-tune: the same LLM; a 3D ViT in MedM-CLIP layout (volume 32x256x256, patch 4x16x16,
  hidden 192, 2 layers, 3 heads, MLP 768: 2048 patch tokens + CLS) frozen; 2x2x2 spatial pooling +
  2-layer GELU MLP (256 tokens); batch 2; ~328 tokens per sample; ``.npy`` HU volumes as input.
* **I2D** greedy decoding through :func:`medvl.inference.generate`: the W2D model, prompts of 249-264
  tokens, exactly ``new_tokens`` new tokens each (``min_new_tokens = max_new_tokens``), at batch 1 and 8.

Each workload reports throughput (samples/s or new tokens/s), the **essential FLOPs** (the work
needs them: no padding, the LM head only at supervised positions, no backward through the frozen
encoder, the encoder only up to the feature layer) and their fraction of the fp32 matmul peak that
the ``machine`` suite measured in the same run, and a **per-phase profile** taken with timing hooks
(module forward hooks + ``TrainerCallback`` events, see :class:`TrainPhaseTimer` and
:class:`DecodePhaseTimer`). Start-up (building the data set, the feature-cache pass, the trainer) is
reported separately: a user waits for it too.

Essential FLOP formulas (h: width, i: MLP width, T: tokens of a sample, d_q / d_kv: query /
key-value widths, L: layers, V: vocabulary, S: supervised positions)::

    encoder layer (forward)   2 T (4 h^2 + 2 h i) + 4 T^2 h       (q, k, v, o, MLP; QK^T and AV)
    patch embedding           2 P (patch_dim h)                   (P patches, conv/linear)
    connector                 forward 2 W t, backward 2 W t for weights + 2 W' t for inputs
                              (W: its linear weights, W': all but the first layer's, t: media tokens)
    LLM layer (train)         3 [2 T (2 h d_q + 2 h d_kv + 3 h i) + 2 T^2 d_q]   (causal attention:
                              half of 4 T^2 d_q)
    LM head (train)           6 S h V
    decode step (context c)   2 (2 h d_q + 2 h d_kv + 3 h i) L + 4 c d_q L + 2 h V
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

WORKLOADS = ("w2d", "w3d", "i2d")


@dataclass
class WorkloadSizes:
    """Sizes of the three workloads (``full()``: the MedM-VL comparison; ``quick()``: a test).

    Args:
        llm: Qwen2 config of the LLM (both training workloads and I2D).
        tokenizer_vocab: vocabulary of the BPE tokenizer trained offline (ids below ``llm.vocab_size``).
        vision: CLIP vision config of the 2D tower.
        vision_feature_layer: hidden-state index fed to the connector.
        volume: Vit3D config of the 3D encoder.
        volume_pool: spatial pooling stride of the 3D connector.
        w2d_lengths: (min, max) tokens of a W2D sample (image tokens included).
        w2d_answer_tokens: supervised tokens of a sample (answer + end of turn).
        w2d_batch / w2d_steps / w2d_records: batch size, optimiser steps, data set size.
        w3d_length / w3d_batch / w3d_steps / w3d_records: the same for W3D (one length).
        i2d_lengths: (min, max) prompt tokens.
        i2d_prompts: prompts generated.
        i2d_new_tokens: new tokens per prompt.
        i2d_batches: batch sizes measured.
        lr: AdamW learning rate.
        seed: weights, data and order.
    """

    llm: dict[str, Any] = field(
        default_factory=lambda: {
            "model_type": "qwen2",
            "hidden_size": 512,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "intermediate_size": 1408,
            "vocab_size": 8000,
            "tie_word_embeddings": False,
            "max_position_embeddings": 4096,
        }
    )
    tokenizer_vocab: int = 2048
    vision: dict[str, Any] = field(
        default_factory=lambda: {
            "model_type": "clip_vision_model",
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 384,
            "intermediate_size": 1536,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
        }
    )
    vision_feature_layer: int = -2
    volume: dict[str, Any] = field(
        default_factory=lambda: {
            "image_size": [32, 256, 256],
            "patch_size": [4, 16, 16],
            "in_channels": 1,
            "hidden_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "intermediate_size": 768,
            "use_cls_token": True,
        }
    )
    volume_pool: tuple[int, int, int] = (2, 2, 2)
    w2d_lengths: tuple[int, int] = (263, 286)
    w2d_answer_tokens: int = 17
    w2d_batch: int = 4
    w2d_steps: int = 20
    w2d_records: int = 80
    w3d_length: int = 328
    w3d_batch: int = 2
    w3d_steps: int = 10
    w3d_records: int = 64
    i2d_lengths: tuple[int, int] = (249, 264)
    i2d_prompts: int = 32
    i2d_new_tokens: int = 32
    i2d_batches: tuple[int, ...] = (1, 8)
    lr: float = 2e-5
    seed: int = 0

    @classmethod
    def full(cls) -> WorkloadSizes:
        """The sizes of the MedM-VL comparison."""
        return cls()

    @classmethod
    def quick(cls) -> WorkloadSizes:
        """Toy sizes (seconds): checks the plumbing, the table and the FLOP formulas."""
        return cls(
            llm={
                "model_type": "qwen2",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
                "vocab_size": 1024,
                "tie_word_embeddings": False,
                "max_position_embeddings": 1024,
            },
            tokenizer_vocab=600,
            vision={
                "model_type": "clip_vision_model",
                "image_size": 32,
                "patch_size": 16,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 3,
                "num_attention_heads": 2,
            },
            volume={
                "image_size": [8, 32, 32],
                "patch_size": [4, 16, 16],
                "in_channels": 1,
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "use_cls_token": True,
            },
            w2d_lengths=(40, 48),
            w2d_answer_tokens=6,
            w2d_batch=2,
            w2d_steps=2,
            w2d_records=4,
            w3d_length=40,
            w3d_batch=2,
            w3d_steps=2,
            w3d_records=6,
            i2d_lengths=(30, 36),
            i2d_prompts=4,
            i2d_new_tokens=3,
            i2d_batches=(1, 2),
        )


# ---------------------------------------------------------------------------- models
def build_workload_model(sizes: WorkloadSizes, kind: str) -> tuple[Any, Any]:
    """The W2D (CLIP + MLP + Qwen2) or W3D (Vit3D + spatial pool + Qwen2) model, seeded random weights.

    Args:
        sizes: workload sizes.
        kind: "2d" or "3d".
    """
    from medvl.build import LLMSpec, ModelSpec, TokenizerSpec, VisionSpec, VolumeSpec, build_model
    from medvl.models import ConnectorConfig

    if kind not in ("2d", "3d"):
        raise ValueError(f"unknown workload model {kind!r}; valid choices: 2d, 3d")
    mlp = ConnectorConfig(type="mlp", depth=2, activation="gelu")
    vision = volume = None
    if kind == "2d":
        vision = VisionSpec(
            config=dict(sizes.vision), feature_layer=sizes.vision_feature_layer, feature_select="patch", connector=mlp
        )
    else:
        volume = VolumeSpec(
            encoder="vit3d",
            config=dict(sizes.volume),
            feature_select="patch",
            connector=ConnectorConfig(
                type="spatial_pool", pool_stride=list(sizes.volume_pool), depth=2, activation="gelu"
            ),
            processor={"target_shape": list(sizes.volume["image_size"])},
        )
    spec = ModelSpec(
        llm=LLMSpec(config=dict(sizes.llm)),
        vision=vision,
        volume=volume,
        tokenizer=TokenizerSpec(source="train", vocab_size=sizes.tokenizer_vocab),
        seed=sizes.seed,
    )
    return build_model(spec)


# ---------------------------------------------------------------------------- data
class _TextSizer:
    """Builds question / answer texts whose tokenised sample is as long as a target (whole words:
    the longest text not over the target, usually within a token of it)."""

    def __init__(self, processor: Any, seed: int):
        from medvl.data.dataset import encoder_for
        from medvl.tokenization import builtin_corpus

        self.encoder = encoder_for(processor)
        self.words = " ".join(builtin_corpus(200, seed=seed)).split()
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def _grow(build: Callable[[int], Any], count: Callable[[Any], int], target: int) -> Any:
        # add words while the token count stays <= target
        n = 1
        best = build(n)
        while True:
            candidate = build(n + 1)
            if count(candidate) > target:
                break
            best, n = candidate, n + 1
        return best

    def conversation(self, marker: str, total: int, answer_tokens: int | None) -> list[dict[str, str]]:
        """Messages (user question with one media marker, assistant answer) of about ``total`` tokens.

        Args:
            marker: ``<image>`` or ``<volume>``.
            total: target sample length (training) or prompt length (``answer_tokens`` None).
            answer_tokens: supervised tokens wanted (training); None: a prompt only.
        """
        answer = ""
        if answer_tokens is not None:
            start = int(self.rng.integers(0, len(self.words) - 64))
            words = self.words[start:]

            def labelled(n: int) -> int:
                enc = self.encoder.encode(
                    [{"role": "user", "content": marker}, {"role": "assistant", "content": " ".join(words[:n])}]
                )
                return sum(1 for y in enc.labels if y != -100)

            n = 1
            while n < 60 and labelled(n + 1) <= answer_tokens:
                n += 1
            answer = " ".join(words[:n])
        start = int(self.rng.integers(0, len(self.words) - 400))
        words = self.words[start:]

        def messages(n: int) -> list[dict[str, str]]:
            user = [{"role": "user", "content": f"{marker}\n{' '.join(words[:n])}"}]
            return user + [{"role": "assistant", "content": answer}] if answer_tokens is not None else user

        def length(msgs: list[dict[str, str]]) -> int:
            if answer_tokens is None:
                return len(self.encoder.encode_prompt(msgs))
            return len(self.encoder.encode(msgs).input_ids)

        return self._grow(messages, length, total)


def _write_images(folder: Path, n: int, size: int, seed: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n):
        # a smooth radiograph-like gradient with a bright blob and noise: different per image
        cx, cy = rng.uniform(0.2, 0.8, 2)
        img = 90 + 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.02) + 40 * yy + rng.normal(0, 8, (size, size))
        name = f"img{k:04d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB").save(folder / name)
        paths.append(name)
    return paths


def _write_volumes(folder: Path, n: int, shape: Sequence[int], seed: int) -> list[str]:
    from medvl.bench import synthetic_ct

    folder.mkdir(parents=True, exist_ok=True)
    d, h, w = shape
    paths = []
    for k in range(n):
        # (X, Y, Z) phantom -> (D, H, W) HU array as the .npy loader expects it
        array = synthetic_ct((w, h, d), seed=seed + k).transpose(2, 1, 0)
        name = f"ct{k:04d}.npy"
        np.save(folder / name, np.ascontiguousarray(array))
        paths.append(name)
    return paths


def write_workload_data(sizes: WorkloadSizes, processor: Any, kind: str, folder: Path) -> dict[str, Any]:
    """Write the seeded data set of a workload (media files + ``train.jsonl``); returns its facts.

    Args:
        sizes: workload sizes.
        processor: the workload model's processor (the texts are sized with its tokenizer).
        kind: "w2d", "w3d" or "i2d".
        folder: where to write.
    """
    if kind not in WORKLOADS:
        raise ValueError(f"unknown workload {kind!r}; valid choices: {', '.join(WORKLOADS)}")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sizes.seed + {"w2d": 0, "w3d": 1, "i2d": 2}[kind])
    sizer = _TextSizer(processor, sizes.seed + 7)
    records = []
    if kind == "w3d":
        media = _write_volumes(folder / "volumes", sizes.w3d_records, sizes.volume["image_size"], sizes.seed)
        targets = [sizes.w3d_length] * sizes.w3d_records
        marker, key, answer = "<volume>", "volumes", sizes.w2d_answer_tokens
    else:
        n = sizes.w2d_records if kind == "w2d" else sizes.i2d_prompts
        lo, hi = sizes.w2d_lengths if kind == "w2d" else sizes.i2d_lengths
        media = _write_images(folder / "images", n, sizes.vision["image_size"], sizes.seed + (kind == "i2d"))
        targets = [int(t) for t in rng.integers(lo, hi + 1, n)]
        marker, key = "<image>", "images"
        answer = sizes.w2d_answer_tokens if kind == "w2d" else None
    for k, (path, target) in enumerate(zip(media, targets)):
        records.append(
            {"id": f"{kind}-{k}", "messages": sizer.conversation(marker, target, answer), key: [f"{key}/{path}"]}
        )
    records_file = folder / "train.jsonl"
    records_file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {"records_file": str(records_file), "records": len(records)}


def sample_stats(dataset: Any) -> tuple[list[int], list[int]]:
    """(tokens, supervised positions) of every sample of a training data set (no media read)."""
    tokens, supervised = [], []
    for rec in dataset.records:
        enc = dataset.encoder.encode(rec.messages, record=rec.id)
        tokens.append(len(enc.input_ids))
        supervised.append(sum(1 for y in enc.labels if y != -100))
    return tokens, supervised


# ---------------------------------------------------------------------------- FLOPs
def _cfg(config: Any, name: str, default: Any = None) -> Any:
    return getattr(config, name, default)


def llm_dims(text_config: Any) -> dict[str, int]:
    """Widths of a Qwen2/Llama-style LLM: h, i, d_q, d_kv, layers, vocab."""
    h = text_config.hidden_size
    heads = text_config.num_attention_heads
    head_dim = _cfg(text_config, "head_dim", None) or h // heads
    kv = _cfg(text_config, "num_key_value_heads", None) or heads
    return {
        "h": h,
        "i": text_config.intermediate_size,
        "d_q": heads * head_dim,
        "d_kv": kv * head_dim,
        "layers": text_config.num_hidden_layers,
        "vocab": text_config.vocab_size,
    }


def llm_layer_weights(dims: dict[str, int]) -> int:
    """Matmul weights of one decoder layer (q, k, v, o, gate, up, down)."""
    h = dims["h"]
    return 2 * h * dims["d_q"] + 2 * h * dims["d_kv"] + 3 * h * dims["i"]


def encoder_forward_flops(config: Any, layers_used: int, tokens: int, patches: int, patch_dim: int) -> float:
    """Forward FLOPs of a ViT-style encoder on one item, up to ``layers_used`` layers (see module doc)."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 4 * tokens * tokens * h
    return float(layers_used * per_layer + 2 * patches * patch_dim * h)


def _layers_used(n_layers: int, feature_layer: int | list[int]) -> int:
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    return max(index % (n_layers + 1) for index in layers)


def media_forward_flops(model: Any) -> dict[str, float]:
    """Essential forward FLOPs per media item: ``encoder`` (up to the feature layer), ``connector``,
    ``connector_weights`` (all its linear weights) and ``connector_input_weights`` (its first layer),
    ``tokens`` (LLM tokens per item)."""
    cfg = model.config
    if cfg.vision_config is not None:
        v = cfg.vision_config
        patches = (v.image_size // v.patch_size) ** 2
        tokens = patches + 1  # CLS (CLIP); SigLIP has none
        if "siglip" in v.model_type:
            tokens = patches
        enc = encoder_forward_flops(
            v, _layers_used(v.num_hidden_layers, cfg.image_feature_layer), tokens, patches, 3 * v.patch_size**2
        )
        connector, media_tokens = model.image_connector, cfg.num_image_tokens
    else:
        v = cfg.volume_config
        grid = [s // p for s, p in zip(v.image_size, v.patch_size)]
        patches = int(np.prod(grid))
        tokens = patches + int(v.use_cls_token)
        enc = encoder_forward_flops(
            v,
            _layers_used(v.num_hidden_layers, cfg.volume_feature_layer),
            tokens,
            patches,
            v.in_channels * int(np.prod(v.patch_size)),
        )
        connector, media_tokens = model.volume_connector, cfg.num_volume_tokens
    linears = [m for m in connector.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    return {
        "encoder": enc,
        "connector": 2.0 * weights * media_tokens,
        "connector_weights": float(weights),
        "connector_input_weights": float(linears[0].weight.numel()),
        "tokens": float(media_tokens),
    }


def train_flops(model: Any, tokens: Sequence[int], supervised: Sequence[int], media_items: int) -> dict[str, float]:
    """Essential FLOPs of one training pass over samples of ``tokens`` lengths (see module doc).

    The encoder is frozen (forward only, up to its feature layer); the connector and the LLM train.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        tokens: sample lengths (media placeholders included), no padding.
        supervised: supervised positions per sample.
        media_items: images or volumes of the samples.
    """
    dims = llm_dims(model.config.text_config)
    body = llm_layer_weights(dims)
    llm = sum(3 * dims["layers"] * (2 * t * body + 2 * t * t * dims["d_q"]) for t in tokens)
    head = 6.0 * sum(supervised) * dims["h"] * dims["vocab"]
    media = media_forward_flops(model)
    t = media["tokens"] * media_items
    connector = (
        2 * media["connector_weights"] * t * 2 + 2 * (media["connector_weights"] - media["connector_input_weights"]) * t
    )
    out = {"encoder": media["encoder"] * media_items, "connector": connector, "llm": float(llm), "lm_head": head}
    out["total"] = sum(out.values())
    return out


def generate_flops(model: Any, prompt_lengths: Sequence[int], new_tokens: int) -> dict[str, float]:
    """Essential FLOPs of greedy decoding: prefill (head at the last position only) + decode steps.

    Args:
        model: a ``MedVLForConditionalGeneration``.
        prompt_lengths: prompt tokens of each prompt (no padding), one media item each.
        new_tokens: tokens generated per prompt (the first comes from the prefill).
    """
    dims = llm_dims(model.config.text_config)
    body, layers, d_q = llm_layer_weights(dims), dims["layers"], dims["d_q"]
    head = 2.0 * dims["h"] * dims["vocab"]
    media = media_forward_flops(model)
    prefill = sum(layers * (2 * p * body + 2 * p * p * d_q) + head for p in prompt_lengths)
    prefill += len(prompt_lengths) * (media["encoder"] + media["connector"])
    decode = sum(
        2 * body * layers + 4 * (p + j) * d_q * layers + head for p in prompt_lengths for j in range(1, new_tokens)
    )
    return {"prefill": float(prefill), "decode": float(decode), "total": float(prefill + decode)}


# ---------------------------------------------------------------------------- phase timers
class _ModuleTimer:
    """Wall time spent inside the forward of some modules (forward pre-hook / hook pairs)."""

    def __init__(self, modules: dict[str, torch.nn.Module | None]):
        self.seconds: dict[str, float] = {name: 0.0 for name in modules}
        self.calls: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            if module is None:
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name), always_call=True))

    def _pre(self, name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            end = time.perf_counter()
            start = self._start.pop(name, end)
            self.seconds[name] += end - start
            self.calls[name].append((start, end))

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _media_modules(model: Any) -> dict[str, torch.nn.Module | None]:
    from medvl.train.parts import unwrap_model

    base = unwrap_model(model)
    encoder = base.vision_tower if base.vision_tower is not None else base.volume_encoder
    connector = base.image_connector if base.vision_tower is not None else base.volume_connector
    return {"model": base, "encoder": encoder, "connector": connector}


def _train_phase_callback() -> Any:
    from transformers import TrainerCallback

    class TrainPhaseTimer(TrainerCallback):
        """Per-step phases of the HF Trainer loop: data (batch fetch + collate, between steps),
        forward (model, with encoder / connector / LLM from module hooks), backward + clip,
        optimizer step; plus the loop's start and end."""

        def __init__(self) -> None:
            self.modules: _ModuleTimer | None = None
            self.train_begin = self.train_end = 0.0
            self.steps: list[dict[str, float]] = []
            self._last = 0.0
            self._step: dict[str, float] = {}
            self._forward_mark: dict[str, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.modules = _ModuleTimer(_media_modules(model))
            self._forward_mark = dict(self.modules.seconds)
            self.train_begin = self._last = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            # a lazy feature cache encodes new files while the batch is fetched: part of "data"
            data_encoder = self.modules.seconds["encoder"] - self._forward_mark.get("encoder", 0.0)
            self._step = {"start": self._last, "data": now - self._last, "data_encoder": data_encoder}
            self._begin = now
            self._forward_mark = dict(self.modules.seconds)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            fwd = {k: self.modules.seconds[k] - self._forward_mark[k] for k in self._forward_mark}
            self._step.update(
                encoder=fwd["encoder"],
                connector=fwd["connector"],
                llm_forward=fwd["model"] - fwd["encoder"] - fwd["connector"],
                backward=(now - self._begin) - fwd["model"],
            )
            self._pre_opt = now

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._step["optimizer"] = time.perf_counter() - self._pre_opt

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            self._step["step"] = now - self._step["start"]
            self._step["other"] = self._step["step"] - sum(
                self._step.get(k, 0.0) for k in ("data", "encoder", "connector", "llm_forward", "backward", "optimizer")
            )
            self.steps.append(self._step)
            self._last = now
            self._forward_mark = dict(self.modules.seconds)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.train_end = time.perf_counter()
            if self.modules is not None:
                self.modules.remove()

    return TrainPhaseTimer()


TRAIN_PHASES = ("data", "encoder", "connector", "llm_forward", "backward", "optimizer", "other")


def summarize_train_steps(steps: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Totals and fractions per phase over the steps (``backward`` includes gradient clipping;
    ``other``: scheduler, zero_grad, logging)."""
    total = sum(s["step"] for s in steps)
    phases = {p: sum(s.get(p, 0.0) for s in steps) for p in TRAIN_PHASES}
    return {
        "seconds": phases,
        "fraction": {p: (v / total if total else None) for p, v in phases.items()},
        # encoder forwards of a lazy feature cache during batch fetching (included in "data")
        "data_encoder_seconds": sum(s.get("data_encoder", 0.0) for s in steps),
        "step_seconds": [s["step"] for s in steps],
        "median_step_seconds": statistics.median(s["step"] for s in steps),
    }


# ---------------------------------------------------------------------------- workloads
def run_train_workload(
    sizes: WorkloadSizes,
    kind: str,
    folder: Path,
    peak_gflops: float | None,
    overrides: dict[str, Any] | None = None,
    model_and_processor: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune W2D or W3D with ``medvl.train.run_training`` and profile it.

    Args:
        sizes: workload sizes.
        kind: "w2d" or "w3d".
        folder: work folder (data, run output).
        peak_gflops: measured fp32 matmul peak (None: fractions skipped).
        overrides: ``TrainConfig`` sections merged over the workload's (e.g. ``{"data": {"packing": True}}``).
        model_and_processor: a ready model (else built; the run trains it in place).
    """
    from medvl.data.dataset import ConversationDataset
    from medvl.data.records import load_records
    from medvl.train import TrainConfig, run_training
    from medvl.utils.config import from_dict

    started = time.perf_counter()
    model, processor = model_and_processor or build_workload_model(sizes, "2d" if kind == "w2d" else "3d")
    built = time.perf_counter()
    data = write_workload_data(sizes, processor, kind, folder / "data")
    written = time.perf_counter()
    batch = sizes.w2d_batch if kind == "w2d" else sizes.w3d_batch
    steps = sizes.w2d_steps if kind == "w2d" else sizes.w3d_steps
    parts = {
        "llm": {"mode": "full"},
        "connector": {"mode": "full"},
        "vision": {"mode": "frozen"},
        "volume": {"mode": "frozen"},
    }
    raw = {
        "data": {"train": [data["records_file"]], "max_length": 4096},
        "train": {
            "parts": parts,
            "lr": sizes.lr,
            "batch_size": batch,
            "max_steps": steps,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "logging_steps": 1,
            "save_steps": 10**6,
            "report_to": [],
            "progress_bar": False,
            "seed": sizes.seed,
        },
        "output": {"dir": str(folder / "run"), "overwrite": True},
    }
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    cfg = from_dict(TrainConfig, raw)
    dataset = ConversationDataset(load_records(data["records_file"]), processor, max_length=4096)
    tokens, supervised = sample_stats(dataset)
    timer = _train_phase_callback()
    begin = time.perf_counter()
    out = run_training(cfg, model=model, processor=processor, callbacks=[timer])
    finished = time.perf_counter()
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    # which samples each step saw: the run covers steps * batch samples of the (shuffled) data set;
    # FLOPs use the data set's mean sample, scaled to the samples seen
    seen = steps * batch
    scale = seen / len(tokens)
    flops = {k: v * scale for k, v in train_flops(model, tokens, supervised, len(tokens)).items()}
    loop = timer.train_end - timer.train_begin
    profile = summarize_train_steps(timer.steps)
    result = {
        "workload": kind,
        "config_overrides": overrides or {},
        "batch_size": batch,
        "steps": steps,
        "samples_seen": seen,
        "records": len(tokens),
        "tokens_per_sample": {"min": min(tokens), "max": max(tokens), "mean": float(np.mean(tokens))},
        "supervised_per_sample": float(np.mean(supervised)),
        "padding_fraction_padded": _padding_fraction(tokens, batch),
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "loop_seconds": loop,
        "samples_per_s": seen / loop,
        "median_step_seconds": profile["median_step_seconds"],
        "samples_per_s_median_step": batch / profile["median_step_seconds"],
        "startup_seconds": {
            "build_model": built - started,
            "write_data": written - built,
            "run_training_to_first_step": timer.train_begin - begin,
            "after_last_step": finished - timer.train_end,
        },
        "essential_flops": flops,
        "essential_gflops_per_s": flops["total"] / loop / 1e9,
        "fraction_of_fp32_peak": (flops["total"] / loop / 1e9 / peak_gflops) if peak_gflops else None,
        "fraction_of_fp32_peak_median_step": (
            flops["total"] / steps / profile["median_step_seconds"] / 1e9 / peak_gflops
        )
        if peak_gflops
        else None,
        "phases": profile,
    }
    logger.info(
        "%s: %.3f samples/s, median step %.3f s, %.2f of the fp32 peak",
        kind,
        result["samples_per_s"],
        result["median_step_seconds"],
        result["fraction_of_fp32_peak"] or float("nan"),
    )
    return result


def _padding_fraction(tokens: Sequence[int], batch: int) -> float:
    real = padded = 0
    for k in range(0, len(tokens), batch):
        chunk = tokens[k : k + batch]
        real += sum(chunk)
        padded += len(chunk) * max(chunk)
    return 1.0 - real / padded


class DecodePhaseTimer:
    """Phases of ``generate`` calls (one per batch, appended to ``batches`` as ``{"start", "wall",
    "calls"}``): preprocessing (prompt rendering, image loading and processing, outside
    any forward), prefill forward (media encoding included), decode forwards, and the time between
    decode forwards (sampling, stopping criteria, cache bookkeeping: "outside the forward")."""

    def __init__(self, model: Any):
        self.modules = _ModuleTimer(_media_modules(model))

    def __enter__(self) -> DecodePhaseTimer:
        self.batches: list[dict[str, Any]] = []
        return self

    def __exit__(self, *exc: Any) -> None:
        self.modules.remove()

    def summary(self, new_tokens_per_row: int, rows: int) -> dict[str, Any]:
        """Seconds per phase and per generated token."""
        pre = prefill = decode = between = tail = 0.0
        decode_steps = 0
        for b in self.batches:
            calls = b["calls"]
            if not calls:
                continue
            pre += calls[0][0] - b["start"]
            prefill += calls[0][1] - calls[0][0]
            for (_, e0), (s1, e1) in zip(calls, calls[1:]):
                between += s1 - e0
                decode += e1 - s1
                decode_steps += 1
            tail += b["start"] + b["wall"] - calls[-1][1]
        total = sum(b["wall"] for b in self.batches)
        tokens = new_tokens_per_row * rows
        return {
            "seconds": {
                "preprocess": pre,
                "prefill": prefill,
                "decode_forward": decode,
                "outside_forward_between_steps": between,
                "after_last_forward": tail,
                "total": total,
            },
            "decode_steps": decode_steps,
            "decode_forward_ms_per_step": 1e3 * decode / decode_steps if decode_steps else None,
            "outside_forward_ms_per_step": 1e3 * between / decode_steps if decode_steps else None,
            "outside_forward_ms_per_token": 1e3 * (between + tail) / tokens if tokens else None,
        }


def run_decode_workload(
    sizes: WorkloadSizes,
    folder: Path,
    peak_gflops: float | None,
    model_and_processor: tuple[Any, Any] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    bandwidth_gbs: float | None = None,
) -> dict[str, Any]:
    """I2D: greedy decoding of the W2D model at each batch size of ``sizes.i2d_batches``.

    Args:
        sizes: workload sizes.
        folder: work folder (images, records).
        peak_gflops: measured fp32 matmul peak (None: fractions skipped).
        model_and_processor: a ready W2D model (else built).
        gen_kwargs: extra ``generate`` keyword arguments.
        bandwidth_gbs: measured memory bandwidth: a decode step reads every LLM weight once, so at
            small batches the weight bytes per second of the decode forwards, not FLOPs, meet a limit.
    """
    from medvl.data.dataset import encoder_for
    from medvl.data.records import load_records
    from medvl.inference import generate

    model, processor = model_and_processor or build_workload_model(sizes, "2d")
    model.eval()
    data = write_workload_data(sizes, processor, "i2d", folder / "data")
    records = load_records(data["records_file"])
    encoder = encoder_for(processor)
    lengths = [len(encoder.encode_prompt(r.messages)) for r in records]
    n = sizes.i2d_new_tokens
    flops = generate_flops(model, lengths, n)
    out: dict[str, Any] = {
        "workload": "i2d",
        "prompts": len(records),
        "new_tokens_per_prompt": n,
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "essential_flops": flops,
        "batches": {},
    }
    generate(model, processor, records[:1], batch_size=1, max_new_tokens=2, min_new_tokens=2, progress=False)  # warm-up
    texts_by_batch = {}
    for batch_size in sizes.i2d_batches:
        timer = DecodePhaseTimer(model)
        texts: list[str] = []
        with timer:
            order = list(range(len(records)))
            for start in range(0, len(order), batch_size):
                chunk = [records[i] for i in order[start : start + batch_size]]
                b = {"start": time.perf_counter()}
                first = len(timer.modules.calls["model"])
                texts += generate(
                    model,
                    processor,
                    chunk,
                    batch_size=batch_size,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    progress=False,
                    **(gen_kwargs or {}),
                )
                b["wall"] = time.perf_counter() - b["start"]
                b["calls"] = timer.modules.calls["model"][first:]
                timer.batches.append(b)
        wall = sum(b["wall"] for b in timer.batches)
        summary = timer.summary(n, len(records))
        weight_bytes = 4.0 * (
            llm_layer_weights(llm_dims(model.config.text_config)) * model.config.text_config.num_hidden_layers
            + model.config.text_config.hidden_size * model.config.text_config.vocab_size
        )
        decode_s = summary["seconds"]["decode_forward"]
        summary["decode_weight_gbs"] = weight_bytes * summary["decode_steps"] / decode_s / 1e9 if decode_s else None
        summary["decode_fraction_of_memory_bandwidth"] = (
            summary["decode_weight_gbs"] / bandwidth_gbs if bandwidth_gbs and summary["decode_weight_gbs"] else None
        )
        texts_by_batch[batch_size] = texts
        out["batches"][str(batch_size)] = {
            "batch_size": batch_size,
            "seconds": wall,
            "new_tokens_per_s": n * len(records) / wall,
            "essential_gflops_per_s": flops["total"] / wall / 1e9,
            "fraction_of_fp32_peak": flops["total"] / wall / 1e9 / peak_gflops if peak_gflops else None,
            "phases": summary,
        }
        logger.info(
            "i2d batch %d: %.1f new tok/s, outside forward %.2f ms/token",
            batch_size,
            out["batches"][str(batch_size)]["new_tokens_per_s"],
            summary["outside_forward_ms_per_token"] or 0,
        )
    out["texts_sha"] = {str(k): _sha(v) for k, v in texts_by_batch.items()}
    return out


def _sha(texts: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]


def import_seconds() -> float:
    """Wall time of importing medvl's training and inference stack in a fresh interpreter: part of
    every ``medvl train`` / ``medvl infer`` run's start-up (torch, transformers, accelerate, ...)."""
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import medvl.train.run, medvl.train.trainer, medvl.inference"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def bench_workloads(
    sizes: WorkloadSizes,
    peak_gflops: float | None,
    workdir: str | Path | None = None,
    which: Sequence[str] = WORKLOADS,
    overrides: dict[str, dict[str, Any]] | None = None,
    bandwidth_gbs: float | None = None,
) -> dict[str, Any]:
    """Run the workloads; returns JSON-ready results (see the module doc).

    Args:
        sizes: workload sizes.
        peak_gflops: measured fp32 matmul peak (the ``machine`` suite's).
        workdir: folder for data and runs (default: temporary, removed afterwards).
        which: workloads among :data:`WORKLOADS`.
        overrides: per-workload ``TrainConfig`` section overrides (``{"w2d": {"data": {...}}}``).
        bandwidth_gbs: measured memory bandwidth (the ``machine`` suite's), for I2D's decode steps.
    """
    unknown = [w for w in which if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; valid choices: {', '.join(WORKLOADS)}")
    out: dict[str, Any] = {"sizes": asdict(sizes), "import_seconds": import_seconds()}
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medvl-wl-")))
        for name in which:
            torch.manual_seed(sizes.seed)
            if name == "i2d":
                out[name] = run_decode_workload(sizes, root / name, peak_gflops, bandwidth_gbs=bandwidth_gbs)
            else:
                out[name] = run_train_workload(sizes, name, root / name, peak_gflops, (overrides or {}).get(name))
    return out


def _fmt(value: Any) -> str:
    from medvl.bench import _fmt as fmt

    return fmt(value)


def workload_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(suite, metric, value)`` table rows of :func:`bench_workloads`' results."""
    rows: list[tuple[str, str, str]] = []
    if "import_seconds" in results:
        rows.append(
            (
                "workloads",
                "start-up: import of the train + inference stack, fresh process (s)",
                _fmt(results["import_seconds"]),
            )
        )
    for name in ("w2d", "w3d"):
        if name not in results:
            continue
        r = results[name]
        s = f"workloads/{name}"
        rows += [
            (s, f"samples/s (loop wall, {r['steps']} steps x batch {r['batch_size']})", _fmt(r["samples_per_s"])),
            (
                s,
                "median step s / samples/s at the median step",
                f"{_fmt(r['median_step_seconds'])} / {_fmt(r['samples_per_s_median_step'])}",
            ),
            (
                s,
                "tokens per sample (mean), supervised",
                f"{_fmt(r['tokens_per_sample']['mean'])}, {_fmt(r['supervised_per_sample'])}",
            ),
            (s, "essential GFLOP per step", _fmt(r["essential_flops"]["total"] / r["steps"] / 1e9)),
            (
                s,
                "fraction of fp32 peak (loop / median step)",
                f"{_fmt(r['fraction_of_fp32_peak'])} / {_fmt(r['fraction_of_fp32_peak_median_step'])}",
            ),
            (
                s,
                "phases % (" + ", ".join(TRAIN_PHASES) + ")",
                " ".join(_fmt(100 * (r["phases"]["fraction"][p] or 0)) for p in TRAIN_PHASES),
            ),
            (s, "encoder s inside data loading (lazy feature cache)", _fmt(r["phases"]["data_encoder_seconds"])),
            (
                s,
                "start-up s (data set + cache + trainer before step 1)",
                _fmt(r["startup_seconds"]["run_training_to_first_step"]),
            ),
            (s, "first loss", _fmt(r["first_loss"])),
        ]
    if "i2d" in results:
        r = results["i2d"]
        for batch, b in r["batches"].items():
            p = b["phases"]
            rows += [
                (
                    "workloads/i2d",
                    f"batch {batch}: new tokens/s ({r['prompts']} prompts x {r['new_tokens_per_prompt']})",
                    _fmt(b["new_tokens_per_s"]),
                ),
                ("workloads/i2d", f"batch {batch}: fraction of fp32 peak", _fmt(b["fraction_of_fp32_peak"])),
                (
                    "workloads/i2d",
                    f"batch {batch}: s preprocess / prefill / decode fwd / outside fwd",
                    " / ".join(
                        _fmt(p["seconds"][k])
                        for k in ("preprocess", "prefill", "decode_forward", "outside_forward_between_steps")
                    ),
                ),
                (
                    "workloads/i2d",
                    f"batch {batch}: ms per decode step: forward / outside",
                    f"{_fmt(p['decode_forward_ms_per_step'])} / {_fmt(p['outside_forward_ms_per_step'])}",
                ),
                (
                    "workloads/i2d",
                    f"batch {batch}: decode weight GB/s, fraction of memory bandwidth",
                    f"{_fmt(p['decode_weight_gbs'])}, {_fmt(p['decode_fraction_of_memory_bandwidth'])}",
                ),
            ]
    return rows


__all__ = [
    "WORKLOADS",
    "WorkloadSizes",
    "bench_workloads",
    "build_workload_model",
    "generate_flops",
    "run_decode_workload",
    "run_train_workload",
    "train_flops",
    "workload_rows",
    "write_workload_data",
]
