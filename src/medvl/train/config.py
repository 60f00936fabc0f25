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
from typing import TYPE_CHECKING, Any, Literal

from medvl.data.augment import AugmentConfig
from medvl.utils.config import from_dict, load_config

if TYPE_CHECKING:
    from medvl.build import ModelSpec

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
class AugmentSection(AugmentConfig):
    """``data.augment``: training augmentation of ``medvl.data.augment``, for 2D images and 3D volumes.

    Off unless ``enabled``. When on, each training sample gets a small in-plane rotation / zoom
    (``rotate_degrees``, ``scale``) and intensity jitter (``brightness``, ``contrast``), images before
    their processor and volumes after theirs; and with ``flip_lr_prob`` > 0 a left-right mirror of all
    its media WITH left/right swapped in its text (cardiac names kept; samples naming the right
    middle lobe, the lingula, the minor fissure or the azygos are never mirrored). Validation
    samples are never augmented. Not compatible with ``data.cache_encoder_features``.
    """

    enabled: bool = False


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
    # Media paths must resolve (``..`` and symlinks followed) inside their data root; true accepts
    # paths that leave it (media kept elsewhere on purpose).
    allow_outside_root: bool = False
    # Intensity window of the 2D images of every file here ([center, width] in the file's units, a
    # preset name, or "minmax"); a record's own "window" and a registry entry's window win. None:
    # each format's rule (16-bit PNG/TIFF: their real bit depth, see medvl.imaging.image2d).
    image_window: list[float] | str | None = None
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
    # Training augmentation (flip with text swap, intensity, small affine), off by default.
    augment: AugmentSection = field(default_factory=AugmentSection)


ENCODER_PRETRAIN = "encoder_pretrain"
LabelSource = Literal["auto", "meta", "vqa"]


@dataclass
class EncoderPretrainSettings:
    """Stage 0 (``train.stage: encoder_pretrain``): the 2D tower or 3D encoder as a finding classifier.

    The head is max over the encoder's tokens (the features the connector reads, i.e. the model's
    feature layer) -> Linear -> one logit per binary label and one softmax group per multi-class
    label. See :mod:`medvl.train.encoder_pretrain` and medvl.data.finding_labels for the label sources.
    """

    # Which encoder: image (the 2D tower), volume (the 3D encoder) or auto (the one whose part in
    # train.parts is not frozen).
    encoder: Literal["auto", "image", "volume"] = "auto"
    # Where records files get their labels: meta (each record's meta.labels mapping), vqa (closed
    # yes/no answers: one binary label per question type), auto (meta where records have it, else
    # vqa). Label tables (.csv/.tsv files in data.train/data.eval) carry their own.
    labels: LabelSource = "auto"
    # Train on these labels only (empty: every label found in the training data).
    label_names: list[str] = field(default_factory=list)
    # Keep each preprocessed image/volume in memory (float16) after its first use: preprocessing
    # then runs once per file instead of once per step. Memory: files x preprocessed size.
    cache_media: bool = False


@dataclass
class TrainSection:
    """Optimisation settings. Anything else of transformers' TrainingArguments goes in hf_args."""

    # Label recorded with the run (pretrain, finetune, finetune_lora, ...). What trains is decided by
    # ``parts`` alone, never implicitly by the stage name; one stage name changes the objective:
    # ``encoder_pretrain`` (stage 0) trains an encoder as a finding classifier instead of the LVLM
    # on conversations (settings in ``encoder_pretrain``).
    stage: str = "custom"
    parts: PartsConfig = field(default_factory=PartsConfig)
    encoder_pretrain: EncoderPretrainSettings = field(default_factory=EncoderPretrainSettings)
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
    # Also write a full checkpoint-<step> (weights, optimizer, scheduler, RNG) at the last step when
    # it is not a multiple of save_steps. Off: the final model is written to <output>/model anyway,
    # and an extra optimizer state at the end of every run costs minutes and gigabytes.
    save_final_checkpoint: bool = False
    # Evaluate every this many steps (None: at save_steps); only when there is a validation split.
    eval_steps: int | None = None
    # Continue from the last complete checkpoint in output.dir (optimizer, scheduler, data order,
    # RNG). With no checkpoint there the run starts from scratch, so resume=true is safe to always set.
    resume: bool = False
    seed: int = 42
    # A DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json: a path, else medvl's bundled config of
    # that name); needs the optional extra (pip install 'medvl[deepspeed]') and a launcher (torchrun).
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
    from medvl.recipes import resolve_config_file

    cfg = load_config(TrainConfig, resolve_config_file(path) if path is not None else None, overrides)
    resolve_bundled_paths(cfg)
    validate(cfg)
    return cfg


def resolve_bundled_paths(cfg: TrainConfig) -> None:
    """Point ``train.deepspeed`` and a ``model.spec`` YAML at medvl's bundled configs when they are not
    files relative to the working directory (``configs/deepspeed/zero3.json`` in the shipped recipes
    then works from anywhere, also from an installed package; see :mod:`medvl.recipes`).

    Args:
        cfg: the configuration, updated in place.
    """
    from medvl.recipes import resolve_config_file

    t = cfg.train
    if isinstance(t.deepspeed, str) and t.deepspeed:
        t.deepspeed = str(resolve_config_file(t.deepspeed, (".json",)))
    if isinstance(t.hf_args.get("deepspeed"), str):
        t.hf_args["deepspeed"] = str(resolve_config_file(t.hf_args["deepspeed"], (".json",)))
    if isinstance(cfg.model.spec, str) and cfg.model.spec:
        cfg.model.spec = str(resolve_config_file(cfg.model.spec))


