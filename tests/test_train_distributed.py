"""Multi-process training on CPU: torchrun DDP (gloo) through `medvl train`, DeepSpeed ZeRO-2 with
LoRA through `medvl train`, and ZeRO-3 with one rank seeing only text-only batches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.train.run import final_model_dir

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd, timeout=420):
    result = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _recipe(tmp_path, model_dir, data, out, **train):
    cfg = {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(data)], "max_length": 128},
        "train": {
            "parts": {"llm": {"mode": "full"}, "vision": {"mode": "frozen"}, "connector": {"mode": "full"}},
            "lr": 1e-3,
            "batch_size": 2,
            "logging_steps": 1,
            "report_to": [],
            "progress_bar": False,
            **train,
        },
        "output": {"dir": str(out)},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_torchrun_two_process_ddp(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 16)
    out = tmp_path / "ddp"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, max_steps=4, save_steps=2)
    _run(TORCHRUN + ["2", "-m", "medvl", "train", str(recipe)])
    assert json.loads((out / "env.json").read_text())["world_size"] == 2
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    # 16 samples / (2 ranks x 2 per device) = 4 steps per epoch: the ranks split the data
    assert [h["epoch"] for h in history if "loss" in h][-1] == pytest.approx(1.0)
    ckpt = out / "checkpoint-4"
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= {p.name for p in ckpt.iterdir()}
    assert (final_model_dir(out) / "model.safetensors").is_file()
    assert not list(out.glob(".staging-*"))


@pytest.mark.slow
def test_deepspeed_zero2_lora_through_medvl_train(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 8)
    out = tmp_path / "zero2"
    recipe = _recipe(
        tmp_path,
        tiny_model_dir,
        data,
        out,
        max_steps=2,
        save_steps=2,
        deepspeed=str(REPO / "configs" / "deepspeed" / "zero2.json"),
        parts={"llm": {"mode": "lora"}, "vision": {"mode": "frozen"}, "connector": {"mode": "full"}},
        lora={"r": 4, "alpha": 8},
    )
    _run(TORCHRUN + ["1", "-m", "medvl", "train", str(recipe)])
    files = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"adapter_model.safetensors", "global_step2", "rng_state.pth"} <= files
    assert (final_model_dir(out) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_deepspeed_zero3_rank_without_media_does_not_hang(tmp_path, tiny_model_dir):
    # Rank 0 trains on image samples, rank 1 on text-only samples: the dummy media keep both ranks
    # running the vision tower (without them gloo aborts on mismatched all-gathers).
    out = tmp_path / "zero3"
    _run(
        TORCHRUN
        + [
            "2",
            str(REPO / "tests" / "_train_dist_worker.py"),
            str(tiny_model_dir),
            str(out),
            str(REPO / "configs" / "deepspeed" / "zero3.json"),
            "1",
        ]
    )
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and len(r["losses"]) == 3 for r in ranks)
    files = {p.name for p in (out / "checkpoint-3").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "global_step3", "model.safetensors"} <= files
    # the final model holds the gathered full weights, not the empty ZeRO-3 placeholders
    final = load_file(str(final_model_dir(out) / "model.safetensors"))
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert final.keys() == base.keys() and all(final[k].shape == base[k].shape for k in base)
    assert any(not torch.equal(final[k], base[k]) for k in base if k.startswith("vision_tower."))  # trained
    shutil.rmtree(out)
