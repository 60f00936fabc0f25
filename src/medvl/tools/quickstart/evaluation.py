"""The quickstart's evaluation: the test split scored through ``medvl eval`` (one scoring path).

Each run's checkpoint is evaluated by :func:`medvl.eval.runner.evaluate` on the benchmark tasks
``synth_vqa`` (protocol ``exact_norm``) and ``synth_report`` (protocol ``report``) of
:mod:`medvl.eval.tasks.synth`, so ``medvl eval MODEL --tasks synth_vqa,synth_report --data
synth_vqa=DATA --data synth_report=DATA --batch-size 64`` reproduces every number (the blind
baseline: its own checkpoint and ``--split test_blind``). :func:`compare_runs` puts the model's and
the blind baseline's value of every metric side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medvl.eval.runner import EvalConfig, evaluate

# The phantom tasks of medvl.eval and the protocol each one is scored with (see medvl.eval.tasks).
QUICKSTART_TASKS = ("synth_vqa", "synth_report")
# Generation batch size: batches are part of what `medvl eval --batch-size` must repeat to give
# the same answers (left padding differs with the batch's longest prompt).
EVAL_BATCH_SIZE = 64


def quickstart_eval_config(
    data_dir: Path, split: str, out_dir: Path, *, batch_size: int = EVAL_BATCH_SIZE
) -> EvalConfig:
    """The ``medvl eval`` settings of one quickstart run (the CLI defaults otherwise).

    Args:
        data_dir: the synthetic set (``medvl data synth`` output).
        split: "test" for the model, "test_blind" for the blind baseline.
        out_dir: where the runner writes predictions, scores and results.
        batch_size: generation batch size.
    """
    return EvalConfig(
        tasks=list(QUICKSTART_TASKS),
        out_dir=out_dir,
        data={task: str(data_dir) for task in QUICKSTART_TASKS},
        split=split,
        batch_size=batch_size,
        progress=False,
    )


def evaluate_checkpoint(model_dir: Path, data_dir: Path, split: str, out_dir: Path) -> list[dict[str, Any]]:
    """Score one checkpoint on the quickstart's tasks with :func:`medvl.eval.runner.evaluate`.

    Args:
        model_dir: the checkpoint folder.
        data_dir: the synthetic set.
        split: the records file to read, ``data_dir / f"{split}.jsonl"``.
        out_dir: the runner's output folder (``results.json``, ``predictions/``, ``scores/``).

    Returns:
        the runner's results entries (task, metric, protocol, value, n, language, subgroup, ...).
    """
    return evaluate(quickstart_eval_config(data_dir, split, out_dir), model=model_dir)


def _items_scored(metric: str, language: str, counts: dict[str, int], n: int) -> int:
    """How many items a metric averages over: closed/open accuracies count only their answer type."""
    if metric in ("closed_accuracy", "open_accuracy"):
        return counts.get(metric.split("_")[0], 0)
    if metric.startswith("accuracy_") and language == "all":
        return counts.get(f"language_{metric.removeprefix('accuracy_')}", n)
    return n


def compare_runs(results: dict[str, list[dict[str, Any]]], eval_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per (task, metric, language, subgroup) with every run's value side by side.

    Args:
        results: run name ("model", "blind") -> the runner's results entries.
        eval_dirs: run name -> the runner's output folder (its ``scores/`` give the item counts).

    Returns:
        rows with ``task``, ``protocol``, ``metric``, ``language``, ``subgroup``, ``n`` (items the
        metric averages over), then each run's value under its name and its bootstrap interval
        under ``<run>_ci95`` where the runner computed one.
    """
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for run, entries in results.items():
        scores = {
            task: json.loads((eval_dirs[run] / "scores" / f"{task}.json").read_text(encoding="utf-8"))
            for task in {e["task"] for e in entries}
        }
        for e in entries:
            key = (e["task"], e["metric"], e["language"], e["subgroup"])
            group = scores[e["task"]].get(e["language"] if e["subgroup"] == "all" else e["subgroup"], {})
            row = rows.setdefault(
                key,
                {
                    "task": e["task"],
                    "protocol": e["protocol"],
                    "metric": e["metric"],
                    "language": e["language"],
                    "subgroup": e["subgroup"],
                    "n": _items_scored(e["metric"], e["language"], group.get("counts", {}), e["n"]),
                },
            )
            row[run] = e["value"]
            if e.get("ci95"):
                row[f"{run}_ci95"] = e["ci95"]
    return list(rows.values())


def find_score(
    scores: list[dict[str, Any]], task: str, metric: str, *, language: str = "all", subgroup: str = "all"
) -> dict[str, Any] | None:
    """The row of :func:`compare_runs` for one metric, or None.

    Args:
        scores: rows of :func:`compare_runs` (``metrics.json``'s ``scores``).
        task: "synth_vqa" or "synth_report".
        metric: the protocol's aggregate key, e.g. "closed_accuracy", "bleu_4".
        language: "all", "en" or "zh".
        subgroup: "all" or e.g. "question_type=nodule_presence".
    """
    for row in scores:
        if (row["task"], row["metric"], row["language"], row["subgroup"]) == (task, metric, language, subgroup):
            return row
    return None


def read_predictions(eval_dir: Path) -> list[dict[str, Any]]:
    """The runner's prediction rows of every quickstart task, in task order.

    Args:
        eval_dir: the runner's output folder.
    """
    rows = []
    for task in QUICKSTART_TASKS:
        path = eval_dir / "predictions" / f"{task}.jsonl"
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def eval_commands(out: str | Path, metrics: dict[str, Any]) -> dict[str, str]:
    """Run name -> the ``medvl eval`` command that recomputes that run's numbers from its checkpoint.

    Args:
        out: the quickstart's output folder.
        metrics: the quickstart's metrics (``eval``: each run's checkpoint and split).
    """
    data = " ".join(f"--data {task}={out}/data" for task in QUICKSTART_TASKS)
    # the VQA protocol named explicitly (its default); a report task has one protocol, "report"
    protocol = f"--protocol synth_vqa={metrics['protocols']['synth_vqa']}"
    return {
        name: f"medvl eval {out}/{run['model']} --tasks {','.join(QUICKSTART_TASKS)} {data} {protocol} "
        f"--split {run['split']} --batch-size {EVAL_BATCH_SIZE} --out {out}/eval_again/{name}"
        for name, run in metrics["eval"].items()
    }
