"""``medvl data check``: read a data set (or a registry of them) once and report every problem.

Unlike training, which stops at (or skips) the first bad sample, the checker keeps going and counts:
records, media found / missing / unreadable, marker-count mismatches, empty assistant answers,
undecodable text (invalid UTF-8 / JSON), other invalid records, and, with a model's processor,
token counts with media placeholders and the over-long samples. Per-source statistics come with it.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from medvl.data.records import Record, parse_record
from medvl.data.registry import DatasetEntry, is_registry, load_registry
from medvl.errors import MediaOutsideRootError, MedVLDataError

if TYPE_CHECKING:
    from PIL import Image

    from medvl.data.labels import ConversationEncoder
    from medvl.imaging import Volume
    from medvl.models.processing_medvl import MedVLProcessor

MediaLoader: TypeAlias = "Callable[[str], Image.Image] | Callable[[str], Volume]"
# (kind, file, window) -> None (fine), a Warning (suspicious) or what is wrong
MediaStatus: TypeAlias = "dict[tuple[str, str, str], str | Warning | None]"

logger = logging.getLogger(__name__)

# problem kinds, in report order
KINDS = (
    "undecodable",
    "invalid_json",
    "marker_mismatch",
    "empty_answer",
    "invalid_record",
    "outside_root",
    "duplicate_id",
    "missing_media",
    "unreadable_media",
    "overlong",
)


@dataclass
class SourceStats:
    """Counts of one data set.

    Args:
        name: data set name.
        path: records file.
    """

    name: str
    path: str
    records: int = 0
    valid_records: int = 0
    images: int = 0
    volumes: int = 0
    media_found: int = 0
    problems: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    tokens: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts (token statistics instead of the raw list)."""
        out = asdict(self)
        toks = out.pop("tokens")
        if toks:
            out["tokens"] = {"min": min(toks), "median": statistics.median(toks), "max": max(toks), "total": sum(toks)}
        return out


