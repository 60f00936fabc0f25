"""Stage 0 (``train.stage: encoder_pretrain``): an image or volume encoder trained as a finding classifier.

LLaVA-style models start from a pretrained vision encoder (CLIP, SigLIP, MedM-CLIP, ...). Where
there is none (a new modality, or a model built from scratch like the quickstart's), the encoder
can first be pretrained on labelled images, the way chest-radiograph encoders are pretrained on
CheXpert / MIMIC-CXR finding labels. Instruction tuning then only has to teach the connector and
the LLM to read features that already exist.

Why not let instruction tuning train the encoder from scratch: its only signal arrives through the
LLM's attention, which starts out uniform over the media tokens, i.e. as a mean over them. Mean
pooling dilutes a small finding (a 10 mm nodule is a few of 64 tokens) and learns slowly; measured
on the quickstart phantoms, nothing beyond the answer prior after 800 steps, while a classifier
head on the max over the encoder's tokens learns the same findings in a few hundred steps.

The head is exactly that: the encoder's features as the connector reads them (the model's
``*_feature_layer`` / ``*_feature_select``: ``encode_images`` / ``encode_volumes``) -> max over the
tokens -> Linear -> one logit per binary label (binary cross-entropy) and one softmax group per
multi-class label (cross-entropy); unknown values are left out. Validation reports AUROC and
accuracy per label. Training runs on the same ``MedVLTrainer`` as every other stage (schedules,
per-part learning rates, LoRA through ``train.parts``, atomic checkpoints, resume, DDP). The output
folder's ``model/`` is a complete medvl checkpoint (LoRA merged) whose encoder the next stage reads
through ``model.path``; the head and its label list are kept apart in ``finding_head/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import torch
from torch import nn

from medvl.data.finding_labels import (
    FindingDataset,
    LabelledItem,
    LabelSchema,
    MediaKind,
    collate_findings,
    load_labelled_items,
)
from medvl.train.config import TrainConfig, encoder_pretrain_kind

if TYPE_CHECKING:
    from peft import PeftModel
    from torch.utils.data import Subset
    from transformers import EvalPrediction, PreTrainedModel, TrainerCallback

    from medvl.models.modeling_medvl import MedVLForConditionalGeneration
    from medvl.models.processing_medvl import MedVLProcessor
    from medvl.train.trainer import MedVLTrainer

logger = logging.getLogger(__name__)

MEDIA_KINDS = ("image", "volume")
HEAD_DIR = "finding_head"
_ENCODER_ATTR = {"image": "vision_tower", "volume": "volume_encoder"}
_PART = {"image": "vision", "volume": "volume"}


class FindingClassifier(nn.Module):
    """An LVLM's encoder with a max-pooling classification head (the stage-0 training model).

    Only the encoder and the head are submodules: the LLM and the connectors are neither moved to
    the accelerator nor written into checkpoints, and never run.

    Args:
        model: a ``MedVLForConditionalGeneration`` (or a PEFT model around one).
        kind: "image" (the 2D tower) or "volume" (the 3D encoder).
        schema: the labels (the head has ``schema.width`` outputs; the loss follows each label's kind).
        seed: head initialisation seed.
    """

    lvlm: MedVLForConditionalGeneration

    def __init__(self, model: nn.Module, kind: MediaKind, schema: LabelSchema, seed: int = 0) -> None:
        super().__init__()
        from medvl.train.parts import unwrap_model

        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}; valid choices: {', '.join(MEDIA_KINDS)}")
        # a medvl model (the encoder lookup below fails loudly for any other)
        base = cast("MedVLForConditionalGeneration", unwrap_model(model))
        encoder = getattr(base, _ENCODER_ATTR[kind], None)
        if encoder is None:
            raise ValueError(
                f"the model has no {'2D vision tower' if kind == 'image' else 'volume encoder'} to pretrain"
            )
        object.__setattr__(self, "lvlm", base)  # not a submodule (see the class docstring)
        self.kind = kind
        self.schema = schema
        setattr(self, _ENCODER_ATTR[kind], encoder)
        feature_size = base.config.image_feature_size() if kind == "image" else base.config.volume_feature_size()
        self.finding_head = nn.Linear(feature_size, schema.width)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.finding_head.weight.copy_(torch.randn(self.finding_head.weight.shape, generator=generator) * 0.02)
            self.finding_head.bias.zero_()
        param = next(encoder.parameters())
        self.finding_head.to(device=param.device, dtype=param.dtype)
        # the part map of medvl.train.parts: the head trains with (and at the learning rate of) the encoder
        self.trainable_part_modules = {_PART[kind]: (_ENCODER_ATTR[kind], "finding_head")}

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        volume_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits (N, num_logits) and, with ``labels``, the loss.

        Args:
            pixel_values: (N, 3, H, W) images (kind "image").
            volume_values: (N, C, D, H, W) volumes (kind "volume").
            labels: (N, num_logits) targets, NaN where unknown.
        """
        if self.kind == "image":
            if pixel_values is None:
                raise ValueError("an image classifier needs pixel_values")
            features = self.lvlm.encode_images(pixel_values)
        else:
            if volume_values is None:
                raise ValueError("a volume classifier needs volume_values")
            features = self.lvlm.encode_volumes(volume_values)
        logits = self.finding_head(features.max(dim=1).values.to(self.finding_head.weight.dtype))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = finding_loss(logits, labels, self.schema)
        return out


def finding_loss(logits: torch.Tensor, targets: torch.Tensor, schema: LabelSchema) -> torch.Tensor:
    """Mean over the known (item, label) pairs of binary cross-entropy (binary labels) and
    cross-entropy (multi-class labels); NaN targets are left out.

    Args:
        logits: (N, width).
        targets: (N, width) 0/1 (one-hot for multi-class labels), NaN = unknown.
        schema: the labels.
    """
    logits = logits.float()
    targets = targets.to(logits.device, torch.float32)
    total = logits.new_zeros(())
    count = 0
    for spec, where in schema.slices():
        z, t = logits[:, where], targets[:, where]
        known = ~torch.isnan(t).any(dim=1)
        if not known.any():
            continue
        if spec.classes is None:
            total = total + nn.functional.binary_cross_entropy_with_logits(z[known, 0], t[known, 0], reduction="sum")
        else:
            total = total + nn.functional.cross_entropy(z[known], t[known].argmax(dim=1), reduction="sum")
        count += int(known.sum())
    # a batch without any known label contributes 0 with a gradient path (DDP needs one)
    return total / max(count, 1) + 0.0 * logits.sum()


# ---------------------------------------------------------------------------- metrics
def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); None if only one
    class is present.

    Args:
        scores: (N,) higher = more likely positive.
        positives: (N,) bool.
    """
    from scipy.stats import rankdata

    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class LabelMetrics(TypedDict):
    """Validation metrics of one label (None: not computable, e.g. one class only)."""

    auroc: float | None
    accuracy: float | None
    n: int  # items whose label is known


def finding_metrics(logits: np.ndarray, targets: np.ndarray, schema: LabelSchema) -> dict[str, LabelMetrics]:
    """Per label: AUROC (multi-class: the mean one-vs-rest AUROC over classes), accuracy
    (binary: logit > 0; multi-class: arg-max) and the number of known items.

    Args:
        logits: (N, width).
        targets: (N, width), NaN = unknown.
        schema: the labels.
    """
    out: dict[str, LabelMetrics] = {}
    for spec, where in schema.slices():
        z, t = logits[:, where], targets[:, where]
        known = ~np.isnan(t).any(axis=1)
        z, t = z[known], t[known]
        if not len(t):
            out[spec.name] = {"auroc": None, "accuracy": None, "n": 0}
            continue
        if spec.classes is None:
            accuracy = float(np.mean((z[:, 0] > 0) == (t[:, 0] > 0.5)))
            area = auroc(z[:, 0], t[:, 0] > 0.5)
        else:
            accuracy = float(np.mean(z.argmax(axis=1) == t.argmax(axis=1)))
            areas = [a for a in (auroc(z[:, k], t[:, k] > 0.5) for k in range(spec.width)) if a is not None]
            area = float(np.mean(areas)) if areas else None
        out[spec.name] = {
            "auroc": None if area is None else round(area, 4),
            "accuracy": round(accuracy, 4),
            "n": int(len(t)),
        }
    return out


def flat_metrics(per_label: dict[str, LabelMetrics]) -> dict[str, float]:
    """``{label}_auroc`` / ``{label}_accuracy`` and their means over labels (Trainer log keys).

    Args:
        per_label: :func:`finding_metrics` output.
    """
    flat: dict[str, float] = {}
    rows = {name: {"auroc": m["auroc"], "accuracy": m["accuracy"]} for name, m in per_label.items()}
    for name, row in rows.items():
        for key, value in row.items():
            if value is not None:
                flat[f"{name}_{key}"] = value
    for key in ("auroc", "accuracy"):
        values = [v for row in rows.values() if (v := row[key]) is not None]
        if values:
            flat[f"mean_{key}"] = round(float(np.mean(values)), 4)
    return flat


def format_metrics(per_label: dict[str, LabelMetrics]) -> str:
    """A plain-text table of per-label validation metrics.

    Args:
        per_label: :func:`finding_metrics` output.
    """
    lines = [f"{'label':<24} {'n':>6} {'AUROC':>7} {'accuracy':>9}"]
    for name, m in per_label.items():
        area = "-" if m["auroc"] is None else f"{m['auroc']:.3f}"
        acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.3f}"
        lines.append(f"{name:<24} {m['n']:>6} {area:>7} {acc:>9}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the run
def build_finding_datasets(
    cfg: TrainConfig, processor: MedVLProcessor, kind: MediaKind
) -> tuple[FindingDataset | Subset[Any], FindingDataset | Subset[Any] | None, LabelSchema]:
    """Training set, validation set (or None) and label schema of a stage-0 run.

    Args:
        cfg: the configuration (``data`` and ``train.encoder_pretrain``).
        processor: the model's processor.
        kind: "image" or "volume".
    """
    from medvl.data.records import outside_root_allowed
    from medvl.train.run import split_dataset

    d, s = cfg.data, cfg.train.encoder_pretrain
    if not d.train:
        raise ValueError("data.train: no training files given")
    with outside_root_allowed(d.allow_outside_root):
        train_items = load_labelled_items(
            d.train, kind, split=d.train_split, source=s.labels, root=d.root, seed=cfg.train.seed
        )
    if not train_items:
        raise ValueError(
            f"stage 0: data.train ({', '.join(d.train)}) holds no labelled {kind}s; give records with "
            "meta.labels, closed yes/no questions, or a label table (.csv)"
        )
    schema = LabelSchema.from_items(train_items, s.label_names)

    def dataset(items: list[LabelledItem]) -> FindingDataset:
        return FindingDataset(items, schema, processor, kind, volume_cache=d.volume_cache, cache_media=s.cache_media)

    train: FindingDataset | Subset[Any] = dataset(train_items)
    evaluation: FindingDataset | Subset[Any] | None = None
    if d.eval:
        with outside_root_allowed(d.allow_outside_root):
            eval_items = load_labelled_items(
                d.eval, kind, split=d.eval_split, source=s.labels, root=d.root, seed=cfg.train.seed
            )
        evaluation = dataset(eval_items) if eval_items else None
    elif d.eval_fraction > 0:
        train, evaluation = split_dataset(train, d.eval_fraction, cfg.train.seed)
    logger.info(
        "stage 0: %d training %ss, %d validation; labels: %s",
        len(train),
        kind,
        len(evaluation) if evaluation is not None else 0,
        ", ".join(s.name + (f" ({'/'.join(s.classes)})" if s.classes else "") for s in schema.labels),
    )
    return train, evaluation, schema


def save_stage0_outputs(
    classifier: FindingClassifier,
    model: PreTrainedModel | PeftModel,
    processor: MedVLProcessor,
    schema: LabelSchema,
    out: Path,
) -> Path:
    """Write ``model/`` (the whole LVLM with the trained encoder; LoRA merged) and ``finding_head/``
    (head weights and labels), each atomically. Main process only.

    Args:
        classifier: the trained classifier.
        model: the model ``apply_parts`` returned (plain, or a PeftModel).
        processor: the model's processor.
        schema: the labels.
        out: the run's output folder.
    """
    from safetensors.torch import save_file

    from medvl.train.checkpoint import atomic_dir
    from medvl.train.lora import is_peft_model
    from medvl.train.run import final_model_dir

    lvlm = model.merge_and_unload() if is_peft_model(model) else model
    with atomic_dir(final_model_dir(out)) as staging:
        lvlm.save_pretrained(str(staging))
        processor.save_pretrained(staging)
    with atomic_dir(out / HEAD_DIR) as staging:
        state = {k: v.detach().contiguous().cpu() for k, v in classifier.finding_head.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"))
        info = {"kind": classifier.kind, "pooling": "max", **schema.to_dict()}
        (staging / "labels.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return final_model_dir(out)


def validation_metrics(
    trainer: MedVLTrainer, eval_set: FindingDataset | Subset[Any], schema: LabelSchema, kind: MediaKind
) -> dict[str, Any]:
    """``eval`` (loss, per-label and mean AUROC / accuracy) and ``eval_per_label`` of the trained classifier.

    Args:
        trainer: the trainer after ``train()``.
        eval_set: the validation items.
        schema: the labels.
        kind: "image" or "volume" (for the log).
    """
    output = trainer.predict(eval_set, metric_key_prefix="eval")
    per_label = finding_metrics(np.asarray(output.predictions), np.asarray(output.label_ids), schema)
    logger.info("stage 0 validation (%d %ss):\n%s", len(eval_set), kind, format_metrics(per_label))
    return {
        "eval": {"loss": (output.metrics or {}).get("eval_loss"), **flat_metrics(per_label)},
        "eval_per_label": per_label,
    }


def run_encoder_pretrain(
    cfg: TrainConfig,
    *,
    model: PreTrainedModel | None = None,
    processor: MedVLProcessor | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Stage 0 as configured; returns the output folder (the model is in ``<output>/model``).

    Called by :func:`medvl.train.run.run_training` when ``train.stage`` is ``encoder_pretrain``.

    Args:
        cfg: the configuration (already validated by run_training).
        model: an already built model instead of ``cfg.model`` (Python API use).
        processor: its processor.
        callbacks: extra ``transformers.TrainerCallback`` objects.
    """

    from medvl.train.parts import apply_parts, parts_table
    from medvl.train.run import plot_loss, start_run, training_arguments
    from medvl.train.trainer import MedVLTrainer

    kind = encoder_pretrain_kind(cfg)
    is_main, resume_from, out, model, processor = start_run(cfg, model, processor)
    trained = apply_parts(model, cfg.train.parts, cfg.train.lora)
    logger.info(
        "stage encoder_pretrain (%s encoder), trainable parts:\n%s",
        kind,
        parts_table(trained, cfg.train.parts, cfg.train.lr),
    )
    train_set, eval_set, schema = build_finding_datasets(cfg, processor, kind)
    classifier = FindingClassifier(trained, kind, schema, seed=cfg.train.seed)
    args = training_arguments(cfg, has_eval=eval_set is not None)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return flat_metrics(
            finding_metrics(np.asarray(prediction.predictions), np.asarray(prediction.label_ids), schema)
        )

    trainer = MedVLTrainer(
        model=classifier,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collate_findings,
        parts=cfg.train.parts,
        processor=processor,
        callbacks=callbacks,
        compute_metrics=compute_metrics if eval_set is not None else None,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, Any] = {
        "stage": "encoder_pretrain",
        "kind": kind,
        "train": result.metrics,
        "global_step": result.global_step,
        **schema.to_dict(),
    }
    if eval_set is not None:
        metrics.update(validation_metrics(trainer, eval_set, schema, kind))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        save_stage0_outputs(classifier, trained, processor, schema, out)
        metrics["log_history"] = trainer.state.log_history
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
        plot_loss(trainer.state.log_history, out / "loss.png")
    trainer.accelerator.wait_for_everyone()
    logger.info("stage 0 finished: %s (model with the trained encoder in %s)", out, out / "model")
    return out


__all__ = [
    "FindingClassifier",
    "finding_loss",
    "finding_metrics",
    "flat_metrics",
    "format_metrics",
    "auroc",
    "run_encoder_pretrain",
    "build_finding_datasets",
    "MEDIA_KINDS",
    "HEAD_DIR",
]
