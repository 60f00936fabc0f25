"""medvl quickstart: the command line, a scaled-down end-to-end learning run, the 3D plumbing."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from medvl.commands import quickstart as quickstart_cmd
from medvl.tools.quickstart.evaluation import find_score
from medvl.tools.quickstart.pipeline import run_quickstart
from medvl.tools.quickstart.recipe import RECIPES, Recipe
from medvl.tools.quickstart.report import quickstart_table
from medvl.tools.synth.phantoms import Geometry2D


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    quickstart_cmd.add_arguments(parser)
    args = parser.parse_args(["--kind", "3d", "--out", "x", "--steps", "10", "--threads", "1", "--no-blind"])
    assert (args.kind, args.steps, args.threads, args.no_blind) == ("3d", 10, 1, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "4d"])
    with pytest.raises(ValueError, match="valid choices: 2d, 3d"):
        run_quickstart("4d", "unused")


# A scaled-down quickstart, the default recipe's design at a third of its cost: 64 px radiographs,
# a convolutional stem pretrained on the findings (stage 0), 4 max-pooled image tokens read frozen by
# a 64-wide LLM in instruction tuning; the model and the blind baseline side by side, one thread each.
SMOKE_LLM = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
SMOKE_RECIPE = Recipe(
    n_cases=800,
    geometry=Geometry2D(size=64, spacing=5.6),
    model={
        "llm": {"config": SMOKE_LLM},
        "vision": {
            "config": {
                "model_type": "siglip_vision_model",
                "image_size": 64,
                "patch_size": 16,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
            },
            "conv_stem": [16, 32, 64, 64],
            "feature_layer": 0,
            "connector": {"type": "spatial_pool", "pool_stride": [1, 2, 2], "pool": "max"},
        },
        "tokenizer": {"source": "train", "vocab_size": 512},
    },
    max_steps=700,
    encoder_pretrain={"steps": 400, "batch_size": 16, "lr": 1e-3, "feature_layer": 0},
)


@pytest.mark.slow
def test_quickstart_learns_above_the_blind_baseline(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is the fast setting
    try:
        metrics = run_quickstart("2d", tmp_path, recipe=SMOKE_RECIPE, workers=1)
    finally:
        torch.set_num_threads(threads)
    print(quickstart_table(metrics))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("closed_accuracy", "blind_closed_accuracy", "protocols", "scores", "example", "eval"):
        assert key in saved
    assert saved["protocols"] == {"synth_vqa": "exact_norm", "synth_report": "report"}
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    from medvl.inference import load_model

    model, processor = load_model(tmp_path / "model")
    assert model.config.num_image_tokens == 4 and model.config.image_conv_stem == [16, 32, 64, 64]
    stage0 = metrics["encoder_pretrain"]
    # stage 0 sees what the image shows: effusion and heart size from the pixels, the blank image nothing
    image_only = ("effusion_left", "effusion_right", "heart_enlarged")
    assert min(stage0["model"]["eval"][k]["accuracy"] for k in image_only) > 0.9, stage0["model"]
    assert max(stage0["blind"]["eval"][k]["accuracy"] for k in image_only) < 0.75, stage0["blind"]
    assert max(stage0["blind"]["eval"][k]["auroc"] for k in image_only) < 0.6  # one blank image: every score tied
    # Both runs learned the answer vocabulary of every closed question type, in its language (a
    # from-scratch model starts with random text).
    valid = {
        "nodule_presence": {"yes", "no", "是", "否"},
        "effusion_presence": {"yes", "no", "是", "否"},
        "heart_size": {"normal", "enlarged", "正常", "增大"},
        "nodule_count": {"0", "1", "2", "3"},
        "nodule_side": {"left", "right", "both", "左", "右", "双侧"},
        "effusion_side": {"left", "right", "both", "左", "右", "双侧"},
    }
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    for run in ("model", "blind"):
        closed = [r for r in rows if r["run"] == run and r["answer_type"] == "CLOSED"]
        assert closed and all(r["task"] == "synth_vqa" for r in closed)
        assert np.mean([r["prediction"].strip() in valid[r["question_type"]] for r in closed]) > 0.9, run
    # The blind guard: balanced questions leave text alone near chance; the sighted model answers the
    # findings the image shows (measured: see benchmarks/README.md).
    assert metrics["blind_closed_accuracy"] < 0.55
    per_type = {
        q: find_score(metrics["scores"], "synth_vqa", "accuracy", subgroup=f"question_type={q}")["model"]
        for q in ("effusion_presence", "heart_size")
    }
    assert min(per_type.values()) > 0.85, per_type
    assert metrics["closed_accuracy"] > metrics["blind_closed_accuracy"] + 0.15


def test_3d_quickstart_runs_both_stages_from_the_volume_cache(tmp_path):
    # plumbing at toy size (learning is the 2D smoke test's job): cache, stage 0, tuning, evaluation
    import torch

    recipe = replace(
        RECIPES["3d"], n_cases=30, max_steps=2, encoder_pretrain={"steps": 2, "batch_size": 4, "feature_layer": 0}
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run_quickstart("3d", tmp_path, recipe=recipe, workers=1, parallel=False)
    finally:
        torch.set_num_threads(threads)
    manifest = json.loads((tmp_path / "data" / "volume_cache" / "manifest.json").read_text())
    assert str(tmp_path / "data" / "blank.nii.gz") in manifest["entries"] and len(manifest["entries"]) == 31
    assert set(metrics["encoder_pretrain"]) == {"model", "blind"} and metrics["n_closed"] > 0
    assert metrics["recipe"]["model"]["volume"]["connector"]["pool"] == "max"
    from medvl.inference import load_model

    model, _ = load_model(tmp_path / "model")  # the thin-slab stem survives the checkpoint
    assert (
        model.config.volume_config.conv_stem_pool == [2, 1, 1] and model.volume_encoder.embeddings.stem.pool is not None
    )


def test_without_the_blind_baseline(tmp_path):
    # plumbing at toy size: one run, scored through medvl eval, an empty blind column
    import torch

    from medvl.tools.quickstart.evaluation import eval_commands

    recipe = replace(
        SMOKE_RECIPE, n_cases=20, max_steps=2, encoder_pretrain={"steps": 2, "batch_size": 4, "feature_layer": 0}
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run_quickstart("2d", tmp_path, recipe=recipe, workers=1, blind=False)
    finally:
        torch.set_num_threads(threads)
    assert metrics["blind_closed_accuracy"] is None and metrics["parallel_training"] is False
    assert set(metrics["eval"]) == {"model"} and not (tmp_path / "run_blind").exists()
    assert metrics["scores"] and not any("blind" in row for row in metrics["scores"])
    assert 0.0 <= metrics["closed_accuracy"] <= 1.0 and metrics["n_closed"] > 0
    assert "exact_norm" in quickstart_table(metrics)
    assert list(eval_commands(tmp_path, metrics)) == ["model"]
