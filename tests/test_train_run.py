"""End to end on the tiny medvl model: `medvl train` learns a toy set, writes its run folder,
keeps frozen parts, LoRA adapters merge exactly, and a run SIGKILLed halfway resumes to the same loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import write_bright_dark
except ImportError:
    from _train_toy import write_bright_dark
from medvl.cli import main as cli
from medvl.train.config import load_train_config
from medvl.train.lora import load_with_adapter, merge_lora
from medvl.train.run import final_model_dir, run_training

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, model_dir, data, out, **train):
    cfg = {
        "model": {"path": str(model_dir)},
        "data": {"train": [str(data)], "max_length": 128},
        "train": {
            "parts": {"llm": {"mode": "full"}, "vision": {"mode": "frozen"}, "connector": {"mode": "full"}},
            "lr": 5e-3,
            "batch_size": 8,
            "warmup_ratio": 0.1,
            "logging_steps": 1,
            "report_to": [],
            "progress_bar": False,
            **train,
        },
        "output": {"dir": str(out)},
    }
    path = tmp_path / f"{Path(out).name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(out):
    history = json.loads((Path(out) / "metrics.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def test_cli_trains_and_writes_run_folder(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 32)
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, max_steps=24, save_steps=12, report_to=["tensorboard"])
    assert cli(["train", str(recipe), "data.eval_fraction=0.25", "train.parts.connector.lr=5e-3"]) == 0

    losses = _losses(out)
    first, last = [losses[s] for s in sorted(losses)[:3]], [losses[s] for s in sorted(losses)[-3:]]
    assert sum(last) / 3 < 0.5 * sum(first) / 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 24 and metrics["eval"]["eval_loss"] < sum(first) / 3

    # the run folder: resolved config (loads back, overrides included), environment, curve, logs
    cfg = load_train_config(out / "config.yaml")
    assert cfg.train.parts.connector.lr == 5e-3 and cfg.data.eval_fraction == 0.25
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["transformers"] and env["packages"]["torch"]
    assert env["git"] is None or len(env["git"]["commit"]) == 40
    assert (out / "loss.png").stat().st_size > 1000
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-24"]
    assert {"tokenizer.json", "model.safetensors", "optimizer.pt"} <= {
        p.name for p in (out / "checkpoint-12").iterdir()
    }

    # frozen vision tower unchanged, connector and LLM changed
    before = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    after = load_file(str(final_model_dir(out) / "model.safetensors"))
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if "image_connector" in k)
    assert (final_model_dir(out) / "tokenizer.json").is_file()  # self-contained: processor saved too


def test_existing_run_is_not_overwritten(tmp_path, tiny_model_dir):
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    recipe = _recipe(tmp_path, tiny_model_dir, tmp_path / "none.jsonl", tmp_path / "run", max_steps=1)
    with pytest.raises(FileExistsError, match="train.resume=true"):
        run_training(load_train_config(recipe))


def test_lora_adapter_save_and_exact_merge(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 16)
    out = tmp_path / "lora"
    recipe = _recipe(
        tmp_path,
        tiny_model_dir,
        data,
        out,
        max_steps=6,
        save_steps=6,
        lr=1e-2,
        parts={"llm": {"mode": "lora"}, "vision": {"mode": "frozen"}, "connector": {"mode": "full"}},
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
    )
    run_training(load_train_config(recipe))
    adapter = final_model_dir(out)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    assert (adapter / "tokenizer.json").is_file()

    assert json.loads((out / "checkpoint-6" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(tiny_model_dir).resolve()
    )  # a mid-run checkpoint merges too
    merged_dir = merge_lora(adapter, tmp_path / "merged")
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

    merged = MedVLForConditionalGeneration.from_pretrained(merged_dir).eval()
    peft_model = load_with_adapter(adapter).eval()
    processor = MedVLProcessor.from_pretrained(merged_dir)
    from PIL import Image

    image = Image.open(data.parent / "img0.png")
    batch = processor(text=["<image>\nIs the image bright?"], images=[image], return_tensors="pt")
    with torch.no_grad():
        want = peft_model(**batch).logits
        got = merged(**batch).logits
        base = MedVLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()(**batch).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(base, want, atol=1e-3)  # the adapter and connector did change the model
    assert not any("lora" in k for k in load_file(str(merged_dir / "model.safetensors")))


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from medvl.train.config import load_train_config
    from medvl.train.run import run_training

    class SigkillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like a crash

    run_training(load_train_config(sys.argv[1]), callbacks=[SigkillAt()])
""")


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 24)
    settings = dict(max_steps=8, save_steps=2, batch_size=4, lr=3e-3)
    reference = tmp_path / "reference"
    run_training(load_train_config(_recipe(tmp_path, tiny_model_dir, data, reference, **settings)))

    out = tmp_path / "killed"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, **settings)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(recipe), "5"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not final_model_dir(out).exists()

    # the console script (it registers medvl's Auto classes lazily, unlike `python -m medvl`)
    script = Path(sys.executable).with_name("medvl")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "medvl"]
    resumed = subprocess.run(
        [*command, "train", str(recipe), "train.resume=true"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want, got = _losses(reference), _losses(out)
    assert sorted(got) == list(range(1, 9))  # steps 1-4 come back with checkpoint-4's trainer state
    for step in range(1, 9):
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5)
    final, ref = (load_file(str(final_model_dir(d) / "model.safetensors")) for d in (out, reference))
    assert final.keys() == ref.keys()
    assert all(torch.allclose(final[k], ref[k], atol=1e-5) for k in ref)


def test_data_from_files_and_registries_with_weights(tmp_path, tiny_processor):
    from medvl.train.run import build_datasets

    data = write_bright_dark(tmp_path / "data", 10)
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "toy-train": {"path": str(data), "split": "train", "weight": 2.0},
                    "toy-val": {"path": str(data), "split": "validation"},
                }
            }
        )
    )
    recipe = _recipe(tmp_path, "unused", data, tmp_path / "out", max_steps=1)
    cfg = load_train_config(
        recipe, [f"data.train=[{registry},{data}]", "data.weights=[1.0,0.5]", f"data.eval=[{registry}]"]
    )
    train, evaluation, collate = build_datasets(cfg, tiny_processor)
    assert len(train) == 2 * 10 + 5 and len(evaluation) == 10
    batch = collate([train[0], train[1]])
    assert batch["pixel_values"].shape[0] == 2 and batch["labels"].shape == batch["input_ids"].shape
    held_out = load_train_config(recipe, ["data.eval_fraction=0.3"])
    train, evaluation, _ = build_datasets(held_out, tiny_processor)
    assert (len(train), len(evaluation)) == (7, 3)
    assert not set(train.indices) & set(evaluation.indices)


