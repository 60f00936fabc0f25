"""``medvl quickstart``: synthetic data -> a small model from scratch -> training -> held-out evaluation.

:func:`run_quickstart` is a list of named steps (everything under ``--out``):

1. :func:`make_data`: a synthetic phantom set in ``data/`` (:mod:`medvl.tools.synth`), train/validation/
   test by case; the training records are conversations of independent questions.
2. :func:`build_spec`: the model to build from configs by :func:`medvl.build.build_model`: a byte-level
   BPE tokenizer trained on the training corpus, a small SigLIP-style 2D tower with a convolutional
   stem (or a 3D ViT), a small Qwen2-style LLM and a max-pooling connector (random weights).
3. :func:`make_blind_splits`: the blind baseline's data (every image replaced by a blank one); 3D:
   :func:`cache_volumes` preprocesses every volume once for both stages of both runs.
4. :func:`train_runs`: per run (the model and the blind baseline), stage 0 (encoder pretraining on the
   findings) then instruction tuning, both through :func:`medvl.train.run_training`
   (:mod:`medvl.tools.quickstart.training`); side by side in two processes when there are 2+ CPUs.
5. :func:`evaluate_runs`: each run's checkpoint scored on the held-out test split through ``medvl
   eval`` (tasks ``synth_vqa``, protocol ``exact_norm``, and ``synth_report``, protocol ``report``);
   the same command reproduces every number (:mod:`medvl.tools.quickstart.evaluation`).
6. :func:`write_report`: ``metrics.json`` (every metric of the model next to the blind baseline's,
   with its protocol), ``predictions.jsonl``, ``loss_curve.png`` and the checkpoint in ``model/``.

The recipe (model sizes, steps, learning rates) lives in :data:`medvl.tools.quickstart.recipe.RECIPES`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medvl.tools.quickstart.blind import write_blind_split
from medvl.tools.quickstart.evaluation import (
    QUICKSTART_TASKS,
    compare_runs,
    evaluate_checkpoint,
    find_score,
    read_predictions,
)
from medvl.tools.quickstart.recipe import RECIPES, Recipe
from medvl.tools.quickstart.report import plot_loss_curves
from medvl.tools.quickstart.training import (
    RunData,
    prepare_volume_cache,
    train_run,
    train_run_in_worker,
    write_tokenizer_corpus,
)
from medvl.tools.synth.dataset import KINDS, SPLITS, synthesize


@dataclass
class RunFiles:
    """The records one run trains, validates and is tested on.

    Args:
        train: instruction-tuning records.
        validation: validation-loss records.
        test: the held-out split (``split`` names it for ``medvl eval --split``).
        split: "test" or "test_blind".
    """

    train: Path
    validation: Path
    test: Path
    split: str


@dataclass
class QuickstartState:
    """What the steps hand on to each other.

    Args:
        kind: "2d" or "3d".
        recipe: the recipe in use (overrides applied).
        out: the output folder.
        seed: data and training seed.
        data_dir: the synthetic set.
        summary: ``medvl data synth``'s summary of it.
        spec: the model's build spec.
        runs: run name ("model", "blind") -> its records.
        volume_cache: the 3D preprocessing cache, or None.
        run_dirs: run name -> its instruction-tuning output folder (checkpoint in ``model/``).
        parallel: whether the runs trained side by side.
        results: run name -> ``medvl eval`` results entries.
        eval_dirs: run name -> the evaluation's output folder.
        timings: step -> seconds.
    """

    kind: str
    recipe: Recipe
    out: Path
    seed: int
    data_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, RunFiles] = field(default_factory=dict)
    volume_cache: Path | None = None
    run_dirs: dict[str, Path] = field(default_factory=dict)
    parallel: bool = False
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    eval_dirs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def make_data(state: QuickstartState, workers: int) -> None:
    """Step 1: render the synthetic set into ``out/data`` (any earlier one is replaced).

    Args:
        state: the run's state (``data_dir``, ``summary`` and ``runs["model"]`` are set).
        workers: rendering processes.
    """
    if state.data_dir.exists():
        shutil.rmtree(state.data_dir)
    state.summary = synthesize(
        state.kind,
        state.recipe.n_cases,
        state.seed,
        state.data_dir,
        geometry=state.recipe.geometry,
        workers=workers,
        train_format=state.recipe.train_format,
    )
    train, validation, test = (state.data_dir / f"{s}.jsonl" for s in SPLITS)
    state.runs["model"] = RunFiles(train, validation, test, split="test")


def build_spec(state: QuickstartState) -> None:
    """Step 2: the model's build spec, its tokenizer trained on the training split's text.

    Args:
        state: the run's state (``spec`` is set).
    """
    corpus = state.out / "tokenizer_corpus.txt"
    write_tokenizer_corpus(state.data_dir, corpus)
    spec = json.loads(json.dumps(state.recipe.model))  # a deep copy: the recipe stays as it was
    spec["tokenizer"]["corpus"] = str(corpus)
    spec["seed"] = state.seed
    state.spec = spec


def make_blind_splits(state: QuickstartState) -> None:
    """Step 3: the blind baseline's splits and label tables (one blank image or volume for every case).

    Args:
        state: the run's state (``runs["blind"]`` is set).
    """
    train, validation, test = (write_blind_split(state.data_dir, s, state.kind) for s in SPLITS)
    state.runs["blind"] = RunFiles(train, validation, test, split="test_blind")


def cache_volumes(state: QuickstartState) -> None:
    """3D: preprocess every volume of every run once for both training stages (``medvl data prepare``).

    Args:
        state: the run's state (``volume_cache`` is set).
    """
    files = [f for run in state.runs.values() for f in (run.train, run.validation, run.test)]
    state.volume_cache = prepare_volume_cache(state.spec, state.data_dir, files)


def train_runs(state: QuickstartState, parallel: bool | None) -> None:
    """Step 4: stage 0 then instruction tuning of every run (the model and the blind baseline).

    Args:
        state: the run's state (``run_dirs`` and ``parallel`` are set).
        parallel: train the runs side by side in processes with a share of the CPU threads each
            (None: when there are 2+ runs and 2+ CPUs).
    """
    cpus = os.cpu_count() or 1
    state.parallel = (len(state.runs) > 1 and cpus >= 2) if parallel is None else parallel
    data = {
        name: RunData(
            state.data_dir,
            state.kind,
            files.train,
            files.validation,
            blank=name == "blind",
            volume_cache=state.volume_cache,
        )
        for name, files in state.runs.items()
    }
    if state.parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, cpus // len(state.runs))
        jobs = [
            (state.recipe, state.spec, data[name], state.out / f"run_{name}", state.seed, threads, name == "model")
            for name in state.runs
        ]
        t0 = time.time()
        # spawn, not fork: the parent may already have started torch's thread pools
        with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            state.run_dirs = dict(zip(state.runs, (Path(d) for d in pool.map(train_run_in_worker, jobs))))
        state.timings["train_s"] = time.time() - t0
        return
    for name in state.runs:
        t0 = time.time()
        state.run_dirs[name] = train_run(state.recipe, state.spec, data[name], state.out / f"run_{name}", state.seed)
        state.timings[f"train_{name}_s"] = time.time() - t0


def evaluate_runs(state: QuickstartState) -> None:
    """Step 5: every run's checkpoint through ``medvl eval`` on its held-out split (``out/eval/<run>``).

    Args:
        state: the run's state (``results`` and ``eval_dirs`` are set).
    """
    eval_root = state.out / "eval"
    if eval_root.exists():  # the runner resumes matching predictions and refuses another model's
        shutil.rmtree(eval_root)
    for name, files in state.runs.items():
        t0 = time.time()
        state.eval_dirs[name] = eval_root / name
        state.results[name] = evaluate_checkpoint(
            state.run_dirs[name] / "model", state.data_dir, files.split, state.eval_dirs[name]
        )
        state.timings[f"eval_{name}_s"] = time.time() - t0


def write_report(state: QuickstartState, t_start: float) -> dict[str, Any]:
    """Step 6: ``metrics.json``, ``predictions.jsonl``, ``loss_curve.png`` and the checkpoint in ``model/``.

    Args:
        state: the finished run's state.
        t_start: when the quickstart started (``time.time()``).

    Returns:
        the metrics (also in ``out/metrics.json``).
    """
    out = state.out
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(state.run_dirs["model"] / "model", final)
    histories = {
        name: json.loads((d / "metrics.json").read_text())["log_history"] for name, d in state.run_dirs.items()
    }
    plot_loss_curves(histories, out / "loss_curve.png")

    scores = compare_runs(state.results, state.eval_dirs)
    closed = find_score(scores, "synth_vqa", "closed_accuracy") or {}
    predictions = {name: read_predictions(d) for name, d in state.eval_dirs.items()}
    example = next((r for r in predictions["model"] if r["task"] == "synth_report"), predictions["model"][0])
    recipe = state.recipe
    metrics: dict[str, Any] = {
        "kind": state.kind,
        "protocols": {task: _protocol(scores, task) for task in QUICKSTART_TASKS},
        "closed_accuracy": closed.get("model"),
        "blind_closed_accuracy": closed.get("blind"),
        "n_closed": closed.get("n", 0),
        "scores": scores,
        "eval": {
            name: {
                "dir": str(state.eval_dirs[name].relative_to(out)),
                "model": str(state.run_dirs[name].relative_to(out) / "model"),
                "split": files.split,
            }
            for name, files in state.runs.items()
        },
        "example": {k: example[k] for k in ("id", "question", "reference", "prediction")},
        "recipe": {
            "n_cases": recipe.n_cases,
            "max_steps": recipe.max_steps,
            "batch_size": recipe.batch_size,
            "lr": recipe.lr,
            "train_format": recipe.train_format,
            "encoder_pretrain": recipe.encoder_pretrain,
            "encoder_mode": recipe.encoder_mode,
            "geometry": recipe.geometry.__dict__,
            "model": state.spec,
        },
    }
    stage0 = {name: d / "encoder_pretrain.json" for name, d in state.run_dirs.items()}
    metrics["encoder_pretrain"] = {name: json.loads(p.read_text()) for name, p in stage0.items() if p.exists()}
    metrics["data"] = state.summary["splits"]
    metrics["timings_s"] = {k: round(v, 1) for k, v in state.timings.items()}
    metrics["wall_s"] = round(time.time() - t_start, 1)
    metrics["torch_threads"] = _torch_threads()
    metrics["parallel_training"] = state.parallel
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for name, rows in predictions.items():
            for row in rows:
                # the runner's "run" (model + generation fingerprint) moves aside for the run's name
                line = {**row, "run": name, "run_fingerprint": row.get("run")}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return metrics


def run_quickstart(
    kind: str = "2d",
    out: str | Path = "runs/quickstart",
    *,
    n_cases: int | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    blind: bool = True,
    workers: int | None = None,
    recipe: Recipe | None = None,
    parallel: bool | None = None,
) -> dict[str, Any]:
    """Run the whole quickstart and return the metrics (also written to ``out/metrics.json``).

    Args:
        kind: "2d" (radiographs) or "3d" (CT volumes).
        out: output folder (``data/``, ``model/``, ``eval/``, ``metrics.json``, ``loss_curve.png``, runs).
        n_cases: override the recipe's number of synthetic cases.
        max_steps: override the recipe's optimizer steps per training run.
        seed: data and training seed.
        blind: also train and evaluate the blind baseline.
        workers: rendering processes (default: the CPU count, at most 4).
        recipe: a whole custom recipe (n_cases / max_steps still override it).
        parallel: train the model and the blind baseline at the same time in two processes with
            half the CPU threads each (default: when there is a blind run and >= 2 CPUs). Models
            this small use one core far better than two, so this nearly halves the wall time. The
            workers are spawned: a calling script needs the ``if __name__ == "__main__":`` guard.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
    recipe = recipe or RECIPES[kind]
    recipe = replace(recipe, n_cases=n_cases or recipe.n_cases, max_steps=max_steps or recipe.max_steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    state = QuickstartState(kind=kind, recipe=recipe, out=out, seed=seed, data_dir=out / "data")

    make_data(state, workers or min(4, os.cpu_count() or 1))
    state.timings["data_s"] = time.time() - t_start
    build_spec(state)
    if blind:
        make_blind_splits(state)
    if kind == "3d" and recipe.volume_cache:
        t0 = time.time()
        cache_volumes(state)
        state.timings["volume_cache_s"] = time.time() - t0
    train_runs(state, parallel)
    evaluate_runs(state)
    return write_report(state, t_start)


def _protocol(scores: list[dict[str, Any]], task: str) -> str | None:
    """The protocol ``medvl eval`` scored a task with."""
    return next((r["protocol"] for r in scores if r["task"] == task), None)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
