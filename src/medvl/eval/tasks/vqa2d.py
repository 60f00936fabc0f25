"""2D medical VQA sets with CLOSED/OPEN answers: VQA-RAD, SLAKE (en, zh), PathVQA.

Prompt: ``<image>\\n{question}`` + lmms-eval's short-answer suffix ("Answer the question using a
single word or phrase."). Generation: greedy, at most 32 new tokens.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from medvl.errors import MedVLDataError
from medvl.eval.tasks.base import SHORT_ANSWER_SUFFIX, make_record, media_path, require
from medvl.utils.files import read_json

if TYPE_CHECKING:
    from medvl.data.records import Record


def load_vqa_rad(root: Path, split: str) -> list[Record]:
    """VQA-RAD (Lau et al. 2018) from its OSF release.

    Source: https://osf.io/89kps/ (``VQA_RAD Dataset Public.json`` + ``VQA_RAD Image Folder/``);
    licence CC0 1.0. Each entry has ``qid``, ``phrase_type``, ``qid_linked_id``, ``image_case_url``,
    ``image_name`` (``synpic<N>.jpg``), ``image_organ`` (HEAD/CHEST/ABD), ``evaluation``, ``question``,
    ``question_rephrase``, ``question_relation``, ``question_frame``, ``question_type`` (PRES, ABN,
    MODALITY, ...), ``answer`` (string or number) and ``answer_type`` (CLOSED/OPEN, sometimes with a
    trailing space); the test split is the entries whose ``phrase_type`` starts with "test"
    (test_freeform, test_para: 451 questions), the rest is train.

    Args:
        root: folder holding the JSON file and the image folder.
        split: "test" or "train".
    """
    if split not in ("test", "train"):
        raise ValueError(f"VQA-RAD split {split!r}; valid: test, train")
    path = root / "VQA_RAD Dataset Public.json"
    data = read_json(path, "task 'vqa_rad' file")
    records = []
    for i, e in enumerate(data):
        where = f"entry {i} (qid {e.get('qid')})"
        require(e, ("qid", "image_name", "question", "answer", "answer_type", "phrase_type"), where, path)
        if str(e["phrase_type"]).startswith("test") != (split == "test"):
            continue
        img = media_path(root / "VQA_RAD Image Folder", e["image_name"], where, path)
        records.append(
            make_record(
                f"vqa_rad-{e['qid']}",
                str(e["question"]).strip(),
                str(e["answer"]).strip(),
                marker="<image>",
                media=[img],
                suffix=SHORT_ANSWER_SUFFIX,
                answer_type=str(e["answer_type"]).strip().upper(),
                source="vqa_rad",
                organ=_label(e.get("image_organ")),
                question_type=_label(e.get("question_type")),
            )
        )
    return records


def _label(value: object) -> str | None:
    """A release's subgroup label, stripped (None when absent or empty)."""
    text = str(value).strip() if value is not None else ""
    return text or None


def load_slake(root: Path, split: str, language: str | None = None) -> list[Record]:
    """SLAKE (Liu et al. 2021), English and Chinese questions.

    Source: https://www.med-vqa.com/slake/ (``Slake1.0/{train,validate,test}.json`` + ``imgs/``);
    licence CC BY 4.0 as stated on the distributor's dataset card (check the site before use).
    Entries have ``qid``, ``img_id``, ``img_name`` (``xmlab<N>/source.jpg``, relative to ``imgs/``),
    ``question``, ``answer``, ``q_lang`` (en/zh), ``answer_type`` (OPEN/CLOSED), ``location`` (body
    region, reported as the organ subgroup), ``modality`` (CT/MRI/X-Ray), ``content_type`` (question
    type: Organ, Position, Abnormality, ...), ``base_type`` and ``triple``.

    Args:
        root: the ``Slake1.0`` folder.
        split: "test", "validate" or "train".
        language: keep only "en" or "zh" questions (None: both).
    """
    path = root / f"{split}.json"
    data = read_json(path, "task 'slake' file")
    records = []
    for i, e in enumerate(data):
        where = f"entry {i} (qid {e.get('qid')})"
        require(e, ("qid", "img_name", "question", "answer", "q_lang", "answer_type"), where, path)
        if language and e["q_lang"] != language:
            continue
        img = media_path(root / "imgs", e["img_name"], where, path)
        records.append(
            make_record(
                f"slake-{e['qid']}",
                str(e["question"]).strip(),
                str(e["answer"]).strip(),
                marker="<image>",
                media=[img],
                suffix=SHORT_ANSWER_SUFFIX,
                answer_type=str(e["answer_type"]).strip().upper(),
                language=e["q_lang"],
                source="slake",
                modality=_label(e.get("modality")),
                organ=_label(e.get("location")),
                question_type=_label(e.get("content_type")),
            )
        )
    return records


def load_pathvqa(root: Path, split: str) -> list[Record]:
    """PathVQA (He et al. 2020) from its GitHub release.

    Source: https://github.com/UCSD-AI4H/PathVQA (``qas/{split}/{split}_qa.pkl`` + ``images/{split}/``);
    licence MIT (repository). The pickle holds a list of dicts with ``image`` (file stem),
    ``question`` and ``answer``; answers "yes"/"no" are CLOSED, the rest OPEN (the release's own
    convention; an ``answer_type`` field, when present, wins). A ``{split}_qa.json`` with the same
    entries is read instead when present. Pickles can run code: only open releases you trust.

    Args:
        root: the ``pvqa`` folder.
        split: "test", "val" or "train".
    """
    qa_dir = root / "qas" / split
    json_path, pkl_path = qa_dir / f"{split}_qa.json", qa_dir / f"{split}_qa.pkl"
    if json_path.is_file():
        path, data = json_path, json.loads(json_path.read_text(encoding="utf-8"))
    elif pkl_path.is_file():
        path = pkl_path
        with open(pkl_path, "rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - the release's own format, see docstring
    else:
        raise MedVLDataError(f"task 'pathvqa': neither {json_path.name} nor {pkl_path.name} found", path=str(qa_dir))
    records = []
    for i, e in enumerate(data):
        where = f"entry {i}"
        require(e, ("image", "question", "answer"), where, path)
        answer = str(e["answer"]).strip()
        atype = e.get("answer_type")
        if atype is None:
            atype = "CLOSED" if answer.lower() in ("yes", "no") else "OPEN"
        stem = str(e["image"])
        rel = stem if Path(stem).suffix else stem + ".jpg"
        img = media_path(root / "images" / split, rel, where, path)
        records.append(
            make_record(
                f"pathvqa-{split}-{i}",
                str(e["question"]).strip(),
                answer,
                marker="<image>",
                media=[img],
                suffix=SHORT_ANSWER_SUFFIX,
                answer_type=str(atype),
                source="pathvqa",
            )
        )
    return records
