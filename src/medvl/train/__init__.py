"""Training: ``TrainConfig`` recipes, trainable parts (frozen / full / LoRA, per-part learning
rates), a transformers ``Trainer`` subclass with atomic checkpoints, and LoRA merging.

Public API::

    from medvl.train import load_train_config, run_training, final_model_dir, merge_lora
    cfg = load_train_config("configs/medm-vl-2d/finetune_lora.yaml", ["train.lr=1e-4"])
    out = run_training(cfg)                    # output folder; the model is in final_model_dir(out)
    merge_lora(final_model_dir(out), "merged") # LoRA runs: a self-contained checkpoint
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "medvl.train.config",
    "load_train_config": "medvl.train.config",
    "run_training": "medvl.train.run",
    "final_model_dir": "medvl.train.run",
    "merge_lora": "medvl.train.lora",
    "MedVLTrainer": "medvl.train.trainer",
    "apply_parts": "medvl.train.parts",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    # lazy: `import medvl.train.config` must not pull in torch/transformers/PEFT
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medvl.train' has no attribute {name!r}")
