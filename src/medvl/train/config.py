"""``TrainConfig``: the typed configuration of ``medvl train`` (sections model, data, train, output).

A recipe is a YAML file with these four sections; ``key=value`` overrides on the command line use
the same dotted names (``train.parts.llm.mode=lora``, ``train.lr=2e-4``). Unknown keys and invalid
choices are errors that list what is valid (see :mod:`medvl.utils.config`).

Example::

    model:
      path: /path/to/MedM-VL-2D-3B-en        # start from a checkpoint directory ...
    data:
      train: [data/train.jsonl]
    train:
      stage: finetune_lora
      parts:
        llm: {mode: lora}
        connector: {mode: full, lr: 2e-5}
      lora: {r: 128, alpha: 256}
      lr: 2e-4
    output:
      dir: runs/my-lora
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medvl.utils.config import from_dict, load_config

PartMode = Literal["frozen", "full", "lora"]
PART_NAMES: tuple[str, ...] = ("llm", "vision", "volume", "connector")


@dataclass
class PartConfig:
    """How one trainable part is trained."""

    mode: PartMode = "frozen"
    # Learning rate of this part; None means ``train.lr``. Stage 2 of LLaVA-style recipes often
    # gives the connector or the encoder a different rate than the LLM.
    lr: float | None = None


@dataclass
class PartsConfig:
    """Mode and learning rate of each part. Parts the model does not have are ignored."""

    llm: PartConfig = field(default_factory=lambda: PartConfig("full"))
    vision: PartConfig = field(default_factory=PartConfig)
    volume: PartConfig = field(default_factory=PartConfig)
    connector: PartConfig = field(default_factory=lambda: PartConfig("full"))

    def items(self) -> list[tuple[str, PartConfig]]:
        """(part name, its config) in the canonical order."""
        return [(name, getattr(self, name)) for name in PART_NAMES]


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (used by the parts whose mode is ``lora``)."""

    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    # Names (suffixes) of the linear layers to adapt, e.g. [q_proj, v_proj]. Empty: every linear
    # layer of the LoRA parts except the output head (what MedM-VL's find_all_linear_names does).
    targets: list[str] = field(default_factory=list)
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class ModelSection:
    """Where the model comes from: a checkpoint directory or a build spec."""

    # A medvl checkpoint directory (a MedVL model saved by ``medvl build``/``train``/``convert``),
    # or a LoRA adapter directory written by ``medvl train`` (merged into its base on load).
    path: str | None = None
    # A ``medvl.build.ModelSpec``, as a mapping or as the path of a build YAML (e.g.
    # configs/tiny.yaml): LLM, encoders and connector named as local paths or configs.
    spec: dict[str, Any] | str = field(default_factory=dict)


@dataclass
class DataSection:
    """Training and validation data."""

    # Dataset files (native JSON/JSONL or MedM-VL/LLaVA JSON) or dataset registries (.yaml, see
    # medvl.data.registry: their data sets of split ``train_split`` mixed by weight); several are
    # concatenated.
    train: list[str] = field(default_factory=list)
    # Mixing weight per train file: how often each record is used per epoch (0.5 = a random half,
    # 2 = twice). Empty: 1 for every file.
    weights: list[float] = field(default_factory=list)
    # Validation files or registries (split ``eval_split``); if empty and ``eval_fraction`` > 0,
    # that fraction of ``train`` is held out.
    eval: list[str] = field(default_factory=list)
    train_split: str = "train"
    eval_split: str = "validation"
    eval_fraction: float = 0.0
    # Media paths in the records files are relative to this folder (default: each file's folder;
    # registries name their own roots).
    root: str | None = None
    # Chat template: auto (the processor's own, else chatml), tokenizer, chatml, llama3, vicuna,
    # medmvl, plain (LLaVA-style pre-training captions), or a literal Jinja template.
    template: str = "auto"
    max_length: int = 2048
    # A bad sample (missing file, wrong marker count, empty answer): stop with an error naming it,
    # or skip it and count it.
    on_error: Literal["raise", "skip"] = "raise"
    # A sample longer than max_length (media tokens included): skip it (counted, with a warning) or
    # stop with an error naming it. Samples are never truncated.
    on_overlong: Literal["skip", "error"] = "skip"
    # Pack several samples per row (position_ids restart per sample, same loss) where it pays: a batch
    # is bin-packed into rows of its longest sample only when that saves >= 25 % of the rows (skewed
    # lengths); batches of alike lengths stay padded (plain causal attention is faster there).
    packing: bool = True
    num_workers: int = 0
    # Folder written by `medvl data prepare` (memory-mapped preprocessed volumes). Volumes found
    # there are read from it instead of being decoded and preprocessed again; a cache built with
    # another volume processor configuration is refused. Not used for augmented samples.
    volume_cache: str | None = None
    # Run each frozen encoder (image / volume part in mode frozen) once per distinct media file (the
    # first time a sample needs it) and feed its outputs instead of the media at every later use
    # (medvl.data.feature_cache): same loss, without the encoder's forward pass or the media loading.
    # true: required (an error where it cannot apply); unset: on where it cannot change the loss and
    # the features fit in 2 GiB (frozen encoder, no augmentation, num_workers=0, not ZeRO-3).
    cache_encoder_features: bool | None = None


