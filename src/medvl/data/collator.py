"""Batch collators: padded batches and padding-free packed rows.

Both produce the batch keys of the model's forward (see docs/ARCHITECTURE.md): ``input_ids``,
``labels`` (-100 where unsupervised, not shifted), ``pixel_values`` / ``volume_values`` with the
media of all samples concatenated in row order (row 0's media first, in marker order).

Samples that the dataset skipped (``None``, see ``data.on_error=skip``) are left out of the batch;
a batch whose samples were all skipped comes out with zero rows (the trainer steps over it).

* :class:`PaddedCollator`: ``attention_mask``; right padding for training, left padding for
  generation (so every prompt ends at the last column).
* :class:`PackingCollator`: all samples concatenated into ONE row with ``position_ids`` restarting
  at 0 per sample and no ``attention_mask``: transformers then derives a block-diagonal causal mask
  from the position restarts (sdpa/eager; run with ``use_cache=False``). The first label of every
  sample is -100 so the previous sample's last token never predicts the next sample's first.
* :class:`AdaptivePackingCollator` (``data.packing=true``): packing only where it pays. Samples are
  bin-packed (first fit, longest first) into rows of at most the batch's longest sample; when that
  saves too few rows (lengths of a batch alike: W2D's 263-286 tokens give one sample per bin) the
  batch stays padded, which keeps the plain causal attention path. A packed row with a
  block-diagonal mask costs more than the same tokens in separate causal rows, so padding a batch
  with little padding is faster than packing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from medvl.data.labels import IGNORE_INDEX

# raw media, or a frozen encoder's cached outputs in their place (medvl.data.feature_cache)
MEDIA_KEYS = ("pixel_values", "volume_values", "image_encoder_features", "volume_encoder_features")


def _concat_media(samples: Sequence[dict[str, Any]], batch: dict[str, Any]) -> None:
    for key in MEDIA_KEYS:
        parts = [s[key] for s in samples if s.get(key) is not None and len(s[key])]
        if parts:
            batch[key] = torch.cat(parts, dim=0)


def _present(samples: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The samples that were not skipped (a skipped sample is ``None``)."""
    return [s for s in samples if s is not None]


def _empty_batch(with_labels: bool, with_mask: bool) -> dict[str, Any]:
    """A zero-row batch: every sample of it was skipped."""
    batch: dict[str, Any] = {"input_ids": torch.zeros((0, 1), dtype=torch.long)}
    if with_mask:
        batch["attention_mask"] = torch.zeros((0, 1), dtype=torch.long)
    if with_labels:
        batch["labels"] = torch.full((0, 1), IGNORE_INDEX, dtype=torch.long)
    return batch


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.long)


