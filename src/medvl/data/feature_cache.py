"""In-memory cache of a frozen encoder's outputs (``data.cache_encoder_features``).

When the image or volume encoder is frozen and the samples are not augmented, the encoder computes
the same features for a file at every step it appears in: a 3D stem on 16 CT volumes per step
cost more than the small LLM it feeds. :func:`build_feature_cache` runs the encoder once per
distinct media file (``model.encode_images`` / ``encode_volumes``, i.e. after feature-layer and
token selection, before the connector, which keeps training) and the dataset then returns
``image_encoder_features`` / ``volume_encoder_features`` instead of pixel / volume values. The
model's forward takes those in place of the media (tested to give the same logits), so the loss,
gradients and checkpoints are those of the uncached run.

Two ways to fill it:

* **lazy** (:func:`lazy_feature_cache`, what ``medvl train`` uses with ``data.num_workers=0``): a file
  is encoded the first time a sample needs it (inside the data set's ``__getitem__``, one sample at a
  time, the encoder in eval mode without autograd) and read from the cache at every later use. The
  first epoch costs what it costs without a cache (the same encoder forward, moved from the training
  step to data loading); later epochs skip the encoder and the media loading. A short run that sees
  each file once is therefore never slower than without the cache.
* **eager** (:func:`build_feature_cache`): every distinct file of the data sets is encoded before the
  first step, in batches. Used with DataLoader worker processes (``data.num_workers > 0``): a worker
  is a separate process whose cache entries would never reach the other workers or the next epoch,
  and a model on a GPU cannot run in a forked worker.

Multi-process training (DDP, ZeRO-2): every rank holds its own cache and encodes the files its
samples need (the encoder's weights are identical on every rank), so no rank waits for another.

Held in memory as float32 on the CPU: (tokens x width) per file, e.g. 128 x 128 floats = 64 KiB
per volume of the quickstart; a cache is rebuilt at every training start (the encoder's weights
may have changed since the last run).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias, cast

import torch

if TYPE_CHECKING:
    from medvl.data.dataset import ConversationDataset
    from medvl.models.modeling_medvl import MedVLForConditionalGeneration
Encode: TypeAlias = Callable[[torch.Tensor], torch.Tensor]

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
        encoders: lazy filling: kind -> ``encode(values) -> features`` (float32, CPU) run on the
            files a lookup misses; None: filled beforehand (:func:`build_feature_cache`).
    """

    def __init__(self, kinds: Iterable[str], encoders: dict[str, Encode] | None = None) -> None:
        kinds = tuple(kinds)
        for kind in kinds:
            if kind not in FEATURE_KINDS:
                raise ValueError(f"unknown media kind {kind!r}; valid choices: {', '.join(FEATURE_KINDS)}")
        self.kinds = kinds
        self.features: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in kinds}
        self.encoders = dict(encoders or {})
        self.encoded = 0  # files encoded on a miss (lazy filling)

    def lookup(
        self, kind: str, paths: Sequence[str], load: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """The stacked features of ``paths`` (N, tokens, width), or None when ``kind`` is not
        cached or any path is missing (and cannot be encoded now).

        Args:
            kind: "image" or "volume".
            paths: the record's media files in marker order.
            load: lazy filling: returns the record's preprocessed media of this kind (N, ...), which
                are encoded and stored when some path is not cached yet.
        """
        table = self.features.get(kind)
        if table is None or not paths:
            return None
        if any(p not in table for p in paths):
            encode = self.encoders.get(kind)
            if encode is None or load is None:
                return None
            features = encode(load())
            for path, feature in zip(paths, features):
                if path not in table:
                    table[path] = feature
                    self.encoded += 1
        return torch.stack([table[p] for p in paths])

    def __len__(self) -> int:
        return sum(len(t) for t in self.features.values())


@torch.no_grad()
def build_feature_cache(
    model: torch.nn.Module, datasets: Sequence[ConversationDataset], kinds: Iterable[str], batch_size: int = 32
) -> EncoderFeatureCache:
    """Encode every distinct media file of ``datasets`` once with ``model``'s frozen encoder(s).

    Args:
        model: a ``MedVLForConditionalGeneration`` (or a PEFT wrapper of one).
        datasets: :class:`~medvl.data.dataset.ConversationDataset` objects whose records' media are
            encoded (their own loaders, volume cache and processors prepare the inputs).
        kinds: which encoders to cache ("image", "volume").
        batch_size: files per encoder forward pass.
    """
    cache = EncoderFeatureCache(kinds)
    start = time.time()
    for kind in cache.kinds:
        field = FEATURE_KINDS[kind][0]
        encode, module = _frozen_encoder(model, kind)
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
            features = encode(values).float().cpu()
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
    logger.info(
        "encoder feature cache: %s in %.1f s",
        ", ".join(f"{len(cache.features[k])} {k} files" for k in cache.kinds),
        time.time() - start,
    )
    return cache


def _frozen_encoder(model: torch.nn.Module, kind: str) -> tuple[Encode, torch.nn.Module]:
    """(the encode function, the encoder module) of a frozen encoder, checked."""
    get_base = getattr(model, "get_base_model", None)  # a PEFT wrapper: the medvl model under it
    # PEFT types the model it wraps as a bare nn.Module; here it is always a medvl model
    base = cast("MedVLForConditionalGeneration", get_base() if callable(get_base) else model)
    module = {"image": base.vision_tower, "volume": base.volume_encoder}[kind]
    if module is None:
        raise ValueError(f"data.cache_encoder_features: the model has no {kind} encoder")
    if any(p.requires_grad for p in module.parameters()):
        raise ValueError(
            f"data.cache_encoder_features: the {kind} encoder trains in this stage; "
            "cached features would go stale (set its part's mode to frozen)"
        )
    encode: Encode = base.encode_images if kind == "image" else base.encode_volumes
    return encode, module


def _run_frozen(encode: Encode, module: torch.nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``encode(values)`` in eval mode without autograd, on the module's current device; float32 on the CPU."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return encode(values.to(next(module.parameters()).device)).float().cpu()
    finally:
        module.train(was_training)


def lazy_feature_cache(model: torch.nn.Module, kinds: Iterable[str]) -> EncoderFeatureCache:
    """An empty cache that encodes a file with ``model``'s frozen encoder the first time it is looked up.

    The encoder runs in eval mode without autograd on the device its weights are on at that moment
    (the Trainer may move the model after the cache is made) and its outputs are kept as float32 on
    the CPU, exactly what :func:`build_feature_cache` stores.

    Args:
        model: a ``MedVLForConditionalGeneration`` (or a PEFT wrapper of one).
        kinds: which encoders to cache ("image", "volume").
    """
    kinds = tuple(kinds)
    encoders: dict[str, Encode] = {}
    for kind in kinds:
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown media kind {kind!r}; valid choices: {', '.join(FEATURE_KINDS)}")
        encoders[kind] = functools.partial(_run_frozen, *_frozen_encoder(model, kind))
    return EncoderFeatureCache(kinds, encoders)


__all__ = ["EncoderFeatureCache", "build_feature_cache", "lazy_feature_cache", "FEATURE_KINDS"]
