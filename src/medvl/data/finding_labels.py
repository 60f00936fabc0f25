"""Finding labels per image or volume, for stage 0 (``train.stage: encoder_pretrain``).

Stage 0 trains an encoder as a classifier, so its data are (one image or volume, its labels) items.
They come from the same files as every other stage (``data.train`` / ``data.eval``), in one of
three forms:

* **Label tables**: ``.csv`` / ``.tsv`` with a media column (``image`` or ``volume``, also ``path``
  or ``file``), an optional ``id`` column and one column per label; or JSON / JSONL rows
  ``{"id": ..., "image": "a.png", "labels": {"nodule": 1, "effusion": "left"}}``. Each row is one
  item (the same file may appear in several rows). Media paths are relative to ``data.root`` or the
  table's folder.
* **Records with ``meta.labels``** (``labels: meta``): ``{"images": [...], "messages": [...],
  "meta": {"labels": {"nodule": 1, "effusion_left": 0}}}``. Records of the same file are merged
  into one item; a label given two different values for one file is an error naming both records.
* **VQA records** (``labels: vqa``): every closed yes/no answer becomes a binary label of the
  record's image (yes/是 = 1, no/否 = 0). The label is named after the question type
  (``meta.question_type``, or ``meta.question_types[i]`` for the i-th question of a conversation),
  else after the question text (lower case, markers and trailing punctuation removed), so the
  phrasings of one question type pool into one label. Other answers are not labels.

Values: 1/0, true/false, yes/no (是/否) make a *binary* label; any other text makes the label
*multi-class* (its classes are the distinct values seen in training, e.g. effusion none/left/right).
An empty cell or null is *unknown*: that label does not count for that item (loss and metrics).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from medvl.errors import MedVLDataError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medvl.data.records import Record
    from medvl.models.processing_medvl import MedVLProcessor

MediaKind = Literal["image", "volume"]
TABLE_SUFFIXES = (".csv", ".tsv")
MEDIA_COLUMNS = {"image": ("image", "path", "file"), "volume": ("volume", "path", "file")}
_TRUE = {"1", "1.0", "true", "yes", "是", "y", "positive"}
_FALSE = {"0", "0.0", "false", "no", "否", "n", "negative"}
_YES_ANSWERS, _NO_ANSWERS = {"yes", "是"}, {"no", "否"}
_MARKERS = re.compile(r"<image>|<volume>|<image3d>")


@dataclass
class LabelledItem:
    """One image or volume with its labels.

    Args:
        id: where it came from (record id(s) or ``table:row``), for error messages.
        path: the media file (absolute).
        labels: label name -> raw value (int, bool, str; None = unknown).
        source: the file it was read from.
    """

    id: str
    path: str
    labels: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def parse_value(value: Any) -> int | str | None:
    """A raw label value as 1/0 (binary), a class name (str) or None (unknown).

    Args:
        value: a table cell or a JSON value.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        if value in (0, 1):
            return int(value)
        return str(value)
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "null"):  # "none" is a class name (effusion: none/left/...)
        return None
    low = text.lower()
    if low in _TRUE:
        return 1
    if low in _FALSE:
        return 0
    return text


# ---------------------------------------------------------------------------- reading
def is_label_table(path: str | Path) -> bool:
    """Whether a data file is a label table (CSV/TSV, or JSON/JSONL rows with ``labels`` and no
    conversation) rather than a records file.

    Args:
        path: a ``data.train`` / ``data.eval`` entry.
    """
    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return True
    if path.suffix.lower() not in (".json", ".jsonl"):
        return False
    from medvl.data.records import iter_raw

    for _, obj in iter_raw(path):
        return isinstance(obj, dict) and "labels" in obj and "messages" not in obj and "conversations" not in obj
    return False


def _resolve(rel: str, base: Path, rid: str, table: Path) -> str:
    """An absolute media path, which must resolve inside ``base`` (as records' media must)."""
    from medvl.data.records import check_inside_root

    p = Path(rel).expanduser()
    full = p if p.is_absolute() else base / p
    check_inside_root(full, base, rid, str(table), written=rel)
    return str(full)


