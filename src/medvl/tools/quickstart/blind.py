"""The blind baseline's data: every image or volume replaced by one blank file of the same geometry.

The blind baseline trains and evaluates the same model on these splits. It measures what the
questions give away without looking; the gap to it is what vision adds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import cast

import numpy as np


def blank_name(kind: str) -> str:
    """File name of the blind baseline's blank image / volume inside the data folder.

    Args:
        kind: "2d" or "3d".
    """
    return "blank.png" if kind == "2d" else "blank.nii.gz"


def write_blind_split(data_dir: Path, split: str, kind: str) -> Path:
    """A copy of ``split.jsonl`` whose every image/volume is one blank file (same size and geometry),
    and likewise of the split's label table (``split_labels_blind.csv``) if there is one.

    Args:
        data_dir: the synthetic set.
        split: "train", "validation" or "test".
        kind: "2d" or "3d".
    """
    key = "images" if kind == "2d" else "volumes"
    records = [json.loads(line) for line in (data_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    blank = data_dir / blank_name(kind)
    if not blank.exists():
        template = data_dir / records[0][key][0]
        if kind == "2d":
            from PIL import Image

            size = Image.open(template).size
            Image.fromarray(np.zeros(size[::-1], dtype=np.uint16)).save(blank)
        else:
            import nibabel as nib

            img = cast("nib.Nifti1Image", nib.load(template))  # the synthetic set's volumes are NIfTI-1
            air = np.full(img.shape, -1000, dtype=np.int16)  # nothing but air: no anatomy at all
            nib.save(nib.Nifti1Image(air, img.affine, img.header), str(blank))
    out = data_dir / f"{split}_blind.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for rec in records:
            rec[key] = [blank.name]
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    table = data_dir / f"{split}_labels.csv"
    if table.exists():  # stage 0's label table: the same labels, every row the blank file
        with open(table, encoding="utf-8", newline="") as fh:
            header, *rows = list(csv.reader(fh))
        with open(data_dir / f"{split}_labels_blind.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([blank.name, *row[1:]] for row in rows)
    return out
