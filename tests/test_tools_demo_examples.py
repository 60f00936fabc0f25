"""Example cases of the web demo: synthetic phantoms rendered on first use, loadable as uploads."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.tools.demo.examples import ExampleCases
from medvl.tools.demo.media import load_upload


def test_examples_render_on_first_use_and_load(tmp_path: Path) -> None:
    examples = ExampleCases(per_kind=1, folder=tmp_path / "ex")
    names = examples.names()
    assert names == ["Chest radiograph phantom 1", "Chest CT phantom 1"]
    assert examples.names(images=False) == ["Chest CT phantom 1"]
    assert not (tmp_path / "ex").exists()  # nothing rendered before an example is asked for
    ct = examples.get("Chest CT phantom 1")
    assert ct.kind == "3d" and ct.path.name.endswith(".nii.gz") and ct.question.endswith("?")
    assert "<volume>" not in ct.question
    upload = load_upload(ct.path)
    assert upload.kind == "volume" and upload.data.shape == (96, 96, 48)  # synth's default CT geometry
    xray = examples.get("Chest radiograph phantom 1")
    assert load_upload(xray.path).kind == "image"
    with pytest.raises(ValueError, match="valid choices: Chest radiograph phantom 1, Chest CT phantom 1"):
        examples.get("Knee MRI")
