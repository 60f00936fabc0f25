"""Stage 0 (`train.stage: encoder_pretrain`) through `run_training`: the encoder learns image-only
labels, nothing else moves, the checkpoint is what the next stage reads; LoRA, resume, config rules,
and the loss and metrics against hand-computed values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.data.finding_labels import LabelSchema
from medvl.train.config import TrainConfig, validate
from medvl.train.encoder_pretrain import HEAD_DIR, auroc, finding_loss, finding_metrics
from medvl.train.run import final_model_dir, load_or_build_model, run_training
from medvl.utils.config import from_dict

SPEC = {
    "llm": {
        "config": {
            "model_type": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        }
    },
    "vision": {
        "config": {
            "model_type": "siglip_vision_model",
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        "conv_stem": [8, 16, 32],
        "feature_layer": 0,
        "connector": {"type": "spatial_pool", "pool_stride": [1, 2, 2], "pool": "max"},
    },
    "tokenizer": {"source": "train", "vocab_size": 300},
    "seed": 3,
}
SIDES = {(0, 0): "none", (1, 0): "left", (0, 1): "right", (1, 1): "both"}


def _blob_set(root: Path, split: str, n: int, seed: int, blank: bool = False) -> Path:
    """Noisy 32 px images with a bright 6x6 square in the left and/or right half (random labels);
    a label table with two binary labels and one multi-class label (none/left/right/both)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = rng.normal(80, 25, (32, 32))
        left, right = (int(v) for v in rng.integers(0, 2, 2))
        for side, present in ((0, left), (1, right)):
            if present:
                y, x = int(rng.integers(0, 26)), int(rng.integers(0, 10)) + 16 * side
                image[y : y + 6, x : x + 6] = 255
        name = f"img/{split}{i}.png"
        Image.fromarray(np.zeros((32, 32), np.uint8) if blank else image.clip(0, 255).astype(np.uint8)).save(
            root / name
        )
        rows.append({"image": name, "left": left, "right": right, "sides": SIDES[(left, right)]})
    path = root / f"{split}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _config(data: Path, out: Path, spec: dict | None = None, **train) -> TrainConfig:
    settings = {
        "stage": "encoder_pretrain",
        "lr": 2e-3,
        "max_steps": 300,
        "batch_size": 16,
        "report_to": [],
        "save_steps": 1000,
        "logging_steps": 100,
        "progress_bar": False,
        "seed": 1,
        "parts": {"llm": {"mode": "frozen"}, "connector": {"mode": "frozen"}, "vision": {"mode": "full"}},
        "encoder_pretrain": {"cache_media": True},
    }
    for key, value in train.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) and key in settings else value
    return from_dict(
        TrainConfig,
        {
            "model": {"spec": spec or SPEC},
            "data": {"train": [str(data / "train.csv")], "eval": [str(data / "val.csv")]},
            "train": settings,
            "output": {"dir": str(out), "overwrite": True},
        },
    )


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blobs")
    _blob_set(root, "train", 256, 0)
    _blob_set(root, "val", 96, 1)
    return root


