"""A torch Dataset of tokenised conversations with their media tensors.

Each item is a dict ``input_ids`` (L,), ``labels`` (L,) (train mode), ``pixel_values``
(n_images, 3, H, W) and ``volume_values`` (n_volumes, C, D, H, W) when the record has media, and
``id``. Errors surface lazily, when an item is read, as :class:`~medvl.errors.MedVLDataError`
naming the record, the file and the problem. With ``on_error="skip"`` (or ``on_overlong="skip"``)
the item is ``None``: the sample is dropped (the collators leave it out of the batch, never put
another record in its place, which would show that record twice in the epoch) and counted in
:attr:`ConversationDataset.skipped` (per process: with DataLoader workers each worker counts its
own, and logs a warning per skip).
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

import torch

from medvl.data.feature_cache import FEATURE_KINDS
from medvl.data.labels import ConversationEncoder, OverlongSampleError
from medvl.data.records import Record
from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    from PIL import Image
    from transformers import PreTrainedTokenizerBase

    from medvl.data.augment import Augmenter
    from medvl.data.feature_cache import EncoderFeatureCache
    from medvl.data.prepare import VolumeCache
    from medvl.imaging import Volume
    from medvl.models.processing_medvl import MedVLProcessor

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
OnOverlong = Literal["skip", "error"]
Mode = Literal["train", "prompt"]
_MAX_WARNINGS = 20  # per reason; the counts keep going


# the augment hook's sample: {"messages", "images" (PIL), "volumes" (Volume-like), "record"}, other keys kept
SampleHook: TypeAlias = "Callable[[dict[str, Any]], dict[str, Any]]"
ImageLoader: TypeAlias = "Callable[[str], Image.Image]"
VolumeLoader: TypeAlias = "Callable[[str], Volume]"
MediaT = TypeVar("MediaT")


def mix_records(groups: Sequence[tuple[Sequence[Record], float]], seed: int = 0) -> list[Record]:
    """Mix record lists by weight: a weight is how many times each record is used per epoch.

    ``1.0`` uses every record once, ``0.5`` a random half, ``2.5`` every record twice plus a random
    half. The draw is seeded, so every process of a distributed run sees the same mix.

    Args:
        groups: ``(records, weight)`` pairs, weight >= 0.
        seed: random seed of the fractional draws.
    """
    rng = random.Random(seed)
    out: list[Record] = []
    for records, weight in groups:
        if weight < 0:
            raise ValueError(f"mixing weight must be >= 0, got {weight}")
        whole, frac = int(weight), weight - int(weight)
        out.extend(list(records) * whole)
        n_extra = round(frac * len(records))
        if n_extra:
            out.extend(records[i] for i in sorted(rng.sample(range(len(records)), n_extra)))
    return out


class ConversationDataset(torch.utils.data.Dataset):
    """Tokenised conversations with media tensors, built lazily per item.

    Args:
        records: the records (see :func:`medvl.data.records.load_records`, :func:`mix_records`).
        processor: a ``MedVLProcessor`` (tokenizer, ``image_processor``, ``volume_processor``,
            ``num_image_tokens``, ``num_volume_tokens``, ``chat_template``).
        template: chat template (``auto`` = the processor's own; see :mod:`medvl.data.templates`).
            In ``train`` mode the processor's ``chat_template`` is set to it, so that the saved
            checkpoint prompts at inference exactly as it was trained.
        max_length: longest sample in tokens, media placeholders included (None: no limit).
        on_error: ``raise`` or ``skip`` bad records (missing/corrupt media, marker mismatch...).
        on_overlong: ``skip`` (count + warn) or ``error`` for samples longer than ``max_length``;
            samples are never truncated.
        mode: ``train`` (ids + labels of the whole conversation) or ``prompt`` (generation prompt
            ids, a trailing assistant answer dropped; no labels).
        augment: optional callable ``augment(sample) -> sample`` on ``{"messages", "images"
            (PIL), "volumes" (Volume), "record"}`` before tokenisation (e.g. a flip that also swaps
            left/right in the text), or a :class:`medvl.data.augment.Augmenter`, whose
            ``augment_sample`` is that hook and whose ``augment_volume_values`` then jitters the
            processed volumes. Off by default; never used in ``prompt`` mode.
        cache: a :class:`medvl.data.prepare.VolumeCache` (or its folder) of preprocessed volumes;
            refused when it was built with another volume processor configuration.
        feature_cache: a :class:`medvl.data.feature_cache.EncoderFeatureCache`: records whose
            media it holds get ``image_encoder_features`` / ``volume_encoder_features`` instead of
            pixel / volume values (not with augmentation). Usually attached after construction.
        image_loader: path -> PIL image (default :func:`medvl.imaging.load_image`).
        volume_loader: path -> Volume (default :func:`medvl.imaging.load_volume`).
        encoder: a ready :class:`ConversationEncoder` (overrides ``template``/``max_length``).
    """

    def __init__(
        self,
        records: Sequence[Record],
        processor: MedVLProcessor,
        *,
        template: str | None = "auto",
        max_length: int | None = None,
        on_error: OnError = "raise",
        on_overlong: OnOverlong = "skip",
        mode: Mode = "train",
        augment: Augmenter | SampleHook | None = None,
        cache: VolumeCache | str | Path | None = None,
        image_loader: ImageLoader | None = None,
        volume_loader: VolumeLoader | None = None,
        encoder: ConversationEncoder | None = None,
        feature_cache: EncoderFeatureCache | None = None,
    ) -> None:
        for name, value, choices in (
            ("on_error", on_error, ("raise", "skip")),
            ("on_overlong", on_overlong, ("skip", "error")),
            ("mode", mode, ("train", "prompt")),
        ):
            if value not in choices:
                raise ValueError(f"invalid {name} {value!r}; valid choices: {', '.join(choices)}")
        self.records = list(records)
        self.processor = processor
        if encoder is None:
            encoder = encoder_for(processor, template, max_length)
        self.encoder = encoder
        self.on_error = on_error
        self.on_overlong = on_overlong
        self.mode = mode
        self._bind_template(processor)
        if mode != "train":
            augment = None
        from medvl.data.augment import Augmenter
        from medvl.data.prepare import VolumeCache

        # an Augmenter: its sample hook before processing, its volume jitter after the volume processor
        self.augment_volume_values: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.augment: SampleHook | None = augment if not isinstance(augment, Augmenter) else augment.augment_sample
        if isinstance(augment, Augmenter):
            self.augment_volume_values = augment.augment_volume_values
        self._image_loader = image_loader
        self._volume_loader = volume_loader
        if cache is not None and not isinstance(cache, VolumeCache):
            cache = VolumeCache(cache)
        if cache is not None:
            cache.check_processor(getattr(processor, "volume_processor", None))
        self.cache: VolumeCache | None = cache
        self.feature_cache: EncoderFeatureCache | None = feature_cache
        self.skipped: Counter[str] = Counter()

    @classmethod
    def from_source(
        cls,
        source: str | Path,
        processor: MedVLProcessor,
        *,
        split: str | None = "train",
        names: list[str] | None = None,
        weights: dict[str, float] | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> ConversationDataset:
        """A dataset from a records file or a registry YAML (its data sets mixed by weight).

        Args:
            source: records file (.json/.jsonl) or registry (.yaml).
            processor: the model's processor.
            split: registry split to use.
            names: registry data sets to use (default: all of the split).
            weights: name -> weight overriding the registry's.
            seed: seed of the fractional-weight draws.
            **kwargs: the other :class:`ConversationDataset` arguments.
        """
        from medvl.data.registry import load_registry_records

        return cls(load_registry_records(source, split, names, weights, seed), processor, **kwargs)

    def _bind_template(self, processor: MedVLProcessor) -> None:
        """Make the processor carry the template the model is trained with.

        Why: inference renders prompts with ``processor.apply_chat_template``, and the processor is
        saved with the checkpoint; a model trained on e.g. ``vicuna`` prompts must be prompted the
        same way after reloading.
        """
        if self.mode != "train" or not hasattr(processor, "tokenizer") or not hasattr(processor, "chat_template"):
            return
        if processor.chat_template != self.encoder.template:
            logger.info("processor chat template set to the training template %r", self.encoder.template_name)
            processor.chat_template = self.encoder.template

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ media
    def _load_images(self, rec: Record) -> list[Image.Image]:
        loader = self._image_loader
        if loader is None:  # the default loader honours the record's (or its data set's) window
            from medvl.imaging.image2d import load_image, record_window

            loader = functools.partial(load_image, window=record_window(rec.meta, rec.id, rec.source_file))
        return [_guarded(loader, p, rec, "image") for p in rec.media_paths("image")]

    def _load_volumes(self, rec: Record) -> list[Volume]:
        from medvl.imaging import load_volume

        loader = self._volume_loader or load_volume
        return [_guarded(loader, p, rec, "volume") for p in rec.media_paths("volume")]

    def _pixel_values(self, images: list[Image.Image], rec: Record) -> torch.Tensor:
        proc = getattr(self.processor, "image_processor", None)
        if proc is None:
            raise MedVLDataError(
                "the record has images but the model has no image processor", record=rec.id, path=rec.source_file
            )
        return proc(images, return_tensors="pt")["pixel_values"]

    def _volume_values(self, volumes: Sequence[Volume], rec: Record) -> torch.Tensor:
        proc = getattr(self.processor, "volume_processor", None)
        if proc is None:
            raise MedVLDataError(
                "the record has volumes but the model has no volume processor", record=rec.id, path=rec.source_file
            )
        tensors = []
        for path, vol in zip(rec.media_paths("volume"), volumes):
            try:
                tensors.append(proc([vol])["volume_values"][0])
            except MedVLDataError:
                raise
            except Exception as err:  # a processing failure names the sample, not just numpy's words
                raise MedVLDataError(f"volume preprocessing failed: {err}", record=rec.id, path=path) from err
        return torch.stack(tensors)

    def media_values(self, rec: Record, kind: str) -> torch.Tensor:
        """One record's preprocessed media of one kind, as the model takes them (no augmentation).

        Args:
            rec: the record.
            kind: "image" (pixel values) or "volume" (volume values).
        """
        if kind == "image":
            return self._pixel_values(self._load_images(rec), rec)
        if kind != "volume":
            raise ValueError(f"unknown media kind {kind!r}; valid choices: image, volume")
        cached = self._cached_volumes(rec)
        return torch.stack(cached) if cached is not None else self._volume_values(self._load_volumes(rec), rec)

    def _cached_volumes(self, rec: Record) -> list[torch.Tensor] | None:
        """The record's volumes preprocessed by `medvl data prepare`, or None unless all of them are cached."""
        if self.cache is None or not rec.volumes:
            return None
        cached = [self.cache.get(p, record=rec.id) for p in rec.media_paths("volume")]
        tensors = [c for c in cached if c is not None]
        return tensors if len(tensors) == len(cached) else None

    # ------------------------------------------------------------------ items
    def build(self, index: int) -> dict[str, Any]:
        """Build item ``index`` without any skip policy (errors propagate).

        Args:
            index: record index.
        """
        rec = self.records[index]
        ids, labels = self._encode(rec, rec.messages)  # length checked before any file is read
        # a frozen encoder's cached outputs stand in for the media (never with augmentation)
        features = self._cached_features(rec)
        images = [] if "image_encoder_features" in features else self._load_images(rec)
        # preprocessed volumes from `medvl data prepare` (not with augmentation: it needs the raw volume)
        cached = (
            None if self.augment is not None or "volume_encoder_features" in features else self._cached_volumes(rec)
        )
        volumes = [] if cached is not None or "volume_encoder_features" in features else self._load_volumes(rec)
        if self.augment is not None:
            out = self.augment({"messages": rec.messages, "images": images, "volumes": volumes, "record": rec})
            images, volumes = out.get("images", images), out.get("volumes", volumes)
            if out.get("messages", rec.messages) != rec.messages:
                ids, labels = self._encode(rec, out["messages"])
        item: dict[str, Any] = {"input_ids": torch.tensor(ids, dtype=torch.long), "id": rec.id}
        if labels is not None:
            item["labels"] = torch.tensor(labels, dtype=torch.long)
        if images:
            item["pixel_values"] = self._pixel_values(images, rec)
        if cached is not None or volumes:
            item["volume_values"] = torch.stack(cached) if cached is not None else self._volume_values(volumes, rec)
            if self.augment_volume_values is not None:
                item["volume_values"] = self.augment_volume_values(item["volume_values"])
        item.update(features)
        return item

    def _encode(self, rec: Record, messages: list[dict[str, str]]) -> tuple[list[int], list[int] | None]:
        """Token ids and labels (None in prompt mode) of ``messages``, length checked."""
        if self.mode == "prompt":
            ids = self.encoder.encode_prompt(messages, record=rec.id)
            self.encoder.check_length(len(ids), record=rec.id, path=rec.source_file)
            return ids, None
        enc = self.encoder.encode(messages, record=rec.id, path=rec.source_file)
        return enc.input_ids, enc.labels

    def _cached_features(self, rec: Record) -> dict[str, torch.Tensor]:
        """Batch key -> the frozen encoder's features of the record's media, for the kinds cached."""
        features: dict[str, torch.Tensor] = {}
        if self.feature_cache is None or self.augment is not None:
            return features
        for kind, (field, _, key) in FEATURE_KINDS.items():
            # a lazy cache encodes the record's media now if it has not seen them yet
            load = functools.partial(self.media_values, rec, kind)
            cached_features = self.feature_cache.lookup(kind, getattr(rec, field), load=load)
            if cached_features is not None:
                features[key] = cached_features
        return features

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        n = len(self.records)
        if not -n <= index < n:  # plain iteration relies on IndexError to stop
            raise IndexError(f"index {index} out of range for a dataset of {n} records")
        try:
            return self.build(index % n)
        except OverlongSampleError as err:
            if self.on_overlong == "error":
                raise
            self._count("overlong", err)
        except MedVLDataError as err:
            if self.on_error == "raise":
                raise
            self._count("error", err)
        return None  # skipped: dropped from its batch by the collator, counted in self.skipped

    def _count(self, reason: str, err: Exception) -> None:
        self.skipped[reason] += 1
        if self.skipped[reason] <= _MAX_WARNINGS:
            logger.warning("skipping a sample (%s, %d so far): %s", reason, self.skipped[reason], err)
        elif self.skipped[reason] == _MAX_WARNINGS + 1:
            logger.warning("more %s samples skipped; further warnings suppressed (see dataset.skipped)", reason)

    def lengths(self) -> list[int]:
        """Token count of every record (media placeholders included), without reading media.

        Records that fail to encode count as 0.
        """
        out = []
        for rec in self.records:
            try:
                msgs = rec.messages if self.mode == "train" else self.encoder.prompt_messages(rec.messages)
                out.append(self.encoder.count_tokens(msgs, record=rec.id))
            except MedVLDataError:
                out.append(0)
        return out


def _guarded(loader: Callable[[str], MediaT], path: str, rec: Record, kind: str) -> MediaT:
    """Call a media loader; any failure becomes a MedVLDataError naming the record and file."""
    if not Path(path).exists():
        raise MedVLDataError(f"{kind} file not found", record=rec.id, path=path)
    try:
        return loader(path)
    except MedVLDataError as err:
        if err.record is None:  # the loader knows the file, the dataset knows the record
            raise MedVLDataError(str(err), record=rec.id) from err
        raise
    except Exception as err:
        raise MedVLDataError(f"cannot read {kind}: {type(err).__name__}: {err}", record=rec.id, path=path) from err


def encoder_for(
    processor: MedVLProcessor | PreTrainedTokenizerBase, template: str | None = "auto", max_length: int | None = None
) -> ConversationEncoder:
    """A :class:`ConversationEncoder` matching a processor (its own template when ``auto``).

    Args:
        processor: a ``MedVLProcessor`` or a bare tokenizer.
        template: chat template name or Jinja string.
        max_length: longest allowed sample (media tokens included).
    """
    return ConversationEncoder.from_processor(processor, template, max_length)