def deepspeed_available() -> bool:
    """Whether the optional DeepSpeed package is installed (``pip install 'medvl[deepspeed]'``)."""
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


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
    for key, value in (
        ("train.batch_size", t.batch_size),
        ("train.grad_accum", t.grad_accum),
        ("train.save_steps", t.save_steps),
        ("train.logging_steps", t.logging_steps),
        ("train.lora.r", t.lora.r),
        ("data.max_length", cfg.data.max_length),
    ):
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
    if cfg.data.cache_encoder_features and cfg.data.augment.enabled:
        raise ValueError(
            "data.cache_encoder_features cannot be used with data.augment.enabled (the encoder "
            "features of an augmented sample differ at every step); turn one of them off"
        )
    if t.stage == ENCODER_PRETRAIN:
        validate_encoder_pretrain(cfg)
    elif t.encoder_pretrain != EncoderPretrainSettings():
        raise ValueError(
            f"train.encoder_pretrain applies to train.stage={ENCODER_PRETRAIN} only (stage is {t.stage!r})"
        )
    if cfg.data.cache_encoder_features:
        if t.parts.vision.mode != "frozen" and t.parts.volume.mode != "frozen":
            raise ValueError(
                "data.cache_encoder_features needs a frozen encoder: set train.parts.vision.mode or "
                f"train.parts.volume.mode to frozen (now {t.parts.vision.mode}, {t.parts.volume.mode})"
            )
    if (t.deepspeed or t.hf_args.get("deepspeed")) and not deepspeed_available():
        raise ValueError(
            "train.deepspeed is set but DeepSpeed is not installed; it is an optional extra: "
            "pip install 'medvl[deepspeed]' (and launch with torchrun), or set train.deepspeed=null "
            "to train with DDP / a single process"
        )
    check_hf_args(t.hf_args)


def encoder_pretrain_kind(cfg: TrainConfig) -> Literal["image", "volume"]:
    """The media kind stage 0 trains ("image" or "volume"), from the settings or the parts.

    Args:
        cfg: a configuration with ``train.stage: encoder_pretrain``.
    """
    t = cfg.train
    encoders: tuple[tuple[Literal["image", "volume"], PartConfig], ...] = (
        ("image", t.parts.vision),
        ("volume", t.parts.volume),
    )
    trained = [kind for kind, part in encoders if part.mode != "frozen"]
    kind = t.encoder_pretrain.encoder
    if kind == "auto":
        if len(trained) != 1:
            raise ValueError(
                "train.stage=encoder_pretrain trains one encoder: set exactly one of "
                "train.parts.vision.mode / train.parts.volume.mode to full or lora (now "
                f"{t.parts.vision.mode}, {t.parts.volume.mode}), or name it in train.encoder_pretrain.encoder"
            )
        return trained[0]
    part = "vision" if kind == "image" else "volume"
    if getattr(t.parts, part).mode == "frozen":
        raise ValueError(
            f"train.encoder_pretrain.encoder={kind} but train.parts.{part}.mode is frozen: set it to full or lora"
        )
    return kind


def validate_encoder_pretrain(cfg: TrainConfig) -> None:
    """Stage-0 rules: one encoder trains, the LLM and the connectors stay frozen.

    Args:
        cfg: a configuration with ``train.stage: encoder_pretrain``.
    """
    t = cfg.train
    moving = [name for name in ("llm", "connector") if getattr(t.parts, name).mode != "frozen"]
    if moving:
        # explicit rather than silently ignored: stage 0 never runs the LLM or the connectors
        raise ValueError(
            f"train.stage=encoder_pretrain trains an encoder only: set train.parts.{moving[0]}.mode="
            f"frozen (now {getattr(t.parts, moving[0]).mode}{' for ' + ', '.join(moving) if len(moving) > 1 else ''})"
        )
    kind = encoder_pretrain_kind(cfg)
    other = "volume" if kind == "image" else "vision"
    if getattr(t.parts, other).mode != "frozen":
        raise ValueError(
            f"train.stage=encoder_pretrain trains one encoder ({kind}): set train.parts.{other}.mode=frozen"
        )
    if cfg.data.cache_encoder_features:
        raise ValueError(
            "data.cache_encoder_features does not apply to train.stage=encoder_pretrain (the encoder "
            "trains); use train.encoder_pretrain.cache_media to keep preprocessed media in memory"
        )
    # data.packing (on by default) concerns token rows; stage-0 batches hold images or volumes and
    # labels only, so it has nothing to act on there and is not an error.


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


def model_spec(cfg: TrainConfig) -> ModelSpec:
    """``cfg.model.spec`` as a ``medvl.build.ModelSpec`` (read from its YAML file if it is a path).

    Args:
        cfg: the configuration.
    """
    from medvl.build import ModelSpec, load_model_spec

    if isinstance(cfg.model.spec, str):
        from medvl.recipes import resolve_config_file

        try:
            return load_model_spec(resolve_config_file(cfg.model.spec))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"model.spec: build YAML not found: {err}") from None
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
