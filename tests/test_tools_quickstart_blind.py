"""The blind baseline's splits: the same records, every image or volume one blank file of the same geometry."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
from PIL import Image

from medvl.tools.quickstart.blind import write_blind_split
from medvl.tools.synth.dataset import synthesize
from medvl.tools.synth.phantoms import Geometry2D, Geometry3D


def test_blind_split_points_every_record_to_one_blank_image(tmp_path):
    synthesize("2d", 12, 0, tmp_path, geometry=Geometry2D(size=48, spacing=7.5))
    path = write_blind_split(tmp_path, "train", "2d")
    original = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    blind = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["messages"] for r in blind] == [r["messages"] for r in original]
    assert {r["images"][0] for r in blind} == {"blank.png"}
    blank = np.array(Image.open(tmp_path / "blank.png"))
    assert blank.shape == np.array(Image.open(tmp_path / original[0]["images"][0])).shape and not blank.any()
    # stage 0's label table: the same labels, every row the blank file
    with open(tmp_path / "train_labels.csv", encoding="utf-8") as fh:
        labels = list(csv.reader(fh))
    with open(tmp_path / "train_labels_blind.csv", encoding="utf-8") as fh:
        blind_labels = list(csv.reader(fh))
    assert blind_labels[0] == labels[0] and [r[1:] for r in blind_labels] == [r[1:] for r in labels]
    assert {r[0] for r in blind_labels[1:]} == {"blank.png"}


def test_blind_volume_is_air_with_the_same_geometry(tmp_path):
    synthesize("3d", 3, 0, tmp_path, geometry=Geometry3D(shape=(32, 32, 16), spacing=(10.0, 10.0, 15.0)))
    write_blind_split(tmp_path, "train", "3d")
    case = json.loads((tmp_path / "cases.jsonl").read_text().splitlines()[0])
    blank, ref = nib.load(tmp_path / "blank.nii.gz"), nib.load(tmp_path / case["file"])
    assert np.allclose(blank.affine, ref.affine) and blank.shape == ref.shape
    assert np.all(np.asarray(blank.dataobj) == -1000)
