"""Reading prediction files (JSONL) for ``medvl score`` with line-precise errors.

VQA records: ``{"id", "question", "answer_type": "CLOSED"|"OPEN", "prediction", "reference"}``
plus optional ``options`` (list of option texts, for ``mcq``), ``answer_choice`` (option letter,
for ``m3d``/``mcq``) and ``language``. Report records: ``{"id", "prediction", "reference"}``.

An empty prediction (``""`` or ``null``) is kept and scored (as wrong / zero), never dropped:
dropping failures would inflate every metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medvl.errors import MedVLDataError
from medvl.eval.vqa.base import VQAItem, normalize_answer_type

VQA_REQUIRED = ("id", "answer_type", "prediction", "reference")
REPORT_REQUIRED = ("id", "prediction", "reference")


def read_jsonl_records(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line, checked for JSON, fields and unique ids.

    Args:
        path: JSONL file.
        required: fields every record must have.

    Raises:
        MedVLDataError: unreadable file, non-JSON line, non-object line, missing field, duplicate id
            (the message names the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MedVLDataError(f"cannot read predictions: {e.strerror or e}", path=str(path)) from e
    out: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise MedVLDataError(
                f"not valid JSON ({e.msg} at column {e.colno})", record=where, path=str(path)
            ) from None
        if not isinstance(rec, dict):
            raise MedVLDataError(f"expected a JSON object, got {type(rec).__name__}", record=where, path=str(path))
        missing = [k for k in required if k not in rec]
        if missing:
            raise MedVLDataError(
                f"missing field(s) {', '.join(missing)} (required: {', '.join(required)})", record=where, path=str(path)
            )
        rid = str(rec["id"])
        if rid in seen:
            raise MedVLDataError(f"duplicate id {rid!r} (first seen on line {seen[rid]})", record=where, path=str(path))
        seen[rid] = lineno
        for key in ("prediction", "reference"):
            if rec.get(key) is None and key == "prediction":
                rec[key] = ""  # a missing answer is an empty answer: scored, not dropped
            elif not isinstance(rec.get(key), (str, int, float)):
                raise MedVLDataError(
                    f"field {key!r} must be a string, got {type(rec.get(key)).__name__}", record=where, path=str(path)
                )
        out.append((lineno, rec))
    if not out:
        raise MedVLDataError("no records (the file is empty)", path=str(path))
    return out


def read_vqa_predictions(path: str | Path) -> list[VQAItem]:
    """VQA items from a JSONL prediction file.

    Args:
        path: JSONL file.

    Raises:
        MedVLDataError: see :func:`read_jsonl_records`; also a bad ``answer_type`` or ``options``.
    """
    items = []
    for lineno, rec in read_jsonl_records(path, VQA_REQUIRED):
        where = f"line {lineno}"
        try:
            answer_type = normalize_answer_type(rec["answer_type"])
        except ValueError as e:
            raise MedVLDataError(str(e), record=where, path=str(path)) from None
        options = rec.get("options")
        if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
            raise MedVLDataError("field 'options' must be a list of strings", record=where, path=str(path))
        items.append(
            VQAItem(
                id=str(rec["id"]),
                question=str(rec.get("question", "")),
                answer_type=answer_type,
                prediction=str(rec["prediction"]),
                reference=str(rec["reference"]),
                options=options,
                answer_choice=rec.get("answer_choice"),
                language=rec.get("language"),
                meta={"line": lineno},
            )
        )
    return items


def read_report_predictions(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(ids, predictions, references) from a JSONL report prediction file.

    Args:
        path: JSONL file.

    Raises:
        MedVLDataError: see :func:`read_jsonl_records`.
    """
    recs = read_jsonl_records(path, REPORT_REQUIRED)
    return (
        [str(r["id"]) for _, r in recs],
        [str(r["prediction"]) for _, r in recs],
        [str(r["reference"]) for _, r in recs],
    )
