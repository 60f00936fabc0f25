"""Shipped recipes are found by name from any working directory, in a source checkout and in an
installed wheel; DeepSpeed is an optional extra whose absence is named with the install line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from medvl.recipes import bundled_configs, resolve_config_file

REPO = Path(__file__).resolve().parents[1]


def test_names_and_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert resolve_config_file("medm-vl-2d/finetune") == REPO / "configs" / "medm-vl-2d" / "finetune.yaml"
    assert (
        resolve_config_file("configs/deepspeed/zero3.json", (".json",)) == REPO / "configs" / "deepspeed" / "zero3.json"
    )
    assert resolve_config_file("deepspeed/zero2", (".json",)).name == "zero2.json"
    local = tmp_path / "mine.yaml"
    local.write_text("{}")
    assert resolve_config_file("mine.yaml") == Path("mine.yaml")  # a real file wins
    with pytest.raises(FileNotFoundError, match="medm-vl-2d/finetune_lora"):
        resolve_config_file("medm-vl-2d/finetune-lora")  # a typo lists what exists
    assert {"tiny", "medm-vl-2d/pretrain", "medm-vl-ct-chest/finetune_lora"} <= set(bundled_configs())


def test_train_recipe_by_name_resolves_its_deepspeed_config(tmp_path, monkeypatch):
    from medvl.train.config import load_train_config

    monkeypatch.chdir(tmp_path)
    cfg = load_train_config("medm-vl-2d/finetune_lora", ["model.path=ckpt", "data.train=[my.jsonl]"])
    assert Path(cfg.train.deepspeed) == REPO / "configs" / "deepspeed" / "zero2.json"
    assert json.loads(Path(cfg.train.deepspeed).read_text())["zero_optimization"]["stage"] == 2
    cfg = load_train_config("medm-vl-2d/finetune_lora", ["model.path=ckpt", "train.deepspeed=null"])
    assert cfg.train.deepspeed is None


def test_missing_deepspeed_is_named_with_its_extra(monkeypatch):
    import medvl.train.config as config

    monkeypatch.setattr(config, "deepspeed_available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'medvl\[deepspeed\]'.*train.deepspeed=null"):
        config.load_train_config("medm-vl-2d/finetune_lora", ["model.path=ckpt"])
    # the same recipe without DeepSpeed loads
    config.load_train_config("medm-vl-2d/finetune_lora", ["model.path=ckpt", "train.deepspeed=null"])


def test_installed_wheel_carries_the_recipes(tmp_path):
    # Build the wheel from a copy of the source tree, install it (no dependencies) into a fresh venv
    # that sees the test environment's packages, and resolve recipes there from an empty directory.
    source = tmp_path / "src-copy"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", "tests", ".venv", "runs", "build", "*.egg-info", "__pycache__"),
    )
    wheels = tmp_path / "wheels"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            site,
            str(next(wheels.glob("medvl-*.whl"))),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    # pip --target puts the data files under <site>/share; a real install puts them under <prefix>/share
    shutil.move(str(Path(site) / "share"), str(venv / "share"))
    # the test environment's packages (torch, transformers...) after the venv's own (which holds medvl)
    test_site = sysconfig.get_paths()["purelib"]
    (Path(site) / "zz_test_env.pth").write_text(test_site + "\n")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    script = (
        "import medvl.recipes as r, json; from medvl.train.config import load_train_config; "
        "cfg = load_train_config('medm-vl-ct-chest/finetune_lora', ['model.path=x', 'data.train=[y.jsonl]']); "
        "print(json.dumps({'module': r.__file__, 'recipe': str(r.resolve_config_file('medm-vl-2d/finetune')), "
        "'deepspeed': cfg.train.deepspeed}))"
    )
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [str(python), "-c", script], cwd=empty, capture_output=True, text=True, env=clean_env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["module"].startswith(site)  # the installed copy, not the checkout
    assert found["recipe"] == str(venv / "share" / "medvl" / "configs" / "medm-vl-2d" / "finetune.yaml")
    assert found["deepspeed"] == str(venv / "share" / "medvl" / "configs" / "deepspeed" / "zero2.json")
