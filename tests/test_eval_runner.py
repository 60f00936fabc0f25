"""``medvl eval`` runner: predictions, results files, resume, per-language scores."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from medvl.eval.runner import EvalConfig, evaluate


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from medvl.tools.synth.dataset import synthesize

    out = tmp_path_factory.mktemp("synth2d")
    synthesize("2d", 4, 0, out)
    return out


def answer_even_ids(records, **gen):
    """Deterministic answers: the reference for every other record, an empty answer otherwise."""
    return [r.meta["reference"] if i % 2 == 0 else "" for i, r in enumerate(records)]


def test_evaluate_writes_outputs_and_per_language(tmp_path, synth_dir):
    cfg = EvalConfig(
        tasks=["synth_vqa", "synth_report"],
        out_dir=tmp_path / "run",
        data={"synth_vqa": str(synth_dir), "synth_report": str(synth_dir)},
        split="train",
        batch_size=2,
        chunk_batches=1,
        meteor=False,
        tokenization="lowercase_whitespace",
        progress=False,
    )
    results = evaluate(cfg, generate_fn=answer_even_ids, model_name="oracle-half")
    out = tmp_path / "run"
    preds = [json.loads(line) for line in (out / "predictions" / "synth_vqa.jsonl").read_text().splitlines()]
    assert preds and all({"id", "prediction", "reference", "data_fingerprint"} <= set(p) for p in preds)
    data = json.loads((out / "results.json").read_text())
    assert data["model"] == "oracle-half"
    for entry in data["results"]:
        assert {"task", "metric", "protocol", "value", "n", "model", "data_fingerprint", "versions"} <= set(entry)
    acc = {
        (r["language"]): r
        for r in results
        if r["task"] == "synth_vqa" and r["metric"] == "accuracy" and r["subgroup"] == "all"
    }
    assert acc["all"]["protocol"] == "exact_norm"
    # the half-oracle gets exactly the even positions of each chunk right
    n_correct = sum(1 for p in preds if p["prediction"] != "")
    assert acc["all"]["value"] == pytest.approx(n_correct / len(preds))
    langs = {p["language"] for p in preds}
    if len(langs) > 1:
        assert {"en", "zh"} <= set(acc)
        assert sum(acc[lang]["n"] for lang in langs) == acc["all"]["n"]
    report = {r["metric"] for r in results if r["task"] == "synth_report" and r["language"] == "all"}
    # subgroups of the release's own labels (here the synthetic question types), each scored alone
    by_type = {
        r["subgroup"]: r
        for r in results
        if r["task"] == "synth_vqa" and r["metric"] == "accuracy" and r["subgroup"].startswith("question_type=")
    }
    assert len(by_type) > 1 and sum(r["n"] for r in by_type.values()) == acc["all"]["n"]
    for sub, entry in by_type.items():
        rows = [p for p in preds if f"question_type={p['question_type']}" == sub]
        assert entry["value"] == pytest.approx(sum(p["prediction"] != "" for p in rows) / len(rows))
    # a seeded percentile bootstrap interval around every mean-over-items headline value
    overall = acc["all"]
    assert overall["bootstrap"]["n_resamples"] == 1000 and overall["bootstrap"]["seed"] == 0
    assert overall["ci95"][0] <= overall["value"] <= overall["ci95"][1] and overall["ci95"][0] < overall["ci95"][1]
    assert data["bootstrap"] == {"confidence": 0.95, "n_resamples": 1000, "seed": 0}
    assert {"bleu_4", "rouge_l", "cider", "rougeL"} <= report
    md = (out / "results.md").read_text()
    assert "| synth_vqa | all | exact_norm | accuracy |" in md
    with Image.open(out / "results.png") as im:
        assert im.size[0] > 100
    scores = json.loads((out / "scores" / "synth_vqa.json").read_text())
    assert scores["all"]["protocol"] == "exact_norm" and len(scores["all"]["per_item"]) == len(preds)


def test_evaluate_resumes_without_redoing(tmp_path, synth_dir):
    seen = []

    def interrupted(records, **gen):
        if seen:
            raise KeyboardInterrupt  # the run is killed after the first chunk
        seen.extend(r.id for r in records)
        return ["yes"] * len(records)

    cfg = EvalConfig(
        tasks=["synth_vqa"],
        out_dir=tmp_path,
        data={"synth_vqa": str(synth_dir)},
        split="train",
        batch_size=2,
        chunk_batches=1,
        meteor=False,
        progress=False,
    )
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, generate_fn=interrupted)
    first = list(seen)
    assert len(first) == 2
    second = []

    def counting(records, **gen):
        second.extend(r.id for r in records)
        return ["no"] * len(records)

    evaluate(cfg, generate_fn=counting)
    assert not set(first) & set(second)
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "synth_vqa.jsonl").read_text().splitlines()]
    assert len(rows) == len(first) + len(second) == len({r["id"] for r in rows})
    # a third run generates nothing
    evaluate(cfg, generate_fn=lambda records, **gen: pytest.fail("nothing left to generate"))
    # a changed data set (here: --limit) changes the fingerprint, so stale lines are redone
    cfg.limit = 3
    redo = []
    evaluate(cfg, generate_fn=lambda records, **gen: redo.extend(records) or ["x"] * len(records))
    assert len(redo) == 3


def test_evaluate_needs_data_and_valid_task(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        evaluate(EvalConfig(tasks=["nope"], out_dir=tmp_path), generate_fn=answer_even_ids)
    with pytest.raises(ValueError, match="pass --data slake=DIR or --data-root DIR"):
        evaluate(EvalConfig(tasks=["slake"], out_dir=tmp_path), generate_fn=answer_even_ids)


def test_medvl_eval_cli_with_tiny_model(tmp_path, synth_dir, tiny_model_dir, capsys):
    from medvl.cli import main

    out = tmp_path / "cli"
    argv = [
        "eval",
        str(tiny_model_dir),
        "--tasks",
        "synth_vqa",
        "--data",
        f"synth_vqa={synth_dir}",
        "--split",
        "train",
        "--limit",
        "3",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--no-meteor",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions" / "synth_vqa.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["prediction"], str) for r in rows)
    data = json.loads((out / "results.json").read_text())
    assert data["model"] == str(tiny_model_dir)
    entry = next(r for r in data["results"] if r["metric"] == "accuracy" and r["language"] == "all")
    assert entry["n"] == 3 and entry["generation"]["max_new_tokens"] == 3 and entry["generation"]["do_sample"] is False
    assert "| synth_vqa | all | exact_norm | accuracy |" in capsys.readouterr().out
    # resumed: nothing to generate, same predictions
    assert main(argv) == 0
    assert [json.loads(line) for line in (out / "predictions" / "synth_vqa.jsonl").read_text().splitlines()] == rows


def test_medvl_eval_cli_bad_task(tmp_path, capsys):
    from medvl.cli import main

    assert main(["eval", str(tmp_path), "--tasks", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_evaluate_protocol_override(tmp_path, synth_dir):
    cfg = EvalConfig(
        tasks=["synth_vqa"],
        out_dir=tmp_path,
        data={"synth_vqa": str(synth_dir)},
        split="train",
        limit=4,
        protocols={"synth_vqa": "llava_med_v1"},
        progress=False,
    )
    results = evaluate(cfg, generate_fn=answer_even_ids)
    assert {r["protocol"] for r in results} == {"llava_med_v1"}
    with pytest.raises(ValueError, match="unknown VQA protocol 'vqa'"):
        evaluate(
            EvalConfig(tasks=["synth_vqa"], out_dir=tmp_path, protocols={"synth_vqa": "vqa"}),
            generate_fn=answer_even_ids,
        )
    with pytest.raises(ValueError, match="only VQA tasks"):
        evaluate(
            EvalConfig(tasks=["synth_report"], out_dir=tmp_path, protocols={"synth_report": "mcq"}),
            generate_fn=answer_even_ids,
        )


def test_duplicate_sample_ids_are_an_error(tmp_path, synth_dir, tiny_model_dir, capsys):
    import shutil

    from medvl.cli import main
    from medvl.errors import MedVLDataError

    data = tmp_path / "dup"
    shutil.copytree(synth_dir, data)
    lines = (data / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    twin = json.loads(lines[1])
    twin["id"] = first["id"]  # two different samples, one id
    (data / "train.jsonl").write_text("\n".join([lines[0], json.dumps(twin), *lines[2:]]) + "\n")
    cfg = EvalConfig(
        tasks=["synth_vqa"],
        out_dir=tmp_path / "o",
        data={"synth_vqa": str(data)},
        split="train",
        meteor=False,
        progress=False,
    )
    with pytest.raises(MedVLDataError, match=f"duplicate sample id\\(s\\) '{first['id']}'"):
        evaluate(cfg, generate_fn=answer_even_ids)
    assert (
        main(
            [
                "eval",
                str(tiny_model_dir),
                "--tasks",
                "synth_vqa",
                "--data",
                f"synth_vqa={data}",
                "--split",
                "train",
                "--out",
                str(tmp_path / "o2"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "duplicate sample id" in capsys.readouterr().err


def test_predictions_of_another_model_are_never_reused(tmp_path, synth_dir):
    cfg = EvalConfig(
        tasks=["synth_vqa"],
        out_dir=tmp_path,
        data={"synth_vqa": str(synth_dir)},
        split="train",
        meteor=False,
        progress=False,
    )
    evaluate(cfg, generate_fn=answer_even_ids, model_name="model-a")
    path = tmp_path / "predictions" / "synth_vqa.jsonl"
    before = path.read_text()
    with pytest.raises(ValueError, match="another model or other generation settings"):
        evaluate(cfg, generate_fn=lambda records, **gen: ["yes"] * len(records), model_name="model-b")
    assert path.read_text() == before  # nothing of model A's run is lost either
    cfg.generation = {"max_new_tokens": 7}  # same model, other generation settings
    with pytest.raises(ValueError, match="another model or other generation settings"):
        evaluate(cfg, generate_fn=answer_even_ids, model_name="model-a")


def test_cli_keys_resume_by_weights_not_path(tmp_path, synth_dir, tiny_model_dir, capsys):
    """A copy of the checkpoint resumes; the same path with changed weights is refused."""
    import shutil

    from medvl.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    out = tmp_path / "out"
    argv = [
        "eval",
        str(model),
        "--tasks",
        "synth_vqa",
        "--data",
        f"synth_vqa={synth_dir}",
        "--split",
        "train",
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--no-meteor",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    argv_copy = [str(copy) if a == str(model) else a for a in argv]
    assert main(argv_copy) == 0  # same weights under another path: resumed, nothing regenerated
    weights = model / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-8:] = bytes(8)  # last weights changed in place
    weights.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(argv) == 2
    assert "another model" in capsys.readouterr().err
    # and an --out inside the checkpoint is refused before anything is written
    assert main([*argv[:-1], str(model / "eval")]) == 2 and not (model / "eval").exists()
