"""configs/from-scratch: the recipes load, their models are the quickstart's design, and the 2D pair
(stage 0, then instruction tuning) learns a focal finding on a data set of its own (another seed and
other nodule sizes than the quickstart's) well above what the questions alone give away."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from medvl.build import build_model
from medvl.tools.quickstart.evaluation import compare_runs, evaluate_checkpoint, find_score
from medvl.tools.quickstart.recipe import RECIPES
from medvl.tools.synth.dataset import synthesize
from medvl.tools.synth.phantoms import Geometry2D
from medvl.train.config import load_train_config, model_spec, unfilled_placeholders
from medvl.train.run import final_model_dir, run_training

RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs" / "from-scratch"


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_recipes_load_with_placeholders_and_build_the_quickstart_design(kind):
    stage0 = load_train_config(RECIPE_DIR / f"{kind}-stage0.yaml")
    instruct = load_train_config(RECIPE_DIR / f"{kind}.yaml")
    assert stage0.train.stage == "encoder_pretrain" and instruct.data.cache_encoder_features
    # the second stage reads the first stage's model
    assert Path(instruct.model.path) == final_model_dir(stage0.output.dir)
    assert unfilled_placeholders(stage0) == [
        "data.train[0]=/path/to/train.jsonl",
        "data.eval[0]=/path/to/validation.jsonl",
    ]
    model, _ = build_model(model_spec(stage0))
    quick = RECIPES[kind].model
    if kind == "2d":
        assert model.config.image_conv_stem == quick["vision"]["conv_stem"]
        assert model.config.num_image_tokens == 4
    else:
        assert model.config.volume_config.conv_stem == quick["volume"]["config"]["conv_stem"]
        assert model.config.volume_config.conv_stem_pool == quick["volume"]["config"]["conv_stem_pool"]
        assert model.config.num_volume_tokens == 4


def _text(content: str) -> str:
    return content.replace("<image>", "").strip()


def blind_accuracy(train_file: Path, test_records: list[dict]) -> dict[str, float]:
    """Per question type, the accuracy of the best answer without the image: for each test question,
    the answer the training data give most often to exactly that question."""
    answers: dict[str, Counter] = {}
    for line in train_file.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        for question, answer in zip(messages[::2], messages[1::2]):
            answers.setdefault(_text(question["content"]), Counter())[answer["content"]] += 1
    hits: dict[str, list[bool]] = {}
    for rec in test_records:
        guess = answers.get(_text(rec["messages"][0]["content"]), Counter({"": 1})).most_common(1)[0][0]
        hits.setdefault(rec["meta"]["question_type"], []).append(guess == rec["meta"]["reference"])
    return {qtype: sum(h) / len(h) for qtype, h in hits.items()}


@pytest.mark.slow
def test_2d_recipe_learns_nodules_well_above_blind(tmp_path):
    import torch

    data = tmp_path / "data"
    # not the quickstart's set: seed 7 instead of 0, nodules of 15-30 mm instead of 5-30 mm, 64 px
    synthesize(
        "2d",
        800,
        7,
        data,
        geometry=Geometry2D(size=64, spacing=5.6),
        train_format="grouped",
        nodule_diameter_mm=(15.0, 30.0),
    )
    common = [
        f"data.train=[{data / 'train.jsonl'}]",
        f"data.eval=[{data / 'validation.jsonl'}]",
        "train.save_steps=100000",
        "train.eval_steps=100000",
        "train.progress_bar=false",
        "train.max_steps=600",
    ]
    # 64 px instead of 128: an 4x4 token grid max-pooled 2x2 keeps 2x2 image tokens (left and right apart)
    small = ["model.spec.vision.config.image_size=64", "model.spec.vision.connector.pool_stride=[1,2,2]"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is the fast setting
    try:
        stage0 = run_training(
            load_train_config(RECIPE_DIR / "2d-stage0.yaml", common + small + [f"output.dir={tmp_path / 'stage0'}"])
        )
        instruct = run_training(
            load_train_config(
                RECIPE_DIR / "2d.yaml",
                common + [f"model.path={final_model_dir(stage0)}", f"output.dir={tmp_path / 'instruct'}"],
            )
        )
        results = evaluate_checkpoint(final_model_dir(instruct), data, "test", tmp_path / "eval")
    finally:
        torch.set_num_threads(threads)
    stage0_eval = json.loads((stage0 / "metrics.json").read_text())["eval_per_label"]
    assert stage0_eval["nodule"]["auroc"] > 0.85, stage0_eval  # records' meta.labels were the labels
    test_records = [json.loads(line) for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    blind = blind_accuracy(data / "train.jsonl", [r for r in test_records if r["meta"]["answer_type"] == "CLOSED"])
    scores = compare_runs({"model": results}, {"model": tmp_path / "eval"})
    per_type = {q: find_score(scores, "synth_vqa", "accuracy", subgroup=f"question_type={q}") for q in blind}
    seen = {q: row["model"] for q, row in per_type.items()}
    print({q: (round(seen[q], 3), round(blind[q], 3)) for q in blind})
    assert blind["nodule_presence"] < 0.65  # the questions alone say little
    assert seen["nodule_presence"] >= blind["nodule_presence"] + 0.25, (seen, blind)
    closed = find_score(scores, "synth_vqa", "closed_accuracy")
    closed_blind = sum(blind[q] * per_type[q]["n"] for q in blind) / closed["n"]
    assert closed["model"] >= closed_blind + 0.2, (closed["model"], closed_blind)
