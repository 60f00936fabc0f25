"""Phantom tasks prompt exactly as the phantom training data, so ``medvl eval`` scores what the model learnt."""

from __future__ import annotations

import pytest

from medvl.data.records import load_records
from medvl.eval.runner import EvalConfig, evaluate
from medvl.eval.tasks import get_task
from medvl.inference import prompt_messages


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from medvl.tools.synth.dataset import synthesize

    out = tmp_path_factory.mktemp("synth2d")
    synthesize("2d", 6, 0, out)
    return out


def test_synth_vqa_prompts_equal_the_training_prompts_byte_for_byte(synth_dir):
    training = {r.id: r for r in load_records(synth_dir / "train.jsonl")}
    task = get_task("synth_vqa").load(synth_dir, "train")
    assert task
    for rec in task:
        assert prompt_messages(rec) == prompt_messages(training[rec.id])
        assert rec.images == training[rec.id].images
        assert "single word or phrase" not in rec.messages[0]["content"] + rec.messages[-1]["content"]
        assert rec.meta["prompt_protocol"] == "phantom_training"


def test_eval_reproduces_the_accuracy_of_a_model_that_learnt_the_training_prompts(synth_dir, tiny_processor):
    """A stand-in for the quickstart model: it answers right exactly when it sees a prompt it was
    trained on (rendered by the model's own chat template), as the quickstart model does (5/6 without
    the old suffix, 0/6 with it). Through ``medvl eval`` it must score 1.0."""

    def render(rec):  # what the model sees: the rendered prompt and its images
        text = tiny_processor.apply_chat_template(prompt_messages(rec), add_generation_prompt=True, tokenize=False)
        return text, tuple(rec.images)

    learnt = {render(r): r.messages[-1]["content"] for r in load_records(synth_dir / "train.jsonl")}

    def memorised(records, **gen):
        return [learnt.get(render(r), "I did not see this prompt in training") for r in records]

    cfg = EvalConfig(
        tasks=["synth_vqa"],
        out_dir=synth_dir.parent / "eval-memorised",
        data={"synth_vqa": str(synth_dir)},
        split="train",
        batch_size=4,
        meteor=False,
        progress=False,
    )
    results = evaluate(cfg, generate_fn=memorised, model_name="memorised")
    closed = next(r for r in results if r["metric"] == "closed_accuracy" and r["language"] == "all")
    assert closed["n"] > 0 and closed["value"] == 1.0
