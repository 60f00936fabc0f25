"""``run_training(cfg)``: build or load the model, set its parts, build the data, train, save.

Output folder layout::

    config.yaml          the resolved configuration (re-runnable: medvl train config.yaml)
    env.json             package versions, git revision, command line, world size
    checkpoint-<step>/   periodic checkpoints (complete or absent: written atomically)
    runs/                TensorBoard logs
    base_model/          LoRA runs on a model built from a spec: the base the adapter refers to
    model/               the final model: a self-contained checkpoint, or (LoRA) an adapter folder
                         (merge with `medvl export --merge-lora`)
    metrics.json         final train / eval numbers and the log history
    loss.png             training (and eval) loss curve
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import yaml

from medvl.train.checkpoint import atomic_dir, clean_staging, commit_dir, staging_path
from medvl.train.config import ENCODER_PRETRAIN, TrainConfig, model_spec, unfilled_placeholders, validate
from medvl.train.lora import is_adapter_dir, is_peft_model, load_auto_model, merge_lora
from medvl.train.parts import unwrap_model
from medvl.utils.config import to_dict

if TYPE_CHECKING:
    from peft import PeftModel
    from torch import nn
    from torch.utils.data import Dataset, Subset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import TrainOutput

    from medvl.data.collator import AdaptivePackingCollator, PaddedCollator
    from medvl.data.dataset import ConversationDataset
    from medvl.data.feature_cache import EncoderFeatureCache
    from medvl.data.records import Record
    from medvl.models.processing_medvl import MedVLProcessor
    from medvl.train.trainer import MedVLTrainer

logger = logging.getLogger(__name__)

Collator: TypeAlias = "PaddedCollator | AdaptivePackingCollator"
T = TypeVar("T")
# what a run trains: the model, or (LoRA parts) a PEFT wrapper around it
TrainedModel: TypeAlias = "PreTrainedModel | PeftModel"

FINAL_MODEL_DIR = "model"
BASE_MODEL_DIR = "base_model"
_PACKAGES = (
    "medvl",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "deepspeed",
    "tokenizers",
    "safetensors",
    "monai",
    "numpy",
)


def final_model_dir(output_dir: str | Path) -> Path:
    """Where :func:`run_training` leaves the trained model inside its output folder.

    Args:
        output_dir: the run's ``output.dir``.
    """
    return Path(output_dir) / FINAL_MODEL_DIR


# ---------------------------------------------------------------------------- run metadata
def environment_info() -> dict[str, Any]:
    """Package versions, Python, platform and the git revision of the medvl source tree."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git": git_revision(Path(__file__).resolve().parent),
        "argv": sys.argv,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def git_revision(folder: Path) -> dict[str, str | bool] | None:
    """``{"commit": sha, "dirty": bool}`` of the git work tree holding ``folder`` (None outside git).

    Args:
        folder: any folder inside the work tree.
    """
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(cfg: TrainConfig, output_dir: Path) -> None:
    """Write ``config.yaml`` (resolved) and ``env.json`` into the output folder.

    Args:
        cfg: the resolved configuration.
        output_dir: the run's output folder.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    (output_dir / "env.json").write_text(json.dumps(environment_info(), indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------- model
def load_or_build_model(cfg: TrainConfig) -> tuple[PreTrainedModel, MedVLProcessor]:
    """The model and processor named by ``cfg.model`` (a checkpoint folder or a build spec).

    A LoRA adapter folder as ``model.path`` is merged into its base first, so that training goes on
    from the adapted weights with fresh adapters.

    Args:
        cfg: the training configuration.
    """
    from transformers import AutoProcessor

    if cfg.model.path is not None:
        path = Path(cfg.model.path)
        if not path.is_dir():
            raise FileNotFoundError(f"model.path {path} is not a folder (a checkpoint directory is expected)")
        from medvl.utils.files import check_model_folder, check_weights

        check_weights(path) if is_adapter_dir(path) else check_model_folder(path)
        if is_adapter_dir(path):
            from medvl.train.lora import load_with_adapter

            logger.info("model.path %s is a LoRA adapter: merging it into its base before training", path)
            model = load_with_adapter(path).merge_and_unload()
        else:
            model = load_auto_model(path)
        processor = AutoProcessor.from_pretrained(path)
        return model, processor
    from medvl.build import build_model

    return build_model(model_spec(cfg))


# ---------------------------------------------------------------------------- data
def build_datasets(
    cfg: TrainConfig, processor: MedVLProcessor
) -> tuple[ConversationDataset | Subset[Any], ConversationDataset | Subset[Any] | None, Collator]:
    """Training set, validation set (or None) and collator from ``cfg.data``.

    Args:
        cfg: the training configuration.
        processor: the model's processor (tokenizer, image and volume processors, chat template).
    """
    from medvl.data.augment import Augmenter
    from medvl.data.collator import AdaptivePackingCollator, PaddedCollator
    from medvl.data.dataset import ConversationDataset

    d = cfg.data
    train_records, eval_records = load_training_records(cfg)

    def dataset(records: list[Record], augment: Augmenter | None = None) -> ConversationDataset:
        return ConversationDataset(
            records,
            processor,
            template=d.template,
            max_length=d.max_length,
            on_error=d.on_error,
            on_overlong=d.on_overlong,
            cache=d.volume_cache,
            augment=augment,
        )

    augmenter = None
    if d.augment.enabled:
        # each rank draws its own augmentations (seeded: a run is reproducible)
        augmenter = Augmenter(d.augment, training=True, seed=cfg.train.seed + int(os.environ.get("RANK", "0")))
    train: ConversationDataset | Subset[Any] = dataset(train_records, augmenter)
    evaluation: ConversationDataset | Subset[Any] | None = dataset(eval_records) if eval_records else None
    if evaluation is None and d.eval_fraction > 0:
        train, held_out = split_dataset(train, d.eval_fraction, cfg.train.seed)
        evaluation = held_out
        if augmenter is not None:  # the held-out view must not see the augmented samples
            from torch.utils.data import Subset

            evaluation = Subset(dataset(train_records), held_out.indices)
    logger.info("data: %d training samples, %d validation samples", len(train), len(evaluation) if evaluation else 0)
    tokenizer: PreTrainedTokenizerBase = processor.tokenizer
    collator: Collator
    if d.packing:
        # packs a batch only when it saves rows; alike lengths stay padded (plain causal attention)
        collator = AdaptivePackingCollator(pad_token_id=tokenizer.pad_token_id)
    else:
        collator = PaddedCollator(pad_token_id=tokenizer.pad_token_id, padding_side="right")
    return train, evaluation, collator


def load_training_records(cfg: TrainConfig) -> tuple[list[Record], list[Record]]:
    """The training mix (``data.train`` files or registries by ``data.weights``) and the validation records.

    Args:
        cfg: the training configuration.
    """
    from medvl.data.dataset import mix_records
    from medvl.data.records import load_records, outside_root_allowed
    from medvl.data.registry import REGISTRY_SUFFIXES, load_registry_records

    d = cfg.data
    if not d.train:
        raise ValueError("data.train: no training files given")

    def records(source: str, split: str) -> list[Record]:
        if Path(source).suffix.lower() in REGISTRY_SUFFIXES:
            return load_registry_records(source, split, seed=cfg.train.seed)
        return load_records(source, root=d.root)

    with outside_root_allowed(d.allow_outside_root):
        groups = [(records(f, d.train_split), w) for f, w in zip(d.train, d.weights or [1.0] * len(d.train))]
        empty = [f for f, (recs, _) in zip(d.train, groups) if not recs]
        if empty:
            raise ValueError(
                f"data.train: {', '.join(empty)} hold(s) no records (an empty file?); give files with "
                "at least one conversation"
            )
        train_records = mix_records(groups, seed=cfg.train.seed)
        eval_records = [r for f in d.eval for r in records(f, d.eval_split)]
    if d.image_window is not None:
        for rec in (*train_records, *eval_records):
            rec.meta.setdefault("window", d.image_window)
    return train_records, eval_records


# data.cache_encoder_features unset: cache only when the features fit in this much memory
AUTO_FEATURE_CACHE_BYTES = 2 * 1024**3


def attach_feature_cache(
    cfg: TrainConfig, model: nn.Module, datasets: Sequence[ConversationDataset | Subset[Any] | None]
) -> dict[str, tuple[int, ...]]:
    """Let the datasets serve the model's frozen encoder outputs instead of media
    (``data.cache_encoder_features``); returns media key -> feature shape (for the dummy media of
    multi-process batches; empty when nothing is cached).

    With ``data.num_workers=0`` the cache fills lazily (a file is encoded the first time a sample
    needs it, see :mod:`medvl.data.feature_cache`), so a run never waits for files it will not see;
    with worker processes every file is encoded once before the first step.

    ``cache_encoder_features`` true: a configuration the cache cannot serve is an error. Unset (None,
    the default): the cache is used when it cannot change the loss and costs no waiting or memory
    to speak of: a frozen encoder, no augmentation, no worker processes, no ZeRO-3, and features of
    all distinct files within :data:`AUTO_FEATURE_CACHE_BYTES`; otherwise it is left off (logged).

    Args:
        cfg: the training configuration (frozen parts decide which encoders are cached).
        model: the model after ``apply_parts``.
        datasets: training / validation datasets (``Subset`` views or None allowed).
    """
    from medvl.data.feature_cache import FEATURE_KINDS, build_feature_cache, lazy_feature_cache

    auto = cfg.data.cache_encoder_features is None
    frozen = {"image": cfg.train.parts.vision.mode == "frozen", "volume": cfg.train.parts.volume.mode == "frozen"}
    base = unwrap_model(model)
    present = {
        "image": getattr(base, "vision_tower", None) is not None,
        "volume": getattr(base, "volume_encoder", None) is not None,
    }
    kinds = [k for k in ("image", "volume") if frozen[k] and present[k]]
    unique = _distinct_datasets(datasets)
    if kinds:
        reason = _feature_cache_refusal(cfg, unique)
    else:
        reason = (
            "data.cache_encoder_features: the model has no frozen encoder to cache "
            f"(frozen parts: {[k for k, v in frozen.items() if v] or 'none'}; encoders: "
            f"{[k for k, v in present.items() if v] or 'none'})"
        )
    if reason is not None:
        if not auto:
            raise ValueError(reason)
        logger.info("frozen-encoder feature cache off: %s", reason)
        return {}
    if cfg.data.num_workers == 0:
        cache = lazy_feature_cache(model, kinds)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or auto:
            # multi-process batches need the feature shapes for their dummy media, and the memory
            # estimate of the unset setting needs them too: encode one file now
            _prime(cache, unique, kinds)
    else:
        cache = build_feature_cache(model, unique, kinds)
    shapes = {k: tuple(next(iter(cache.features[k].values())).shape) for k in kinds if cache.features[k]}
    if auto and not _features_fit_memory(shapes, unique):
        return {}
    for d in unique:
        d.feature_cache = cache
    logger.info(
        "frozen-encoder feature cache on (%s) for %s",
        "lazy" if cfg.data.num_workers == 0 else "eager",
        ", ".join(kinds),
    )
    return {FEATURE_KINDS[k][1]: shape for k, shape in shapes.items()}


def _feature_cache_refusal(cfg: TrainConfig, datasets: list[ConversationDataset]) -> str | None:
    """Why the encoder feature cache cannot serve this run (None: it can), for a model with a frozen encoder."""
    if any(d.augment is not None for d in datasets):
        return "data.cache_encoder_features cannot be used with augmentation (features differ per sample)"
    if _zero3(cfg):
        # the encoders' weights are partitioned across ranks there; not supported (untested)
        return "data.cache_encoder_features is not supported with DeepSpeed ZeRO-3; use ZeRO-2 or DDP"
    if cfg.data.cache_encoder_features is None and cfg.data.num_workers > 0:
        return (
            "data.cache_encoder_features unset: not cached with DataLoader workers (set it to true to cache up front)"
        )
    return None


def _features_fit_memory(shapes: dict[str, tuple[int, ...]], datasets: list[ConversationDataset]) -> bool:
    """Whether the features of every distinct file fit :data:`AUTO_FEATURE_CACHE_BYTES` (said when not)."""
    from medvl.data.feature_cache import FEATURE_KINDS

    files = {k: len({p for d in datasets for r in d.records for p in getattr(r, FEATURE_KINDS[k][0])}) for k in shapes}
    size = sum(files[k] * math.prod(shapes[k]) * 4 for k in shapes)
    if size <= AUTO_FEATURE_CACHE_BYTES:
        return True
    logger.info(
        "frozen-encoder feature cache off: the features of %s would take %.1f GiB (more than %.1f GiB; "
        "set data.cache_encoder_features=true to cache anyway)",
        ", ".join(f"{n} {k} files" for k, n in files.items()),
        size / 1024**3,
        AUTO_FEATURE_CACHE_BYTES / 1024**3,
    )
    return False


def _distinct_datasets(datasets: Sequence[ConversationDataset | Subset[Any] | None]) -> list[ConversationDataset]:
    """The conversation datasets behind ``datasets``: Subset views (data.eval_fraction) share theirs."""
    from torch.utils.data import Subset

    from medvl.data.dataset import ConversationDataset

    unique: dict[int, ConversationDataset] = {}
    for d in datasets:
        base = d.dataset if isinstance(d, Subset) else d
        if isinstance(base, ConversationDataset):
            unique.setdefault(id(base), base)
    return list(unique.values())


def _zero3(cfg: TrainConfig) -> bool:
    deepspeed = cfg.train.deepspeed or cfg.train.hf_args.get("deepspeed")
    if not deepspeed:
        return False
    ds = json.loads(Path(deepspeed).read_text()) if isinstance(deepspeed, str) else deepspeed
    return ds.get("zero_optimization", {}).get("stage") == 3


def _prime(cache: EncoderFeatureCache, datasets: list[ConversationDataset], kinds: list[str]) -> None:
    """Encode the first record of each cached kind, so that the feature shapes are known up front."""
    from medvl.data.feature_cache import FEATURE_KINDS
    from medvl.errors import MedVLDataError

    for kind in kinds:
        field = FEATURE_KINDS[kind][0]
        records = ((d, r) for d in datasets for r in d.records if getattr(r, field))
        for d, rec in records:
            try:  # a bad file is the data set's business (raise or skip): try the next record
                cache.lookup(kind, getattr(rec, field), load=functools.partial(d.media_values, rec, kind))
                break
            except MedVLDataError:
                continue


def compile_llm(model: nn.Module) -> None:
    """``torch.compile`` the LLM's decoder in place (``train.compile``).

    Only the decoder: the media merge has data-dependent checks (placeholder counts) that would
    break the graph, and the encoders are frozen or small. In place (``nn.Module.compile``), so the
    state dict keeps its names and checkpoints load without torch.compile. Dynamic shapes: batch
    lengths change from step to step.

    Args:
        model: the model after ``apply_parts`` (a PEFT wrapper is looked through).
    """
    import torch
    from transformers import PreTrainedModel

    base = unwrap_model(model)
    if not isinstance(base, PreTrainedModel):
        raise TypeError(f"train.compile needs a transformers model with a decoder, got {type(base).__name__}")
    base.get_decoder().compile(dynamic=True)
    logger.info("train.compile: the LLM decoder is compiled with torch %s (first steps compile)", torch.__version__)


def split_dataset(dataset: Dataset[T], fraction: float, seed: int) -> tuple[Subset[T], Subset[T]]:
    """Hold out ``fraction`` of ``dataset`` (a seeded random subset) as the validation split.

    Args:
        dataset: a map-style dataset.
        fraction: share held out, in (0, 1).
        seed: the run's seed (the split is the same on every rank and on resume).
    """
    import torch
    from torch.utils.data import Subset

    n = len(dataset)  # type: ignore[arg-type]  # (torch's Dataset declares no __len__; map-style ones have it)
    n_eval = max(1, round(n * fraction))
    if n_eval >= n:
        raise ValueError(f"data.eval_fraction={fraction} leaves no training samples out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[n_eval:])), Subset(dataset, sorted(order[:n_eval]))


# ---------------------------------------------------------------------------- training arguments
def training_arguments(cfg: TrainConfig, has_eval: bool) -> TrainingArguments:
    """transformers ``TrainingArguments`` from ``cfg.train`` (``hf_args`` win).

    Args:
        cfg: the training configuration.
        has_eval: whether there is a validation split (turns on periodic evaluation).
    """
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    kwargs: dict[str, Any] = dict(
        output_dir=cfg.output.dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        bf16=t.precision == "bf16",
        activation_checkpointing=t.gradient_checkpointing,
        # non-reentrant checkpointing needs no input that requires grad: works with frozen embeddings
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(t.eval_steps or t.save_steps) if has_eval else None,
        seed=t.seed,
        report_to=list(t.report_to) or "none",
        disable_tqdm=not t.progress_bar,
        deepspeed=t.deepspeed,
        dataloader_num_workers=cfg.data.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # the batch keys (pixel_values, volume_values, ...) are not in every forward signature PEFT shows
        remove_unused_columns=False,
        # towers have modules that never run (post-norm, pooling head: features are hidden states);
        # DDP must then look for unused parameters when an encoder trains
        ddp_find_unused_parameters=True
        if any(getattr(t.parts, p).mode != "frozen" for p in ("vision", "volume"))
        else None,
        label_names=["labels"],
    )
    from medvl.train.trainer import cpu_distributed_kwargs

    uses_deepspeed = bool(t.deepspeed or t.hf_args.get("deepspeed"))
    if t.precision == "bf16" and not torch.cuda.is_available() and not uses_deepspeed:
        kwargs["use_cpu"] = True  # transformers refuses bf16 on a CPU-only machine unless told it is CPU
    kwargs.update(cpu_distributed_kwargs(deepspeed=uses_deepspeed))
    kwargs.update(t.hf_args)
    return TrainingArguments(**kwargs)


# ---------------------------------------------------------------------------- model card
def recipe_summary(cfg: TrainConfig) -> dict[str, Any]:
    """What a model card says about how the model was trained (no machine paths).

    Args:
        cfg: the resolved configuration.
    """
    t, d = cfg.train, cfg.data
    parts = {
        name: part.mode + (f" (lr {part.lr:g})" if part.lr is not None and part.mode != "frozen" else "")
        for name, part in t.parts.items()
    }
    summary: dict[str, Any] = {
        "start": f"checkpoint {Path(cfg.model.path).name}" if cfg.model.path else "built from model.spec",
        "stage": t.stage,
        "parts": parts,
        "lr": t.lr,
        "schedule": f"{t.scheduler}, warm-up {t.warmup_ratio:g}",
        "length": f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epoch(s)",
        "batch": f"{t.batch_size} per device x {t.grad_accum} accumulation x {int(os.environ.get('WORLD_SIZE', '1'))} "
        "process(es)",
        "precision": t.precision,
        "template": d.template,
        "max_length": d.max_length,
        "packing": d.packing,
        "augmentation": to_dict(d.augment) if d.augment.enabled else "off",
        "seed": t.seed,
    }
    if any(part.mode == "lora" for _, part in t.parts.items()):
        summary["lora"] = {
            "r": t.lora.r,
            "alpha": t.lora.alpha,
            "dropout": t.lora.dropout,
            "targets": list(t.lora.targets) or "all linear layers of the LoRA parts",
        }
    return summary


def model_card_fields(cfg: TrainConfig) -> dict[str, Any]:
    """``write_model_card`` arguments shared by a run's checkpoints: source, data and recipe.

    Args:
        cfg: the resolved configuration.
    """
    from medvl.model_card import data_entries

    source = cfg.model.path if cfg.model.path and Path(cfg.model.path).is_dir() else None
    return {
        "source": source,
        "data": data_entries(list(cfg.data.train), list(cfg.data.weights), cfg.data.train_split),
        "recipe": recipe_summary(cfg),
    }


# ---------------------------------------------------------------------------- saving
def save_final_model(
    trainer: MedVLTrainer,
    processor: MedVLProcessor | None,
    output_dir: Path,
    base_dir: Path | None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the trained model to ``output_dir/model`` atomically; call on every rank.

    Saving goes through ``trainer.save_model``, which gathers ZeRO-3 / FSDP shards; the folder is
    staged, fsync'ed and renamed by the main process.

    Args:
        trainer: the trainer after ``train()`` (plain model, or a PeftModel for LoRA runs).
        processor: the model's processor (saved alongside).
        output_dir: the run's output folder.
        base_dir: LoRA only: the base checkpoint folder the adapter refers to.
        card: ``medvl.model_card.write_model_card`` arguments (source, data, recipe, evaluation);
            None: no card.
    """
    final = final_model_dir(output_dir)
    staging = staging_path(final)
    is_main = trainer.is_world_process_zero()
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model):
        if base_dir is None:
            raise ValueError("a LoRA model needs its base checkpoint folder to be saved")
        model.peft_config["default"].base_model_name_or_path = str(Path(base_dir).resolve())
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # adapters (+ extra trainable parameters) for LoRA runs
    trainer.accelerator.wait_for_everyone()
    if is_main:
        if processor is not None:
            processor.save_pretrained(staging)
        (staging / "training_args.bin").unlink(missing_ok=True)
        if card is not None:
            from medvl.model_card import write_model_card

            write_model_card(
                staging, step=f"trained with `medvl train` ({trainer.state.global_step} optimizer steps)", **card
            )
        commit_dir(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final


def _last_complete_checkpoint(out: Path, last: str | None) -> str | None:
    """The newest checkpoint that is not damaged; a damaged newer one is skipped (and said so).

    Checkpoints are written atomically, but a disk error or a copy can still leave a truncated file.
    """
    from medvl.utils.files import checkpoint_problem

    if last is None:
        return None
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in out.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    )
    for _, ckpt in reversed(steps):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        logger.warning(
            "train.resume: %s is damaged (%s); falling back to the previous complete checkpoint", ckpt, problem
        )
    raise ValueError(
        f"train.resume: no complete checkpoint in {out} (every checkpoint-N is damaged); set "
        "train.resume=false with output.overwrite=true to start again"
    )