def load_label_table(path: str | Path, kind: MediaKind, root: str | Path | None = None) -> list[LabelledItem]:
    """Items of a label table (one per row).

    Args:
        path: ``.csv`` / ``.tsv``, or JSON/JSONL rows with a media key and ``labels``.
        kind: "image" or "volume" (which media column is read).
        root: folder relative media paths are resolved against (default: the table's folder).
    """
    path = Path(path)
    if not path.is_file():
        raise MedVLDataError("label table not found", path=str(path))
    base = Path(root).expanduser() if root is not None else path.parent
    items: list[LabelledItem] = []
    if path.suffix.lower() in TABLE_SUFFIXES:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            columns = reader.fieldnames or []
            media = next((c for c in MEDIA_COLUMNS[kind] if c in columns), None)
            if media is None:
                raise MedVLDataError(
                    f"a label table needs a media column ({' or '.join(MEDIA_COLUMNS[kind])}); columns: {columns}",
                    path=str(path),
                )
            label_columns = [c for c in columns if c not in (media, "id")]
            if not label_columns:
                raise MedVLDataError(f"the label table has no label columns (columns: {columns})", path=str(path))
            for line, row in enumerate(reader, start=2):
                rid = row.get("id") or f"{path.name}:{line}"
                if not row.get(media):
                    raise MedVLDataError(f"row {line} has no {media!r} value", record=rid, path=str(path))
                items.append(
                    LabelledItem(
                        rid, _resolve(row[media], base, rid, path), {c: row[c] for c in label_columns}, str(path)
                    )
                )
        return items
    from medvl.data.records import iter_raw

    for rid, obj in iter_raw(path):
        rid = str(obj.get("id", rid)) if isinstance(obj, dict) else str(rid)
        media = next((k for k in MEDIA_COLUMNS[kind] if isinstance(obj, dict) and obj.get(k)), None)
        if media is None or not isinstance(obj.get("labels"), dict):
            raise MedVLDataError(
                f"a label row needs a media key ({' or '.join(MEDIA_COLUMNS[kind])}) and a 'labels' mapping",
                record=rid,
                path=str(path),
            )
        value = obj[media]
        if isinstance(value, list):
            if len(value) != 1:
                raise MedVLDataError(f"a label row names one {kind}, got {len(value)}", record=rid, path=str(path))
            value = value[0]
        items.append(LabelledItem(rid, _resolve(str(value), base, rid, path), dict(obj["labels"]), str(path)))
    return items


def _question_name(record: Record, turn: int, question: str) -> str:
    types = record.meta.get("question_types")
    if isinstance(types, list) and turn < len(types):
        return str(types[turn])
    if "question_type" in record.meta:
        return str(record.meta["question_type"])
    return _MARKERS.sub("", question).strip().rstrip("?？.。!！ ").strip().lower()


def vqa_labels(record: Record) -> dict[str, int]:
    """Binary labels from a record's closed yes/no answers (see the module docstring).

    Args:
        record: a :class:`medvl.data.records.Record`.
    """
    labels: dict[str, int] = {}
    turn = 0
    messages = [m for m in record.messages if m["role"] != "system"]
    for question, answer in zip(messages, messages[1:]):
        if question["role"] != "user" or answer["role"] != "assistant":
            continue
        word = answer["content"].strip().rstrip(".。!！ ").strip().lower()
        if word in _YES_ANSWERS | _NO_ANSWERS:
            name = _question_name(record, turn, question["content"])
            value = int(word in _YES_ANSWERS)
            if labels.get(name, value) != value:
                raise MedVLDataError(
                    f"label {name!r} is answered both yes and no", record=record.id, path=record.source_file
                )
            labels[name] = value
        turn += 1
    return labels


def items_from_records(
    records: Sequence[Record], kind: MediaKind, source: Literal["auto", "meta", "vqa"]
) -> list[LabelledItem]:
    """One item per distinct media file of ``records``, labels merged over the records that show it.

    Args:
        records: :class:`medvl.data.records.Record` objects (one file's, or a mix).
        kind: "image" or "volume".
        source: meta (``meta.labels``), vqa (closed yes/no answers) or auto (meta if any record has
            it, else vqa).
    """
    if source == "auto":
        source = "meta" if any(isinstance(r.meta.get("labels"), dict) for r in records) else "vqa"
    by_path: dict[str, LabelledItem] = {}
    origin: dict[tuple[str, str], str] = {}
    unlabelled = 0
    for rec in records:
        media = rec.media_paths(kind)
        if not media:
            continue
        if source == "meta":
            raw = rec.meta.get("labels")
            if raw is None:
                unlabelled += 1
                continue
            if not isinstance(raw, dict):
                raise MedVLDataError(
                    f"meta.labels must be a mapping of label -> value, got {raw!r}", record=rec.id, path=rec.source_file
                )
        else:
            raw = vqa_labels(rec)
            if not raw:
                unlabelled += 1
                continue
        if len(media) != 1:
            raise MedVLDataError(
                f"stage-0 labels belong to one {kind} per record, this record has {len(media)}",
                record=rec.id,
                path=rec.source_file,
            )
        item = by_path.setdefault(media[0], LabelledItem(rec.id, media[0], {}, rec.source_file))
        for name, value in raw.items():
            parsed = parse_value(value)
            if parsed is None:
                continue
            before = parse_value(item.labels.get(name))
            if before is not None and before != parsed:
                raise MedVLDataError(
                    f"label {name!r} of {media[0]} is {before!r} in record {origin[(media[0], name)]!r} but "
                    f"{parsed!r} here",
                    record=rec.id,
                    path=rec.source_file,
                )
            item.labels[name] = parsed
            origin[(media[0], name)] = rec.id
    if unlabelled:
        logger.info(
            "stage 0: %d record(s) with a %s carry no %s labels and are not used",
            unlabelled,
            kind,
            "meta.labels" if source == "meta" else "yes/no",
        )
    return list(by_path.values())


