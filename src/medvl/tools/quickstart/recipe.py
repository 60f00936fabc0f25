"""The quickstart's recipes: model sizes, data geometry, steps and learning rates for 2D and 3D.

Why the stem, stage 0 and max pooling: trained only through the LLM, a from-scratch encoder gets its
signal through attention that starts uniform over the image tokens, i.e. through a mean, and small
nodules (a few of 64 patches) stayed at chance for 1500 steps here and 3000 on a GPU. A classifier
head on the max over the tokens learns them in a few hundred steps, but only with a local detector
(a normalised convolutional stem: a 16 px linear patch embedding did not); the LLM then learns to
read 4 max-pooled tokens in a few hundred more. ``benchmarks/quickstart_recipes.py`` is the search
harness and ``benchmarks/README.md`` has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medvl.tools.synth.phantoms import Geometry2D, Geometry3D


@dataclass
class Recipe:
    """Everything the quickstart varies between 2D and 3D.

    Args:
        n_cases: synthetic cases (80/10/10 split).
        geometry: how the phantoms are rendered (pixel/voxel spacing in mm).
        model: a ``medvl.build.ModelSpec`` as a mapping (tokenizer corpus filled in at run time).
        max_steps: optimizer steps of each training run (the model and the blind baseline).
        batch_size: samples per step.
        lr: peak learning rate of instruction tuning (cosine schedule with warm-up).
        train_format: "grouped" (training conversations of independent questions, one image pass
            supervises up to three answers) or "single" (see ``medvl data synth --train-format``).
        encoder_pretrain: stage 0 (``train.stage: encoder_pretrain``) settings: steps, batch_size, lr,
            warmup_steps (default 30); or None to train the encoder only through the LLM. The head
            reads the model's own feature layer (an optional ``feature_layer`` must match it).
        encoder_mode: the encoder's mode in instruction tuning ("frozen" after stage 0, or "full").
        volume_cache: 3D: preprocess every volume once (``medvl data prepare``) for both stages.
    """

    n_cases: int
    geometry: Geometry2D | Geometry3D
    model: dict[str, Any]
    max_steps: int
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    num_workers: int = 0
    train_format: str = "grouped"
    encoder_pretrain: dict[str, Any] | None = None
    encoder_mode: str = "frozen"
    volume_cache: bool = False


_LLM = {
    "model_type": "qwen2",
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}

RECIPES: dict[str, Recipe] = {
    # 128 px radiographs at 2.8 mm/px (a 36 cm field): a 5 mm nodule is ~2 px, a 30 mm one ~11 px. A
    # convolutional stem instead of the 16 px linear patch embedding (small nodules need a local
    # detector). Stage 0 pretrains the tower on the findings reading the stem's tokens (layer 0):
    # read after the transformer block, nodules stayed at chance in 800-1200 steps (0.52-0.55 vs
    # 0.86). Instruction tuning reads the same tokens, frozen, through a 4x4 max pool: 2x2 = 4
    # image tokens, the left and right lung apart.
    "2d": Recipe(
        n_cases=3000,
        geometry=Geometry2D(size=128, spacing=2.8),
        model={
            "llm": {"config": _LLM},
            "vision": {
                "config": {
                    "model_type": "siglip_vision_model",
                    "image_size": 128,
                    "patch_size": 16,
                    "hidden_size": 128,
                    "intermediate_size": 512,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                },
                "conv_stem": [16, 32, 64, 128],
                "feature_layer": 0,
                "connector": {"type": "spatial_pool", "pool_stride": [1, 4, 4], "pool": "max", "depth": 2},
            },
            "tokenizer": {"source": "train", "vocab_size": 1024},
        },
        max_steps=1400,
        encoder_pretrain={"steps": 1000, "batch_size": 16, "lr": 1e-3, "feature_layer": 0},
    ),
    # 64x64x32 volumes at 5.25 x 5.25 x 7.5 mm; the 3D ViT sees (D, H, W) = (32, 64, 64) through the 2D
    # recipe's design in 3D: a conv stem to a (8, 4, 4) token grid, stage 0, and a (8, 2, 2) max pool
    # to 2x2 tokens (W is the patient's left-right). The stem starts with a 2-slice maximum (a thin
    # slab MIP: small nodules keep their contrast) and is narrower than the 2D one (the 3D stem
    # costs ~8x per image): stage 0 then affords batch 8 x 2200 steps, and the nodule detector's
    # onset (a plateau, then learning) came in 1250-1500 steps in the runs measured. Volumes are
    # preprocessed once into a `medvl data prepare` cache, and instruction tuning reads the frozen
    # encoder's cached outputs (data.cache_encoder_features).
    "3d": Recipe(
        n_cases=1500,
        geometry=Geometry3D(shape=(64, 64, 32), spacing=(5.25, 5.25, 7.5)),
        model={
            "llm": {"config": _LLM},
            "volume": {
                "encoder": "vit3d",
                "config": {
                    "image_size": [32, 64, 64],
                    "patch_size": [4, 16, 16],
                    "in_channels": 1,
                    "hidden_size": 128,
                    "intermediate_size": 512,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 4,
                    "norm_first": True,
                    "final_norm": True,
                    "conv_stem": [8, 16, 32, 64],
                    "conv_stem_pool": [2, 1, 1],
                },
                "feature_layer": 0,
                "connector": {"type": "spatial_pool", "pool_stride": [8, 2, 2], "pool": "max", "depth": 2},
                "processor": {"window": "lung", "crop_foreground": False},
            },
            "tokenizer": {"source": "train", "vocab_size": 1024},
        },
        max_steps=800,
        encoder_pretrain={"steps": 2200, "batch_size": 8, "lr": 1e-3, "feature_layer": 0},
        volume_cache=True,
    ),
}
