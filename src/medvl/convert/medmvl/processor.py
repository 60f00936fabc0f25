"""MedM-VL's preprocessing -> a medvl processor (tokenizer, image processor, volume processor settings).

* Text: the LLM's tokenizer (MedM-VL reloads it from the LLM folder) plus medvl's media markers, and
  MedM-VL's ``qwen2`` conversation format as the chat template (``medvl.data.templates``: ``medmvl``).
* 2D images: the tower's own image processor (PIL backend), from its ``preprocessor_config.json``.
* CT through a 2D tower: volume processor mode ``medmvl`` (HU clip to +-1000 -> 0..255, foreground crop,
  trilinear resize to (32, S, S), uint8 truncation, the tower's normalisation, 3 channels).
* MedM-CLIP / M3D-CLIP: the encoder's input handling (``models.vit3d.clip_volume_processor_settings``).

No reorientation (``axcodes=None``): MedM-VL reads its ``.npy`` arrays as stored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoTokenizer, BaseImageProcessor, PreTrainedTokenizerBase

from medvl.build import transformers_default_image_processor
from medvl.data.templates import resolve_template
from medvl.models import MedVLConfig, MedVLProcessor
from medvl.models.processing_medvl import IMAGE_TOKEN, VOLUME_TOKEN
from medvl.models.vit3d import clip_volume_processor_settings
from medvl.utils.files import read_json

from .config import MEDMVL_CT_SLICES
from .layout import ENCODER_TYPES, EncoderSpec, MedMVLLayout, MedMVLParts

logger = logging.getLogger(__name__)


def medmvl_tokenizer(parts: MedMVLParts, src: Path) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer (MedM-VL reloads it from the LLM folder), with the medvl media markers added.

    Args:
        parts: the part folders (``parts.llm`` holds the tokenizer).
        src: the MedM-VL checkpoint folder (its saved tokenizer is the fallback).
    """
    try:
        tok = AutoTokenizer.from_pretrained(parts.llm)
    except (OSError, ValueError) as err:
        logger.warning("no usable tokenizer in %s (%s); using the one saved in the checkpoint", parts.llm, err)
        tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens(
        {"additional_special_tokens": [IMAGE_TOKEN, VOLUME_TOKEN]}, replace_extra_special_tokens=False
    )
    tok.padding_side = "left"
    return tok


def tower_image_processor(spec: EncoderSpec, folder: Path) -> BaseImageProcessor:
    """The tower's image processor, PIL backend (never torchvision), from its preprocessor_config.json.

    Args:
        spec: the 2D tower.
        folder: its local folder.
    """
    cls = getattr(transformers, str(ENCODER_TYPES[spec.type].image_processor))
    settings = read_json(folder / "preprocessor_config.json", "image preprocessor config")
    settings.pop("image_processor_type", None)
    settings.pop("processor_class", None)
    return cls(**settings)


def medmvl_volume_processor_settings(layout: MedMVLLayout, config: MedVLConfig) -> dict[str, Any] | None:
    """``MedVLVolumeProcessor`` settings that reproduce MedM-VL's CT preprocessing for this layout.

    Args:
        layout: the checkpoint's layout.
        config: the translated medvl config.
    """
    if config.volume_encoder == "slicewise":
        size = config.volume_encoder_config.image_size
        return {"mode": "medmvl", "axcodes": None, "target_shape": [MEDMVL_CT_SLICES, size, size]}
    if layout.image3d is None:
        return None
    return {
        "axcodes": None,
        **clip_volume_processor_settings(layout.image3d.type, list(config.volume_encoder_config.image_size)),
    }


def medmvl_processor(
    layout: MedMVLLayout, parts: MedMVLParts, config: MedVLConfig, tokenizer: PreTrainedTokenizerBase
) -> MedVLProcessor:
    """The medvl processor that prepares inputs as MedM-VL does.

    Args:
        layout: the checkpoint's layout.
        parts: the part folders (the 2D tower's holds its preprocessor config).
        config: the translated medvl config (token counts, encoder input sizes).
        tokenizer: from :func:`medmvl_tokenizer`.
    """
    template, _ = resolve_template("medmvl", tokenizer)
    if layout.image is not None and parts.vision is not None:
        images = tower_image_processor(layout.image, parts.vision)
    else:  # a model without a 2D tower still fills the processor's (unused) image processor slot
        images = transformers_default_image_processor()
    return MedVLProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        chat_template=template,
        volume_processor_config=medmvl_volume_processor_settings(layout, config),
        num_image_tokens=config.num_image_tokens,
        num_volume_tokens=config.num_volume_tokens,
    )
