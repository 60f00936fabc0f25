"""Volume cache: the dataset reads it transparently, and refuses one built with another processor config."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from medvl.cli import main
from medvl.data.dataset import ConversationDataset
from medvl.data.prepare import VolumeCache, prepare_volumes
from medvl.data.records import load_records
from medvl.errors import MedVLDataError
from medvl.models.volume_processing_medvl import MedVLVolumeProcessor


def make_records(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        hu = np.full((20, 48, 40), -1000, np.int16)
        hu[4:16, 8:40, 6:34] = rng.integers(-200, 400, (12, 32, 28))
        np.save(tmp_path / f"{name}.npy", hu)
    rows = [
        {
            "id": "r1",
            "messages": [{"role": "user", "content": "<volume> findings?"}, {"role": "assistant", "content": "None."}],
            "volumes": ["a.npy"],
        },
        {
            "id": "r2",
            "messages": [{"role": "user", "content": "<volume> and?"}, {"role": "assistant", "content": "Clear."}],
            "volumes": ["b.npy"],
        },
        {
            "id": "r3",
            "messages": [{"role": "user", "content": "<volume> again"}, {"role": "assistant", "content": "Same."}],
            "volumes": ["a.npy"],
        },
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    return load_records(tmp_path / "d.json")


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 1e-3), ("int16", 3e-4)])
def test_cached_volumes_match_direct_processing(tmp_path, tiny_processor, dtype, atol):
    records = make_records(tmp_path)
    summary = prepare_volumes(records, tiny_processor.volume_processor, tmp_path / "cache", dtype=dtype, progress=False)
    assert summary["cached"] == 2 and summary["written"] == 2  # a.npy is used twice, cached once
    direct = ConversationDataset(records, tiny_processor)
    cached = ConversationDataset(records, tiny_processor, cache=tmp_path / "cache")
    for i in range(3):
        torch.testing.assert_close(cached[i]["volume_values"], direct[i]["volume_values"], rtol=0, atol=atol)
        assert cached[i]["input_ids"].tolist() == direct[i]["input_ids"].tolist()
    # the files are memory-mappable .npy of the declared dtype
    entry = next(iter(VolumeCache(tmp_path / "cache").entries.values()))
    assert np.load(tmp_path / "cache" / entry["file"], mmap_mode="r").dtype == np.dtype(dtype)
    # running again keeps what is there
    assert (
        prepare_volumes(records, tiny_processor.volume_processor, tmp_path / "cache", dtype=dtype, progress=False)[
            "kept"
        ]
        == 2
    )


def test_dataset_takes_an_open_volume_cache(tmp_path, tiny_processor):
    # a VolumeCache object (not only its folder) is accepted, as documented; it used to be re-opened as a
    # path and fail with a TypeError
    records = make_records(tmp_path)
    prepare_volumes(records, tiny_processor.volume_processor, tmp_path / "cache", dtype="float32", progress=False)
    cache = VolumeCache(tmp_path / "cache")
    dataset = ConversationDataset(records, tiny_processor, cache=cache)
    assert dataset.cache is cache
    expected = cache.get(records[0].volumes[0])
    assert expected is not None
    torch.testing.assert_close(dataset[0]["volume_values"][0], expected, rtol=0, atol=0)


def test_cache_of_another_processor_config_is_refused(tmp_path, tiny_processor):
    records = make_records(tmp_path)
    prepare_volumes(records, tiny_processor.volume_processor, tmp_path / "cache", progress=False)
    other = copy.copy(tiny_processor)
    settings = tiny_processor.volume_processor.to_dict()
    settings["window"] = "lung"
    other._volume_processor = MedVLVolumeProcessor.from_dict(settings)
    with pytest.raises(
        ValueError, match=r"another volume processor configuration \(window: cache 'wide' vs model 'lung'\)"
    ):
        ConversationDataset(records, other, cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="another volume processor configuration or dtype"):
        prepare_volumes(records, other.volume_processor, tmp_path / "cache", progress=False)
    # a volume edited after caching is detected
    hu = np.load(tmp_path / "b.npy")
    np.save(tmp_path / "b.npy", np.concatenate([hu, hu]))
    os.utime(tmp_path / "b.npy", (1, 1))
    with pytest.raises(MedVLDataError, match=r"record 'r2'.*b.npy.*changed after the cache"):
        ConversationDataset(records, tiny_processor, cache=tmp_path / "cache")[1]


def test_cli_prepare(tmp_path, tiny_model_dir, capsys):
    make_records(tmp_path)
    assert (
        main(
            ["data", "prepare", str(tmp_path / "d.json"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "c")]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["cached"] == 2 and summary["dtype"] == "float16"
    assert (tmp_path / "c" / "manifest.json").is_file()


def test_training_datasets_read_the_volume_cache(tmp_path, tiny_processor):
    # `medvl train ... data.volume_cache=DIR` hands the cache to the training and validation sets.
    from medvl.train.config import TrainConfig
    from medvl.train.run import build_datasets
    from medvl.utils.config import from_dict

    records = make_records(tmp_path)
    prepare_volumes(records, tiny_processor.volume_processor, tmp_path / "cache", dtype="float32", progress=False)
    cfg = from_dict(
        TrainConfig,
        {
            "data": {
                "train": [str(tmp_path / "d.json")],
                "eval": [str(tmp_path / "d.json")],
                "volume_cache": str(tmp_path / "cache"),
            }
        },
    )
    train, evaluation, _ = build_datasets(cfg, tiny_processor)
    assert train.cache is not None and evaluation.cache is not None
    # the cached tensor is what the training set yields, not a fresh decode (prove it by editing the
    # cached array: the dataset must return the edited values)
    entry = next(iter(train.cache.entries.values()))
    arr = np.load(tmp_path / "cache" / entry["file"])
    np.save(tmp_path / "cache" / entry["file"], np.full_like(arr, 0.25))
    values = {float(train[i]["volume_values"].flatten()[0]) for i in range(len(train))}
    assert 0.25 in values