def test_stage0_learns_image_labels_and_the_next_stage_reads_its_encoder(blobs, tmp_path):
    out = run_training(_config(blobs, tmp_path / "stage0"))
    metrics = json.loads((out / "metrics.json").read_text())
    per_label = metrics["eval_per_label"]
    assert per_label["left"]["n"] == per_label["right"]["n"] == 96
    assert min(per_label[k]["auroc"] for k in ("left", "right")) > 0.9, per_label
    assert min(per_label[k]["accuracy"] for k in ("left", "right")) > 0.8, per_label
    assert per_label["sides"]["accuracy"] > 0.6, per_label  # 4 classes: chance 0.25
    assert metrics["labels"][2] == {"name": "sides", "classes": ["both", "left", "none", "right"]}
    head = json.loads((out / HEAD_DIR / "labels.json").read_text())
    assert head["pooling"] == "max" and [x["name"] for x in head["labels"]] == ["left", "right", "sides"]

    # model/ is a normal checkpoint: stage 1 points model.path at it; the LLM and the connector are
    # the untouched random init (the same spec and seed built again), the tower is the trained one
    stage1 = from_dict(TrainConfig, {"model": {"path": str(final_model_dir(out))}, "data": {"train": ["unused"]}})
    validate(stage1)
    trained, _ = load_or_build_model(stage1)
    fresh, _ = load_or_build_model(from_dict(TrainConfig, {"model": {"spec": SPEC}}))
    for name in ("language_model", "image_connector"):
        before, after = getattr(fresh, name).state_dict(), getattr(trained, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    moved = [
        k
        for k, v in fresh.vision_tower.state_dict().items()
        if not torch.equal(v, trained.vision_tower.state_dict()[k])
    ]
    # the head reads layer 0 (the stem's tokens + position embedding): exactly those trained
    assert moved and all(k.startswith("embeddings.") for k in moved) and any("patch_embedding" in k for k in moved)

    # blind: blank images with the same labels learn nothing but the prior (every score tied: AUROC 0.5)
    blank = tmp_path / "blank"
    _blob_set(blank, "train", 256, 0, blank=True)
    _blob_set(blank, "val", 96, 1, blank=True)
    blind = json.loads((run_training(_config(blank, tmp_path / "blind", max_steps=100)) / "metrics.json").read_text())
    assert max(blind["eval_per_label"][k]["auroc"] for k in ("left", "right")) < 0.6, blind["eval_per_label"]


def test_lora_stage0_resumes_exactly_and_saves_a_merged_checkpoint(blobs, tmp_path):
    from transformers import TrainerCallback

    from medvl.train.lora import load_auto_model

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    lora = {
        "parts": {"vision": {"mode": "lora"}},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "max_steps": 6,
        "save_steps": 2,
        "lr": 1e-2,
    }
    # LoRA adapts the transformer's linear layers: the head reads the last block here
    spec = {**SPEC, "vision": {**SPEC["vision"], "feature_layer": -1}}
    straight = run_training(_config(blobs, tmp_path / "straight", spec, **lora))
    run_training(_config(blobs, tmp_path / "resumed", spec, **lora), callbacks=[StopAt()])
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()
    resumed = run_training(_config(blobs, tmp_path / "resumed", spec, **lora, resume=True))
    assert json.loads((resumed / "metrics.json").read_text())["global_step"] == 6
    a, b = load_auto_model(final_model_dir(straight)), load_auto_model(final_model_dir(resumed))
    assert not any("lora" in k for k in a.state_dict())  # merged into the tower's weights
    fresh, _ = load_or_build_model(from_dict(TrainConfig, {"model": {"spec": spec}}))
    tower = a.vision_tower.state_dict()
    changed = {k for k, v in fresh.vision_tower.state_dict().items() if not torch.equal(v, tower[k])}
    assert changed and all(
        k.endswith("weight") and "patch_embedding" not in k for k in changed
    )  # LoRA adapts linear layers
    for k, v in tower.items():
        torch.testing.assert_close(v, b.vision_tower.state_dict()[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({}, "set train.parts.llm.mode=frozen"),
        ({"llm": {"mode": "frozen"}}, "set train.parts.connector.mode=frozen"),
        (
            {"llm": {"mode": "frozen"}, "connector": {"mode": "frozen"}, "vision": {"mode": "frozen"}},
            "every part is frozen",
        ),
        (
            {
                "llm": {"mode": "frozen"},
                "connector": {"mode": "frozen"},
                "vision": {"mode": "full"},
                "volume": {"mode": "lora"},
            },
            "trains one encoder",
        ),
    ],
)
def test_stage0_config_rules(overrides, message):
    cfg = from_dict(TrainConfig, {"model": {"path": "m"}, "train": {"stage": "encoder_pretrain", "parts": overrides}})
    with pytest.raises(ValueError, match=message):
        validate(cfg)
    ok = from_dict(
        TrainConfig,
        {
            "model": {"path": "m"},
            "data": {"cache_encoder_features": True},
            "train": {
                "stage": "encoder_pretrain",
                "parts": {"llm": {"mode": "frozen"}, "connector": {"mode": "frozen"}, "volume": {"mode": "full"}},
            },
        },
    )
    with pytest.raises(ValueError, match="cache_media"):
        validate(ok)
    stray = from_dict(TrainConfig, {"model": {"path": "m"}, "train": {"encoder_pretrain": {"labels": "vqa"}}})
    with pytest.raises(ValueError, match="applies to train.stage=encoder_pretrain only"):
        validate(stray)


def test_auroc_and_loss_against_hand_computed_values():
    # the textbook example (sklearn's roc_auc_score docs): 3 of 4 positive-negative pairs ordered
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    # a tie between a positive and a negative counts half: (0.5 + 1 + 1 + 1) / 4
    assert auroc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1], bool)) == pytest.approx(0.875)
    assert auroc(np.array([0.1, 0.2]), np.array([1, 1], bool)) is None
    schema = LabelSchema.from_dict({"labels": [{"name": "a"}, {"name": "b", "classes": ["x", "y", "z"]}]})
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 3.0, 0.0], [0.5, 0.0, 0.0, 0.0]])
    nan = math.nan
    targets = torch.tensor([[1.0, 0, 0, 1], [nan, 0, 1, 0], [0.0, nan, nan, nan]])
    # known: a for rows 0 and 2, b for rows 0 and 1
    bce = math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(0.5))
    ce = -math.log(math.exp(-1) / (math.exp(1) + 1 + math.exp(-1))) - math.log(
        math.exp(3) / (math.exp(-0.0) + math.exp(3) + 1)
    )
    assert finding_loss(logits, targets, schema).item() == pytest.approx((bce + ce) / 4, rel=1e-6)
    metrics = finding_metrics(logits.numpy(), targets.numpy(), schema)
    assert metrics["a"] == {"auroc": 1.0, "accuracy": 0.5, "n": 2}  # row 2: logit 0.5 > 0 says 1, truth 0
    assert metrics["b"]["accuracy"] == 0.5 and metrics["b"]["n"] == 2  # row 0 picks x (truth z), row 1 y
