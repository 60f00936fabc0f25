"""MedM-VL layout + part configs -> ``MedVLConfig`` keyword arguments.

MedM-VL feeds both ``<image>`` and ``<image3d>`` (slice by slice) through a 2D tower; a medvl model
gets the tower on one side. ``tower_input="auto"``: a 2D tower whose connector is MedM-VL's CT design
(``attn_pooling``, MedM-VL-CT-Chest) becomes a *volume* encoder (``volume_encoder="slicewise"``, no slice
position embedding, 32 slices); any other 2D tower becomes an *image* tower. A 3D encoder becomes a
``vit3d`` volume encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedConfig

from medvl.models.configuration_medvl import prefix_token_count
from medvl.models.vit3d import vit3d_config_from_clip
from medvl.utils.files import read_json

from .layout import (
    CONNECTOR_TYPES,
    ENCODER_TYPES,
    EncoderSpec,
    MedMVLConversionError,
    MedMVLLayout,
    MedMVLParts,
    parse_mlp_name,
)

# MedM-VL's CT-through-2D-tower preprocessing resizes every volume to this many slices.
MEDMVL_CT_SLICES = 32
TOWER_INPUTS = ("auto", "image", "volume")


def tower_takes_volumes(spec: EncoderSpec, tower_input: str) -> bool:
    """Whether a MedM-VL 2D tower becomes medvl's slice-wise volume encoder (else the image tower).

    Args:
        spec: the ``image`` encoder of the layout.
        tower_input: "auto" (the connector type decides), "image" or "volume".
    """
    if tower_input == "auto":
        return CONNECTOR_TYPES[spec.connector_type].ct_design
    return tower_input == "volume"


def _feature_select(spec: EncoderSpec, prefix_tokens: int) -> str:
    """MedM-VL ``select_feature`` -> medvl feature select.

    ``cls_patch`` keeps every token (medvl "all"); ``patch`` drops token 0, which is the CLS token of
    CLIP / MedM-CLIP / M3D-CLIP (medvl "patch"). On SigLIP (no CLS) MedM-VL's ``patch`` would drop a real
    patch, which no medvl model does on purpose.
    """
    if spec.select_feature == "cls_patch":
        return "all"
    if prefix_tokens != 1:
        raise MedMVLConversionError(
            f"lvlm_encoder_{spec.role}_select_feature='patch' on a {spec.type} tower drops its first real patch "
            "token in MedM-VL (the tower has no CLS token); medvl cannot reproduce that layout. "
            "Valid combinations: siglip + cls_patch, clip + patch, clip + cls_patch, medmclip/m3dclip + patch/cls_patch"
        )
    return "patch"


def _connector(spec: EncoderSpec, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``ConnectorConfig`` fields of a MedM-VL connector (MedM-VL's connectors have no LayerNorm)."""
    depth, act = parse_mlp_name(spec.connector_name)
    entry = CONNECTOR_TYPES[spec.connector_type]
    connector: dict[str, Any] = {"type": entry.medvl_type, "depth": depth, "activation": act, "layer_norm": False}
    if entry.queries_from_weights:
        query = state_dict.get(f"connector_{spec.role}.query")
        if query is None:
            raise MedMVLConversionError(
                f"connector_{spec.role}.query missing from the checkpoint ({spec.connector_type})"
            )
        connector["num_queries"] = int(query.shape[0])
    return {**connector, **entry.settings}


def _clean(config: PreTrainedConfig) -> dict[str, Any]:
    """A part config as a dict, without where it was read from: the checkpoint must not refer to local
    folders or hub ids."""
    out = config.to_dict()
    out.pop("_name_or_path", None)
    return out


def _vision_config(folder: Path) -> PreTrainedConfig:
    """A 2D tower's config (the vision half of a full CLIP/SigLIP folder)."""
    config = AutoConfig.from_pretrained(folder)
    return getattr(config, "vision_config", None) or config