@dataclass
class TrainSection:
    """Optimisation settings. Anything else of transformers' TrainingArguments goes in hf_args."""

    # Free label recorded with the run (pretrain, finetune, finetune_lora, ...). What trains is
    # decided by ``parts`` alone, never implicitly by the stage name.
    stage: str = "custom"
    parts: PartsConfig = field(default_factory=PartsConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 2e-5
    weight_decay: float = 0.0
    epochs: float = 1.0
    # Stop after this many optimiser steps (overrides epochs when > 0).
    max_steps: int = -1
    batch_size: int = 8  # per device
    eval_batch_size: int | None = None  # per device; None: batch_size
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: Literal["cosine", "linear", "constant_with_warmup", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    # fp32, or bf16 autocast with fp32 master weights (on CPU bf16 is only faster for big models).
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    # torch.compile the LLM's decoder (in place, dynamic shapes): same loss within fp32 rounding; pays
    # off on long runs (the first steps compile, minutes on a CPU)
    compile: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    # Evaluate every this many steps (None: at save_steps); only when there is a validation split.
    eval_steps: int | None = None
    # Continue from the last complete checkpoint in output.dir (optimizer, scheduler, data order,
    # RNG). With no checkpoint there the run starts from scratch, so resume=true is safe to always set.
    resume: bool = False
    seed: int = 42
    # A DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); launch with torchrun or deepspeed.
    deepspeed: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress_bar: bool = True
    # Passed to transformers.TrainingArguments as is and wins over the fields above, e.g.
    # {fsdp: "full_shard auto_wrap", dataloader_pin_memory: false}.
    hf_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputSection:
    """Where the run writes: checkpoints, logs, the resolved config and the final model."""

    dir: str = "runs/medvl"
    # Allow writing into a folder that already holds another run's files (without resume).
    overwrite: bool = False


@dataclass
class TrainConfig:
    """Root of ``medvl train`` configs."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training recipe plus dotted overrides, and check it.

    Args:
        path: the YAML recipe (None: defaults only).
        overrides: ``dotted.key=value`` strings applied on top of the file.
    """
    cfg = load_config(TrainConfig, path, overrides)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig, check_model: bool = True) -> None:
    """Check what the typed loader cannot: value ranges and cross-field rules.

    Args:
        cfg: the configuration to check; raises ``ValueError`` naming the key.
        check_model: check the model section (off when the caller passes a built model).
    """
    if check_model and cfg.model.path is None and not cfg.model.spec:
        raise ValueError("model: set model.path (a checkpoint directory) or model.spec (a build spec)")
    if check_model and cfg.model.path is not None and cfg.model.spec:
        raise ValueError("model: set model.path or model.spec, not both")
    if check_model and cfg.model.spec:
        model_spec(cfg)  # checks the spec's keys and choices now, not after data loading
    if cfg.data.weights and len(cfg.data.weights) != len(cfg.data.train):
        raise ValueError(f"data.weights has {len(cfg.data.weights)} values for {len(cfg.data.train)} data.train files")
    t = cfg.train
    for key, value in (("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                       ("train.save_steps", t.save_steps), ("train.logging_steps", t.logging_steps),
                       ("train.lora.r", t.lora.r), ("data.max_length", cfg.data.max_length)):
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if not 0.0 <= cfg.data.eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction must be in [0, 1), got {cfg.data.eval_fraction}")
    if not 0.0 <= t.lora.dropout < 1.0:
        raise ValueError(f"train.lora.dropout must be in [0, 1), got {t.lora.dropout}")
    if not 0.0 <= t.warmup_ratio <= 1.0:
        raise ValueError(f"train.warmup_ratio must be in [0, 1], got {t.warmup_ratio}")
    if t.lr <= 0:
        raise ValueError(f"train.lr must be > 0, got {t.lr}")
    for name, part in t.parts.items():
        if part.lr is not None and part.lr <= 0:
            raise ValueError(f"train.parts.{name}.lr must be > 0, got {part.lr}")
    if all(part.mode == "frozen" for _, part in t.parts.items()):
        raise ValueError("train.parts: every part is frozen, nothing would train; set a part's mode to full or lora")
    if cfg.data.cache_encoder_features:
        if t.parts.vision.mode != "frozen" and t.parts.volume.mode != "frozen":
            raise ValueError("data.cache_encoder_features needs a frozen encoder: set train.parts.vision.mode or "
                             f"train.parts.volume.mode to frozen (now {t.parts.vision.mode}, {t.parts.volume.mode})")
    check_hf_args(t.hf_args)


PLACEHOLDER = "/path/to/"


def unfilled_placeholders(cfg: TrainConfig) -> list[str]:
    """Dotted keys whose value is still a recipe placeholder (``/path/to/...``).

    Args:
        cfg: the configuration.
    """
    from medvl.utils.config import to_dict

    found: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and value.startswith(PLACEHOLDER):
            found.append(f"{key}={value}")

    walk(to_dict(cfg), "")
    return found


def model_spec(cfg: TrainConfig) -> Any:
    """``cfg.model.spec`` as a ``medvl.build.ModelSpec`` (read from its YAML file if it is a path).

    Args:
        cfg: the configuration.
    """
    from medvl.build import ModelSpec, load_model_spec

    if isinstance(cfg.model.spec, str):
        if not Path(cfg.model.spec).is_file():
            raise FileNotFoundError(f"model.spec: build YAML {cfg.model.spec} not found")
        return load_model_spec(cfg.model.spec)
    return from_dict(ModelSpec, cfg.model.spec, prefix="model.spec.")


def check_hf_args(hf_args: dict[str, Any]) -> None:
    """Reject keys that transformers' ``TrainingArguments`` does not have (with close matches).

    Args:
        hf_args: the ``train.hf_args`` mapping.
    """
    if not hf_args:
        return
    from transformers import TrainingArguments

    valid = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in hf_args:
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise ValueError(
                f"train.hf_args.{key} is not a transformers TrainingArguments field{hint}; "
                f"valid fields: {', '.join(sorted(valid))}"
            )
