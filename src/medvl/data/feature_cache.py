"""In-memory cache of a frozen encoder's outputs (``data.cache_encoder_features``).

When the image or volume encoder is frozen and the samples are not augmented, the encoder computes
the same features for a file at every step it appears in: a 3D stem on 16 CT volumes per step
cost more than the small LLM it feeds. :func:`build_feature_cache` runs the encoder once per
distinct media file (``model.encode_images`` / ``encode_volumes``, i.e. after feature-layer and
token selection, before the connector, which keeps training) and the dataset then returns
``image_encoder_features`` / ``volume_encoder_features`` instead of pixel / volume values. The
model's forward takes those in place of the media (tested to give the same logits), so the loss,
gradients and checkpoints are those of the uncached run.

Held in memory as float32 on the CPU: (tokens x width) per file, e.g. 128 x 128 floats = 64 KiB
per volume of the quickstart; a cache is rebuilt at every training start (the encoder's weights
may have changed since the last run).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

# media kind -> (record field, batch key of the raw values, batch key of the cached features)
FEATURE_KINDS = {
    "image": ("images", "pixel_values", "image_encoder_features"),
    "volume": ("volumes", "volume_values", "volume_encoder_features"),
}


class EncoderFeatureCache:
    """Encoder features per media file, for the kinds whose encoder is frozen.

    Args:
        kinds: media kinds cached ("image", "volume").
    """

    def __init__(self, kinds: Iterable[str]):
        kinds = tuple(kinds)
        for kind in kinds:
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown media kind {kind!r}; valid choices: {', '.join(FEATURE_KINDS)}")
        self.kinds = kinds
        self.features: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in kinds}

    def lookup(self, kind: str, paths: Sequence[str]) -> torch.Tensor | None:
        """The stacked features of ``paths`` (N, tokens, width), or None when ``kind`` is not
        cached or any path is missing.

        Args:
            kind: "image" or "volume".
            paths: the record's media files in marker order.
        """
        table = self.features.get(kind)
        if table is None or not paths or any(p not in table for p in paths):
            return None
        return torch.stack([table[p] for p in paths])

    def __len__(self) -> int:
        return sum(len(t) for t in self.features.values())


@torch.no_grad()
def build_feature_cache(model: Any, datasets: Sequence[Any], kinds: Iterable[str], batch_size: int = 32) -> EncoderFeatureCache:
    """Encode every distinct media file of ``datasets`` once with ``model``'s frozen encoder(s).

    Args:
        model: a ``MedVLForConditionalGeneration`` (or a PEFT wrapper of one).
        datasets: :class:`~medvl.data.dataset.ConversationDataset` objects whose records' media are
            encoded (their own loaders, volume cache and processors prepare the inputs).
        kinds: which encoders to cache ("image", "volume").
        batch_size: files per encoder forward pass.
    """
    cache = EncoderFeatureCache(kinds)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    encoders = {"image": base.encode_images, "volume": base.encode_volumes}
    encoder_modules = {"image": base.vision_tower, "volume": base.volume_encoder}
    start = time.time()
    for kind in cache.kinds:
        field = FEATURE_KINDS[kind][0]
        module = encoder_modules[kind]
        if module is None:
            raise ValueError(f"data.cache_encoder_features: the model has no {kind} encoder")
        if any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"data.cache_encoder_features: the {kind} encoder trains in this stage; "
                             "cached features would go stale (set its part's mode to frozen)")
        device = next(module.parameters()).device
        was_training = module.training
        # eval mode: the features are the encoder's deterministic ones (identical to a training-mode
        # forward for encoders without dropout, which is every tower medvl builds by default)
        module.eval()
        pending: list[tuple[str, torch.Tensor]] = []

        def flush() -> None:
            if not pending:
                return
            values = torch.stack([v for _, v in pending]).to(device)
            features = encoders[kind](values).float().cpu()
            for (path, _), feat in zip(pending, features):
                cache.features[kind][path] = feat
            pending.clear()

        queued: set[str] = set()
        for dataset in datasets:
            for rec in dataset.records:
                paths = getattr(rec, field)
                if all(p in queued for p in paths):
                    continue
                for path, value in zip(paths, dataset.media_values(rec, kind)):
                    if path not in queued:
                        queued.add(path)
                        pending.append((path, value))
                if len(pending) >= batch_size:
                    flush()
        flush()
        module.train(was_training)
    logger.info("encoder feature cache: %s in %.1f s",
                ", ".join(f"{len(cache.features[k])} {k} files" for k in cache.kinds), time.time() - start)
    return cache


__all__ = ["EncoderFeatureCache", "build_feature_cache", "FEATURE_KINDS"]
