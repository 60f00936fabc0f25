"""TrainConfig: recipes load, overrides apply, bad keys/choices/values are errors that say what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.train.config import load_train_config, unfilled_placeholders
from medvl.train.run import training_arguments

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_overrides_and_defaults(tmp_path):
    path = _write(tmp_path, "model: {path: /ckpt}\ndata: {train: [a.jsonl]}\n")
    cfg = load_train_config(
        path,
        [
            "train.parts.llm.mode=lora",
            "train.parts.connector.lr=1e-3",
            "train.lr=2e-4",
            "train.hf_args={dataloader_pin_memory: false}",
            "train.resume=true",
        ],
    )
    assert cfg.train.parts.llm.mode == "lora" and cfg.train.parts.connector.lr == 1e-3
    assert cfg.train.lr == 2e-4 and cfg.train.resume is True
    assert cfg.train.parts.vision.mode == "frozen"
    args = training_arguments(cfg, has_eval=False)
    assert args.dataloader_pin_memory is False and args.learning_rate == 2e-4
    assert args.lr_scheduler_type.value == "cosine" and args.remove_unused_columns is False


def test_unknown_key_lists_valid_keys(tmp_path):
    path = _write(tmp_path, "model: {path: /ckpt}\ntrain: {learning_rate: 1e-4}\n")
    with pytest.raises(ValueError, match=r"train\.learning_rate.*valid keys.*\blr\b"):
        load_train_config(path)


def test_invalid_choice_lists_choices(tmp_path):
    path = _write(tmp_path, "model: {path: /ckpt}\n")
    with pytest.raises(ValueError, match="'frozen', 'full', 'lora'"):
        load_train_config(path, ["train.parts.vision.mode=partial"])
    with pytest.raises(ValueError, match="'fp32', 'bf16'"):
        load_train_config(path, ["train.precision=fp16"])


def test_unknown_hf_arg_suggests_close_match(tmp_path):
    path = _write(tmp_path, "model: {path: /ckpt}\n")
    with pytest.raises(ValueError, match="close matches: dataloader_num_workers"):
        load_train_config(path, ["train.hf_args={dataloader_num_worker: 2}"])


def test_cross_field_rules(tmp_path):
    with pytest.raises(ValueError, match="model.path .*or model.spec"):
        load_train_config(_write(tmp_path, "data: {train: [a.jsonl]}\n"))
    path = _write(tmp_path, "model: {path: /ckpt}\n")
    with pytest.raises(ValueError, match="every part is frozen"):
        load_train_config(path, ["train.parts.llm.mode=frozen", "train.parts.connector.mode=frozen"])
    with pytest.raises(ValueError, match="train.batch_size must be >= 1"):
        load_train_config(path, ["train.batch_size=0"])


RECIPES = {
    # recipe: (parts modes, lr, lora r/alpha or None)
    "medm-vl-2d/pretrain.yaml": ({"llm": "frozen", "vision": "frozen", "connector": "full"}, 1e-3, None),
    "medm-vl-2d/finetune.yaml": ({"llm": "full", "vision": "full", "connector": "full"}, 2e-5, None),
    "medm-vl-2d/finetune_lora.yaml": ({"llm": "lora", "vision": "frozen", "connector": "full"}, 2e-4, (128, 256)),
    "medm-vl-ct-chest/pretrain.yaml": ({"llm": "frozen", "volume": "frozen", "connector": "full"}, 1e-3, None),
    "medm-vl-ct-chest/finetune.yaml": ({"llm": "full", "volume": "full", "connector": "full"}, 2e-5, None),
    "medm-vl-ct-chest/finetune_lora.yaml": ({"llm": "lora", "volume": "frozen", "connector": "full"}, 2e-4, (128, 256)),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_shipped_recipes_reproduce_medmvl(recipe):
    modes, lr, lora = RECIPES[recipe]
    cfg = load_train_config(CONFIGS / recipe)
    for part, mode in modes.items():
        assert getattr(cfg.train.parts, part).mode == mode, (recipe, part)
    assert cfg.train.lr == lr
    assert cfg.train.scheduler == "cosine" and cfg.train.warmup_ratio == 0.03 and cfg.train.weight_decay == 0.0
    assert cfg.train.precision == "bf16" and cfg.train.gradient_checkpointing
    if lora:
        assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lora.dropout) == (*lora, 0.05)
        assert cfg.model.path is not None  # starts from an imported MedM-VL checkpoint
    assert (CONFIGS / "deepspeed" / Path(cfg.train.deepspeed).name).is_file()


def test_recipe_placeholders_are_reported(tmp_path):
    cfg = load_train_config(CONFIGS / "medm-vl-ct-chest/pretrain.yaml")
    unfilled = unfilled_placeholders(cfg)
    assert "model.spec.llm.path=/path/to/Qwen2.5-3B-Instruct" in unfilled
    assert any(u.startswith("model.spec.volume.path=") for u in unfilled)
    assert any(u.startswith("data.train[0]=") for u in unfilled)
    filled = load_train_config(
        CONFIGS / "medm-vl-2d/finetune_lora.yaml", [f"model.path={tmp_path}", "data.train=[a.jsonl]"]
    )
    assert unfilled_placeholders(filled) == []


def test_ct_rate_recipes_are_valid_and_their_spec_builds(tmp_path):
    """configs/ct-rate: CTViT (CT-CLIP) + LLM; the spec builds with the fixture's CT-CLIP weights in place."""
    import shutil

    import yaml

    from medvl.build import ModelSpec, build_model
    from medvl.utils.config import load_config
    from tests.conftest import fixture_path

    pretrain = load_train_config(CONFIGS / "ct-rate/pretrain.yaml")
    finetune = load_train_config(CONFIGS / "ct-rate/finetune.yaml")
    assert {p: getattr(pretrain.train.parts, p).mode for p in ("llm", "volume", "connector")} == {
        "llm": "frozen",
        "volume": "frozen",
        "connector": "full",
    }
    assert finetune.train.parts.llm.mode == "lora" and finetune.model.path == "runs/ct-rate-pretrain/model"
    assert any(u.startswith("model.spec.volume.path=") for u in unfilled_placeholders(pretrain))
    for cfg in (pretrain, finetune):
        assert (CONFIGS / "deepspeed" / Path(cfg.train.deepspeed).name).is_file()
    # the recipe's volume section, with the fixture's tiny CTViT instead of the released weights and a
    # tiny LLM instead of Qwen2.5-3B; the 4x4x4 pooling needs a grid divisible by 4: 16 slices / 4 x (48 / 8)
    weights = tmp_path / "ctclip"
    weights.mkdir()
    shutil.copy(fixture_path("ctclip", "model.safetensors"), weights)
    (weights / "config.json").write_text(
        fixture_path("ctclip", "config.json").read_text().replace('"image_size": 48', '"image_size": 32')
    )
    spec_yaml = tmp_path / "spec.yaml"
    spec_yaml.write_text(yaml.safe_dump(pretrain.model.spec))
    spec = load_config(
        ModelSpec,
        spec_yaml,
        [
            "llm.path=null",
            "llm.config.model_type=qwen2",
            "llm.config.hidden_size=32",
            "llm.config.intermediate_size=64",
            "llm.config.num_hidden_layers=1",
            "llm.config.num_attention_heads=2",
            "llm.config.num_key_value_heads=1",
            "tokenizer.source=train",
            "tokenizer.vocab_size=400",
            f"volume.path={weights}",
            "volume.config.num_frames=64",
        ],
    )
    model, processor = build_model(spec)
    assert model.config.volume_encoder == "ctvit" and model.config.num_volume_tokens == 4 * 1 * 1
    assert processor.volume_processor.mode == "ct_clip" and processor.volume_processor.output_shape == (1, 64, 32, 32)
