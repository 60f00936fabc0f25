"""MedM-VL and medvl side by side on this machine: same weights, same data, fp32, one thread each.

The W2D model (Qwen2 LLM hidden 512 / 8 layers / 8 heads, 2 KV heads / MLP 1408 / vocabulary 8000,
untied head; CLIP tower 224 px / patch 16 / hidden 384 / 6 layers / 6 heads, layer -2 without CLS;
``mlp2x_gelu`` connector) is built in MedM-VL's OWN classes (``LVLMConfig`` +
``LVLMForConditionalGeneration``, seeded random weights) and saved in MedM-VL's format; ``medvl
convert medm-vl`` turns that checkpoint into a medvl one, so both projects run identical weights.
The prompts and training samples are written once (``medvl.tools.bench.workload_data``, sized with
the converted tokenizer) and given to each project in its own record format.

Then, in separate processes, alternating medvl / MedM-VL / medvl / MedM-VL:

* ``i2d``: greedy decoding of 32 prompts (249-264 tokens), exactly 32 new tokens each, at batch 1
  and 8, through each project's own generate path (MedM-VL: its data module + ``LVLM.generate`` +
  ``batch_decode`` as ``lvlm/inference.py`` does; medvl: ``medvl.inference.generate``); new tokens/s,
  and the greedy texts must be equal;
* ``w2d``: training steps on the same batches in record order (batch 4; LLM + connector trained,
  CLIP tower frozen; data loading + forward + loss + backward + gradient clipping at 1.0 + AdamW
  lr 2e-5 / weight decay 0), each project with its own data pipeline, model and optimiser default
  (MedM-VL's HF Trainer 4.42 ``adamw_torch``: AdamW single-tensor; medvl's HF Trainer 5
  ``adamw_torch_fused``: AdamW ``fused=True``); seconds per step, and the first-step losses must be
  equal. No gradient checkpointing on either side. ``--medvl-w2d-head supervised`` (default) calls
  medvl's model as its Trainer does (``return_supervised_logits_only=True``: the LM head only at the
  supervised positions, same loss); ``full`` runs the head at every position as MedM-VL does (the
  option applies to W3D too);
* ``w3d``: the same, with MedM-VL's MedM-CLIP 3D ViT (volume 32x256x256, patch 4x16x16, hidden 192,
  2 layers, 3 heads, MLP 768; a tiny random BERT as its unused text tower) + ``spatial_pooling``
  (2x2x2 average pooling + ``mlp2x_gelu``, 256 tokens), batch 2, 10 steps over 20 ``.npy`` HU
  volumes (MedM-VL's volume transform in eval mode: no random augmentation, so losses compare).
  MedM-VL's 3D path needs two one-line fixes to run at all (``spatial_pooling.ConnectorConfig``
  reads 2D-only kwargs; MedM-CLIP's ViT gets a [frames, H, W] list as ``image_size``); the worker
  applies them as patches at import, none changes numerics.

MedM-VL needs its own environment (Python 3.11, torch 2.13.0+cpu, transformers 4.42.4, tokenizers
0.19.1, accelerate 0.32.1, numpy 1.26.4, Pillow, sentencepiece): pass its interpreter as
``--medmvl-python`` and a checkout of github.com/MSIIP/MedM-VL (commit 225fc0f) as ``--medmvl-src``.
Its template formatters are dataclasses used as dataclass defaults, which Python 3.11 refuses; the
worker gives them an identity hash before MedM-VL's templates are imported (the same effect as the
one-line ``@dataclass(unsafe_hash=True)`` fix; nothing numeric changes). Run from the repository root::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/medmvl_side_by_side.py \\
        --medmvl-src PATH/TO/MedM-VL --medmvl-python PATH/TO/venv/bin/python --work /tmp/sbs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# MedM-VL-format Qwen2 tokenizer (byte-level BPE, 4000 entries, <|im_end|> = eos) shipped as test data
TOKENIZER = REPO / "tests" / "fixtures" / "medmvl" / "medmvl-2d-siglip-mlp" / "components" / "qwen2-tiny"
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# The W2D / W3D sizes come from medvl.tools.bench.workload_spec.WorkloadSizes (prepare() writes them into
# the component folders and sizes.json); these are only the fields each file format needs beside them.
LLM_FORMAT = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "bos_token_id": 3997,
    "eos_token_id": 3999,
    "torch_dtype": "float32",
    "use_cache": True,
}
CLIP_FORMAT = {
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 512,
}
CLIP_PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
# W3D's 3D ViT in MedM-CLIP layout, with a tiny BERT as its (unused, frozen) text tower, which MedMCLIP
# loads from a folder
MEDMCLIP_FORMAT = {"model_type": "medm-pretrain", "dropout_rate": 0.0, "gather_loss": False, "local_loss": False}


# ---------------------------------------------------------------- shared helpers (both interpreters)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]] if Path("/proc/loadavg").exists() else []


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def _sizes(work: str | Path) -> dict[str, Any]:
    """The run sizes prepare() took from WorkloadSizes (MedM-VL's interpreter cannot import medvl)."""
    return json.loads((Path(work) / "sizes.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- MedM-VL side (its own venv)


def _import_medmvl(src: Path) -> None:
    """Put MedM-VL on the path; make its template formatters hashable before the templates load."""
    import importlib.util

    name = "lvlm.dataset.template.formatter"
    if name in sys.modules:
        return
    sys.path.insert(0, str(src))
    spec = importlib.util.spec_from_file_location(name, src / "lvlm" / "dataset" / "template" / "formatter.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for cls in (module.Formatter, module.EmptyFormatter, module.StringFormatter):
        cls.__hash__ = object.__hash__  # what @dataclass(unsafe_hash=True) gives; Python 3.11 needs it
    sys.modules[name] = module
    _patch_medmvl_3d()


def _patch_medmvl_3d() -> None:
    """The two one-line fixes MedM-VL's 3D path needs to run at all (no numeric change):
    ``spatial_pooling.ConnectorConfig`` reads the image connector kwargs that only the 2D path passes,
    and MedM-CLIP's ViT gets the [frames, H, W] list ``medmclip_load_config`` made of ``image_size``."""
    from lvlm.model.connector import spatial_pooling
    from lvlm.model.encoder import medmclip

    config_init = spatial_pooling.ConnectorConfig.__init__

    def connector_init(self, lvlm_llm_config, lvlm_encoder_config, **kwargs):  # noqa: ANN001, ANN202
        kwargs.setdefault("lvlm_connector_image_type", None)
        config_init(self, lvlm_llm_config, lvlm_encoder_config, **kwargs)

    spatial_pooling.ConnectorConfig.__init__ = connector_init
    vit = medmclip.ViT

    class ViT(vit):  # type: ignore[misc, valid-type]
        def __init__(self, *, image_size, **kwargs):  # noqa: ANN001, ANN204
            super().__init__(image_size=image_size[-1] if isinstance(image_size, list) else image_size, **kwargs)

    medmclip.ViT = ViT


def medmvl_build(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    _import_medmvl(Path(args.medmvl_src))
    from lvlm.model.configuration_lvlm import LVLMConfig
    from lvlm.model.modeling_lvlm import LVLMForConditionalGeneration

    work = Path(args.work)
    llm = {
        "lvlm_llm_type": "qwen2",
        "lvlm_llm_name_or_path": str(work / "qwen2"),
        "lvlm_llm_max_length": 2048,
        "lvlm_llm_padding_side": "right",
        "lvlm_llm_attn_implementation": "sdpa",
    }
    config = LVLMConfig(
        **llm,
        lvlm_encoder_image_type="clip",
        lvlm_encoder_image_name_or_path=str(work / "clip"),
        lvlm_encoder_image_select_layer=-2,
        lvlm_encoder_image_select_feature="patch",
        lvlm_connector_image_type="mlp",
        lvlm_connector_image_name="mlp2x_gelu",
    )
    torch.manual_seed(0)
    model = LVLMForConditionalGeneration(config)
    model.save_pretrained(work / "medmvl-ckpt")
    model.tokenizer.save_pretrained(work / "medmvl-ckpt")
    out = {"parameters": sum(p.numel() for p in model.parameters())}
    if "w3d" in args.tasks.split(","):
        from transformers import BertConfig, BertModel

        torch.manual_seed(1)
        bert = BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
        BertModel(bert).save_pretrained(work / "bert")
        config3d = LVLMConfig(
            **llm,
            lvlm_encoder_image3d_type="medmclip",
            lvlm_encoder_image3d_name_or_path=str(work / "medmclip"),
            lvlm_encoder_image3d_select_layer=-1,
            lvlm_encoder_image3d_select_feature="patch",
            lvlm_connector_image3d_type="spatial_pooling",
            lvlm_connector_image3d_name="mlp2x_gelu",
        )
        torch.manual_seed(0)
        model3d = LVLMForConditionalGeneration(config3d)
        model3d.save_pretrained(work / "medmvl-ckpt-3d")
        model3d.tokenizer.save_pretrained(work / "medmvl-ckpt-3d")
        out["parameters_3d"] = sum(p.numel() for p in model3d.parameters())
    return out


def _medmvl_model(args: argparse.Namespace, name: str = "medmvl-ckpt"):  # noqa: ANN202 (MedM-VL's class)
    import torch

    _import_medmvl(Path(args.medmvl_src))
    from lvlm.model.modeling_lvlm import LVLMForConditionalGeneration

    model = LVLMForConditionalGeneration.from_pretrained(Path(args.work) / name)
    return model.to(dtype=torch.float32)


def _medmvl_records(path: Path, train: bool) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        turns = [
            {"from": "human" if m["role"] == "user" else "gpt", "value": m["content"].replace("<volume>", "<image3d>")}
            for m in rec["messages"]
        ]
        media = {"image": rec["images"]} if "images" in rec else {"image3d": rec["volumes"]}
        out.append({"id": rec["id"], "conversations": turns if train else turns[:1], **media})
    return out


def medmvl_i2d(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from lvlm.dataset.dataset import create_data_module
    from torch.utils.data import DataLoader

    model = _medmvl_model(args)
    model.eval()
    folder = Path(args.work) / "i2d"
    data = _medmvl_records(folder / "train.jsonl", train=False)
    tok = model.tokenizer
    known = len(tok)

    def run(records: list[dict[str, Any]], batch_size: int, new_tokens: int) -> tuple[float, list[str], list]:
        # lvlm/inference.py: left padding of the merged embeddings for batches > 1
        model.config.lvlm_llm_padding_side = "left" if batch_size > 1 else "right"
        module = create_data_module(
            data=records, conv_version="qwen2", image_dir=str(folder), image3d_dir=str(folder), model=model, mode="eval"
        )
        loader = DataLoader(
            module["train_dataset"], batch_size=batch_size, shuffle=False, collate_fn=module["data_collator"]
        )
        texts: list[str] = []
        ids: list[list[int]] = []
        start = time.perf_counter()
        with torch.no_grad():
            for batch in loader:
                out = model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    num_beams=1,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
                # rows of the untrained model's 8000 that the 4000-entry tokenizer has no text for are
                # dropped before decoding (the slow tokenizer cannot decode them; medvl skips them)
                rows = [[t for t in row.tolist() if t < known] for row in out]
                texts += tok.batch_decode(rows, skip_special_tokens=True)
                ids += out.tolist()
        return time.perf_counter() - start, texts, ids

    run(data[:1], 1, 2)  # warm-up
    result: dict[str, Any] = {"batches": {}}
    sizes = _sizes(args.work)
    new_tokens = sizes["new_tokens"]
    for b in sizes["batches"]:
        seconds, texts, ids = run(data, b, new_tokens)
        result["batches"][str(b)] = {
            "seconds": seconds,
            "new_tokens_per_s": new_tokens * len(data) / seconds,
            "texts": texts,
            "ids": ids,
        }
    result["prompt_tokens"] = _medmvl_prompt_lengths(model, data, folder, sizes["image_tokens"])
    return result


def _medmvl_prompt_lengths(model, data: list[dict[str, Any]], folder: Path, patches: int) -> list[int]:  # noqa: ANN001
    from lvlm.dataset.dataset import create_data_module

    ds = create_data_module(
        data=data, conv_version="qwen2", image_dir=str(folder), image3d_dir=str(folder), model=model, mode="eval"
    )["train_dataset"]
    # each marker id becomes the tower's patch features (CLS dropped)
    return [
        len(ds.template.encode(d["conversations"], ds.tokenizer, mode="eval")["input_ids"]) - 1 + patches for d in data
    ]


def medmvl_w2d(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from lvlm.dataset.dataset import create_data_module

    model = _medmvl_model(args)
    # MedM-VL's recipe: tune_type_llm full, connector full, encoder frozen; use_cache off in training
    model.requires_grad_(False)
    model.llm.requires_grad_(True)
    model.connector_image.requires_grad_(True)
    model.config.use_cache = False
    model.train()
    folder = Path(args.work) / "w2d"
    module = create_data_module(
        data=_medmvl_records(folder / "train.jsonl", train=True),
        conv_version="qwen2",
        image_dir=str(folder),
        image3d_dir=str(folder),
        model=model,
        mode="train",
    )
    ds, collate = module["train_dataset"], module["data_collator"]
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = _sizes(args.work)
    batch_size = sizes["w2d_batch"]
    # HF Trainer 4.42 default optim "adamw_torch": torch AdamW, no fused / foreach on CPU
    opt = torch.optim.AdamW(params, lr=sizes["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step(k: int) -> float:
        batch = collate([ds[i] for i in range(k * batch_size, (k + 1) * batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    result = _steps(step, args.steps, sum(p.numel() for p in params), batch_size)
    patches = sizes["image_tokens"]
    # merged length: the marker id becomes the tower's patch features; supervised = labels != -100
    items = [ds[i] for i in range(len(ds))]
    result["sample_tokens"] = [len(x["input_ids"]) - 1 + patches for x in items]
    result["supervised_tokens"] = [int((x["labels"] != -100).sum()) for x in items]
    return result


def medmvl_w3d(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from lvlm.dataset.dataset import create_data_module

    model = _medmvl_model(args, "medmvl-ckpt-3d")
    model.requires_grad_(False)
    model.llm.requires_grad_(True)
    model.connector_image3d.requires_grad_(True)
    model.config.use_cache = False
    model.train()
    folder = Path(args.work) / "w3d"
    module = create_data_module(
        data=_medmvl_records(folder / "train.jsonl", train=True),
        conv_version="qwen2",
        image_dir=str(folder),
        image3d_dir=str(folder),
        model=model,
        mode="train",
    )
    ds, collate = module["train_dataset"], module["data_collator"]
    processor = ds.processor_image3d
    # the volume transform in eval mode (no random rotation / flip / intensity change): equal losses
    ds.processor_image3d = lambda volume, mode: processor(volume, mode="eval")
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = _sizes(args.work)
    batch_size = sizes["w3d_batch"]
    opt = torch.optim.AdamW(params, lr=sizes["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step(k: int) -> float:
        batch = collate([ds[i] for i in range(k * batch_size, (k + 1) * batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    result = _steps(step, min(args.steps, sizes["w3d_steps"]), sum(p.numel() for p in params), batch_size)
    tokens = sizes["volume_tokens"]  # the marker becomes the pooled patch grid
    items = [ds[i] for i in range(len(ds))]
    result["sample_tokens"] = [len(x["input_ids"]) - 1 + tokens for x in items]
    result["supervised_tokens"] = [int((x["labels"] != -100).sum()) for x in items]
    return result


def _steps(step: Any, steps: int, trainable: int, batch: int) -> dict[str, Any]:
    times, losses = [], []
    for k in range(steps):
        start = time.perf_counter()
        losses.append(step(k))
        times.append(time.perf_counter() - start)
    later = times[1:] or times
    return {
        "trainable_parameters": trainable,
        "step_seconds": times,
        "losses": losses,
        "median_step_seconds": statistics.median(later),
        "mean_step_seconds": statistics.fmean(later),
        "samples_per_s": batch * len(later) / sum(later),
    }


# ---------------------------------------------------------------- medvl side (the project venv)


def medvl_i2d(args: argparse.Namespace) -> dict[str, Any]:
    from medvl.data.records import load_records
    from medvl.inference import generate, load_model

    model, processor = load_model(Path(args.work) / "medvl-ckpt", dtype="float32", device="cpu")
    records = load_records(Path(args.work) / "i2d" / "train.jsonl")
    generate(model, processor, records[:1], batch_size=1, max_new_tokens=2, min_new_tokens=2, progress=False)
    result: dict[str, Any] = {"batches": {}}
    sizes = _sizes(args.work)
    new_tokens = sizes["new_tokens"]
    for b in sizes["batches"]:
        start = time.perf_counter()
        texts = generate(
            model,
            processor,
            records,
            batch_size=b,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            progress=False,
        )
        seconds = time.perf_counter() - start
        result["batches"][str(b)] = {
            "seconds": seconds,
            "new_tokens_per_s": new_tokens * len(records) / seconds,
            "texts": texts,
        }
    from medvl.data.dataset import encoder_for

    encoder = encoder_for(processor)
    result["prompt_tokens"] = [len(encoder.encode_prompt(r.messages)) for r in records]
    return result


def medvl_w3d(args: argparse.Namespace) -> dict[str, Any]:
    return medvl_w2d(args, "w3d")


def medvl_w2d(args: argparse.Namespace, kind: str = "w2d") -> dict[str, Any]:
    import torch

    from medvl.data.collator import PaddedCollator
    from medvl.data.dataset import ConversationDataset
    from medvl.data.records import load_records
    from medvl.inference import load_model
    from medvl.train.parts import parameters_by_part

    ckpt = "medvl-ckpt" if kind == "w2d" else "medvl-ckpt-3d"
    model, processor = load_model(Path(args.work) / ckpt, dtype="float32", device="cpu")
    for part, named in parameters_by_part(model).items():
        for _, p in named:
            p.requires_grad_(part in ("llm", "connector"))
    model.train()
    ds = ConversationDataset(load_records(Path(args.work) / kind / "train.jsonl"), processor, max_length=4096)
    sizes = _sizes(args.work)
    batch_size, steps = (
        (sizes["w2d_batch"], args.steps) if kind == "w2d" else (sizes["w3d_batch"], min(args.steps, sizes["w3d_steps"]))
    )
    collate = PaddedCollator(processor.tokenizer.pad_token_id, "right")
    params = [p for p in model.parameters() if p.requires_grad]
    # medvl's Trainer default (transformers 5 "adamw_torch_fused"): AdamW fused=True
    opt = torch.optim.AdamW(params, lr=sizes["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)

    # "supervised": the call medvl's Trainer makes (LM head only at the supervised positions; same loss);
    # "full": the LM head over every position, as MedM-VL (and a plain HF causal LM) computes it
    extra = {"return_supervised_logits_only": True} if args.medvl_w2d_head == "supervised" else {}

    def step(k: int) -> float:
        batch = collate([ds[i] for i in range(k * batch_size, (k + 1) * batch_size)])
        loss = model(**batch, **extra).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    result = _steps(step, steps, sum(p.numel() for p in params), batch_size)
    result["medvl_w2d_head"] = args.medvl_w2d_head
    from medvl.tools.bench.workload_data import sample_stats

    result["sample_tokens"], result["supervised_tokens"] = sample_stats(ds)
    return result


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Component folders, MedM-VL's checkpoint (in its process), the medvl conversion, the data."""
    from medvl.convert.medmvl.convert import convert_medmvl
    from medvl.inference import load_model
    from medvl.tools.bench.workload_data import write_workload_data
    from medvl.tools.bench.workload_spec import WorkloadSizes

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    llm, clip = work / "qwen2", work / "clip"
    for folder in (llm, clip):
        folder.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / name, llm / name)
    sizes = WorkloadSizes.full()
    vision, volume = sizes.vision, sizes.volume
    _write_json(llm / "config.json", {**LLM_FORMAT, **sizes.llm, "max_window_layers": sizes.llm["num_hidden_layers"]})
    _write_json(clip / "config.json", {**CLIP_FORMAT, **vision})
    _write_json(clip / "preprocessor_config.json", CLIP_PREPROCESSOR)
    (work / "medmclip").mkdir(exist_ok=True)
    _write_json(
        work / "medmclip" / "config.json",
        {
            **MEDMCLIP_FORMAT,
            "hidden_size": volume["hidden_size"],
            "frame_size": volume["image_size"][0],
            "image_size": volume["image_size"][1],
            "frame_patch_size": volume["patch_size"][0],
            "image_patch_size": volume["patch_size"][1],
            "image_num_heads": volume["num_attention_heads"],
            "image_mlp_dim": volume["intermediate_size"],
            "image_num_layers": volume["num_hidden_layers"],
            "language_model_name_or_path": str(work / "bert"),
        },
    )
    grid = [n // k for n, k in zip(volume["image_size"], volume["patch_size"])]
    _write_json(
        work / "sizes.json",
        {
            "w2d_batch": sizes.w2d_batch,
            "w3d_batch": sizes.w3d_batch,
            "w3d_steps": sizes.w3d_steps,
            "new_tokens": sizes.i2d_new_tokens,
            "batches": list(sizes.i2d_batches),
            "lr": sizes.lr,
            "image_tokens": (vision["image_size"] // vision["patch_size"]) ** 2,  # CLS dropped
            "volume_tokens": math.prod(n // p for n, p in zip(grid, sizes.volume_pool)),
        },
    )
    built = _worker(args, "medmvl", "build")
    convert_medmvl(work / "medmvl-ckpt", work / "medvl-ckpt", llm=llm, vision=clip, overwrite=True)
    if "w3d" in args.tasks.split(","):
        convert_medmvl(
            work / "medmvl-ckpt-3d", work / "medvl-ckpt-3d", llm=llm, volume=work / "medmclip", overwrite=True
        )
        _, processor3d = load_model(work / "medvl-ckpt-3d", dtype="float32", device="cpu")
        if not (work / "w3d" / "train.jsonl").exists() or args.rewrite_data:
            # one epoch of the steps measured, one volume per sample
            sizes3d = dataclasses.replace(sizes, w3d_records=sizes.w3d_batch * sizes.w3d_steps)
            write_workload_data(sizes3d, processor3d, "w3d", work / "w3d")
    _, processor = load_model(work / "medvl-ckpt", dtype="float32", device="cpu")
    facts = {
        kind: write_workload_data(sizes, processor, kind, work / kind)["records"]
        for kind in ("w2d", "i2d")
        if not (work / kind / "train.jsonl").exists() or args.rewrite_data
    }
    return {"medmvl_parameters": built["result"]["parameters"], "records": facts}


def _worker(args: argparse.Namespace, side: str, task: str) -> dict[str, Any]:
    out = Path(args.work) / f"{side}-{task}.json"
    python = args.medmvl_python if side == "medmvl" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", f"{side}:{task}", "--work", args.work]
    cmd += ["--medmvl-src", args.medmvl_src, "--steps", str(args.steps), "--out", str(out)]
    cmd += ["--medvl-w2d-head", args.medvl_w2d_head, "--tasks", args.tasks]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if side == "medmvl":
        env.pop("PYTHONPATH", None)  # MedM-VL imports only its own tree and its venv
    before, start = _load(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall, after = time.perf_counter() - start, _load()
    result = json.loads(out.read_text(encoding="utf-8"))
    return {
        "side": side,
        "task": task,
        "process_wall_s": wall,
        "loadavg_before": before,
        "loadavg_after": after,
        **result,
    }


def _worker_main(args: argparse.Namespace) -> None:
    _one_thread()
    side, task = args.worker.split(":")
    if side == "medmvl":
        _import_medmvl(Path(args.medmvl_src))
    fn = {
        ("medmvl", "build"): medmvl_build,
        ("medmvl", "i2d"): medmvl_i2d,
        ("medmvl", "w2d"): medmvl_w2d,
        ("medvl", "i2d"): medvl_i2d,
        ("medvl", "w2d"): medvl_w2d,
        ("medmvl", "w3d"): medmvl_w3d,
        ("medvl", "w3d"): medvl_w3d,
    }[(side, task)]
    import torch
    import transformers

    result = fn(args)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    _write_json(Path(args.out), {"result": result, "versions": versions, "threads": torch.get_num_threads()})


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per side, medvl / MedM-VL ratios and the equality checks."""
    out: dict[str, Any] = {}
    by = {(r["side"], r["task"]): [x for x in runs if (x["side"], x["task"]) == (r["side"], r["task"])] for r in runs}
    if ("medvl", "i2d") in by and ("medmvl", "i2d") in by:
        for key in by[("medvl", "i2d")][0]["result"]["batches"]:
            b = int(key)
            med = {
                s: statistics.median(x["result"]["batches"][key]["new_tokens_per_s"] for x in by[(s, "i2d")])
                for s in ("medvl", "medmvl")
            }
            texts_v = by[("medvl", "i2d")][0]["result"]["batches"][key]["texts"]
            texts_m = by[("medmvl", "i2d")][0]["result"]["batches"][key]["texts"]
            out[f"i2d_batch{b}"] = {
                "unit": "new tokens/s",
                "medmvl": med["medmvl"],
                "medvl": med["medvl"],
                "ratio_medvl_over_medmvl": med["medvl"] / med["medmvl"],
                "all_runs": {
                    s: [x["result"]["batches"][key]["new_tokens_per_s"] for x in by[(s, "i2d")]]
                    for s in ("medvl", "medmvl")
                },
                "greedy_texts_equal": sum(a == c for a, c in zip(texts_v, texts_m)),
                "prompts": len(texts_v),
            }
        lv = by[("medvl", "i2d")][0]["result"]["prompt_tokens"]
        lm = by[("medmvl", "i2d")][0]["result"]["prompt_tokens"]
        out["i2d_prompt_tokens"] = {"medvl": [min(lv), max(lv)], "medmvl": [min(lm), max(lm)], "equal": lv == lm}
    for kind in ("w2d", "w3d"):
        if ("medvl", kind) not in by or ("medmvl", kind) not in by:
            continue
        med = {
            s: statistics.median(x["result"]["median_step_seconds"] for x in by[(s, kind)]) for s in ("medvl", "medmvl")
        }
        lv = by[("medvl", kind)][0]["result"]["losses"]
        lm = by[("medmvl", kind)][0]["result"]["losses"]
        out[kind] = {
            "unit": "seconds per step (median of steps 2..N, median over runs)",
            "medmvl": med["medmvl"],
            "medvl": med["medvl"],
            "ratio_medvl_over_medmvl": med["medmvl"] / med["medvl"],
            "all_runs": {s: [x["result"]["median_step_seconds"] for x in by[(s, kind)]] for s in ("medvl", "medmvl")},
            "first_loss": {"medvl": lv[0], "medmvl": lm[0], "abs_diff": abs(lv[0] - lm[0])},
            "max_abs_loss_diff_all_steps": max(abs(a - c) for a, c in zip(lv, lm)),
            "sample_tokens_equal": by[("medvl", kind)][0]["result"]["sample_tokens"]
            == by[("medmvl", kind)][0]["result"]["sample_tokens"],
            "supervised_tokens_equal": by[("medvl", kind)][0]["result"]["supervised_tokens"]
            == by[("medmvl", kind)][0]["result"]["supervised_tokens"],
            "sample_tokens_min_max": [
                min(by[("medvl", kind)][0]["result"]["sample_tokens"]),
                max(by[("medvl", kind)][0]["result"]["sample_tokens"]),
            ],
            "trainable_parameters": {
                "medvl": by[("medvl", kind)][0]["result"]["trainable_parameters"],
                "medmvl": by[("medmvl", kind)][0]["result"]["trainable_parameters"],
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--medmvl-src", required=True, help="checkout of github.com/MSIIP/MedM-VL")
    parser.add_argument("--medmvl-python", help="python of MedM-VL's environment (transformers 4.42.4)")
    parser.add_argument("--medmvl-commit", default="225fc0f", help="MedM-VL commit of --medmvl-src (recorded)")
    parser.add_argument("--work", required=True, help="scratch folder (checkpoints, data, worker outputs)")
    parser.add_argument("--tasks", default="i2d,w2d", help="comma-separated: i2d, w2d")
    parser.add_argument("--repeats", type=int, default=2, help="alternating (medvl, MedM-VL) pairs per task")
    parser.add_argument("--steps", type=int, default=20, help="W2D training steps per run (batch 4)")
    parser.add_argument(
        "--medvl-w2d-head",
        choices=("supervised", "full"),
        default="supervised",
        help="medvl's W2D LM head: only at supervised positions (what medvl's Trainer calls) or everywhere",
    )
    parser.add_argument("--out", help="results JSON (driver) / worker output (worker)")
    parser.add_argument("--rewrite-data", action="store_true", help="rewrite the data even if present")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker_main(args)
        return
    if not args.medmvl_python:
        parser.error("--medmvl-python is required")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("side_by_side")
    facts = prepare(args)
    runs = []
    for task in args.tasks.split(","):
        for rep in range(args.repeats):
            for side in ("medvl", "medmvl"):
                run = _worker(args, side, task)
                runs.append({**run, "repeat": rep})
                log.info(
                    "%s %s #%d: %.0f s, load %s -> %s",
                    side,
                    task,
                    rep,
                    run["process_wall_s"],
                    run["loadavg_before"],
                    run["loadavg_after"],
                )
    summary = summarize(runs)
    log.info("%s", json.dumps(summary, indent=1))
    record = {
        "what": "MedM-VL vs medvl side by side, same weights and data, fp32, one thread each, alternating processes",
        "medmvl_commit": args.medmvl_commit,
        "medvl_w2d_head": args.medvl_w2d_head,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "prepare": facts,
        "summary": summary,
        "runs": runs,
    }
    if args.out:
        _write_json(Path(args.out), record)


if __name__ == "__main__":
    main()
