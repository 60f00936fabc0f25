"""Benchmark task definitions: how a public release becomes ``Record`` objects, prompted and scored.

A :class:`TaskSpec` names the loader (release format -> records), the prompt (question wording and
answer-format suffix), the generation settings and the scoring protocol. Records carry what
scoring needs in ``meta``: ``reference``, ``answer_type``, ``language``, ``question`` and, for
multiple choice, ``options`` / ``answer_choice``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    from medvl.data.records import Record

logger = logging.getLogger(__name__)

# lmms-eval's short-answer suffix for medical VQA sets (vqa_rad, slake, pathvqa yaml post_prompt)
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."
# LLaVA-style multiple-choice suffix (PMC-VQA / OmniMedVQA evaluations in lmms-eval, MedEvalKit)
MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."


@dataclass
class TaskSpec:
    """One benchmark task.

    Args:
        name: task name used on the command line.
        kind: ``"vqa"`` (scored by a VQA protocol) or ``"report"`` (report metrics).
        protocol: VQA protocol name or ``"report"``.
        loader: ``loader(root, split) -> list[Record]`` reading the release's own files.
        default_dir: folder name under ``--data-root`` where the release is expected.
        default_split: split evaluated by default.
        generation: generation settings passed to ``medvl.inference.generate``.
        protocol_options: keyword options of the protocol.
        bilingual: report per-language values as well.
        source: where to get the data, and its licence.
    """

    name: str
    kind: str
    protocol: str
    loader: Callable[[Path, str], list[Record]]
    default_dir: str
    default_split: str = "test"
    generation: dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 32, "do_sample": False})
    protocol_options: dict[str, Any] = field(default_factory=dict)
    bilingual: bool = False
    source: str = ""

    def load(self, root: str | Path, split: str | None = None, limit: int | None = None) -> list[Record]:
        """Records of the task read from ``root``.

        Args:
            root: the release folder.
            split: split name (default: ``default_split``).
            limit: keep only the first ``limit`` records (quick runs).

        Raises:
            MedVLDataError: missing files or malformed entries (names the file and entry).
        """
        root = Path(root)
        if not root.exists():
            raise MedVLDataError(f"task {self.name!r}: data folder does not exist ({self.source})", path=str(root))
        records = self.loader(root, split or self.default_split)
        if not records:
            raise MedVLDataError(
                f"task {self.name!r}: no samples found for split {split or self.default_split!r}", path=str(root)
            )
        return records[:limit] if limit else records


def make_record(
    rid: str,
    question: str,
    reference: str,
    *,
    marker: str,
    media: list[str] | None = None,
    suffix: str = "",
    answer_type: str = "OPEN",
    language: str = "en",
    source: str = "",
    **meta: Any,
) -> Record:
    """A ``Record`` with one user turn (media marker + question + suffix) and the reference answer.

    Args:
        rid: record id.
        question: question text as the release has it (kept in ``meta["question"]``).
        reference: ground-truth answer or report.
        marker: ``"<image>"`` or ``"<volume>"`` (one per media file), or ``""`` for text only.
        media: absolute media paths.
        suffix: answer-format instruction appended to the question.
        answer_type: "OPEN" / "CLOSED".
        language: "en", "zh".
        source: task name.
        **meta: extra fields (options, answer_choice, ...).
    """
    from medvl.data.records import Record

    media = media or []
    markers = "".join(marker + "\n" for _ in media) if marker else ""
    record_meta = {
        "reference": reference,
        "answer_type": answer_type,
        "language": language,
        "question": question,
        "source": source,
        **meta,
    }
    messages = [
        {"role": "user", "content": f"{markers}{question}{suffix}"},
        {"role": "assistant", "content": reference},
    ]
    if marker == "<volume>":
        return Record(id=rid, messages=messages, volumes=media, meta=record_meta)
    return Record(id=rid, messages=messages, images=media, meta=record_meta)


def require(entry: dict[str, Any], keys: tuple[str, ...], where: str, path: Path) -> None:
    """Raise when ``entry`` lacks one of ``keys``.

    Args:
        entry: one entry of a release file.
        keys: required keys.
        where: entry label for the message (e.g. ``"entry 12"``).
        path: the file.
    """
    missing = [k for k in keys if k not in entry]
    if missing:
        raise MedVLDataError(f"missing field(s) {', '.join(missing)}", record=where, path=str(path))


def media_path(root: Path, rel: str, where: str, source_file: Path) -> str:
    """Absolute media path, checked to exist.

    Args:
        root: folder the path is relative to.
        rel: relative path from the release file.
        where: entry label.
        source_file: the release file (for the message).
    """
    from medvl.data.records import check_inside_root

    check_inside_root(root / rel, root, where, str(source_file), written=rel)  # never read outside the release
    p = (root / rel).resolve()
    if not p.exists():
        raise MedVLDataError(f"media file not found: {p}", record=where, path=str(source_file))
    return str(p)


def data_fingerprint(records: list[Record]) -> str:
    """SHA-256 (first 16 hex digits) of the prompts, references and media (names and sizes).

    Two runs with the same fingerprint saw the same samples; it changes when the release, the
    split, the prompt or ``--limit`` changes.

    Args:
        records: the task's records.
    """
    h = hashlib.sha256()
    for r in records:
        media = [
            (os.path.basename(p), os.path.getsize(p) if os.path.isfile(p) else -1)
            for p in r.media_paths("image") + r.media_paths("volume")
        ]
        h.update(
            json.dumps([r.id, r.messages, media, r.meta.get("reference")], ensure_ascii=False, sort_keys=True).encode(
                "utf-8"
            )
        )
    return h.hexdigest()[:16]
