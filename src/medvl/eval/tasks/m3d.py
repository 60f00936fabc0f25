"""M3D-Data (Bai et al. 2024): M3D-VQA (closed and open) and M3D-Cap, 3D CT volumes as ``.npy``.

Source: https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA and .../M3D-Cap (licence Apache-2.0
per the dataset cards); volumes are the preprocessed ``.npy`` arrays of the release (M3D's
``Image Path`` / ``image`` fields are relative to the data root, M3D's ``Data/data``): float32
``(1, 32, 256, 256)`` already min-max scaled to 0..1 by ``Data/process/m3d_cap_data_prepare.py``
(slices / 255, ``image - min``, ``/ max``, MONAI ``CropForeground`` + ``Resize([32, 256, 256])``). The
records ask the volume processor for ``intensity="unit"`` (``meta["volume_load"]``): no HU window.

Prompts follow M3D-Bench ``Bench/dataset/multi_dataset.py``: closed questions are
``{question} Choices: A. .. B. .. C. .. D. ..``, open questions the bare question, captions one
of M3D's caption prompts. Generation: greedy, 256 new tokens for open/caption, 32 for closed.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from medvl.errors import MedVLDataError
from medvl.eval.tasks.base import make_record, media_path, require
from medvl.utils.files import read_json

if TYPE_CHECKING:
    from medvl.data.records import Record

CAPTION_PROMPT = "Can you provide a caption consists of findings for this medical image?"
# M3D-Data's volumes are min-max scaled to 0..1 by its preparation script (no HU left to window).
UNIT_VOLUME = {"intensity": "unit"}
# ``Question Type`` codes of M3D-VQA (Data/process/m3d_vqa_data_generation.py's prompt: 1 planes,
# 2 CT phase or window, 3 organ, 4 abnormality type, 5 abnormality position).
QUESTION_TYPES = {"1": "plane", "2": "phase", "3": "organ", "4": "abnormality", "5": "location"}


def _read_csv(root: Path, split: str, task: str) -> tuple[Path, list[dict]]:
    path = root / "M3D-VQA" / f"M3D_VQA_{split}.csv"
    if not path.is_file():
        path = root / f"M3D_VQA_{split}.csv"
    if not path.is_file():
        raise MedVLDataError(f"task {task!r}: M3D_VQA_{split}.csv not found (in M3D-VQA/ or the root)", path=str(root))
    with open(path, newline="", encoding="utf-8") as fh:
        return path, list(csv.DictReader(fh))


def load_m3d_vqa(root: Path, split: str, closed: bool) -> list[Record]:
    """M3D-VQA rows as closed (multiple choice) or open questions.

    Columns: ``Image Path``, ``Question Type``, ``Question``, ``Choice A``..``Choice D``,
    ``Answer``, ``Answer Choice``.

    Args:
        root: M3D data root (volumes resolved against it).
        split: "test" (``M3D_VQA_test.csv``), "val", "train".
        closed: closed-ended (choices in the prompt, letter scoring) or open-ended.
    """
    task = "m3d_vqa_closed" if closed else "m3d_vqa_open"
    path, rows = _read_csv(root, split, task)
    records = []
    for i, row in enumerate(rows):
        where = f"row {i + 2}"
        require(row, ("Image Path", "Question", "Answer", "Answer Choice", "Choice A"), where, path)
        vol = media_path(root, row["Image Path"], where, path)
        question = row["Question"].strip()
        code = str(row.get("Question Type") or "").strip()
        qtype = QUESTION_TYPES.get(code, code or None)
        options = [row[f"Choice {c}"].strip() for c in "ABCD" if row.get(f"Choice {c}")]
        if closed:
            choices = " ".join(f"{c}. {o}" for c, o in zip("ABCD", options))
            records.append(
                make_record(
                    f"{task}-{i}",
                    question,
                    f"{row['Answer Choice'].strip()}. {row['Answer'].strip()}",
                    marker="<volume>",
                    media=[vol],
                    suffix=f" Choices: {choices}",
                    answer_type="CLOSED",
                    source=task,
                    options=options,
                    answer_choice=row["Answer Choice"].strip(),
                    volume_load=UNIT_VOLUME,
                    question_type=qtype,
                )
            )
        else:
            records.append(
                make_record(
                    f"{task}-{i}",
                    question,
                    row["Answer"].strip(),
                    marker="<volume>",
                    media=[vol],
                    answer_type="OPEN",
                    source=task,
                    question_type=qtype,
                    volume_load=UNIT_VOLUME,
                )
            )
    return records


def load_m3d_vqa_closed(root: Path, split: str) -> list[Record]:
    """M3D-VQA closed-ended (see :func:`load_m3d_vqa`).

    Args:
        root: M3D data root.
        split: CSV split.
    """
    return load_m3d_vqa(root, split, closed=True)


def load_m3d_vqa_open(root: Path, split: str) -> list[Record]:
    """M3D-VQA open-ended (see :func:`load_m3d_vqa`).

    Args:
        root: M3D data root.
        split: CSV split.
    """
    return load_m3d_vqa(root, split, closed=False)


def load_m3d_cap(root: Path, split: str) -> list[Record]:
    """M3D-Cap: ``M3D_Cap.json`` (``{"train"|"validation"|"test": [{"image": npy path, "text": txt path}]}``,
    both relative to the data root, e.g. ``M3D_Cap_npy/ct_quizze/000045/Axial_lung_window.npy`` and
    ``M3D_Cap_npy/ct_quizze/000045/text.txt``); the reference is the text file's content. M3D's
    ``eval_caption.py`` reads ``Data/data/M3D_Cap_npy/M3D_Cap.json`` with data root ``Data/data``; the
    file is looked up there, then under ``M3D-Cap/`` and the root.

    Args:
        root: M3D data root (holding ``M3D_Cap.json`` or ``M3D-Cap/M3D_Cap.json``).
        split: "test", "validation" or "train".
    """
    candidates = [root / "M3D_Cap_npy" / "M3D_Cap.json", root / "M3D-Cap" / "M3D_Cap.json", root / "M3D_Cap.json"]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    data = read_json(path, "task 'm3d_cap' file")
    if split not in data:
        raise MedVLDataError(f"task 'm3d_cap': split {split!r} not in the file (has {', '.join(data)})", path=str(path))
    records = []
    for i, e in enumerate(data[split]):
        where = f"{split}[{i}]"
        require(e, ("image", "text"), where, path)
        vol = media_path(root, e["image"], where, path)
        text = Path(media_path(root, e["text"], where, path)).read_text(encoding="utf-8").strip()
        records.append(
            make_record(
                f"m3d_cap-{split}-{i}",
                CAPTION_PROMPT,
                text,
                marker="<volume>",
                media=[vol],
                source="m3d_cap",
                volume_load=UNIT_VOLUME,
            )
        )
    return records
