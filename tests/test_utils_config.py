"""Tests for the typed YAML/override config loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from medvl.utils.config import load_config, parse_overrides, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Root:
    name: str = "run"
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    parts: list[str] = field(default_factory=lambda: ["connector"])
    optim: Optim = field(default_factory=Optim)
    hf_args: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    init: str | None = None


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.001\nhf_args:\n  logging_steps: 3\n")
    cfg = load_config(Root, path, ["optim.lr=3e-4", "precision=bf16", "resume=true", "parts=llm,connector"])
    assert cfg.steps == 20
    assert cfg.optim.lr == pytest.approx(3e-4)  # "3e-4" is a YAML string: coerced to float
    assert cfg.precision == "bf16" and cfg.resume is True
    assert cfg.parts == ["llm", "connector"]
    assert cfg.hf_args == {"logging_steps": 3}
    assert to_dict(cfg)["optim"] == {"lr": 3e-4, "betas": [0.9, 0.999]}


def test_base_file_is_merged(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 5\nname: base\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: child\n")
    cfg = load_config(Root, tmp_path / "child.yaml")
    assert (cfg.steps, cfg.name) == (5, "child")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) optim.lrr.*valid keys under optim: betas, lr"):
        load_config(Root, None, ["optim.lrr=1"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ValueError, match=r"precision: invalid choice 'fp16'; valid choices: 'fp32', 'bf16'"):
        load_config(Root, None, ["precision=fp16"])


def test_type_errors_are_reported():
    with pytest.raises(ValueError, match="steps: expected an integer"):
        load_config(Root, None, ["steps=ten"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_overrides(["steps"])
