"""Configuration of a medvl model: one ``PreTrainedConfig`` with nested part configs.

REMOTE-CODE SAFE: this file is copied into every checkpoint (``auto_map``); it imports only
torch/transformers and sibling modules through relative imports.

Layout of a ``MedVLConfig``::

    text_config      any causal-LM config (Qwen2, Llama, Phi-3, ...)
    vision_config    optional 2D tower config (CLIP/SigLIP/DINOv2 vision config, ...)
    volume_config    optional 3D encoder config: a ``Vit3DConfig`` (volume_encoder="vit3d") or a
                     2D tower config applied slice by slice (volume_encoder="slicewise")
    image_connector / volume_connector   ``ConnectorConfig`` stored as plain dicts
    image_feature_layer / image_feature_select (and volume_*)   which encoder hidden states feed
                     the connector
    image_token_id / volume_token_id     placeholder ids the processor emits
    num_image_tokens / num_volume_tokens derived: how many placeholders one image / volume takes
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.configuration_utils import SubConfigSpec

from .ctvit import CTViTConfig
from .stems import validate_stem_widths
from .vit3d import Vit3DConfig

CONNECTOR_TYPES = ("mlp", "spatial_pool", "attn_pool")
FEATURE_SELECTS = ("patch", "cls", "all")
# CTViT (volume_encoder "ctvit") hands over its patch tokens either quantised ("patch": the codebook
# rows CT-CLIP and MedM-VL use) or as the pre-quantisation tokens of its temporal transformer.
CTVIT_FEATURE_SELECTS = ("patch", "pre_vq")
POOL_MODES = ("avg", "max")
VOLUME_ENCODERS = ("vit3d", "slicewise", "ctvit")
IMAGE_TOKEN = "<image>"
VOLUME_TOKEN = "<volume>"

# Tokens a 2D tower puts in front of its patch tokens (CLS, registers). SigLIP has none.
_PREFIX_TOKENS_BY_MODEL_TYPE = {
    "siglip_vision_model": 0,
    "siglip2_vision_model": 0,
    "clip_vision_model": 1,
    "dinov2": 1,
    "vit": 1,
}


def _choice_error(name: str, value: object, choices: tuple[str, ...]) -> ValueError:
    return ValueError(f"{name}: invalid choice {value!r}; valid choices: {', '.join(map(repr, choices))}")


@dataclass
class ConnectorConfig:
    """Settings of one modality's connector (encoder features -> LLM embeddings).

    Stored in ``MedVLConfig`` as a plain dict (``to_dict``) so config.json stays JSON.

    Args:
        type: "mlp" (token-wise MLP), "spatial_pool" (average pool over the patch grid with
            ``pool_stride``, then MLP) or "attn_pool" (``num_queries`` learned queries cross-attend to
            all tokens with ``num_heads`` heads, then MLP).
        depth: number of Linear layers of the MLP (1 = a single projection).
        activation: activation between MLP layers, any key of ``transformers.activations.ACT2FN``
            ("gelu" is the exact erf GELU of LLaVA / MedM-VL).
        num_queries: attn_pool only: output token count.
        num_heads: attn_pool only: attention heads (must divide the encoder feature size).
        pool_stride: spatial_pool only: (depth, height, width) stride of the pooling; 2D images use
            the last two entries.
        pool: spatial_pool only: "avg" (MedM-VL's spatial_pooling) or "max". Max pooling keeps a
            small finding's feature at full strength in its pooled token; averaging dilutes it by
            the pool size, which a from-scratch model is much slower to learn through.
        layer_norm: LayerNorm on the connector input (attn_pool: on keys/values and queries). None
            means the type's default: on for attn_pool, off otherwise.
    """

    type: str = "mlp"
    depth: int = 2
    activation: str = "gelu"
    num_queries: int = 64
    num_heads: int = 8
    pool_stride: tuple[int, int, int] = (1, 2, 2)
    pool: str = "avg"
    layer_norm: bool | None = None

    def __post_init__(self) -> None:
        if self.type not in CONNECTOR_TYPES:
            raise _choice_error("connector type", self.type, CONNECTOR_TYPES)
        if self.activation not in ACT2FN:
            raise _choice_error("connector activation", self.activation, tuple(sorted(ACT2FN)))
        if int(self.depth) < 1:
            raise ValueError(f"connector depth must be >= 1, got {self.depth}")
        stride = [int(s) for s in self.pool_stride]
        if len(stride) == 2:  # a 2D stride (h, w) means no pooling along depth
            stride = [1, *stride]
        if len(stride) != 3 or min(stride) < 1:
            raise ValueError(f"connector pool_stride must be 3 positive ints (d, h, w), got {self.pool_stride!r}")
        self.pool_stride = (stride[0], stride[1], stride[2])
        if self.pool not in POOL_MODES:
            raise _choice_error("connector pool", self.pool, POOL_MODES)
        if self.num_queries < 1 or self.num_heads < 1:
            raise ValueError("connector num_queries and num_heads must be >= 1")
        if self.layer_norm is None:
            self.layer_norm = self.type == "attn_pool"

    @classmethod
    def from_any(cls, value: ConnectorConfig | dict[str, Any] | str | None) -> ConnectorConfig:
        """Build from a ConnectorConfig, a dict (unknown keys are an error) or a type name.

        Args:
            value: the setting; None gives the default (a 2-layer GELU MLP).
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return dataclasses.replace(value)
        if isinstance(value, str):
            return cls(type=value)
        if not isinstance(value, dict):
            raise ValueError(f"connector setting must be a mapping, got {value!r}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - valid)
        if unknown:
            raise ValueError(f"unknown connector key(s) {unknown}; valid keys: {', '.join(sorted(valid))}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        out = dataclasses.asdict(self)
        out["pool_stride"] = list(self.pool_stride)
        return out

    def num_output_tokens(self, num_tokens: int, grid: tuple[int, int, int] | None) -> int:
        """How many embeddings the connector emits for one item.

        Args:
            num_tokens: tokens the encoder hands over for one item.
            grid: (depth, height, width) patch grid of those tokens, or None when the tokens do not
                form a grid (CLS / prefix tokens kept).
        """
        if self.type == "mlp":
            return num_tokens
        if self.type == "attn_pool":
            return self.num_queries
        if grid is None:
            raise ValueError("connector 'spatial_pool' needs patch tokens on a grid; set the feature select to 'patch'")
        out = 1
        for size, stride in zip(grid, self.pool_stride):
            if size % stride:
                raise ValueError(f"spatial_pool stride {self.pool_stride} does not divide the patch grid {grid}")
            out *= size // stride
        return out


def _as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, Sequence):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def prefix_token_count(vision_config: PreTrainedConfig) -> int:
    """Number of non-patch tokens (CLS, registers) a 2D tower emits before its patches.

    Args:
        vision_config: the tower's config.
    """
    model_type = getattr(vision_config, "model_type", "")
    if model_type == "dinov2_with_registers":
        return 1 + int(getattr(vision_config, "num_register_tokens", 0))
    return _PREFIX_TOKENS_BY_MODEL_TYPE.get(model_type, 1)


def tower_token_layout(vision_config: PreTrainedConfig, select: str) -> tuple[int, tuple[int, int, int] | None]:
    """Tokens one 2D image yields after feature selection, and their (1, h, w) grid if any.

    Args:
        vision_config: the tower's config (``image_size`` and ``patch_size`` are read).
        select: "patch", "cls" or "all".
    """
    height, width = _as_pair(vision_config.image_size)
    patch_h, patch_w = _as_pair(vision_config.patch_size)
    grid = (1, height // patch_h, width // patch_w)
    num_patches = grid[1] * grid[2]
    prefix = prefix_token_count(vision_config)
    if select == "patch":
        return num_patches, grid
    if select == "cls":
        if prefix == 0:
            raise ValueError(f"{vision_config.model_type} has no CLS token; use feature select 'patch' or 'all'")
        return 1, None
    return num_patches + prefix, (grid if prefix == 0 else None)


def _built_subconfig(value: dict[str, Any] | PreTrainedConfig | None, name: str) -> PreTrainedConfig:
    if value is None:
        raise ValueError(f"this model has no {name}")
    if not isinstance(value, PreTrainedConfig):  # only before __post_init__ has run
        raise TypeError(f"{name} is still a {type(value).__name__}, not a config object")
    return value


def _num_layers(feature_layer: int | list[int]) -> int:
    return 1 if isinstance(feature_layer, int) else len(feature_layer)


def _make_subconfig(
    value: dict[str, Any] | PreTrainedConfig | None, default_model_type: str | None
) -> PreTrainedConfig | None:
    """dict -> config instance; handles our own "medvl_vit3d" even when medvl is not registered."""
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"sub-config must be a dict or PreTrainedConfig, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", default_model_type)
    if model_type == Vit3DConfig.model_type:
        return Vit3DConfig(**value)
    if model_type == CTViTConfig.model_type:
        return CTViTConfig(**value)
    if model_type is None:
        raise ValueError(f"sub-config {value!r} has no model_type")
    return AutoConfig.for_model(model_type, **value)


class MedVLConfig(PreTrainedConfig):
    r"""Configuration of ``MedVLForConditionalGeneration``.

    Args:
        text_config: causal-LM config (dict with ``model_type`` or a config object). Default: Qwen2.
        vision_config: 2D tower config, or None for a model without 2D images.
        volume_config: 3D encoder config, or None for a model without volumes.
        volume_encoder: "vit3d" (volume_config is a ``Vit3DConfig``), "ctvit" (a ``CTViTConfig``: CT-CLIP's
            encoder) or "slicewise" (volume_config is a 2D tower config run on every slice). Inferred
            from volume_config when None.
        image_connector / volume_connector: ``ConnectorConfig`` or dict.
        image_feature_layer / volume_feature_layer: index (or list of indices, concatenated along the
            hidden axis) into the encoder's ``hidden_states`` (-1 = output of the last layer).
        image_feature_select / volume_feature_select: "patch", "cls" or "all" tokens. With
            volume_encoder "ctvit": "patch" (CTViT's quantised tokens, the default) or "pre_vq"
            (its pre-quantisation tokens); its feature layer must be -1.
        image_conv_stem: widths of a convolutional stem that replaces the 2D tower's patch embedding
            (``medvl.models.stems.ConvStem``, e.g. [16, 32, 64, 128]); None keeps the tower's own.
        volume_num_slices: slicewise only: slices per volume (the volume processor's depth).
        slice_position_embedding: slicewise only: add a learned per-slice embedding (zero-initialised)
            to the slice features before the connector.
        image_token_id / volume_token_id: placeholder token ids (from the tokenizer).
        num_image_tokens / num_volume_tokens: derived; any passed value is recomputed.
    """

    model_type = "medvl"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", optional=True),
        "volume_config": SubConfigSpec(config_class=Vit3DConfig, optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    volume_config: dict | PreTrainedConfig | None = None
    volume_encoder: str | None = None
    image_connector: dict | ConnectorConfig | None = None
    volume_connector: dict | ConnectorConfig | None = None
    image_feature_layer: int | list[int] = -1
    image_feature_select: str = "patch"
    image_conv_stem: list[int] | None = None
    volume_feature_layer: int | list[int] = -1
    volume_feature_select: str = "patch"
    volume_num_slices: int = 32
    slice_position_embedding: bool = True
    image_token_id: int | None = None
    volume_token_id: int | None = None
    num_image_tokens: int = 0
    num_volume_tokens: int = 0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        # Build the sub-configs ourselves first: "medvl_vit3d" must resolve even in a process that
        # loads this file as remote code without medvl registered with AutoConfig.
        self.text_config = _make_subconfig(self.text_config, "qwen2")
        self.vision_config = _make_subconfig(self.vision_config, "siglip_vision_model")
        self.volume_config = _make_subconfig(self.volume_config, None)
        super().__post_init__(**kwargs)
        # The tie flag lives in the text config for every causal LM; the composite mirrors it.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self._validate_and_derive()

    # ----------------------------------------------------------------- typed accessors
    @property
    def image_connector_config(self) -> ConnectorConfig:
        """The image connector as a typed ``ConnectorConfig``."""
        return ConnectorConfig.from_any(self.image_connector)

    @property
    def volume_connector_config(self) -> ConnectorConfig:
        """The volume connector as a typed ``ConnectorConfig``."""
        return ConnectorConfig.from_any(self.volume_connector)

    # The sub-config fields also accept dicts (a config.json, a caller's keyword arguments);
    # ``__post_init__`` turns them into config objects. These accessors give them typed (the LLM's:
    # ``get_text_config()``).
    @property
    def vision_tower_config(self) -> PreTrainedConfig:
        """The 2D tower's config; a model without 2D images (``vision_config`` None) raises."""
        return _built_subconfig(self.vision_config, "vision_config")

    @property
    def volume_encoder_config(self) -> PreTrainedConfig:
        """The volume encoder's config (Vit3D, CTViT or a 2D tower run per slice); None raises."""
        return _built_subconfig(self.volume_config, "volume_config")

    # ----------------------------------------------------------------- derived values
    def image_token_layout(self) -> tuple[int, tuple[int, int, int] | None]:
        """(tokens, grid) the 2D tower hands to the image connector for one image."""
        return tower_token_layout(self.vision_tower_config, self.image_feature_select)

    def volume_token_layout(self) -> tuple[int, tuple[int, int, int] | None]:
        """(tokens, grid) the volume encoder hands to the volume connector for one volume."""
        volume_config = self.volume_encoder_config
        if self.volume_encoder == "slicewise":
            per_slice, grid = tower_token_layout(volume_config, self.volume_feature_select)
            grid = None if grid is None else (self.volume_num_slices, grid[1], grid[2])
            return per_slice * self.volume_num_slices, grid
        if self.volume_encoder == "ctvit":
            return volume_config.num_patches, volume_config.grid_size
        grid = volume_config.grid_size
        num_patches = grid[0] * grid[1] * grid[2]
        has_cls = bool(volume_config.use_cls_token)
        if self.volume_feature_select == "patch":
            return num_patches, grid
        if self.volume_feature_select == "cls":
            if not has_cls:
                raise ValueError("volume encoder has no CLS token (use_cls_token=False); use 'patch' or 'all'")
            return 1, None
        return num_patches + int(has_cls), (grid if not has_cls else None)

    def image_feature_size(self) -> int:
        """Width of the features entering the image connector."""
        return self.vision_tower_config.hidden_size * _num_layers(self.image_feature_layer)

    def volume_feature_size(self) -> int:
        """Width of the features entering the volume connector."""
        return self.volume_encoder_config.hidden_size * _num_layers(self.volume_feature_layer)

    def _validate_and_derive(self) -> None:
        if self.volume_config is not None and self.volume_encoder is None:
            if isinstance(self.volume_config, CTViTConfig):
                self.volume_encoder = "ctvit"
            else:
                self.volume_encoder = "vit3d" if isinstance(self.volume_config, Vit3DConfig) else "slicewise"
        if self.image_feature_select not in FEATURE_SELECTS:
            raise _choice_error("image_feature_select", self.image_feature_select, FEATURE_SELECTS)
        volume_selects: tuple[str, ...] = CTVIT_FEATURE_SELECTS if self.volume_encoder == "ctvit" else FEATURE_SELECTS
        if self.volume_config is None:
            volume_selects = tuple(dict.fromkeys(FEATURE_SELECTS + CTVIT_FEATURE_SELECTS))
        if self.volume_feature_select not in volume_selects:
            raise _choice_error(
                f"volume_feature_select (volume_encoder {self.volume_encoder!r})",
                self.volume_feature_select,
                volume_selects,
            )
        for name in ("image_feature_layer", "volume_feature_layer"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not value or not all(isinstance(v, int) for v in value):
                    raise ValueError(f"{name} must be an int or a non-empty list of ints, got {value!r}")
                setattr(self, name, [int(v) for v in value])
            elif not isinstance(value, int):
                raise ValueError(f"{name} must be an int or a list of ints, got {value!r}")
        self.image_conv_stem = validate_stem_widths(self.image_conv_stem, "image_conv_stem")
        # Connectors are stored as validated plain dicts (JSON), typed access via *_connector_config.
        self.image_connector = ConnectorConfig.from_any(self.image_connector).to_dict()
        self.volume_connector = ConnectorConfig.from_any(self.volume_connector).to_dict()

        if self.volume_config is not None:
            if self.volume_encoder not in VOLUME_ENCODERS:
                raise _choice_error("volume_encoder", self.volume_encoder, VOLUME_ENCODERS)
            if self.volume_encoder == "ctvit" and not isinstance(self.volume_config, CTViTConfig):
                raise ValueError(
                    f"volume_encoder 'ctvit' needs a medvl_ctvit volume_config, got {self.volume_encoder_config.model_type!r}"
                )
            if self.volume_encoder == "ctvit" and self.volume_feature_layer != -1:
                raise ValueError(
                    f"volume_encoder 'ctvit' hands over its final tokens only: volume_feature_layer must "
                    f"be -1, got {self.volume_feature_layer!r}"
                )
            if self.volume_encoder != "ctvit" and isinstance(self.volume_config, CTViTConfig):
                raise ValueError(
                    f"a medvl_ctvit volume_config needs volume_encoder 'ctvit', got {self.volume_encoder!r}"
                )
            if self.volume_encoder == "vit3d" and not isinstance(self.volume_config, Vit3DConfig):
                raise ValueError(
                    f"volume_encoder 'vit3d' needs a medvl_vit3d volume_config, got {self.volume_encoder_config.model_type!r}"
                )
            if self.volume_encoder == "slicewise" and isinstance(self.volume_config, Vit3DConfig):
                raise ValueError("volume_encoder 'slicewise' needs a 2D tower volume_config, got medvl_vit3d")
            tokens, grid = self.volume_token_layout()
            self.num_volume_tokens = self.volume_connector_config.num_output_tokens(tokens, grid)
        else:
            if self.volume_encoder is not None and self.volume_encoder not in VOLUME_ENCODERS:
                raise _choice_error("volume_encoder", self.volume_encoder, VOLUME_ENCODERS)
            self.num_volume_tokens = 0
        if self.vision_config is not None:
            tokens, grid = self.image_token_layout()
            self.num_image_tokens = self.image_connector_config.num_output_tokens(tokens, grid)
        else:
            self.num_image_tokens = 0
        for name, size_fn, conn in (
            ("image", self.image_feature_size, self.image_connector_config),
            ("volume", self.volume_feature_size, self.volume_connector_config),
        ):
            cfg = self.vision_config if name == "image" else self.volume_config
            if cfg is not None and conn.type == "attn_pool" and size_fn() % conn.num_heads:
                raise ValueError(
                    f"{name}_connector: num_heads {conn.num_heads} does not divide the feature size {size_fn()}"
                )


__all__ = [
    "MedVLConfig",
    "ConnectorConfig",
    "CONNECTOR_TYPES",
    "CTVIT_FEATURE_SELECTS",
    "FEATURE_SELECTS",
    "VOLUME_ENCODERS",
]
