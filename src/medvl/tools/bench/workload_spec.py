"""What the MedM-VL workloads are: their sizes (:class:`WorkloadSizes`) and their models.

Built in-process from configs (seeded random weights, no downloads) at the sizes of the comparison
with MedM-VL (issue "faster than MedM-VL on every workload"):

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

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


def build_workload_model(sizes: WorkloadSizes, kind: str) -> tuple[MedVLForConditionalGeneration, MedVLProcessor]:
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
    vision: VisionSpec | None = None
    volume: VolumeSpec | None = None
    if kind == "2d":
        vision = VisionSpec(
            config=dict(sizes.vision), feature_layer=sizes.vision_feature_layer, feature_select="patch", connector=mlp
        )
    else:
        volume = VolumeSpec(
            encoder="vit3d",
            config=dict(sizes.volume),
            feature_select="patch",
            connector=ConnectorConfig(type="spatial_pool", pool_stride=sizes.volume_pool, depth=2, activation="gelu"),
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