def _prepare_output_dir(cfg: TrainConfig, is_main: bool) -> Path | None:
    """Check the output folder and find the checkpoint to resume from (None: start fresh)."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(cfg.output.dir)
    if is_main:
        clean_staging(out)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if cfg.train.resume:
        last = _last_complete_checkpoint(out, last)
        if last is None:
            logger.info("train.resume: no checkpoint in %s, starting from scratch", out)
        else:
            logger.info("train.resume: continuing from %s", last)
        return Path(last) if last else None
    occupied = out.is_dir() and (last is not None or final_model_dir(out).exists())
    if occupied and not cfg.output.overwrite:
        raise FileExistsError(
            f"output.dir {out} already holds a run (checkpoints or a final model); set train.resume=true to "
            "continue it, output.overwrite=true to train over it, or choose another output.dir"
        )
    return None


def start_run(
    cfg: TrainConfig, model: PreTrainedModel | None = None, processor: MedVLProcessor | None = None
) -> tuple[bool, Path | None, Path, PreTrainedModel, MedVLProcessor]:
    """What every stage does first: prepare the output folder (or find the checkpoint to resume),
    record the run, seed, and load or build the model.

    Args:
        cfg: the validated training configuration.
        model: an already built model (with ``processor``), or None to load/build from ``cfg.model``.
        processor: its processor.

    Returns:
        ``(is_main, resume_from, output_dir, model, processor)``.
    """
    from transformers import set_seed

    is_main = int(os.environ.get("RANK", "0")) == 0
    resume_from = _prepare_output_dir(cfg, is_main)
    out = Path(cfg.output.dir)
    if is_main:
        write_run_info(cfg, out)
    # Same seed before building: every rank starts from identical random weights.
    set_seed(cfg.train.seed)
    if model is None:
        model, processor = load_or_build_model(cfg)
    if processor is None:
        raise ValueError("run_training(model=...) needs the model's processor too")
    return is_main, resume_from, out, model, processor


def run_training(
    cfg: TrainConfig,
    *,
    model: PreTrainedModel | None = None,
    processor: MedVLProcessor | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train as configured; return the output folder (the final model is in ``<output>/model``).

    ``train.stage: encoder_pretrain`` runs stage 0 instead (:mod:`medvl.train.encoder_pretrain`):
    the encoder as a finding classifier, same trainer, same output layout.

    Args:
        cfg: the configuration (``load_train_config`` / ``medvl train``).
        model: an already built model to train instead of ``cfg.model`` (Python API use).
        processor: its processor (required with ``model``).
        callbacks: extra ``transformers.TrainerCallback`` objects (e.g. early stopping).
    """
    from medvl.train.trainer import MedVLTrainer, SkipFinalCheckpoint

    check_run_config(cfg, model, processor)
    if cfg.train.stage == ENCODER_PRETRAIN:
        from medvl.train.encoder_pretrain import run_encoder_pretrain

        return run_encoder_pretrain(cfg, model=model, processor=processor, callbacks=callbacks)
    is_main, resume_from, out, model, processor = start_run(cfg, model, processor)
    base_dir = lora_base_dir(cfg, model, processor, out, is_main=is_main, resuming=resume_from is not None)
    trained = prepare_model(cfg, model, base_dir)
    train_set, eval_set, collator = build_datasets(cfg, processor)
    feature_shapes = (
        attach_feature_cache(cfg, trained, [train_set, eval_set])
        if cfg.data.cache_encoder_features is not False
        else {}
    )
    trainer = MedVLTrainer(
        model=trained,
        args=training_arguments(cfg, has_eval=eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        parts=cfg.train.parts,
        processor=processor,
        callbacks=list(callbacks or []) + ([] if cfg.train.save_final_checkpoint else [SkipFinalCheckpoint()]),
    )
    trainer.feature_shapes = feature_shapes
    card = model_card_fields(cfg) if is_main else None
    trainer.model_card = card
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = final_metrics(trainer, result, train_set, eval_set)
    if card is not None and "eval_loss" in metrics.get("eval", {}):
        card = {
            **card,
            "evaluation": {
                "validation split (data.eval / data.eval_fraction)": {"loss": float(metrics["eval"]["eval_loss"])}
            },
        }
    save_final_model(trainer, processor, out, base_dir, card=card)
    if trainer.is_world_process_zero():
        metrics["log_history"] = trainer.state.log_history
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
        plot_loss(trainer.state.log_history, out / "loss.png")
    trainer.accelerator.wait_for_everyone()
    logger.info("training finished: %s (final model in %s)", out, final_model_dir(out))
    return out


def check_run_config(cfg: TrainConfig, model: PreTrainedModel | None, processor: MedVLProcessor | None) -> None:
    """Resolve the bundled paths of ``cfg`` and refuse what cannot run, before anything is written.

    Args:
        cfg: the configuration (bundled file names are resolved in place).
        model: a model given to :func:`run_training` (None: ``cfg.model`` is checked instead).
        processor: its processor.
    """
    from medvl.train.config import resolve_bundled_paths

    resolve_bundled_paths(cfg)
    validate(cfg, check_model=model is None)
    placeholders = unfilled_placeholders(cfg)
    if placeholders:
        raise ValueError(
            "the recipe still has placeholder paths; fill them in (in the YAML or as key=value overrides): "
            + ", ".join(placeholders)
        )
    if model is not None and processor is None:
        raise ValueError("run_training(model=...) needs the model's processor too")


def lora_base_dir(
    cfg: TrainConfig, model: PreTrainedModel, processor: MedVLProcessor, out: Path, *, is_main: bool, resuming: bool
) -> Path | None:
    """The checkpoint folder a LoRA run's adapters apply to (None without LoRA parts).

    A run that starts from a checkpoint folder refers to it; one that starts from a built model (or
    a merged adapter) keeps its starting weights in ``<output>/base_model``, because an adapter
    must refer to weights on disk.

    Args:
        cfg: the training configuration.
        model: the starting model.
        processor: its processor (saved with the base).
        out: the run's output folder.
        is_main: whether this is the main process (the one that writes).
        resuming: whether the run resumes from a checkpoint.
    """
    if not any(part.mode == "lora" for _, part in cfg.train.parts.items()):
        return None
    if cfg.model.path is not None and not is_adapter_dir(cfg.model.path):
        return Path(cfg.model.path).resolve()
    base_dir = (out / BASE_MODEL_DIR).resolve()
    # (re)written unless resuming, so that an overwritten run never keeps an old base
    if is_main and (not resuming or not (base_dir / "config.json").is_file()):
        with atomic_dir(base_dir) as staging:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            from medvl.model_card import write_model_card

            write_model_card(
                staging,
                step="starting weights of a LoRA run (the base its adapters apply to)",
                source=cfg.model.path if cfg.model.path else None,
            )
    return base_dir


def prepare_model(cfg: TrainConfig, model: PreTrainedModel, base_dir: Path | None) -> TrainedModel:
    """The model as it trains: no KV cache, parts frozen / trained / LoRA-wrapped, optionally compiled.

    Args:
        cfg: the training configuration (``train.parts``, ``train.lora``, ``train.compile``).
        model: the starting model.
        base_dir: the LoRA base folder every adapter save names (see :func:`lora_base_dir`).
    """
    from medvl.train.parts import apply_parts, parts_table

    if getattr(model.config, "use_cache", None) is not None:
        model.config.use_cache = False  # no KV cache while training (and required by checkpointing)
    trained = apply_parts(model, cfg.train.parts, cfg.train.lora)
    if is_peft_model(trained):
        # every adapter save (checkpoints included) names the base it applies to
        trained.peft_config["default"].base_model_name_or_path = str(base_dir)
    logger.info("stage %s, trainable parts:\n%s", cfg.train.stage, parts_table(trained, cfg.train.parts, cfg.train.lr))
    if cfg.train.compile:
        compile_llm(trained)
    return trained


def final_metrics(
    trainer: MedVLTrainer,
    result: TrainOutput,
    train_set: ConversationDataset | Subset[Any],
    eval_set: ConversationDataset | Subset[Any] | None,
) -> dict[str, Any]:
    """``metrics.json`` of a run (without the log history): the train metrics, the samples skipped and
    the final validation loss (evaluated now unless the last step already did).

    Args:
        trainer: the trainer after ``train()``.
        result: what ``train()`` returned.
        train_set: the training set.
        eval_set: the validation set, or None.
    """
    metrics: dict[str, Any] = {"train": result.metrics, "global_step": result.global_step}
    for name, dataset in (("training", train_set), ("validation", eval_set)):
        skipped = getattr(getattr(dataset, "dataset", dataset), "skipped", None)
        if skipped:  # dropped, never replaced (counts of this process; DataLoader workers count their own)
            logger.warning("%s samples skipped (data.on_error / data.on_overlong): %s", name, dict(skipped))
            metrics[f"{name}_skipped"] = dict(skipped)
    if eval_set is not None:
        last = [h for h in trainer.state.log_history if "eval_loss" in h]
        # the periodic evaluation may already have run at the last step
        metrics["eval"] = last[-1] if last and last[-1].get("step") == trainer.state.global_step else trainer.evaluate()
    return metrics


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """Draw the training (and validation) loss against the step as a PNG.

    Args:
        log_history: ``trainer.state.log_history``.
        path: the PNG to write.
    """
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*train), label="train")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["run_training", "final_model_dir", "merge_lora", "save_final_model", "training_arguments"]