def load_labelled_items(
    paths: Iterable[str],
    kind: MediaKind,
    *,
    source: Literal["auto", "meta", "vqa"] = "auto",
    root: str | Path | None = None,
    split: str = "train",
    seed: int = 0,
) -> list[LabelledItem]:
    """Items of ``data.train`` or ``data.eval`` entries (label tables, records files, registries).

    Args:
        paths: the data files.
        kind: "image" or "volume".
        source: how records files give labels (tables carry their own).
        root: ``data.root``.
        split: registry split to read.
        seed: registry mixing seed.
    """
    from medvl.data.records import load_records
    from medvl.data.registry import REGISTRY_SUFFIXES, load_registry_records

    items: list[LabelledItem] = []
    for path in paths:
        if Path(path).suffix.lower() in REGISTRY_SUFFIXES:
            items += items_from_records(load_registry_records(path, split, seed=seed), kind, source)
        elif is_label_table(path):
            items += load_label_table(path, kind, root)
        else:
            items += items_from_records(load_records(path, root=root), kind, source)
    return items


# ---------------------------------------------------------------------------- label schema
@dataclass
class LabelSpec:
    """One label: binary (``classes`` None, one logit) or multi-class (one logit per class).

    Args:
        name: the label's name.
        classes: class names of a multi-class label, or None.
    """

    name: str
    classes: list[str] | None = None

    @property
    def width(self) -> int:
        """Logits this label takes."""
        return 1 if self.classes is None else len(self.classes)


