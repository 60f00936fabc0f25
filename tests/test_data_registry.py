"""Registry YAML: named data sets with roots, formats, splits and mixing weights."""

from __future__ import annotations

import json

import pytest

from medvl.data.registry import load_registry, load_registry_records, load_sources


def _records(path, n, prefix, medmvl=False):
    rows = []
    for i in range(n):
        if medmvl:
            rows.append(
                {
                    "id": f"{prefix}{i}",
                    "conversations": [{"from": "human", "value": "<image3d> q"}, {"from": "gpt", "value": "a"}],
                    "image3d": f"v{i}.npy",
                }
            )
        else:
            rows.append(
                {
                    "id": f"{prefix}{i}",
                    "messages": [{"role": "user", "content": "<image> q"}, {"role": "assistant", "content": "a"}],
                    "images": [f"i{i}.png"],
                }
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def test_registry_roots_splits_and_weights(tmp_path):
    _records(tmp_path / "data" / "vqa" / "train.json", 10, "v")
    _records(tmp_path / "data" / "vqa" / "test.json", 3, "t")
    _records(tmp_path / "data" / "ct" / "train.json", 4, "c", medmvl=True)
    (tmp_path / "reg.yaml").write_text(
        "root: data\n"
        "datasets:\n"
        "  vqa-train: {path: vqa/train.json, root: vqa/images, split: train, weight: 0.5}\n"
        "  vqa-test: {path: vqa/test.json, split: test}\n"
        "  ct-train: {path: ct/train.json, format: medmvl, root: ct/img, volume_root: ct/vol, weight: 2}\n"
    )
    reg = load_registry(tmp_path / "reg.yaml")
    assert [e.name for e in reg.select("train")] == ["vqa-train", "ct-train"]
    sources = load_sources(tmp_path / "reg.yaml", split="test")
    ((entry, recs),) = sources
    assert entry.name == "vqa-test" and recs[0].images == [str(tmp_path / "data" / "vqa" / "i0.png")]
    mix = load_registry_records(tmp_path / "reg.yaml", split="train")
    assert sum(r.meta["source"] == "vqa-train" for r in mix) == 5
    assert sum(r.meta["source"] == "ct-train" for r in mix) == 8
    ct = next(r for r in mix if r.meta["source"] == "ct-train")
    assert ct.volumes == [str(tmp_path / "data" / "ct" / "vol" / "v0.npy")]
    vqa = next(r for r in mix if r.meta["source"] == "vqa-train")
    assert vqa.images[0].startswith(str(tmp_path / "data" / "vqa" / "images"))
    # weights can be overridden per run; a records file works like a one-entry registry
    assert len(load_registry_records(tmp_path / "reg.yaml", "train", weights={"ct-train": 0})) == 5
    assert len(load_registry_records(tmp_path / "data" / "vqa" / "test.json")) == 3


def test_registry_errors_list_valid_choices(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  a: {path: x.json, fromat: auto}\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) datasets.a.fromat; valid keys.*format"):
        load_registry(bad)
    bad.write_text("datasets:\n  a: {path: x.json, format: csv}\n")
    with pytest.raises(ValueError, match="invalid choice 'csv'; valid choices: 'auto', 'native', 'medmvl'"):
        load_registry(bad)
    bad.write_text("datasets:\n  a: {path: x.json}\n")
    with pytest.raises(ValueError, match="unknown data set.*valid names: a"):
        load_registry(bad).select(names=["b"])
    with pytest.raises(ValueError, match="splits present: \\['train'\\]"):
        load_registry(bad).select(split="test")
