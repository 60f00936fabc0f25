"""Synthetic phantom sets written by ``medvl data synth`` (2D radiographs or 3D CT volumes).

Source: generated locally (``medvl data synth --kind 2d|3d --n N --seed S --out DIR``); no
licence restrictions. The records (``DIR/{split}.jsonl``) are already medvl's native format with
``meta.reference``, ``meta.answer_type``, ``meta.language`` and ``meta.question_type``;
questions are bilingual (en/zh), so results are reported per language.

- ``synth_vqa``: every question except the findings report, protocol ``exact_norm`` (the answers
  are short canonical phrases). Prompt protocol ``phantom_training``: the record's own user turn,
  byte for byte as in the phantom training data. No answer-format suffix is appended: a model
  trained on these phantoms never saw one, and lmms-eval's "Answer the question using a single
  word or phrase." took the quickstart model's closed accuracy from 0.87 to 0.
- ``synth_report``: the "report" questions, scored with the report metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from medvl.errors import MedVLDataError

if TYPE_CHECKING:
    from medvl.data.records import Record

# how the phantom tasks prompt (see the module docstring); recorded for the results
PROMPT_PROTOCOL = "phantom_training"


def _load(root: Path, split: str, want_report: bool) -> list[Record]:
    from medvl.data.records import load_records

    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise MedVLDataError("task 'synth': split file not found (run medvl data synth first)", path=str(path))
    out = []
    for rec in load_records(path, root=root):
        is_report = rec.meta.get("question_type") == "report"
        if is_report != want_report:
            continue
        meta = dict(rec.meta)
        if meta.get("reference") is None and rec.messages and rec.messages[-1]["role"] == "assistant":
            meta["reference"] = rec.messages[-1]["content"]
        user = next(m for m in rec.messages if m["role"] == "user")
        meta.setdefault("question", user["content"].replace("<image>", "").replace("<volume>", "").strip())
        meta["answer_type"] = str(meta.get("answer_type", "open")).upper()
        meta["source"] = "synth_report" if want_report else "synth_vqa"
        meta["prompt_protocol"] = PROMPT_PROTOCOL
        rec.messages, rec.meta = [dict(m) for m in rec.messages], meta
        out.append(rec)
    return out


def load_synth_vqa(root: Path, split: str) -> list[Record]:
    """Short-answer questions of a synthetic set.

    Args:
        root: the ``--out`` folder of ``medvl data synth``.
        split: "test", "validation", "train", or any other records file of the set
            (the quickstart's blind baseline: "test_blind").
    """
    return _load(root, split, want_report=False)


def load_synth_report(root: Path, split: str) -> list[Record]:
    """Findings-report questions of a synthetic set.

    Args:
        root: the ``--out`` folder of ``medvl data synth``.
        split: "test", "validation", "train", or any other records file of the set
            (the quickstart's blind baseline: "test_blind").
    """
    return _load(root, split, want_report=True)


def synth_kind(root: Path) -> str | None:
    """ "2d" or "3d" from ``dataset.json`` (None when absent).

    Args:
        root: synthetic set folder.
    """
    p = root / "dataset.json"
    return json.loads(p.read_text()).get("kind") if p.is_file() else None
