"""``MedVLTrainer``: transformers' Trainer with per-part learning rates and atomic checkpoints.

Everything else (bf16 autocast, gradient accumulation with ``num_items_in_batch``, warm-up + cosine,
tqdm, TensorBoard, evaluation, DDP / DeepSpeed / FSDP, resume with optimizer, scheduler, data order
and RNG state) is the stock Trainer's.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from medvl.train.checkpoint import STAGING_PREFIX, commit_dir
from medvl.train.config import PartsConfig
from medvl.train.lora import is_peft_model, load_extra_trainable, save_extra_trainable
from medvl.train.parts import param_groups

logger = logging.getLogger(__name__)


class MedVLTrainer(Trainer):
    """A ``transformers.Trainer`` that knows the model's trainable parts.

    Args:
        *args: as for ``transformers.Trainer``.
        parts: ``train.parts``; each part's ``lr`` becomes the learning rate of its parameter groups
            (None: the Trainer's ``learning_rate``). The schedule scales every group alike.
        **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, parts: PartsConfig | None = None, **kwargs: Any):
        self.parts_config = parts or PartsConfig()
        # While a checkpoint is being written, the Trainer's output dir points at a staging folder.
        self._staging_root: str | None = None
        super().__init__(*args, **kwargs)

    # ---- optimiser: one parameter group per (part, weight decay or not) -----------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the optimiser with per-part parameter groups (see ``medvl.train.parts.param_groups``).

        Args:
            model: the model to optimise (default: ``self.model``).
        """
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if special:
            # Optimisers that build their own groups (GaLore, LOMO, layer-wise) cannot take ours.
            logger.warning("optimizer %s builds its own parameter groups; per-part learning rates are ignored",
                           self.args.optim)
            return super().create_optimizer(model)
        groups = param_groups(
            opt_model,
            self.parts_config,
            base_lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            decay_names=self.get_decay_parameter_names(opt_model),
        )
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    # ---- atomic checkpoints ------------------------------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write ``checkpoint-<step>`` into a staging folder, fsync it, then rename it into place.

        All ranks write their parts (RNG states, ZeRO shards) into the same staging folder; the main
        process renames it once everyone is done, and only then rotates old checkpoints.
        """
        run_dir = super()._get_output_dir(trial)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = os.path.join(run_dir, folder)
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{folder}")
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
            os.makedirs(staging_root)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(staging_root, folder)
            best = self.state.best_model_checkpoint
            if best is not None and best.startswith(staging_root):
                # The Trainer recorded the staging path; record the final one (and re-save the state).
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            commit_dir(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()

    # ---- LoRA runs: bare trainable parameters PEFT does not save ------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save and is_peft_model(self.model):
            save_extra_trainable(self.model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = load_extra_trainable(model if model is not None else self.model, resume_from_checkpoint)
        if loaded:
            logger.info("restored %d extra trainable parameter(s) from %s", len(loaded), resume_from_checkpoint)
