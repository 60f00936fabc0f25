"""Multiple-choice 2D sets: PMC-VQA and OmniMedVQA (scored by the ``mcq`` protocol).

Prompt: ``<image>\\n{question}\\nA. ...\\nB. ...`` + "Answer with the option's letter from the
given choices directly." Generation: greedy, at most 16 new tokens.
"""

from __future__ import annotations

import csv
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING

from medvl.errors import MedVLDataError
from medvl.eval.tasks.base import MCQ_SUFFIX, make_record, media_path, require
from medvl.utils.files import read_json

if TYPE_CHECKING:
    from medvl.data.records import Record

_OPTION_PREFIX = re.compile(r"^\s*[A-D]\s*[:\.]\s*")


def options_block(options: list[str]) -> str:
    """``"\\nA. first\\nB. second"`` for the prompt.

    Args:
        options: option texts in letter order.
    """
    return "".join(f"\n{letter}. {opt}" for letter, opt in zip(string.ascii_uppercase, options))


def load_pmc_vqa(root: Path, split: str) -> list[Record]:
    """PMC-VQA (Zhang et al. 2023), multiple-choice version.

    Source: https://huggingface.co/datasets/xmcmic/PMC-VQA; licence CC BY-SA 4.0 per the dataset card.
    Two CSV layouts exist and both are read:

    - version 1 (``train.csv``, ``test.csv``, ``test_clean.csv`` + ``images.zip``): ``Figure_path``,
      ``Question``, ``Answer`` (the README's sample also spells it ``Anwser``), ``Choice A``..``Choice D``
      (texts prefixed ``"A:"``, sometimes with a leading space) and ``Answer_label`` (letter);
    - version 2 (``train_2.csv``, ``test_2.csv`` + ``images_2.zip``, "non-compound images", the split
      recent papers report): ``index``, ``Figure_path``, ``Caption``, ``Question``, ``Choice A``..``Choice D``,
      ``Answer`` and ``split``, the order MedEvalKit unpacks (``utils/PMC_VQA/PMC_VQA.py``). ``Answer`` is
      taken as the option letter when it is one, else matched against the option texts.

    Images are looked up under ``images/`` then ``figures/`` (the zips unpack to either name).

    Args:
        root: folder with the CSV files and ``images/`` (or ``figures/``).
        split: CSV stem, e.g. "test_2" (default task split), "test_clean", "test", "train_2".
    """
    path = root / f"{split}.csv"
    if not path.is_file():
        raise MedVLDataError("task 'pmc_vqa': CSV not found (splits are CSV stems, e.g. test_2)", path=str(path))
    image_dirs = [d for d in (root / "images", root / "figures") if d.is_dir()] or [root / "images"]
    records = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            where = f"row {i + 2}"  # header is line 1
            if "Anwser" in row and "Answer" not in row:
                row["Answer"] = row["Anwser"]
            require(row, ("Figure_path", "Question", "Answer", "Choice A", "Choice B"), where, path)
            options = [
                _OPTION_PREFIX.sub("", row[f"Choice {c}"]).strip()
                for c in "ABCD"
                if (row.get(f"Choice {c}") or "").strip()
            ]
            letter = _pmc_answer_letter(row, options)
            if letter is None:
                raise MedVLDataError(
                    f"answer {row['Answer']!r} is neither an option letter nor one of the options {options}",
                    record=where,
                    path=str(path),
                )
            rel = row["Figure_path"].strip()
            folder = next((d for d in image_dirs if (d / rel).exists()), image_dirs[0])
            img = media_path(folder, rel, where, path)
            answer = options[string.ascii_uppercase.index(letter)]
            records.append(
                make_record(
                    f"pmc_vqa-{split}-{row.get('index') or i}",
                    row["Question"].strip(),
                    answer,
                    marker="<image>",
                    media=[img],
                    suffix=options_block(options) + MCQ_SUFFIX,
                    answer_type="CLOSED",
                    source="pmc_vqa",
                    options=options,
                    answer_choice=letter,
                )
            )
    return records


def _pmc_answer_letter(row: dict, options: list[str]) -> str | None:
    """The correct option letter of a PMC-VQA row (``Answer_label``, a letter ``Answer``, or the option text)."""
    letters = string.ascii_uppercase[: len(options)]
    label = (row.get("Answer_label") or "").strip().upper()
    if label in letters and label:
        return label
    answer = _OPTION_PREFIX.sub("", row["Answer"]).strip()
    bare = row["Answer"].strip().rstrip(":.").upper()
    if len(bare) == 1 and bare in letters:
        return bare
    if answer in options:
        return letters[options.index(answer)]
    return None


def load_omnimedvqa(root: Path, split: str) -> list[Record]:
    """OmniMedVQA (Hu et al. 2024), open-access part.

    Source: https://huggingface.co/datasets/foreverbeliever/OmniMedVQA
    (``QA_information/Open-access/*.json`` + ``Images/``); licence: per source dataset (the
    open-access part redistributes sets with permissive licences; see the card). Entries have
    ``dataset``, ``question_id``, ``question_type`` (Modality Recognition, Anatomy Identification,
    Disease Diagnosis, Lesion Grading, Other Biological Attributes), ``question``, ``gt_answer``
    (option text), ``option_A``..``option_D`` (two to four), ``image_path`` (``Images/<dataset>/...``,
    relative to the release root) and ``modality_type`` (some files say ``modality``), as
    MedEvalKit's ``utils/OmniMedVQA/OmniMedVQA.py`` reads them; results are reported per
    modality and per question type.

    Args:
        root: the OmniMedVQA folder.
        split: "open-access" (``QA_information/Open-access``) or "restricted-access".
    """
    sub = {"open-access": "Open-access", "restricted-access": "Restricted-access"}.get(split)
    if sub is None:
        raise ValueError(f"OmniMedVQA split {split!r}; valid: open-access, restricted-access")
    qa_dir = root / "QA_information" / sub
    files = sorted(qa_dir.glob("*.json"))
    if not files:
        raise MedVLDataError("task 'omnimedvqa': no QA json files", path=str(qa_dir))
    records = []
    for path in files:
        for i, e in enumerate(read_json(path, "task 'omnimedvqa' file")):
            where = f"entry {i} (question_id {e.get('question_id')})"
            require(e, ("question_id", "question", "gt_answer", "image_path", "option_A", "option_B"), where, path)
            options = [str(e[f"option_{c}"]).strip() for c in "ABCD" if e.get(f"option_{c}") not in (None, "")]
            gt = str(e["gt_answer"]).strip()
            if gt not in options:
                raise MedVLDataError(
                    f"gt_answer {gt!r} is not one of the options {options}", record=where, path=str(path)
                )
            img = media_path(root, e["image_path"], where, path)
            records.append(
                make_record(
                    f"omnimedvqa-{e['question_id']}",
                    str(e["question"]).strip(),
                    gt,
                    marker="<image>",
                    media=[img],
                    suffix=options_block(options) + MCQ_SUFFIX,
                    answer_type="CLOSED",
                    source="omnimedvqa",
                    options=options,
                    answer_choice=string.ascii_uppercase[options.index(gt)],
                    modality=e.get("modality_type") or e.get("modality"),
                    question_type=e.get("question_type"),
                    dataset=e.get("dataset"),
                )
            )
    return records
