"""Dummy media for batches that lack a modality the model has (multi-process training).

With DeepSpeed ZeRO-3 every rank must run the same modules in the same order: the parameters of
each module are all-gathered when it runs. A rank whose batch has no image (text-only samples)
would skip the vision tower while the others gather its weights, and the job hangs. DDP without
``find_unused_parameters`` fails the same way for trainable encoders.

The fix keeps the model's own code path: a dummy item (zeros) is appended to the batch together
with its placeholder tokens in extra columns that nothing attends to (``attention_mask`` 0, labels
-100; for packed rows a separate position block). The encoder then runs where it always runs
(inside the model's media merge, before the LLM), its parameters take part in the graph with zero
gradient, and the loss of the real tokens is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from medvl.data.feature_cache import FEATURE_KINDS

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MediaSlot:
    """One modality of a model: batch key, placeholder id, tokens per item, item shape."""

    key: str
    token_id: int
    num_tokens: int
    shape: tuple[int, ...]


def media_slots(config: PreTrainedConfig | None) -> list[MediaSlot]:
    """The modalities of a medvl model config (empty for models without medvl's config fields).

    Args:
        config: a ``MedVLConfig`` (``vision_config``, ``volume_config``, ``image_token_id``,
            ``num_image_tokens``, ...).
    """
    slots: list[MediaSlot] = []
    vision = getattr(config, "vision_config", None)
    image_token_id: int | None = getattr(config, "image_token_id", None)
    num_image_tokens: int = getattr(config, "num_image_tokens", 0) or 0
    if vision is not None and image_token_id is not None and num_image_tokens:
        h, w = _pair(vision.image_size)
        slots.append(
            MediaSlot("pixel_values", image_token_id, num_image_tokens, (getattr(vision, "num_channels", 3), h, w))
        )
    volume = getattr(config, "volume_config", None)
    volume_token_id: int | None = getattr(config, "volume_token_id", None)
    num_volume_tokens: int = getattr(config, "num_volume_tokens", 0) or 0
    if config is not None and volume is not None and volume_token_id is not None and num_volume_tokens:
        encoder = getattr(config, "volume_encoder", "vit3d")
        if encoder == "vit3d":
            shape = (getattr(volume, "in_channels", 1), *tuple(volume.image_size))
        elif encoder == "ctvit":  # CT-CLIP's CTViT: (channels, slices, H, W)
            shape = (volume.channels, volume.num_frames, *_pair(volume.image_size))
        else:  # a 2D tower applied slice by slice
            h, w = _pair(volume.image_size)
            shape = (getattr(volume, "num_channels", 3), config.volume_num_slices, h, w)
        slots.append(MediaSlot("volume_values", volume_token_id, num_volume_tokens, shape))
    return slots


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[-2]), int(size[-1])


# batch key of the raw media -> batch key of a frozen encoder's cached outputs
FEATURE_KEYS = {values: features for _, values, features in FEATURE_KINDS.values()}


def add_dummy_media(
    batch: dict[str, Any],
    slots: list[MediaSlot],
    pad_token_id: int = 0,
    feature_shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Return ``batch`` with one dummy item for every modality in ``slots`` that it lacks.

    Padded batches (with ``attention_mask``) get the placeholders in new columns of row 0 with
    attention 0; packed rows (``position_ids``, no mask) get them as a new position block.
    Labels of the new columns are -100, so the loss is that of the real tokens.

    Args:
        batch: collator output (``input_ids``, ``labels``, ``attention_mask`` or ``position_ids``, media).
        slots: from :func:`media_slots`.
        pad_token_id: id for the new columns of the other rows.
        feature_shapes: media key -> per-item shape of the cached encoder features, for the kinds
            served from an encoder feature cache: their dummy is zero features (the encoder runs
            on no rank, the connector on every rank).
    """
    feature_shapes = feature_shapes or {}

    def present(key: str) -> bool:
        return batch.get(key) is not None and batch[key].shape[0] > 0

    missing = [s for s in slots if not present(s.key) and not present(FEATURE_KEYS.get(s.key, s.key))]
    if not missing:
        return batch
    batch = dict(batch)
    ids = batch["input_ids"]
    rows = ids.shape[0]
    for slot in missing:
        n = slot.num_tokens
        new_ids = torch.full((rows, n), pad_token_id, dtype=ids.dtype, device=ids.device)
        new_ids[0] = slot.token_id
        ids = torch.cat([ids, new_ids], dim=1)
        if batch.get("labels") is not None:
            labels = batch["labels"]
            batch["labels"] = torch.cat([labels, labels.new_full((rows, n), IGNORE_INDEX)], dim=1)
        if batch.get("attention_mask") is not None:
            mask = batch["attention_mask"]
            batch["attention_mask"] = torch.cat([mask, mask.new_zeros((rows, n))], dim=1)
        elif batch.get("position_ids") is not None:
            pos = batch["position_ids"]
            block = torch.arange(n, dtype=pos.dtype, device=pos.device).expand(pos.shape[0], n)
            batch["position_ids"] = torch.cat([pos, block], dim=1)
        else:
            raise ValueError("cannot add dummy media to a batch with neither attention_mask nor position_ids")
        if slot.key in feature_shapes:
            batch[FEATURE_KEYS[slot.key]] = torch.zeros((1, *feature_shapes[slot.key]), device=ids.device)
        else:
            batch[slot.key] = torch.zeros((1, *slot.shape), device=ids.device)
    batch["input_ids"] = ids
    return batch
