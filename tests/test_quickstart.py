"""medvl quickstart: scoring, blind splits, and a scaled-down end-to-end learning run."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medvl.commands import quickstart as quickstart_cmd
from medvl.data.synth import Geometry2D, Geometry3D, synthesize
from medvl.quickstart import Recipe, format_table, report_metrics, run_quickstart, score_rows, write_blind_split


def _row(qtype, lang, ref, pred, answer_type="CLOSED"):
    return {
        "question_type": qtype,
        "answer_type": answer_type,
        "language": lang,
        "reference": ref,
        "prediction": pred,
        "correct": pred.strip().strip(".").lower() == ref.lower(),
    }


def test_score_rows_per_type_and_language():
    rows = [
        _row("nodule_presence", "en", "yes", "Yes."),
        _row("nodule_presence", "zh", "是", "否"),
        _row("heart_size", "en", "normal", "normal"),
        _row("heart_size", "en", "enlarged", "normal"),
        _row("nodule_count", "zh", "2", "2"),
        _row("nodule_size", "en", "12 mm", "12 mm", answer_type="OPEN"),
    ]
    s = score_rows(rows)
    assert s["closed_accuracy"] == pytest.approx(3 / 5) and s["n_closed"] == 5
    assert s["per_question_type"]["nodule_presence"] == {"accuracy": 0.5, "n": 2}
    assert s["per_question_type"]["heart_size"]["accuracy"] == 0.5
    assert s["per_question_type"]["nodule_size"]["accuracy"] == 1.0  # open types reported apart from closed
    assert s["per_language"]["en"] == {"closed_accuracy": pytest.approx(2 / 3), "n": 3}
    assert s["per_language"]["zh"] == {"closed_accuracy": 0.5, "n": 2}
    table = format_table(
        {**s, "blind_closed_accuracy": 0.4, "blind": {"per_question_type": {"heart_size": {"accuracy": 0.5}}}}
    )
    assert "heart_size" in table and "0.600" in table and "0.400" in table


def test_report_metrics_bounds_and_languages():
    en = "No lung nodules. No pleural effusion. The heart size is normal."
    zh = "未见肺结节。左侧胸腔积液。心脏增大。"
    perfect = report_metrics([_row("report", "en", en, en, "OPEN"), _row("report", "zh", zh, zh, "OPEN")])
    assert perfect["bleu4"] == pytest.approx(100.0) and perfect["rougeL"] == pytest.approx(1.0)
    assert perfect["zh"]["n"] == 1 and perfect["en"]["rougeL"] == pytest.approx(1.0)
    empty = report_metrics([_row("report", "en", en, "", "OPEN")])
    assert empty["bleu4"] == 0.0 and empty["rougeL"] == 0.0
    assert report_metrics([]) == {"n": 0}


def test_blind_split_points_every_record_to_one_blank_image(tmp_path):
    synthesize("2d", 12, 0, tmp_path, geometry=Geometry2D(size=48, spacing=7.5))
    path = write_blind_split(tmp_path, "train", "2d")
    original = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    blind = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["messages"] for r in blind] == [r["messages"] for r in original]
    assert {r["images"][0] for r in blind} == {"blank.png"}
    blank = np.array(Image.open(tmp_path / "blank.png"))
    assert blank.shape == np.array(Image.open(tmp_path / original[0]["images"][0])).shape and not blank.any()


def test_blind_volume_is_air_with_the_same_geometry(tmp_path):
    synthesize("3d", 3, 0, tmp_path, geometry=Geometry3D(shape=(32, 32, 16), spacing=(10.0, 10.0, 15.0)))
    write_blind_split(tmp_path, "train", "3d")
    case = json.loads((tmp_path / "cases.jsonl").read_text().splitlines()[0])
    blank, ref = nib.load(tmp_path / "blank.nii.gz"), nib.load(tmp_path / case["file"])
    assert np.allclose(blank.affine, ref.affine) and blank.shape == ref.shape
    assert np.all(np.asarray(blank.dataobj) == -1000)


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
    print(format_table(metrics))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("closed_accuracy", "blind_closed_accuracy", "per_question_type", "report", "example"):
        assert key in saved
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
        assert np.mean([r["prediction"].strip() in valid[r["question_type"]] for r in closed]) > 0.9, run
    # The blind guard: balanced questions leave text alone near chance; the sighted model answers the
    # findings the image shows (measured: see benchmarks/README.md).
    assert metrics["blind_closed_accuracy"] < 0.55
    per_type = metrics["per_question_type"]
    assert per_type["effusion_presence"]["accuracy"] > 0.85 and per_type["heart_size"]["accuracy"] > 0.85, per_type
    assert metrics["closed_accuracy"] > metrics["blind_closed_accuracy"] + 0.15


def test_3d_quickstart_runs_both_stages_from_the_volume_cache(tmp_path):
    # plumbing at toy size (learning is the 2D smoke test's job): cache, stage 0, tuning, evaluation
    import torch

    from medvl.quickstart import RECIPES

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
