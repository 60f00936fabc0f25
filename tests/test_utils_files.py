"""Damaged checkpoint files are named before a library reports them in its own words."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from safetensors.numpy import save_file

from medvl.errors import MedVLDataError
from medvl.utils.files import check_model_folder, checkpoint_problem, read_json, safetensors_problem


def _weights(path, n=1000):
    save_file({"a": np.arange(n, dtype=np.float32), "b": np.ones((4, 4), np.float32)}, str(path))
    return path


def test_safetensors_framing(tmp_path):
    good = _weights(tmp_path / "model.safetensors")
    assert safetensors_problem(good) is None
    data = good.read_bytes()
    for name, raw, words in (
        ("cut.safetensors", data[: len(data) - 100], "truncated: its tensors need"),
        ("head.safetensors", data[:50], "header claims"),
        ("tiny.safetensors", data[:5], "only 5 bytes"),
        ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + b"x" * 40, "not valid JSON"),
    ):
        (tmp_path / name).write_bytes(raw)
        assert words in safetensors_problem(tmp_path / name)


def test_model_folder_problems_name_the_file(tiny_model_dir, tmp_path):
    import shutil

    check_model_folder(tiny_model_dir)
    m = tmp_path / "m"
    shutil.copytree(tiny_model_dir, m)
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(MedVLDataError, match=r"model.safetensors.*weights file is damaged.*truncated"):
        check_model_folder(m)
    shutil.rmtree(m)
    shutil.copytree(tiny_model_dir, m)
    (m / "tokenizer.json").unlink()
    with pytest.raises(MedVLDataError, match=r"no tokenizer \(tokenizer.json"):
        check_model_folder(m)
    shutil.copy(tiny_model_dir / "tokenizer.json", m / "tokenizer.json")
    (m / "config.json").write_text('{"model_type": "medvl",')
    with pytest.raises(MedVLDataError, match=r"config.json.*model config is not valid JSON"):
        check_model_folder(m)
    with pytest.raises(MedVLDataError, match=r"x.json.*not found"):
        read_json(tmp_path / "x.json")
    (tmp_path / "slake.json").mkdir()
    with pytest.raises(MedVLDataError, match=r"slake.json.*task 'slake' file: expected a file, found a folder"):
        read_json(tmp_path / "slake.json", "task 'slake' file")


def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, caplog):
    from medvl.train.run import _last_complete_checkpoint

    for step in (2, 4):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        _weights(ckpt / "model.safetensors")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert _last_complete_checkpoint(tmp_path, str(tmp_path / "checkpoint-4")) == str(tmp_path / "checkpoint-4")
    w = tmp_path / "checkpoint-4" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-64])  # a disk error left the newest one truncated
    assert "model.safetensors: truncated" in checkpoint_problem(tmp_path / "checkpoint-4")
    with caplog.at_level(logging.WARNING):
        assert _last_complete_checkpoint(tmp_path, str(tmp_path / "checkpoint-4")) == str(tmp_path / "checkpoint-2")
    assert (
        "checkpoint-4 is damaged" in caplog.text and "falling back to the previous complete checkpoint" in caplog.text
    )
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")  # a torch.save zip, truncated
    with pytest.raises(ValueError, match="no complete checkpoint"):
        _last_complete_checkpoint(tmp_path, str(tmp_path / "checkpoint-4"))


def test_damaged_volume_cache_entry_is_named(tmp_path, tiny_processor):
    from medvl.data.prepare import VolumeCache, prepare_volumes
    from medvl.data.records import Record

    vol = tmp_path / "v.npy"
    np.save(vol, np.random.default_rng(0).normal(0, 300, (16, 64, 64)).astype(np.float32))
    rec = Record("r", [{"role": "user", "content": "<volume>"}], volumes=[str(vol)])
    prepare_volumes([rec], tiny_processor.volume_processor, tmp_path / "cache", progress=False)
    cache = VolumeCache(tmp_path / "cache")
    assert cache.get(str(vol), record="r") is not None
    (entry,) = [p for p in (tmp_path / "cache").glob("**/*.npy")]
    entry.write_bytes(entry.read_bytes()[:8])  # cut inside the array header
    with pytest.raises(MedVLDataError, match=r"record 'r'.*v.npy.*volume cache file .* is damaged.*medvl data prepare"):
        VolumeCache(tmp_path / "cache").get(str(vol), record="r")


def test_load_state_dict_single_sharded_and_bin(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    from medvl.utils.files import load_state_dict

    tensors = {"a": torch.arange(6.0), "b": torch.ones(2, 2), "c": torch.zeros(3)}
    single = tmp_path / "single"
    single.mkdir()
    save_torch(tensors, single / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_torch({"a": tensors["a"]}, sharded / "model-00001-of-00002.safetensors")
    save_torch({"b": tensors["b"], "c": tensors["c"]}, sharded / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    weight_map["c"] = "model-00002-of-00002.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save(tensors, binary / "pytorch_model.bin")
    for folder in (single, sharded, binary):
        loaded = load_state_dict(folder)
        assert sorted(loaded) == ["a", "b", "c"]
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MedVLDataError, match="shard model-00002-of-00002.safetensors named in the weights index"):
        load_state_dict(sharded)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedVLDataError, match="no model.safetensors"):
        load_state_dict(empty)
