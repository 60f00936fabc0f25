"""``MedVLTrainer``: transformers' Trainer with per-part learning rates and atomic checkpoints.

Everything else (bf16 autocast, gradient accumulation with ``num_items_in_batch``, warm-up + cosine,
tqdm, TensorBoard, evaluation, DDP / DeepSpeed / FSDP, resume with optimizer, scheduler, data order
and RNG state) is the stock Trainer's.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from medvl.train.checkpoint import STAGING_PREFIX, commit_dir
from medvl.train.config import PartsConfig
from medvl.train.dummy_media import add_dummy_media, media_slots
from medvl.train.lora import is_peft_model, load_extra_trainable, save_extra_trainable
from medvl.train.parts import param_groups, unwrap_model

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from medvl.models.processing_medvl import MedVLProcessor

    # a hyper-parameter search trial (optuna's, or a dict of settings), passed through to the Trainer
    Trial = Any

logger = logging.getLogger(__name__)


class MedVLTrainer(Trainer):
    """A ``transformers.Trainer`` that knows the model's trainable parts.

    Args:
        *args: as for ``transformers.Trainer``.
        parts: ``train.parts``; each part's ``lr`` becomes the learning rate of its parameter groups
            (None: the Trainer's ``learning_rate``). The schedule scales every group alike.
        processor: saved into every checkpoint, so that a ``checkpoint-N`` folder loads (and
            serves) on its own. Not passed as ``processing_class``, which would rewrite the model's
            special token ids.
        **kwargs: as for ``transformers.Trainer``.
    """

    def __init__(
        self, *args: Any, parts: PartsConfig | None = None, processor: MedVLProcessor | None = None, **kwargs: Any
    ) -> None:
        self.parts_config = parts or PartsConfig()
        self.checkpoint_processor = processor
        # While a checkpoint is being written, the Trainer's output dir points at a staging folder.
        self._staging_root: str | None = None
        super().__init__(*args, **kwargs)
        self._media_slots = media_slots(getattr(unwrap_model(self.trained_model), "config", None))
        # media key -> cached encoder feature shape (set by run_training with data.cache_encoder_features)
        self.feature_shapes: dict[str, tuple[int, ...]] = {}
        # medvl's model can apply its LM head at the supervised positions only (same loss, no
        # (B, L, vocab) tensor); asked for whenever the logits themselves are not returned
        base = unwrap_model(self.trained_model)
        self._supervised_logits = "return_supervised_logits_only" in inspect.signature(base.forward).parameters
        self._prediction_loss_only = False
        # write_model_card arguments (source, data, recipe) for every checkpoint; set by run_training
        self.model_card: dict[str, Any] | None = None

    @property
    def trained_model(self) -> nn.Module:
        """``self.model``, which the Trainer types as optional (``model_init``) and medvl always passes."""
        if self.model is None:
            raise ValueError("MedVLTrainer needs a model (model_init is not supported)")
        return self.model

    # ---- every rank runs every encoder (ZeRO-3 / DDP with text-only batches) ------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Trainer's loss, after adding dummy media to batches that lack a modality (multi-process).

        Args:
            model: the (wrapped) model.
            inputs: the batch.
            return_outputs: also return the model outputs.
            num_items_in_batch: supervised tokens over the accumulated batch.
        """
        if "input_ids" in inputs and inputs["input_ids"].shape[0] == 0:  # (stage-0 batches hold no text)
            # every sample of this batch was skipped (data.on_error=skip): a zero loss that still
            # reaches every trainable parameter, so backward and DDP's gradient sync see them all
            loss = sum(
                (p.reshape(-1)[0] * 0.0 for p in model.parameters() if p.requires_grad),
                torch.zeros((), device=inputs["input_ids"].device),
            )
            return (loss, None) if return_outputs else loss
        if self.args.world_size > 1 and self._media_slots:
            inputs = add_dummy_media(inputs, self._media_slots, feature_shapes=self.feature_shapes)
        if self._supervised_logits and (not return_outputs or self._prediction_loss_only):
            inputs = {**inputs, "return_supervised_logits_only": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The Trainer's prediction step; when only the loss is wanted, the logits are computed at the
        supervised positions only. ``predict`` / ``compute_metrics`` get the standard (B, L, vocab).

        Args:
            model: the (wrapped) model.
            inputs: the batch.
            prediction_loss_only: whether only the loss is needed.
            ignore_keys: output keys to drop.
        """
        self._prediction_loss_only = prediction_loss_only
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._prediction_loss_only = False

    # ---- optimiser: one parameter group per (part, weight decay or not) -----------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the optimiser with per-part parameter groups (see ``medvl.train.parts.param_groups``).

        Args:
            model: the model to optimise (default: ``self.model``).
        """
        opt_model = self.trained_model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            # typed for a PreTrainedModel; a PeftModel around one is what LoRA runs pass, as the Trainer does
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)  # type: ignore[arg-type]
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if special:
            # Optimisers that build their own groups (GaLore, LOMO, layer-wise) cannot take ours.
            logger.warning(
                "optimizer %s builds its own parameter groups; per-part learning rates are ignored", self.args.optim
            )
            return super().create_optimizer(model)
        groups = param_groups(
            opt_model,
            self.parts_config,
            base_lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            decay_names=self.get_decay_parameter_names(opt_model),
        )
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k != "lr"}
        # torch types Optimizer.__init__ as (params, defaults); its subclasses take lr and the rest as keywords
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)  # type: ignore[call-arg]
        return self.optimizer

    # ---- atomic checkpoints ------------------------------------------------------------------
    def _get_output_dir(self, trial: Trial) -> str:
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Trial) -> None:
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
            if self.checkpoint_processor is not None:
                self.checkpoint_processor.save_pretrained(staged)
            if self.model_card is not None:
                from medvl.model_card import write_model_card

                write_model_card(
                    staged,
                    step=f"checkpoint at optimizer step {self.state.global_step} of `medvl train`",
                    **self.model_card,
                )
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
    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super()._save(output_dir, state_dict)
        folder = output_dir or self.args.output_dir
        if self.args.should_save and is_peft_model(self.model) and folder is not None:
            save_extra_trainable(self.model, folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = load_extra_trainable(model if model is not None else self.trained_model, resume_from_checkpoint)
        if loaded:
            logger.info("restored %d extra trainable parameter(s) from %s", len(loaded), resume_from_checkpoint)


class SkipFinalCheckpoint(TrainerCallback):
    """Cancel the checkpoint transformers writes at the last step when it is off the save grid.

    With ``save_strategy="steps"`` the stock ``DefaultFlowCallback`` saves a full checkpoint
    (optimizer state included) at the end of every run; ``run_training`` writes the final model
    anyway, so that extra checkpoint is only kept with ``train.save_final_checkpoint``. Periodic
    checkpoints (steps that are multiples of ``save_steps``) are untouched. Must run after
    ``DefaultFlowCallback`` (callbacks run in the order they were added; the default one is first).
    """

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step >= state.max_steps and control.should_save:
            on_grid = state.save_steps > 0 and state.global_step % state.save_steps == 0
            if not on_grid:
                control.should_save = False
        return control


def cpu_distributed_kwargs(deepspeed: bool) -> dict[str, Any]:
    """Extra ``TrainingArguments`` that make multi-process training work on a CPU-only machine.

    Without them transformers/accelerate see one process on CPU: torchrun's ranks would train
    independent copies (DDP) or misreport the world size to DeepSpeed. DDP needs ``use_cpu``
    (gloo); DeepSpeed needs a gloo process group set up beforehand (reused through
    ``use_configured_state``) and its shared-memory op left unbuilt (see
    :func:`disable_deepspeed_cpu_shm`). Nothing changes with CUDA or a single process.

    Args:
        deepspeed: whether the run uses DeepSpeed.
    """
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return {}
    if not deepspeed:
        return {"use_cpu": True} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    from accelerate import PartialState

    disable_deepspeed_cpu_shm()
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"accelerator_config": {"use_configured_state": True}}


def disable_deepspeed_cpu_shm() -> None:
    """Keep DeepSpeed on CPU from JIT-compiling its shared-memory all-reduce op.

    On a CPU-only machine DeepSpeed's communication backend builds a C++ extension on first use
    (minutes of compilation, and a stale lock if interrupted); gloo does the same job without it.
    No effect when CUDA is available.
    """
    if torch.cuda.is_available():
        return
    try:
        import deepspeed.ops
    except ImportError:  # the optional `deepspeed` extra is not installed: nothing to configure
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
