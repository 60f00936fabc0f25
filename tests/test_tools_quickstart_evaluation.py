"""The quickstart scores through ``medvl eval``: one scoring path, the same numbers from the command line."""

from __future__ import annotations

import json
from dataclasses import replace

from medvl.cli import main
from medvl.tools.quickstart.evaluation import compare_runs, eval_commands, find_score
from medvl.tools.quickstart.pipeline import run_quickstart
from tests.test_tools_quickstart_pipeline import SMOKE_RECIPE


def _entry(task, metric, value, *, protocol="exact_norm", language="all", subgroup="all", n=4, ci95=None):
    return {
        "task": task,
        "metric": metric,
        "protocol": protocol,
        "value": value,
        "n": n,
        "language": language,
        "subgroup": subgroup,
        **({"ci95": ci95} if ci95 else {}),
    }


def _write_scores(folder, counts):
    (folder / "scores").mkdir(parents=True)
    scores = {"all": {"counts": counts}, "en": {"counts": {"closed": 2, "open": 1}}}
    (folder / "scores" / "synth_vqa.json").write_text(json.dumps(scores))


def test_compare_runs_puts_each_metric_next_to_the_blind_baseline(tmp_path):
    for run in ("model", "blind"):
        _write_scores(tmp_path / run, {"closed": 3, "open": 1, "language_en": 3, "language_zh": 1})
    model = [
        _entry("synth_vqa", "closed_accuracy", 1.0, ci95=[0.9, 1.0]),
        _entry("synth_vqa", "open_accuracy", 0.0),
        _entry("synth_vqa", "accuracy_zh", 1.0),
        _entry("synth_vqa", "closed_accuracy", 0.5, language="en", n=3),
        _entry("synth_vqa", "accuracy", 0.5, subgroup="question_type=heart_size", n=2),
    ]
    blind = [{**e, "value": e["value"] / 2} for e in model]
    rows = compare_runs({"model": model, "blind": blind}, {"model": tmp_path / "model", "blind": tmp_path / "blind"})
    closed = find_score(rows, "synth_vqa", "closed_accuracy")
    # n counts the items a metric averages over: the closed questions only, not the 4 of the group
    assert closed == {
        "task": "synth_vqa",
        "protocol": "exact_norm",
        "metric": "closed_accuracy",
        "language": "all",
        "subgroup": "all",
        "n": 3,
        "model": 1.0,
        "model_ci95": [0.9, 1.0],
        "blind": 0.5,
        "blind_ci95": [0.9, 1.0],
    }
    assert find_score(rows, "synth_vqa", "open_accuracy")["n"] == 1
    assert find_score(rows, "synth_vqa", "accuracy_zh")["n"] == 1
    assert find_score(rows, "synth_vqa", "closed_accuracy", language="en")["n"] == 2
    heart = find_score(rows, "synth_vqa", "accuracy", subgroup="question_type=heart_size")
    assert (heart["n"], heart["model"], heart["blind"]) == (2, 0.5, 0.25)
    assert find_score(rows, "synth_report", "bleu_4") is None


def _quickstart_entries(metrics):
    return {(r["task"], r["metric"], r["language"], r["subgroup"]): r for r in metrics["scores"]}


def test_medvl_eval_reproduces_the_quickstart_numbers(tmp_path, capsys):
    """A tiny quickstart (2 steps per stage, untrained answers of every length), then ``medvl eval``
    on its checkpoints and data from the command line: every metric, model and blind, is equal."""
    import torch

    recipe = replace(
        SMOKE_RECIPE, n_cases=40, max_steps=2, encoder_pretrain={"steps": 2, "batch_size": 4, "feature_layer": 0}
    )
    out = tmp_path / "qs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run_quickstart("2d", out, recipe=recipe, workers=1, parallel=False)
        quickstart = _quickstart_entries(metrics)
        assert metrics["protocols"] == {"synth_vqa": "exact_norm", "synth_report": "report"}
        commands = eval_commands(out, metrics)
        for run in ("model", "blind"):
            argv = commands[run].split()[1:]  # the printed command, without the program name
            assert argv[argv.index("--split") + 1] == ("test" if run == "model" else "test_blind")
            assert main(argv + ["--no-progress"]) == 0
            results = json.loads((out / "eval_again" / run / "results.json").read_text())["results"]
            assert len(results) == len(quickstart) > 30
            for entry in results:
                row = quickstart[(entry["task"], entry["metric"], entry["language"], entry["subgroup"])]
                assert row["protocol"] == entry["protocol"]
                assert row[run] == entry["value"], (run, entry)
                assert row.get(f"{run}_ci95") == entry.get("ci95"), (run, entry)
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    # the blind baseline sits next to every metric, the report metrics and the open questions included
    assert all("blind" in row and "model" in row for row in metrics["scores"])
    for task, metric in (("synth_report", "bleu_4"), ("synth_report", "rouge_l"), ("synth_vqa", "open_accuracy")):
        assert find_score(metrics["scores"], task, metric) is not None
