"""Stage-0 labels: label tables, records' meta.labels, closed yes/no answers; schema and targets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.data.finding_labels import (
    FindingDataset,
    LabelledItem,
    LabelSchema,
    is_label_table,
    items_from_records,
    load_label_table,
    load_labelled_items,
    parse_value,
    vqa_labels,
)
from medvl.data.records import Record, load_records
from medvl.errors import MedVLDataError


def _nan_equal(a: torch.Tensor, b: list[float]) -> bool:
    b = torch.tensor(b)
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def test_parse_value_binary_class_and_unknown():
    assert [parse_value(v) for v in (1, 0, True, "1", "0.0", "yes", "No", "是", "否")] == [1, 0, 1, 1, 0, 1, 0, 1, 0]
    assert [parse_value(v) for v in ("", None, "nan", float("nan"), " null ")] == [None] * 5
    assert parse_value("none") == "none" and parse_value("left") == "left" and parse_value(2) == "2"


def test_csv_table_schema_and_targets(tmp_path):
    (tmp_path / "t.csv").write_text(
        "image,id,nodule,effusion\na.png,c1,1,none\nsub/b.png,,0,left\na.png,c3,,right\n", encoding="utf-8"
    )
    assert is_label_table(tmp_path / "t.csv")
    items = load_label_table(tmp_path / "t.csv", "image")
    assert [i.id for i in items] == ["c1", "t.csv:3", "c3"]  # a row without id: file and line
    assert items[1].path == str(tmp_path / "sub" / "b.png")
    schema = LabelSchema.from_items(items)
    assert schema.to_dict() == {
        "labels": [{"name": "nodule", "classes": None}, {"name": "effusion", "classes": ["left", "none", "right"]}]
    }
    assert schema.width == 4
    # nodule | effusion one-hot (left, none, right); the unknown nodule of row 3 is NaN
    assert _nan_equal(schema.encode(items[0]), [1, 0, 1, 0])
    assert _nan_equal(schema.encode(items[1]), [0, 1, 0, 0])
    assert _nan_equal(schema.encode(items[2]), [math.nan, 0, 0, 1])
    only = LabelSchema.from_items(items, ["effusion"])
    assert [s.name for s in only.labels] == ["effusion"]
    with pytest.raises(ValueError, match=r"\['heart'\] not found.*nodule, effusion"):
        LabelSchema.from_items(items, ["heart"])
    with pytest.raises(MedVLDataError, match="not one of the classes seen in training"):
        schema.encode(LabelledItem("x", "x.png", {"effusion": "both"}))


def test_table_errors_name_the_file(tmp_path):
    (tmp_path / "t.csv").write_text("picture,nodule\na.png,1\n", encoding="utf-8")
    with pytest.raises(MedVLDataError, match=r"t.csv.*media column \(image or path or file\)"):
        load_label_table(tmp_path / "t.csv", "image")
    with pytest.raises(MedVLDataError, match="label table not found"):
        load_label_table(tmp_path / "missing.csv", "image")


def test_label_table_media_stay_inside_the_data_root(tmp_path):
    """A label table's media obey the same root rule as records' media (opt-in to leave it)."""
    from medvl.data.records import outside_root_allowed

    data = tmp_path / "data"
    data.mkdir()
    (data / "t.csv").write_text("image,nodule\n../outside/secret.png,1\n/etc/passwd,0\n", encoding="utf-8")
    with pytest.raises(MedVLDataError, match=r"t\.csv.*outside"):
        load_label_table(data / "t.csv", "image")
    with outside_root_allowed(True):
        items = load_label_table(data / "t.csv", "image")
    assert [i.path for i in items] == [str(data / "../outside/secret.png"), "/etc/passwd"]


def test_jsonl_label_table_is_told_apart_from_records(tmp_path):
    rows = [
        {"id": "v1", "volume": "ct/1.nii.gz", "labels": {"nodule": True}},
        {"id": "v2", "volume": ["ct/2.nii.gz"], "labels": {"nodule": False}},
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "records.jsonl").write_text(
        json.dumps(
            {
                "id": "r",
                "images": ["a.png"],
                "messages": [
                    {"role": "user", "content": "<image>\nIs there a nodule?"},
                    {"role": "assistant", "content": "yes"},
                ],
            }
        )
        + "\n"
    )
    assert is_label_table(tmp_path / "labels.jsonl") and not is_label_table(tmp_path / "records.jsonl")
    items = load_labelled_items([str(tmp_path / "labels.jsonl")], "volume", root=tmp_path / "data")
    assert [(i.id, i.path, parse_value(i.labels["nodule"])) for i in items] == [
        ("v1", str(tmp_path / "data" / "ct/1.nii.gz"), 1),
        ("v2", str(tmp_path / "data" / "ct/2.nii.gz"), 0),
    ]
    # the records file: its closed yes/no answer is the label (auto -> vqa, no meta.labels)
    (item,) = load_labelled_items([str(tmp_path / "records.jsonl")], "image")
    assert item.labels == {"is there a nodule": 1} and item.path == str(tmp_path / "a.png")


def _rec(rid, image, meta, qa=(("Is there a nodule?", "yes"),)):
    messages = []
    for k, (q, a) in enumerate(qa):
        messages += [
            {"role": "user", "content": ("<image>\n" if k == 0 else "") + q},
            {"role": "assistant", "content": a},
        ]
    return Record(rid, messages, images=[image], meta={"file": "recs.jsonl", **meta})


def test_meta_labels_merge_per_image_and_conflicts_name_both_records():
    recs = [
        _rec("r1", "/d/a.png", {"labels": {"nodule": 1, "effusion": "left"}}),
        _rec("r2", "/d/a.png", {"labels": {"nodule": 1, "heart_enlarged": 0}}),
        _rec("r3", "/d/b.png", {"labels": {"nodule": 0}}),
        _rec("r4", "/d/c.png", {}),
    ]  # no labels: not used
    items = items_from_records(recs, "image", "auto")  # auto: meta, as records carry meta.labels
    assert [(i.path, i.labels) for i in items] == [
        ("/d/a.png", {"nodule": 1, "effusion": "left", "heart_enlarged": 0}),
        ("/d/b.png", {"nodule": 0}),
    ]
    bad = recs + [_rec("r5", "/d/b.png", {"labels": {"nodule": "1"}})]
    with pytest.raises(MedVLDataError, match=r"record 'r5'.*'nodule' of /d/b.png is 0 in record 'r3' but 1 here"):
        items_from_records(bad, "image", "meta")
    with pytest.raises(MedVLDataError, match="mapping"):
        items_from_records([_rec("r6", "/d/a.png", {"labels": [1, 0]})], "image", "meta")


def test_vqa_labels_from_closed_yes_no_answers():
    # a grouped conversation: each turn's question type names its label; other answers are no labels
    rec = _rec(
        "g",
        "/d/a.png",
        {"question_types": ["nodule_presence", "heart_size", "effusion_presence"]},
        qa=(("Is there a lung nodule?", "Yes."), ("Is the heart enlarged?", "normal"), ("胸腔积液？", "否")),
    )
    assert vqa_labels(rec) == {"nodule_presence": 1, "effusion_presence": 0}
    single = _rec("s", "/d/a.png", {"question_type": "nodule_presence"}, qa=(("是否有肺结节？", "是"),))
    assert vqa_labels(single) == {"nodule_presence": 1}
    plain = _rec("p", "/d/b.png", {}, qa=(("Is there an effusion?", "no"),))
    assert vqa_labels(plain) == {"is there an effusion": 0}
    items = items_from_records([rec, single, plain], "image", "vqa")
    assert [(i.path, i.labels) for i in items] == [
        ("/d/a.png", {"nodule_presence": 1, "effusion_presence": 0}),
        ("/d/b.png", {"is there an effusion": 0}),
    ]
    contradicting = _rec("c", "/d/a.png", {"question_type": "nodule_presence"}, qa=(("Nodule?", "no"),))
    with pytest.raises(MedVLDataError, match="record 'c'.*'nodule_presence'"):
        items_from_records([single, contradicting], "image", "vqa")


def test_synth_records_carry_their_findings_as_meta_labels(tmp_path):
    from medvl.tools.synth.dataset import synthesize
    from medvl.tools.synth.findings import FINDING_LABELS, CaseFindings
    from medvl.tools.synth.phantoms import Geometry2D

    synthesize("2d", 10, 3, tmp_path, geometry=Geometry2D(size=32, spacing=11.0), train_format="grouped")
    cases = {c["file"]: c for c in map(json.loads, (tmp_path / "cases.jsonl").read_text().splitlines())}
    items = items_from_records(load_records(tmp_path / "train.jsonl"), "image", "meta")
    assert len(items) == sum(c["split"] == "train" for c in cases.values())
    for item in items:
        truth = CaseFindings.from_dict(cases[item.path[len(str(tmp_path)) + 1 :]]["findings"]).labels()
        assert [item.labels[name] for name in FINDING_LABELS] == truth
    # the label tables hold the same labels, one row per case of the split
    table = load_label_table(tmp_path / "validation_labels.csv", "image")
    assert len(table) == sum(c["split"] == "validation" for c in cases.values())
    for item in table:
        truth = CaseFindings.from_dict(cases[item.path[len(str(tmp_path)) + 1 :]]["findings"]).labels()
        assert [parse_value(item.labels[name]) for name in FINDING_LABELS] == truth


def test_finding_dataset_preprocesses_like_the_processor_and_caches(tmp_path, tiny_processor):
    pixels = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    items = [
        LabelledItem("a", str(tmp_path / "a.png"), {"nodule": 1}),
        LabelledItem("b", str(tmp_path / "b.png"), {"nodule": 0}),
    ]
    schema = LabelSchema.from_items(items)
    data = FindingDataset(items, schema, tiny_processor, "image", cache_media=True)
    first = data[0]
    expected = tiny_processor.image_processor([Image.fromarray(pixels).convert("RGB")], return_tensors="pt")[
        "pixel_values"
    ][0]
    assert torch.allclose(first["pixel_values"], expected, atol=2e-3)  # float16 in memory
    assert first["labels"].tolist() == [1.0] and str(tmp_path / "a.png") in data.memory
    with pytest.raises(
        MedVLDataError, match=r"record 'b': cannot read the image: file '.*b.png': image file not found"
    ):
        data[1]