def _tower_kwargs(
    spec: EncoderSpec, folder: Path, state_dict: Mapping[str, torch.Tensor], as_volume: bool
) -> dict[str, Any]:
    """``MedVLConfig`` fields of a 2D tower: the image tower, or the slice-wise volume encoder."""
    if CONNECTOR_TYPES[spec.connector_type].needs_3d_grid:
        raise MedMVLConversionError(
            f"lvlm_connector_image_type={spec.connector_type!r} on a 2D tower: MedM-VL's spatial pooling needs a 3D "
            "patch grid (MedM-CLIP / M3D-CLIP); valid 2D connectors: "
            + ", ".join(name for name, entry in CONNECTOR_TYPES.items() if not entry.needs_3d_grid)
        )
    vision_config = _vision_config(folder)
    select = _feature_select(spec, prefix_token_count(vision_config))
    connector = _connector(spec, state_dict)
    if not as_volume:
        return {
            "vision_config": _clean(vision_config),
            "image_connector": connector,
            "image_feature_layer": spec.select_layer,
            "image_feature_select": select,
        }
    if not ENCODER_TYPES[spec.type].slicewise_ct:
        raise MedMVLConversionError(
            f"a {spec.type} tower cannot take CT volumes: MedM-VL's slice-by-slice CT preprocessing exists for "
            "SigLIP towers only; convert with tower_input 'image' (--tower-input image)"
        )
    return {
        "volume_config": _clean(vision_config),
        "volume_encoder": "slicewise",
        "volume_connector": connector,
        "volume_feature_layer": spec.select_layer,
        "volume_feature_select": select,
        "volume_num_slices": MEDMVL_CT_SLICES,
        "slice_position_embedding": False,
    }


def _vit3d_kwargs(spec: EncoderSpec, folder: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``MedVLConfig`` fields of a MedM-CLIP / M3D-CLIP encoder (``vit3d``)."""
    try:
        vit = vit3d_config_from_clip(read_json(folder / "config.json", "3D encoder config"), spec.type)
    except ValueError as err:
        raise MedMVLConversionError(str(err)) from None
    # MedM-CLIP / M3D-CLIP hidden-state lists have no embedding entry; medvl's (transformers') do.
    layer = spec.select_layer if spec.select_layer < 0 else spec.select_layer + 1
    return {
        "volume_config": vit,
        "volume_encoder": "vit3d",
        "volume_connector": _connector(spec, state_dict),
        "volume_feature_layer": layer,
        "volume_feature_select": "all" if spec.select_feature == "cls_patch" else "patch",
    }


def translate_config(
    layout: MedMVLLayout,
    parts: MedMVLParts,
    state_dict: Mapping[str, torch.Tensor],
    tower_input: str = "auto",
) -> dict[str, Any]:
    """MedM-VL layout + part configs -> ``MedVLConfig`` keyword arguments (token ids excluded).

    Args:
        layout: from :func:`~medvl.convert.medmvl.layout.read_layout`.
        parts: from :func:`~medvl.convert.medmvl.layout.resolve_parts`.
        state_dict: the checkpoint's weights under MedM-VL's names (an ``attn_pooling`` query count is
            read from them).
        tower_input: "auto", "image" or "volume": what the 2D tower's model takes.
    """
    if tower_input not in TOWER_INPUTS:
        raise ValueError(f"tower_input {tower_input!r}: valid choices: {', '.join(TOWER_INPUTS)}")
    kwargs: dict[str, Any] = {"text_config": _clean(AutoConfig.from_pretrained(parts.llm))}
    if layout.image is not None:
        as_volume = tower_takes_volumes(layout.image, tower_input)
        assert parts.vision is not None  # resolve_parts found it
        kwargs.update(_tower_kwargs(layout.image, parts.vision, state_dict, as_volume))
    if layout.image3d is not None:
        assert parts.volume is not None
        kwargs.update(_vit3d_kwargs(layout.image3d, parts.volume, state_dict))
    return kwargs
