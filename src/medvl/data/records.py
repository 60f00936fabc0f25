"""Conversation records: the one in-memory form of every data set medvl reads.

Two on-disk layouts load into the same :class:`Record`:

* **native** (JSON array or JSONL)::

    {"id": "q1", "messages": [{"role": "system", "content": "..."},
                              {"role": "user", "content": "<image>\\nIs there a nodule?"},
                              {"role": "assistant", "content": "Yes."}],
     "images": ["img/1.png"], "volumes": [], "meta": {"answer_type": "closed"}}

  ``content`` may also be a list of parts (``{"type": "text", "text": ...}``,
  ``{"type": "image"}``, ``{"type": "volume"}``), as in Hugging Face chat messages.

* **MedM-VL / LLaVA**: ``conversations`` with ``from``/``value`` (``human``/``gpt``), media in
  ``image`` and ``image3d`` (a string or a list), markers ``<image>`` and ``<image3d>``
  (rewritten to ``<volume>``). An ``answer`` field (MedM-VL inference files) becomes
  ``meta["reference"]``.

Media paths are relative to a dataset root (default: the folder of the records file) and come out
absolute. Every problem raises :class:`~medvl.errors.MedVLDataError` naming the record and file.

A media path must stay inside its data root once ``..`` and symlinks are resolved (an absolute path
too): a records file must not make medvl read ``/etc/passwd`` or another patient's folder. Users
who keep media elsewhere on purpose opt in with ``allow_outside_root=True`` (CLI
``--allow-outside-root``, YAML ``data.allow_outside_root: true``) or by setting the root.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from medvl.errors import MediaOutsideRootError, MedVLDataError

if TYPE_CHECKING:
    from PIL import Image

    from medvl.imaging.volume3d import Volume
    from medvl.inference import EncodedMedia

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<image>"
VOLUME_MARKER = "<volume>"
MEDMVL_VOLUME_MARKER = "<image3d>"
ROLES = ("system", "user", "assistant")
# MedM-VL/LLaVA speaker names -> roles
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
FORMATS = ("auto", "native", "medmvl")
# keys of the record itself; everything else on a record is kept in meta
_NATIVE_KEYS = {"id", "messages", "images", "volumes", "meta"}
_MEDMVL_KEYS = {"id", "conversations", "image", "image3d", "meta", "answer"}
_MARKER_RE = re.compile(re.escape(IMAGE_MARKER) + "|" + re.escape(VOLUME_MARKER))

RecordFormat = Literal["auto", "native", "medmvl"]

# One image of a record: a path (what a records file holds), or, on the inference path (``chat``,
# the server, the demo), an image already loaded or already encoded (:class:`~medvl.inference.EncodedMedia`).
ImageSource: TypeAlias = "str | Path | Image.Image | EncodedMedia"
# One volume of a record: a path (file or DICOM folder), a loaded volume or the encoder's output.
VolumeSource: TypeAlias = "str | Path | Volume | EncodedMedia"

# The process-wide default of ``allow_outside_root`` (False), switched on for one command by
# :func:`outside_root_allowed`; an explicit argument always wins. A context variable rather than a
# parameter threaded through every task adapter and registry helper that loads records.
_ALLOW_OUTSIDE_ROOT: contextvars.ContextVar[bool] = contextvars.ContextVar("medvl_allow_outside_root", default=False)


@contextlib.contextmanager
def outside_root_allowed(allow: bool = True) -> Iterator[None]:
    """Let records loaded inside this block point at media outside their data root.

    Args:
        allow: the setting inside the block (``False`` keeps the default refusal).
    """
    token = _ALLOW_OUTSIDE_ROOT.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_OUTSIDE_ROOT.reset(token)


@dataclass
class Record:
    """One conversation with its media.

    Args:
        id: record id (from the file, else ``"<file name>:<line or item number>"``).
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}]``; content is plain text
            with ``<image>``/``<volume>`` markers.
        images: the images in marker order: absolute paths when loaded from a records file; loaded
            or encoded images where inference builds the record (``chat``, the server, the demo).
        volumes: the volumes in marker order: absolute paths (file or DICOM folder) from a records
            file; loaded or encoded volumes on the inference path.
        meta: free-form information (answer_type, reference, language, source, ...).
    """

    id: str
    messages: list[dict[str, str]]
    images: Sequence[ImageSource] = field(default_factory=list)
    volumes: Sequence[VolumeSource] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source_file(self) -> str | None:
        """The records file this record came from (if loaded from a file)."""
        return self.meta.get("file")

    def media_paths(self, kind: Literal["image", "volume"]) -> list[str]:
        """The record's image or volume paths, for the steps that read media files (data sets, caches, checks).

        Args:
            kind: "image" or "volume".

        Raises:
            MedVLDataError: an item is loaded or encoded media (a record the inference path built), not a path.
        """
        paths = []
        for index, item in enumerate(self.images if kind == "image" else self.volumes):
            if not isinstance(item, (str, Path)):
                raise MedVLDataError(
                    f"{kind} {index} is a {type(item).__name__}, not a file path: this step reads media files",
                    record=self.id,
                    path=self.source_file,
                )
            paths.append(str(item))
        return paths


def count_markers(text: str) -> tuple[int, int]:
    """Count ``<image>`` and ``<volume>`` markers in a text.

    Args:
        text: message text.
    """
    return text.count(IMAGE_MARKER), text.count(VOLUME_MARKER)


def _as_list(value: Any, what: str, rid: str, path: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise MedVLDataError(f"'{what}' must be a path or a list of paths, got {value!r}", record=rid, path=path)


def check_inside_root(
    media: str | Path,
    root: str | Path,
    record: str | None = None,
    path: str | None = None,
    allow_outside_root: bool | None = None,
    written: str | None = None,
) -> None:
    """Raise unless ``media`` resolves (``..`` and symlinks followed) inside ``root``.

    Args:
        media: the media path (absolute, or relative to the current folder).
        root: the data root it must stay in.
        record: record id (for the message).
        path: the records / release file (for the message).
        allow_outside_root: skip the check (None: the :func:`outside_root_allowed` setting).
        written: the path as the record wrote it (for the message; default ``media``).

    Raises:
        MediaOutsideRootError: naming the record, the file, the path and the root.
    """
    allow = _ALLOW_OUTSIDE_ROOT.get() if allow_outside_root is None else allow_outside_root
    if allow:
        return
    real_root = Path(root).expanduser().resolve()
    real = Path(media).expanduser().resolve()  # non-strict: a missing file is reported by whoever opens it
    if not real.is_relative_to(real_root):
        raise MediaOutsideRootError(
            f"media path {str(written if written is not None else media)!r} resolves to {str(real)!r}, outside the "
            f"data root {str(real_root)!r}; move it under the root or set the root (--root, data.root, a registry's "
            "root), or allow it with --allow-outside-root / data.allow_outside_root=true",
            record=record,
            path=path,
        )


def _resolve(paths: list[str], root: Path, rid: str, path: str, allow_outside_root: bool | None = None) -> list[str]:
    """Absolute media paths; each must resolve (``..`` and symlinks followed) inside ``root``."""
    out = []
    for p in paths:
        pp = Path(p).expanduser()
        full = pp if pp.is_absolute() else (root / pp)
        check_inside_root(full, root, rid, path, allow_outside_root, written=p)
        out.append(str(full))
    return out


def _content_to_text(content: Any, rid: str, path: str) -> tuple[str, list[str], list[str]]:
    """Turn a string or a list of content parts into marker text (+ any media paths given inline)."""
    if isinstance(content, str):
        return content, [], []
    if not isinstance(content, list):
        raise MedVLDataError(
            f"message content must be a string or a list of parts, got {type(content).__name__}", record=rid, path=path
        )
    pieces: list[str] = []
    images: list[str] = []
    volumes: list[str] = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind in ("image", "volume"):
            pieces.append(IMAGE_MARKER if kind == "image" else VOLUME_MARKER)
            # {"type": "image", "image": "a.png"} (or "path"/"url") names the file inline
            inline = next((part[k] for k in (kind, "path", "url") if isinstance(part.get(k), str)), None)
            if inline is not None:
                (images if kind == "image" else volumes).append(inline)
        else:
            raise MedVLDataError(
                f"unknown content part {part!r}; valid part types: text, image, volume", record=rid, path=path
            )
    return "".join(pieces), images, volumes


def _check_messages(messages: list[dict[str, str]], rid: str, path: str) -> None:
    if not messages:
        raise MedVLDataError("the conversation has no messages", record=rid, path=path)
    for i, m in enumerate(messages):
        if m["role"] == "system" and i != 0:
            raise MedVLDataError(f"message {i}: a system message may only come first", record=rid, path=path)
        if m["role"] == "assistant":
            if not m["content"].strip():
                raise MedVLDataError(f"message {i}: empty assistant answer", record=rid, path=path)
            if _MARKER_RE.search(m["content"]):
                raise MedVLDataError(
                    f"message {i}: media marker in an assistant answer (markers belong in user turns)",
                    record=rid,
                    path=path,
                )
    if all(m["role"] == "system" for m in messages):
        raise MedVLDataError("the conversation has only a system message", record=rid, path=path)


def _check_media(messages: list[dict[str, str]], images: list[str], volumes: list[str], rid: str, path: str) -> None:
    n_img = sum(count_markers(m["content"])[0] for m in messages)
    n_vol = sum(count_markers(m["content"])[1] for m in messages)
    for kind, n_markers, media in (("image", n_img, images), ("volume", n_vol, volumes)):
        if n_markers != len(media):
            rel = "more" if n_markers > len(media) else "fewer"
            marker = IMAGE_MARKER if kind == "image" else VOLUME_MARKER
            raise MedVLDataError(
                f"{rel} {marker} markers ({n_markers}) than {kind}s ({len(media)}); every {kind} needs exactly one "
                f"{marker} marker in the text",
                record=rid,
                path=path,
            )


def parse_native(
    obj: dict[str, Any], rid: str, path: str, root: Path, volume_root: Path, allow_outside_root: bool | None = None
) -> Record:
    """Parse one native record (``messages`` + ``images``/``volumes``).

    Args:
        obj: the decoded JSON object.
        rid: record id to use.
        path: records file (for error messages).
        root: folder that relative image paths are resolved against.
        volume_root: folder that relative volume paths are resolved against.
        allow_outside_root: accept media outside the roots (None: the :func:`outside_root_allowed` setting).
    """
    raw = obj.get("messages")
    if not isinstance(raw, list):
        raise MedVLDataError("'messages' must be a list of {role, content}", record=rid, path=path)
    messages: list[dict[str, str]] = []
    inline_img: list[str] = []
    inline_vol: list[str] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise MedVLDataError(f"message {i} must be an object with 'role' and 'content'", record=rid, path=path)
        role = m["role"]
        if role not in ROLES:
            raise MedVLDataError(
                f"message {i}: unknown role {role!r}; valid roles: {', '.join(ROLES)}", record=rid, path=path
            )
        text, imgs, vols = _content_to_text(m["content"], rid, path)
        inline_img += imgs
        inline_vol += vols
        messages.append({"role": role, "content": text})
    images = _as_list(obj.get("images"), "images", rid, path)
    volumes = _as_list(obj.get("volumes"), "volumes", rid, path)
    if (inline_img and images) or (inline_vol and volumes):
        raise MedVLDataError(
            "media paths are given both inline in content parts and in 'images'/'volumes'; use one of the two",
            record=rid,
            path=path,
        )
    images = images or inline_img
    volumes = volumes or inline_vol
    _check_messages(messages, rid, path)
    _check_media(messages, images, volumes, rid, path)
    meta = dict(obj.get("meta") or {})
    meta.update({k: v for k, v in obj.items() if k not in _NATIVE_KEYS})
    return Record(
        rid,
        messages,
        _resolve(images, root, rid, path, allow_outside_root),
        _resolve(volumes, volume_root, rid, path, allow_outside_root),
        meta,
    )


def parse_medmvl(
    obj: dict[str, Any], rid: str, path: str, root: Path, volume_root: Path, allow_outside_root: bool | None = None
) -> Record:
    """Parse one MedM-VL / LLaVA record (``conversations`` with ``from``/``value``).

    Args:
        obj: the decoded JSON object.
        rid: record id to use.
        path: records file (for error messages).
        root: folder that relative ``image`` paths are resolved against.
        volume_root: folder that relative ``image3d`` paths are resolved against.
        allow_outside_root: accept media outside the roots (None: the :func:`outside_root_allowed` setting).
    """
    raw = obj.get("conversations")
    if not isinstance(raw, list):
        raise MedVLDataError("'conversations' must be a list of {from, value}", record=rid, path=path)
    messages = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise MedVLDataError(f"turn {i} must be an object with 'from' and 'value'", record=rid, path=path)
        role = SPEAKERS.get(str(turn["from"]).lower())
        if role is None:
            raise MedVLDataError(
                f"turn {i}: unknown speaker {turn['from']!r}; valid speakers: {', '.join(SPEAKERS)}",
                record=rid,
                path=path,
            )
        if not isinstance(turn["value"], str):
            raise MedVLDataError(f"turn {i}: 'value' must be a string", record=rid, path=path)
        messages.append({"role": role, "content": turn["value"].replace(MEDMVL_VOLUME_MARKER, VOLUME_MARKER)})
    images = _as_list(obj.get("image"), "image", rid, path)
    volumes = _as_list(obj.get("image3d"), "image3d", rid, path)
    _check_messages(messages, rid, path)
    _check_media(messages, images, volumes, rid, path)
    meta = dict(obj.get("meta") or {})
    meta.update({k: v for k, v in obj.items() if k not in _MEDMVL_KEYS})
    if "answer" in obj:
        meta["reference"] = obj["answer"]
    return Record(
        rid,
        messages,
        _resolve(images, root, rid, path, allow_outside_root),
        _resolve(volumes, volume_root, rid, path, allow_outside_root),
        meta,
    )


def parse_record(
    obj: Any,
    rid: str,
    path: str,
    root: Path,
    volume_root: Path | None = None,
    format: RecordFormat = "auto",
    allow_outside_root: bool | None = None,
) -> Record:
    """Parse one decoded JSON object into a :class:`Record` (format detected from its keys if ``auto``).

    Args:
        obj: the decoded JSON object.
        rid: fallback id (used when the object has no ``id``).
        path: records file (for error messages).
        root: dataset root for relative media paths.
        volume_root: root for relative volume paths (defaults to ``root``).
        format: ``auto``, ``native`` or ``medmvl``.
        allow_outside_root: accept media outside the roots (None: the :func:`outside_root_allowed` setting).
    """
    if not isinstance(obj, dict):
        raise MedVLDataError(f"a record must be a JSON object, got {type(obj).__name__}", record=rid, path=path)
    if obj.get("id") is not None:
        rid = str(obj["id"])
    volume_root = volume_root or root
    if format not in FORMATS:
        raise ValueError(f"invalid record format {format!r}; valid formats: {', '.join(FORMATS)}")
    if format == "auto":
        if "messages" in obj:
            format = "native"
        elif "conversations" in obj:
            format = "medmvl"
        else:
            raise MedVLDataError(
                "record has neither 'messages' (native format) nor 'conversations' (MedM-VL/LLaVA format)",
                record=rid,
                path=path,
            )
    parser = parse_native if format == "native" else parse_medmvl
    return parser(obj, rid, path, root, volume_root, allow_outside_root)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MedVLDataError(
            f"invalid UTF-8 at byte {err.start} (line {line}): {data[err.start : err.start + 4]!r}; save the file as UTF-8",
            path=str(path),
        ) from None


def iter_raw(path: str | Path) -> list[tuple[str, Any]]:
    """Decode a records file into ``(fallback id, JSON object)`` pairs without validating them.

    Args:
        path: a ``.json`` (array, or one object) or ``.jsonl`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise MedVLDataError("records file not found", path=str(path))
    text = _read_text(path)
    # JSONL if the extension says so, or if the file does not parse as one JSON document
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    if not is_jsonl:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            first = text.lstrip()[:1]
            if first == "{" and "\n" in text.strip():
                is_jsonl = True  # several objects, one per line
            else:
                raise MedVLDataError(
                    f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}", path=str(path)
                ) from None
        else:
            if isinstance(doc, dict) and isinstance(doc.get("data"), list):
                doc = doc["data"]
            items = doc if isinstance(doc, list) else [doc]
            return [(f"{path.name}:{i + 1}", obj) for i, obj in enumerate(items)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path.name}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise MedVLDataError(
                f"line {lineno} is not valid JSON: {err.msg} (column {err.colno})",
                record=f"{path.name}:{lineno}",
                path=str(path),
            ) from None
    return out


def load_records(
    path: str | Path,
    root: str | Path | None = None,
    *,
    volume_root: str | Path | None = None,
    format: RecordFormat = "auto",
    source: str | None = None,
    allow_outside_root: bool | None = None,
) -> list[Record]:
    """Load every record of a native or MedM-VL/LLaVA JSON/JSONL file.

    Args:
        path: the records file (``.json`` array or ``.jsonl``).
        root: dataset root that relative media paths are resolved against (default: the file's folder).
        volume_root: root for relative volume paths (default: ``root``); MedM-VL keeps 2D and 3D apart.
        format: ``auto`` (per record, from its keys), ``native`` or ``medmvl``.
        source: name stored in ``meta["source"]`` (default: the file's stem) for per-source statistics.
        allow_outside_root: accept media paths that leave ``root`` / ``volume_root`` (None: the
            :func:`outside_root_allowed` setting, False unless a command opted in).
    """
    path = Path(path)
    root_p = Path(root).expanduser() if root is not None else path.parent
    vroot = Path(volume_root).expanduser() if volume_root is not None else root_p
    records = []
    for rid, obj in iter_raw(path):
        rec = parse_record(obj, rid, str(path), root_p, vroot, format, allow_outside_root)
        rec.meta.setdefault("source", source or path.stem)
        rec.meta["file"] = str(path)
        records.append(rec)
    logger.debug("loaded %d records from %s", len(records), path)
    return records
