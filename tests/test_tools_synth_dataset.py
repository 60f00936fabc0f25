"""Synthetic phantom data sets: determinism, splits, bilingual records, grouping, the medvl data synth command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.cli import main
from medvl.tools.synth import dataset
from medvl.tools.synth.dataset import synthesize
from medvl.tools.synth.findings import CaseFindings
from medvl.tools.synth.phantoms import Geometry2D, Geometry3D
from medvl.tools.synth.text import CLOSED_TYPES, answer_for

SMALL_3D = Geometry3D(shape=(64, 64, 32), spacing=(5.0, 5.0, 7.5))
TINY_2D = Geometry2D(size=48, spacing=7.5)  # where pixel content does not matter (speed)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_determinism_same_seed_same_bytes(tmp_path):
    a = synthesize("2d", 6, 3, tmp_path / "a", geometry=TINY_2D)
    b = synthesize("2d", 6, 3, tmp_path / "b", geometry=TINY_2D)
    assert a == b
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "cases.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for png in (tmp_path / "a" / "images").iterdir():
        assert png.read_bytes() == (tmp_path / "b" / "images" / png.name).read_bytes()
    synthesize("2d", 6, 3, tmp_path / "w", geometry=TINY_2D, workers=2)  # parallel rendering gives the same bytes
    for name in ("train.jsonl", "cases.jsonl", "images/case00004.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "w" / name).read_bytes()
    synthesize("2d", 6, 4, tmp_path / "c", geometry=TINY_2D)
    assert (tmp_path / "a" / "cases.jsonl").read_bytes() != (tmp_path / "c" / "cases.jsonl").read_bytes()


def test_splits_disjoint_and_records_follow_their_case(tmp_path):
    summary = synthesize("2d", 20, 1, tmp_path, geometry=TINY_2D)
    assert {s: summary["splits"][s]["cases"] for s in dataset.SPLITS} == {"train": 16, "validation": 2, "test": 2}
    cases = _read_jsonl(tmp_path / "cases.jsonl")
    split_of = {c["id"]: c["split"] for c in cases}
    seen: dict[str, set[str]] = {}
    for split in dataset.SPLITS:
        records = _read_jsonl(tmp_path / f"{split}.jsonl")
        seen[split] = {r["meta"]["case"] for r in records}
        for r in records:
            assert split_of[r["meta"]["case"]] == split
            assert r["images"] == [f"images/{r['meta']['case']}.png"]
            assert (tmp_path / r["images"][0]).exists()
            assert r["messages"][0]["content"].startswith("<image>\n")
            assert r["messages"][1]["content"] == r["meta"]["reference"]
    assert not (seen["train"] & seen["validation"]) and not (seen["train"] & seen["test"])
    assert not (seen["validation"] & seen["test"])


def test_bilingual_records_and_balanced_closed_answers(tmp_path):
    synthesize("2d", 120, 5, tmp_path, geometry=TINY_2D)
    records = [r for s in dataset.SPLITS for r in _read_jsonl(tmp_path / f"{s}.jsonl")]
    languages = Counter(r["meta"]["language"] for r in records)
    assert languages["en"] > 80 and languages["zh"] > 80
    zh_reports = [r for r in records if r["meta"]["question_type"] == "report" and r["meta"]["language"] == "zh"]
    assert zh_reports and all("\u4e00" <= ch <= "\u9fff" for ch in zh_reports[0]["messages"][0]["content"][-3:-1])
    assert any("胸腔积液" in r["meta"]["reference"] for r in zh_reports)
    for r in records:
        assert r["meta"]["answer_type"] == ("CLOSED" if r["meta"]["question_type"] in CLOSED_TYPES else "OPEN")
    # Blind guard: within each closed type no answer dominates (balanced to equal frequencies).
    for qtype in CLOSED_TYPES:
        answers = Counter(
            r["meta"]["reference"]
            for r in records
            if r["meta"]["question_type"] == qtype and r["meta"]["language"] == "en"
        )
        assert len(answers) >= 2, qtype
        assert max(answers.values()) / sum(answers.values()) < 0.5 + 0.2, (qtype, answers)


def test_dicom_output_has_geometry_tags(tmp_path):
    import pydicom

    synthesize("2d", 3, 2, tmp_path / "dcm", dicom=True)
    synthesize("2d", 3, 2, tmp_path / "png")
    ds = pydicom.dcmread(tmp_path / "dcm" / "images" / "case00000.dcm")
    assert ds.Modality == "DX" and ds.ViewPosition == "PA" and list(ds.PatientOrientation) == ["L", "F"]
    assert [float(v) for v in ds.PixelSpacing] == [Geometry2D().spacing] * 2
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    png = np.array(Image.open(tmp_path / "png" / "images" / "case00000.png"))
    assert np.array_equal(ds.pixel_array, png)


def test_cli_and_bad_choices(tmp_path, capsys):
    assert main(["data", "synth", "--kind", "3d", "--n", "2", "--seed", "1", "--out", str(tmp_path)]) == 0
    assert len(list((tmp_path / "volumes").glob("*.nii.gz"))) == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["train"]["cases"] == 2
    assert main(["data", "synth", "--n", "2", "--nodule-mm", "4", "--out", str(tmp_path / "z")]) == 2
    assert "--nodule-mm takes MIN,MAX" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid choices: 2d, 3d"):
        synthesize("4d", 2, 0, tmp_path / "x")
    with pytest.raises(ValueError, match="--dicom"):
        synthesize("3d", 2, 0, tmp_path / "y", dicom=True)


def test_grouped_training_conversations_never_pair_dependent_questions(tmp_path):
    synthesize("2d", 40, 1, tmp_path / "s", geometry=TINY_2D)
    synthesize("2d", 40, 1, tmp_path / "g", geometry=TINY_2D, train_format="grouped")
    single, grouped = _read_jsonl(tmp_path / "s" / "train.jsonl"), _read_jsonl(tmp_path / "g" / "train.jsonl")
    # the same question/answer pairs per case, now in fewer records (one image pass answers several)
    pairs = (
        lambda recs: Counter(
            (r["meta"]["case"], m["content"].replace("<image>\n", ""), n["content"])  # noqa: E731
            for r in recs
            for m, n in zip(r["messages"][::2], r["messages"][1::2])
        )
    )
    assert pairs(single) == pairs(grouped)
    assert len(grouped) < 0.7 * len(single)
    cases = {json.loads(line)["id"]: json.loads(line)["findings"] for line in (tmp_path / "g" / "cases.jsonl").open()}
    for rec in grouped:
        users = [m["content"] for m in rec["messages"][::2]]
        assert users[0].startswith("<image>\n") and not any("<image>" in u for u in users[1:])
        types = rec["meta"].get("question_types", [rec["meta"].get("question_type")])
        families = [dataset.finding_family(t) for t in types]
        assert len(set(families)) == len(families), rec["id"]  # at most one question per finding
        assert "report" not in families or len(families) == 1  # a report gives everything away: alone
        f = CaseFindings.from_dict(cases[rec["meta"]["case"]])
        for t, lang, answer in zip(
            types,
            rec["meta"].get("languages", [rec["meta"].get("language")]),
            [m["content"] for m in rec["messages"][1::2]],
        ):
            if t != "report" and t in CLOSED_TYPES:
                assert answer == answer_for(f, t, lang)
    # held-out splits are single questions either way, byte for byte
    for split in ("validation", "test"):
        assert (tmp_path / "s" / f"{split}.jsonl").read_bytes() == (tmp_path / "g" / f"{split}.jsonl").read_bytes()
    with pytest.raises(ValueError, match="valid choices: single, grouped"):
        synthesize("2d", 2, 1, tmp_path / "x", geometry=TINY_2D, train_format="pairs")


def test_tiny_data_sets_where_a_question_type_has_no_candidate(tmp_path):
    """One case (or a seed where a split lacks a question type) still writes every split."""
    for n, seed in ((1, 0), (3, 3)):
        out = tmp_path / f"{n}_{seed}"
        synthesize("2d", n, seed, out)
        assert any(out.rglob("*.json*"))


def test_nodule_sizes_are_a_knob_and_nothing_else_changes(tmp_path):
    geometry = Geometry2D(size=32, spacing=11.0)
    synthesize("2d", 20, 5, tmp_path / "default", geometry=geometry)
    synthesize("2d", 20, 5, tmp_path / "small", geometry=geometry, nodule_diameter_mm=(8.0, 12.0))
    read = lambda d: [json.loads(line)["findings"] for line in (tmp_path / d / "cases.jsonl").read_text().splitlines()]  # noqa: E731
    default, small = read("default"), read("small")
    sizes = [n["diameter_mm"] for f in small for n in f["nodules"]]
    assert sizes and all(8.0 <= s <= 12.0 for s in sizes)
    # the same cases otherwise: nodule count, sides, lobes, effusion, heart
    strip = lambda fs: [(f["effusion"], f["heart"], [(n["side"], n["lobe"]) for n in f["nodules"]]) for f in fs]  # noqa: E731
    assert strip(default) == strip(small)
    assert json.loads((tmp_path / "small" / "dataset.json").read_text())["nodule_diameter_mm"] == [8.0, 12.0]
    with pytest.raises(ValueError, match="0 < smallest <= largest"):
        synthesize("2d", 2, 0, tmp_path / "bad", nodule_diameter_mm=(12.0, 8.0))