class PaddedCollator:
    """Pad samples to a rectangle.

    Args:
        pad_token_id: id written into padded positions (attention_mask 0 there).
        padding_side: ``right`` (training) or ``left`` (generation).
        pad_to_multiple_of: round the padded length up to a multiple (e.g. 8 for tensor cores).
        return_ids: also return ``ids`` (record ids, a list of str); off by default because the
            HF Trainer passes every key to the model.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: Literal["right", "left"] = "right",
        pad_to_multiple_of: int | None = None,
        return_ids: bool = False,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"invalid padding_side {padding_side!r}; valid choices: right, left")
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: give the tokenizer a pad token")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.return_ids = return_ids

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Collate samples (dicts with ``input_ids``, optional ``labels`` and media).

        Args:
            samples: items of a :class:`~medvl.data.dataset.ConversationDataset` (``None``: skipped).
        """
        samples = _present(samples)
        if not samples:
            return {**_empty_batch(with_labels=True, with_mask=True), **({"ids": []} if self.return_ids else {})}
        ids = [_as_tensor(s["input_ids"]) for s in samples]
        has_labels = all(s.get("labels") is not None for s in samples)
        length = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        labels = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for row, (x, s) in enumerate(zip(ids, samples)):
            cols = slice(0, len(x)) if self.padding_side == "right" else slice(length - len(x), length)
            batch_ids[row, cols] = x
            mask[row, cols] = 1
            if labels is not None:
                labels[row, cols] = _as_tensor(s["labels"])
        batch: dict[str, Any] = {"input_ids": batch_ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = labels
        _concat_media(samples, batch)
        if self.return_ids:
            batch["ids"] = [s.get("id") for s in samples]
        return batch


class PackingCollator:
    """Concatenate samples into one padding-free row with per-sample ``position_ids``.

    Args:
        return_ids: also return ``ids`` (record ids), off by default (see :class:`PaddedCollator`).
    """

    def __init__(self, return_ids: bool = False):
        self.return_ids = return_ids

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Pack samples (dicts with ``input_ids``, ``labels`` and media) into a (1, total) row.

        Args:
            samples: items of a :class:`~medvl.data.dataset.ConversationDataset` (train mode; ``None``: skipped).
        """
        samples = _present(samples)
        if not samples:
            return {
                **_empty_batch(with_labels=True, with_mask=False),
                "position_ids": torch.zeros((0, 1), dtype=torch.long),
                **({"ids": []} if self.return_ids else {}),
            }
        ids, labels, pos = [], [], []
        for s in samples:
            x = _as_tensor(s["input_ids"])
            y = _as_tensor(s["labels"]).clone()
            y[0] = IGNORE_INDEX  # the previous sample's last logit must not learn this token
            ids.append(x)
            labels.append(y)
            pos.append(torch.arange(len(x), dtype=torch.long))
        batch: dict[str, Any] = {
            "input_ids": torch.cat(ids)[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat(pos)[None],
        }
        _concat_media(samples, batch)
        if self.return_ids:
            batch["ids"] = [s.get("id") for s in samples]
        return batch


def pack_bins(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit-decreasing bin packing: sample indices grouped into bins of at most ``budget`` tokens.

    Args:
        lengths: token count of each sample.
        budget: tokens per bin (a sample longer than it gets a bin of its own).
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(budget - lengths[index])
    return [sorted(b) for b in sorted(bins, key=min)]  # rows (and their media) in data order


class AdaptivePackingCollator:
    """Pack a batch into fewer rows only when that saves enough work; otherwise pad it.

    Packed rows carry ``position_ids`` (B, L) restarting at 0 per sample and no ``attention_mask``
    (transformers derives the block-diagonal causal mask per row); the tail of a shorter row is a
    pad segment of its own (positions from 0, labels -100), which no real token attends to. The
    first label of every sample is -100, as in :class:`PackingCollator`. The loss equals the padded
    batch's (fp32 rounding).

    Args:
        pad_token_id: id of padding positions.
        min_row_saving: pack when bin packing needs at most ``(1 - min_row_saving)`` of the padded
            batch's rows (default 0.25: 8 skewed samples in 6 rows or fewer).
        max_tokens: token budget of a packed row; None: the batch's longest sample, so a packed batch
            is never wider than the padded one.
        return_ids: also return ``ids`` (record ids).
    """

    def __init__(
        self, pad_token_id: int, min_row_saving: float = 0.25, max_tokens: int | None = None, return_ids: bool = False
    ):
        if not 0.0 <= min_row_saving < 1.0:
            raise ValueError(f"min_row_saving must be in [0, 1), got {min_row_saving}")
        self.padded = PaddedCollator(pad_token_id=pad_token_id, padding_side="right", return_ids=return_ids)
        self.pad_token_id = int(pad_token_id)
        self.min_row_saving = min_row_saving
        self.max_tokens = max_tokens
        self.return_ids = return_ids

    def plan(self, lengths: Sequence[int]) -> list[list[int]] | None:
        """The bins a batch of these sample lengths would be packed into, or None to pad it."""
        budget = max(self.max_tokens or 0, max(lengths))
        bins = pack_bins(lengths, budget)
        if len(bins) >= len(lengths) or 1.0 - len(bins) / len(lengths) < self.min_row_saving:
            return None
        return bins

    def __call__(self, samples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Collate training samples (``input_ids``, ``labels``, media).

        Args:
            samples: items of a :class:`~medvl.data.dataset.ConversationDataset` (train mode; ``None``:
                skipped).
        """
        samples = _present(samples)
        ids = [_as_tensor(s["input_ids"]) for s in samples]
        bins = self.plan([len(x) for x in ids]) if samples else None
        if bins is None:  # alike lengths, or every sample skipped (the padded collator's zero-row batch)
            return self.padded(samples)
        width = max(sum(len(ids[i]) for i in b) for b in bins)
        batch_ids = torch.full((len(bins), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(bins), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(bins), width), dtype=torch.long)
        for row, b in enumerate(bins):
            col = 0
            for i in b:
                n = len(ids[i])
                batch_ids[row, col : col + n] = ids[i]
                y = _as_tensor(samples[i]["labels"]).clone()
                y[0] = IGNORE_INDEX
                labels[row, col : col + n] = y
                positions[row, col : col + n] = torch.arange(n)
                col += n
            positions[row, col:] = torch.arange(width - col)  # the pad tail: a segment of its own
        batch: dict[str, Any] = {"input_ids": batch_ids, "labels": labels, "position_ids": positions}
        order = [samples[i] for b in bins for i in b]
        _concat_media(order, batch)
        if self.return_ids:
            batch["ids"] = [s.get("id") for s in order]
        return batch