def test_last_step_checkpoint_only_when_asked(tmp_path, tiny_model_dir):
    # 3 steps, saving every 2: transformers would add a full checkpoint-3 (optimizer state) at the end
    data = write_bright_dark(tmp_path / "data", 8)
    plain, asked = tmp_path / "plain", tmp_path / "asked"
    for out, extra in ((plain, {}), (asked, {"save_final_checkpoint": True})):
        run_training(
            load_train_config(
                _recipe(tmp_path, tiny_model_dir, data, out, max_steps=3, save_steps=2, batch_size=4, **extra)
            )
        )
        assert (final_model_dir(out) / "model.safetensors").is_file()
    assert sorted(p.name for p in plain.glob("checkpoint-*")) == ["checkpoint-2"]
    assert sorted(p.name for p in asked.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (asked / "checkpoint-3" / "optimizer.pt").is_file()


def _write_volume_set(folder: Path) -> Path:
    """One CT-like .npy volume (HU) with a bright mass towards large i, and a record about it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    array = rng.normal(-500, 300, (20, 40, 30)).astype(np.float32)
    array[5:15, 10:20, 22:28] = 400.0
    np.save(folder / "v.npy", array)
    path = folder / "volumes.jsonl"
    path.write_text(
        json.dumps(
            {
                "id": "v0",
                "volumes": ["v.npy"],
                "messages": [
                    {"role": "user", "content": "<volume>\nWhere is the mass?"},
                    {"role": "assistant", "content": "In the left lung, next to the left atrium."},
                ],
            }
        )
        + "\n"
    )
    return path


def test_data_augment_section_2d_and_3d(tmp_path, tiny_model_dir, tiny_processor):
    from medvl.train.run import build_datasets

    images = write_bright_dark(tmp_path / "data", 8)
    volumes = _write_volume_set(tmp_path / "vol")
    recipe = _recipe(tmp_path, tiny_model_dir, images, tmp_path / "out", max_steps=1)
    data = [f"data.train=[{images},{volumes}]"]
    plain_train, _, _ = build_datasets(load_train_config(recipe, data), tiny_processor)
    assert plain_train.augment is None  # off by default
    plain = {"image": plain_train[0], "volume": plain_train[8]}

    # flip only: media mirrored along W and the words swapped (the cardiac name kept)
    flip = [
        "data.augment.enabled=true",
        "data.augment.flip_lr_prob=1.0",
        "data.augment.brightness=0",
        "data.augment.contrast=0",
        "data.augment.rotate_degrees=0",
        "data.augment.scale=0",
    ]
    train, _, _ = build_datasets(load_train_config(recipe, data + flip), tiny_processor)
    image, volume = train[0], train[8]
    torch.testing.assert_close(image["pixel_values"], plain["image"]["pixel_values"].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(volume["volume_values"], plain["volume"]["volume_values"].flip(-1), atol=1e-5, rtol=0)
    answer = tiny_processor.tokenizer.decode(volume["input_ids"][volume["labels"] != -100])
    assert "In the right lung, next to the left atrium." in answer

    # the default jitter (intensity + small rotation / zoom), no flip: 2D and 3D change, shapes kept
    train, evaluation, _ = build_datasets(
        load_train_config(recipe, data + ["data.augment.enabled=true", "data.eval_fraction=0.3"]), tiny_processor
    )
    for kind, key in (("image", "pixel_values"), ("volume", "volume_values")):
        index = 0 if kind == "image" else 8
        position = train.indices.index(index) if index in train.indices else None
        if position is None:
            continue
        got = train[position][key]
        assert got.shape == plain[kind][key].shape and not torch.allclose(got, plain[kind][key], atol=1e-3)
    # the held-out samples are never augmented
    for position, index in enumerate(evaluation.indices):
        key = "pixel_values" if index < 8 else "volume_values"
        reference = plain_train[index][key]
        assert torch.equal(evaluation[position][key], reference)

    # the encoder feature cache refuses augmentation, at load time
    with pytest.raises(ValueError, match="cache_encoder_features"):
        load_train_config(recipe, data + ["data.augment.enabled=true", "data.cache_encoder_features=true"])


def test_train_with_augmentation_runs(tmp_path, tiny_model_dir):
    data = write_bright_dark(tmp_path / "data", 8)
    out = tmp_path / "augmented"
    recipe = _recipe(tmp_path, tiny_model_dir, data, out, max_steps=2, save_steps=2, batch_size=4)
    assert cli(["train", str(recipe), "data.augment.enabled=true", "data.augment.flip_lr_prob=0.5"]) == 0
    assert (final_model_dir(out) / "model.safetensors").is_file()
    assert load_train_config(out / "config.yaml").data.augment.flip_lr_prob == 0.5  # recorded with the run
