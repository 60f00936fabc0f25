"""Trainable parts: freezing, LoRA targets and per-part parameter groups from one map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

try:  # tests/ as a package or as a plain folder on sys.path
    from tests._train_toy import tiny_llava
except ImportError:
    from _train_toy import tiny_llava
from medvl.train.config import LoraSettings, PartConfig, PartsConfig
from medvl.train.parts import (
    apply_parts,
    lora_target_modules,
    param_groups,
    parameters_by_part,
    part_of,
    present_parts,
)


def test_part_of_uses_outermost_component():
    mapping = {
        "llm": ("language_model", "lm_head"),
        "vision": ("vision_tower",),
        "volume": (),
        "connector": ("image_connector",),
    }
    assert part_of("model.language_model.layers.0.mlp.up_proj.weight", mapping) == "llm"
    assert part_of("language_model.lm_head.weight", mapping) == "llm"
    assert part_of("model.vision_tower.encoder.layers.0.fc1.weight", mapping) == "vision"
    assert part_of("image_connector.0.weight", mapping) == "connector"
    assert part_of("something_else.weight", mapping) is None


def test_every_parameter_has_a_part_and_counts_add_up():
    model = tiny_llava()
    groups = parameters_by_part(model)
    assert set(present_parts(model)) == {"llm", "vision", "connector"}
    assert sum(p.numel() for params in groups.values() for _, p in params) == sum(p.numel() for p in model.parameters())
    assert all(".vision_tower." in n for n, _ in groups["vision"])
    assert all("multi_modal_projector" in n for n, _ in groups["connector"])


def test_orphan_parameter_is_a_loud_error():
    model = tiny_llava()
    model.stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="stray"):
        parameters_by_part(model)


def test_stage1_freezes_all_but_connector():
    model = tiny_llava()
    parts = PartsConfig(llm=PartConfig("frozen"), vision=PartConfig("frozen"), connector=PartConfig("full"))
    out = apply_parts(model, parts, LoraSettings())
    assert out is model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "multi_modal_projector" in n}


def test_lora_targets_are_linear_layers_of_lora_parts_only():
    model = tiny_llava()
    names = lora_target_modules(model, ["llm"], [])
    assert names and all(".language_model." in n for n in names)
    assert not any(n.endswith("lm_head") for n in names)  # the output head is never adapted
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(names) == 14
    only_qv = lora_target_modules(model, ["llm"], ["q_proj", "v_proj"])
    assert len(only_qv) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in only_qv)
    with pytest.raises(ValueError, match="no linear layers"):
        lora_target_modules(model, ["llm"], ["nonexistent_proj"])


def test_lora_llm_with_full_connector():
    model = tiny_llava()
    parts = PartsConfig(llm=PartConfig("lora"), vision=PartConfig("frozen"), connector=PartConfig("full"))
    peft_model = apply_parts(model, parts, LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if "lora_" in n]
    assert len(lora) == 2 * 14  # A and B for every adapted layer
    assert all(".language_model." in n for n in lora)
    connector = [n for n in trainable if "lora_" not in n]
    assert connector and all("multi_modal_projector.modules_to_save" in n for n in connector)
    assert peft_model.peft_config["default"].r == 4


def test_param_groups_carry_part_learning_rates():
    model = tiny_llava()
    parts = PartsConfig(
        llm=PartConfig("full"), vision=PartConfig("full", lr=1e-5), connector=PartConfig("full", lr=1e-3)
    )
    apply_parts(model, parts, LoraSettings())
    decay = [n for n, _ in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    groups = param_groups(model, parts, base_lr=2e-5, weight_decay=0.1, decay_names=decay)
    lrs = {(g["part"], g["weight_decay"]): g["lr"] for g in groups}
    assert lrs[("llm", 0.1)] == 2e-5 and lrs[("vision", 0.1)] == 1e-5 and lrs[("connector", 0.1)] == 1e-3
    assert lrs[("connector", 0.0)] == 1e-3  # biases: same lr, no decay
    grouped = sum(p.numel() for g in groups for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters())


def test_all_frozen_has_no_groups():
    model = tiny_llava()
    parts = PartsConfig(llm=PartConfig("frozen"), connector=PartConfig("frozen"))
    apply_parts(model, parts, LoraSettings())
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(model, parts, 1e-4, 0.0, [])