@dataclass
class CheckReport:
    """Result of :func:`check_data`.

    Args:
        sources: per data set statistics.
        issues: ``(kind, message)`` of every problem found (messages name record and file).
        max_length: the length limit used for ``overlong`` (None: not checked).
        token_counts: whether tokens were counted (needs a processor).
    """

    sources: list[SourceStats] = field(default_factory=list)
    issues: list[tuple[str, str]] = field(default_factory=list)
    # ("degenerate_media", message): usable but suspicious (a tiny image, a volume of a few slices)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    max_length: int | None = None
    token_counts: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.issues

    def totals(self) -> dict[str, int]:
        """Problem counts summed over sources."""
        return {k: sum(s.problems[k] for s in self.sources) for k in KINDS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly report."""
        return {
            "ok": self.ok,
            "max_length": self.max_length,
            "totals": self.totals(),
            "sources": [s.summary() for s in self.sources],
            "issues": [{"kind": k, "message": m} for k, m in self.issues],
            "warnings": [{"kind": k, "message": m} for k, m in self.warnings],
        }

    def format(self, max_issues: int = 50) -> str:
        """Human-readable report: one table row per source, then the problems.

        Args:
            max_issues: how many problem lines to list (all are counted).
        """
        cols = ["source", "records", "valid", "images", "volumes", "found", *KINDS]
        if self.token_counts:
            cols += ["tok_min", "tok_med", "tok_max"]
        rows = []
        for s in self.sources:
            row = [
                s.name,
                s.records,
                s.valid_records,
                s.images,
                s.volumes,
                s.media_found,
                *(s.problems[k] for k in KINDS),
            ]
            if self.token_counts:
                row += [min(s.tokens), int(statistics.median(s.tokens)), max(s.tokens)] if s.tokens else ["-"] * 3
            rows.append([str(v) for v in row])
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        if not self.token_counts:
            lines.append("(token counts and over-long samples need --model)")
        elif self.max_length is not None:
            lines.append(f"max_length {self.max_length} (media placeholders included)")
        if self.warnings:
            lines.append(f"\n{len(self.warnings)} warning(s):")
            lines += [f"  [{k}] {m}" for k, m in self.warnings[:max_issues]]
        if self.issues:
            lines.append(f"\n{len(self.issues)} problem(s):")
            lines += [f"  [{k}] {m}" for k, m in self.issues[:max_issues]]
            if len(self.issues) > max_issues:
                lines.append(f"  ... and {len(self.issues) - max_issues} more (see --json)")
        else:
            lines.append("\nOK: no problems found")
        return "\n".join(lines)


def _classify(err: MedVLDataError) -> str:
    if isinstance(err, MediaOutsideRootError):
        return "outside_root"
    msg = str(err)
    if "markers (" in msg or "marker in an assistant" in msg:
        return "marker_mismatch"
    if "empty assistant answer" in msg:
        return "empty_answer"
    return "invalid_record"


def _raw_objects(path: Path, stats: SourceStats, report: CheckReport) -> list[tuple[str, Any]]:
    """Decode a records file tolerantly: every bad line is reported, the good ones are kept."""

    def bad(kind: str, rid: str | None, msg: str) -> None:
        stats.problems[kind] += 1
        stats.records += 1
        report.issues.append((kind, str(MedVLDataError(msg, record=rid, path=str(path)))))

    if not path.is_file():
        report.issues.append(("invalid_record", str(MedVLDataError("records file not found", path=str(path)))))
        stats.problems["invalid_record"] += 1
        return []
    data = path.read_bytes()
    if not data.strip():
        bad("invalid_record", None, "the file is empty: it holds no records")
        return []
    lines = data.split(b"\n")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not jsonl:
        try:
            doc = json.loads(data.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            bad("undecodable", None, f"invalid UTF-8 at byte {err.start} (line {line})")
            return []
        except json.JSONDecodeError as err:
            if not (data.lstrip()[:1] == b"{" and len([x for x in lines if x.strip()]) > 1):
                bad("invalid_json", None, f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}")
                return []
            jsonl = True
        else:
            if isinstance(doc, dict) and isinstance(doc.get("data"), list):
                doc = doc["data"]
            items = doc if isinstance(doc, list) else [doc]
            if not items:
                bad("invalid_record", None, "the file holds no records (an empty JSON array)")
            return [(f"{path.name}:{i + 1}", obj) for i, obj in enumerate(items)]
    out = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        rid = f"{path.name}:{lineno}"
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            bad("undecodable", rid, f"line {lineno}: invalid UTF-8 at byte {err.start} of the line")
            continue
        try:
            out.append((rid, json.loads(text)))
        except json.JSONDecodeError as err:
            bad("invalid_json", rid, f"line {lineno} is not valid JSON: {err.msg} (column {err.colno})")
    return out


def check_data(
    source: str | Path,
    processor: MedVLProcessor | None = None,
    *,
    template: str | None = "auto",
    max_length: int | None = None,
    split: str | None = None,
    read_media: bool = True,
    image_loader: Callable[[str], Image.Image] | None = None,
    volume_loader: Callable[[str], Volume] | None = None,
    progress: bool = True,
    allow_outside_root: bool | None = None,
) -> CheckReport:
    """Read every record and media file of a data set or registry once and count the problems.

    Args:
        source: a records file (JSON/JSONL) or a registry YAML.
        processor: a ``MedVLProcessor`` (enables token counts with media placeholders, the
            over-long check and running the volume processor on each volume); None to skip.
        template: chat template for token counting (see :mod:`medvl.data.templates`).
        max_length: token limit (media included) for the over-long check; None: no limit.
        split: registry split to check (None: all).
        read_media: open every image/volume (False: only check that the files exist).
        image_loader: path -> image (default :func:`medvl.imaging.load_image` with the record's window).
        volume_loader: path -> volume (default :func:`medvl.imaging.load_volume`).
        progress: show a progress bar.
        allow_outside_root: accept media paths outside the data root (None: the
            :func:`medvl.data.records.outside_root_allowed` setting; they are reported by default).
    """
    if is_registry(source):
        entries = load_registry(source).select(split)
    else:
        entries = [DatasetEntry(name=Path(source).stem, path=str(source))]
    encoder = None
    if processor is not None:
        from medvl.data.labels import ConversationEncoder

        encoder = ConversationEncoder.from_processor(processor, template, max_length)
    report = CheckReport(max_length=max_length, token_counts=encoder is not None)
    media_status: MediaStatus = {}
    for entry in entries:
        stats = SourceStats(entry.name, entry.path)
        report.sources.append(stats)
        for rec in _parsed_records(entry, stats, report, allow_outside_root, progress):
            good = _check_media(
                rec, Path(entry.path), stats, report, media_status, read_media, image_loader, volume_loader, processor
            )
            good = _check_tokens(rec, Path(entry.path), encoder, stats, report) and good
            stats.valid_records += int(good)
    return report


def _parsed_records(
    entry: DatasetEntry, stats: SourceStats, report: CheckReport, allow_outside_root: bool | None, progress: bool
) -> Iterator[Record]:
    """The records of one source that parse; every one that does not, and every repeated id, is reported."""
    path = Path(entry.path)
    root = Path(entry.root) if entry.root else path.parent
    vroot = Path(entry.volume_root) if entry.volume_root else root
    objects = _raw_objects(path, stats, report)
    seen_ids: dict[str, str] = {}
    iterator: Iterable[tuple[str, Any]] = objects
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(objects, desc=f"check {entry.name}", unit="rec", leave=False)
    for rid, obj in iterator:
        stats.records += 1
        try:
            rec = parse_record(obj, rid, str(path), root, vroot, entry.format, allow_outside_root)
        except MedVLDataError as err:
            kind = _classify(err)
            stats.problems[kind] += 1
            report.issues.append((kind, str(err)))
            continue
        if rec.id in seen_ids:  # results are matched to references by id: duplicates corrupt scores
            stats.problems["duplicate_id"] += 1
            dup = MedVLDataError(
                f"duplicate record id (first seen as {seen_ids[rec.id]})", record=rec.id, path=str(path)
            )
            report.issues.append(("duplicate_id", str(dup)))
        else:
            seen_ids[rec.id] = rid
        yield rec


def _check_media(
    rec: Record,
    path: Path,
    stats: SourceStats,
    report: CheckReport,
    status: MediaStatus,
    read_media: bool,
    image_loader: Callable[[str], Image.Image] | None,
    volume_loader: Callable[[str], Volume] | None,
    processor: MedVLProcessor | None,
) -> bool:
    good = True
    loaders: tuple[tuple[str, list[str], MediaLoader | None], ...] = (
        ("image", rec.media_paths("image"), image_loader),
        ("volume", rec.media_paths("volume"), volume_loader),
    )
    for kind, files, loader in loaders:
        for f in files:
            stats.images += kind == "image"
            stats.volumes += kind == "volume"
            window = rec.meta.get("window") if kind == "image" else None
            key = (kind, f, repr(window))
            if key not in status:
                status[key] = _read_media(kind, f, read_media, loader, processor, window)
            problem = status[key]
            if isinstance(problem, Warning):  # readable, but small enough to be suspicious
                report.warnings.append(("degenerate_media", str(MedVLDataError(str(problem), record=rec.id, path=f))))
                problem = status[key] = None  # warned once per file
            if problem is None:
                stats.media_found += 1
                continue
            good = False
            missing = problem == "not found"
            stats.problems["missing_media" if missing else "unreadable_media"] += 1
            msg = f"{kind} file not found" if missing else f"unreadable {kind}: {problem}"
            report.issues.append(
                ("missing_media" if missing else "unreadable_media", str(MedVLDataError(msg, record=rec.id, path=f)))
            )
    return good


def _read_media(
    kind: str,
    f: str,
    read_media: bool,
    loader: MediaLoader | None,
    processor: MedVLProcessor | None,
    window: object = None,
) -> str | Warning | None:
    """None when the file is fine, a Warning when it is suspicious, else a short description of the problem."""
    if not Path(f).exists():
        return "not found"
    if not read_media:
        return None
    try:
        obj = _default_load(kind, f, window) if loader is None else loader(f)
        volume_processor = processor.volume_processor if processor is not None else None
        if kind == "volume" and volume_processor is not None:
            volume_processor([cast("Volume", obj)])  # e.g. a volume smaller than the patch size
    except MedVLDataError as err:
        return str(err)
    except Exception as err:  # a checker reports, it does not crash
        return f"{type(err).__name__}: {err}"
    return _degenerate(kind, obj)


# below these sizes media load, but carry little for an encoder: data check warns
SMALL_IMAGE_SIDE = 16
SMALL_VOLUME_EXTENT = 4


def _default_load(kind: str, f: str, window: object) -> Image.Image | Volume:
    """medvl's own loaders, as training reads the file (an image with the record's window)."""
    from medvl.imaging import load_image, load_volume
    from medvl.imaging.image2d import record_window

    if kind == "volume":
        return load_volume(f)
    return load_image(f, window=None if window is None else record_window({"window": window}, path=f))


def _degenerate(kind: str, obj: object) -> Warning | None:
    """A warning for a readable but suspiciously small image or volume (None when fine)."""
    if kind == "image" and hasattr(obj, "size") and min(obj.size) < SMALL_IMAGE_SIDE:
        return Warning(f"tiny image of {obj.size[0]}x{obj.size[1]} pixels (under {SMALL_IMAGE_SIDE} on a side)")
    shape = getattr(getattr(obj, "array", None), "shape", None)
    if kind == "volume" and shape is not None and min(shape) < SMALL_VOLUME_EXTENT:
        return Warning(f"thin volume of shape {tuple(shape)} (under {SMALL_VOLUME_EXTENT} voxels along an axis)")
    return None


def _check_tokens(
    rec: Record, path: Path, encoder: ConversationEncoder | None, stats: SourceStats, report: CheckReport
) -> bool:
    if encoder is None:
        return True
    from medvl.data.labels import OverlongSampleError

    try:
        n = encoder.count_tokens(rec.messages, record=rec.id)
        stats.tokens.append(n)
        encoder.check_length(n, rec.id, str(path))
    except OverlongSampleError as err:
        stats.problems["overlong"] += 1
        report.issues.append(("overlong", str(err)))
        return False
    except (MedVLDataError, ValueError) as err:
        stats.problems["invalid_record"] += 1
        report.issues.append(("invalid_record", str(MedVLDataError(str(err), record=rec.id, path=str(path)))))
        return False
    return True