@dataclass
class LabelSchema:
    """The labels the stage-0 head predicts, in order, and how items become target vectors.

    The target of an item is one float per logit: a binary label's 1/0, a multi-class label's
    one-hot classes; NaN where the item's value is unknown (ignored by loss and metrics).

    Args:
        labels: the labels, in logit order.
    """

    labels: list[LabelSpec]

    @classmethod
    def from_items(cls, items: Sequence[LabelledItem], names: Sequence[str] = ()) -> LabelSchema:
        """The labels of the training items (first-seen order; classes sorted).

        Args:
            items: training items.
            names: keep only these labels (in this order); an unknown name is an error.
        """
        values: dict[str, set] = {}
        for item in items:
            for name, raw in item.labels.items():
                parsed = parse_value(raw)
                bucket = values.setdefault(name, set())
                if parsed is not None:
                    bucket.add(parsed)
        if names:
            missing = [n for n in names if n not in values]
            if missing:
                raise ValueError(
                    f"train.encoder_pretrain.label_names: {missing} not found in the training data; "
                    f"labels there: {', '.join(values)}"
                )
            values = {n: values[n] for n in names}
        specs = []
        for name, seen in values.items():
            if not seen:
                logger.warning("stage 0: label %r has no known value in the training data; dropped", name)
                continue
            if seen <= {0, 1}:
                specs.append(LabelSpec(name))
            else:
                specs.append(LabelSpec(name, sorted(str(v) for v in seen)))
        if not specs:
            raise ValueError("stage 0: the training data carry no labels")
        return cls(specs)

    @property
    def width(self) -> int:
        """Total number of logits."""
        return sum(spec.width for spec in self.labels)

    def slices(self) -> list[tuple[LabelSpec, slice]]:
        """Each label with its logit positions."""
        out, start = [], 0
        for spec in self.labels:
            out.append((spec, slice(start, start + spec.width)))
            start += spec.width
        return out

    def encode(self, item: LabelledItem) -> torch.Tensor:
        """The target vector of an item (NaN = unknown).

        Args:
            item: the item.
        """
        target = torch.full((self.width,), float("nan"))
        for spec, where in self.slices():
            value = parse_value(item.labels.get(spec.name))
            if value is None:
                continue
            if spec.classes is None:
                if value not in (0, 1):
                    raise MedVLDataError(
                        f"label {spec.name!r} is binary in the training data but has value {value!r} here",
                        record=item.id,
                        path=item.source,
                    )
                target[where] = float(value)
            else:
                if str(value) not in spec.classes:
                    raise MedVLDataError(
                        f"label {spec.name!r} has value {value!r}, not one of the classes seen in "
                        f"training ({', '.join(spec.classes)})",
                        record=item.id,
                        path=item.source,
                    )
                target[where] = 0.0
                target[where.start + spec.classes.index(str(value))] = 1.0
        return target

    def to_dict(self) -> dict[str, Any]:
        """JSON form (saved next to the stage-0 head)."""
        return {"labels": [{"name": s.name, "classes": s.classes} for s in self.labels]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSchema:
        """Inverse of :meth:`to_dict`.

        Args:
            d: the JSON form.
        """
        return cls([LabelSpec(x["name"], x.get("classes")) for x in d["labels"]])


# ---------------------------------------------------------------------------- dataset
class FindingDataset(torch.utils.data.Dataset):
    """(preprocessed media, target vector) items for the stage-0 classifier.

    Args:
        items: the labelled items.
        schema: the labels (from the training items).
        processor: the model's processor (its image or volume processor preprocesses, exactly as
            in instruction tuning).
        kind: "image" or "volume".
        volume_cache: a ``medvl data prepare`` cache folder (volumes found there are not decoded).
        cache_media: keep each preprocessed file in memory (float16) after its first use.
    """

    def __init__(
        self,
        items: Sequence[LabelledItem],
        schema: LabelSchema,
        processor: MedVLProcessor,
        kind: MediaKind,
        *,
        volume_cache: str | Path | None = None,
        cache_media: bool = False,
    ) -> None:
        if not items:
            raise ValueError(f"stage 0: no labelled {kind}s")
        self.items = list(items)
        self.schema = schema
        self.processor = processor
        self.kind = kind
        self.key = "pixel_values" if kind == "image" else "volume_values"
        self.targets = torch.stack([schema.encode(item) for item in self.items])
        self.cache = None
        if volume_cache is not None and kind == "volume":
            from medvl.data.prepare import VolumeCache

            self.cache = VolumeCache(volume_cache)
            self.cache.check_processor(processor.volume_processor)
        self.memory: dict[str, torch.Tensor] | None = {} if cache_media else None
        proc = getattr(processor, "image_processor" if kind == "image" else "volume_processor", None)
        if proc is None:
            raise ValueError(f"stage 0 on {kind}s: the model's processor has no {kind} processor")

    def __len__(self) -> int:
        return len(self.items)

    def media(self, index: int) -> torch.Tensor:
        """The preprocessed image (3, H, W) or volume (C, D, H, W) of item ``index``.

        Args:
            index: item index.
        """
        item = self.items[index]
        if self.memory is not None and item.path in self.memory:
            return self.memory[item.path].float()
        image_processor, volume_processor = self.processor.image_processor, self.processor.volume_processor
        try:
            if self.kind == "image":
                from medvl.imaging import load_image

                if image_processor is None:
                    raise ValueError("stage 0 on images needs a processor with an image processor (a vision tower)")
                values = image_processor([load_image(item.path)], return_tensors="pt")["pixel_values"][0]
            else:
                values = self.cache.get(item.path, record=item.id) if self.cache is not None else None
                if values is None:
                    from medvl.imaging import load_volume

                    if volume_processor is None:
                        raise ValueError("stage 0 on volumes needs a processor with a volume processor")
                    values = volume_processor([load_volume(item.path)])["volume_values"][0]
        except MedVLDataError as err:
            if err.record is not None:
                raise
            # the reader names the file; add the item
            raise MedVLDataError(f"cannot read the {self.kind}: {err}", record=item.id) from err
        except Exception as err:  # name the item and the file, not just the decoder's words
            raise MedVLDataError(f"cannot read the {self.kind}: {err}", record=item.id, path=item.path) from err
        if self.memory is not None:
            self.memory[item.path] = values.half()
            return self.memory[item.path].float()
        return values

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {self.key: self.media(index), "labels": self.targets[index]}


def collate_findings(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack :class:`FindingDataset` items into a batch.

    Args:
        batch: items.
    """
    return {key: torch.stack([b[key] for b in batch]) for key in batch[0]}


__all__ = [
    "LabelledItem",
    "LabelSpec",
    "LabelSchema",
    "FindingDataset",
    "collate_findings",
    "load_labelled_items",
    "load_label_table",
    "items_from_records",
    "vqa_labels",
    "is_label_table",
    "parse_value",
]
