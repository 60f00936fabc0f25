"""W2D and W3D: fine-tuning through :func:`medvl.train.run_training`, profiled per phase.

Reports throughput (samples/s over the loop and at the median step), the essential FLOPs
(:mod:`~medvl.tools.bench.flops`) and their fraction of the measured fp32 matmul peak, the phases
of the steps (:class:`~medvl.tools.bench.phases.TrainPhaseTimer`) and the start-up a user waits for
too (building the model, writing the data, the data set + feature cache + trainer before step 1).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.tools.bench.flops import train_flops
from medvl.tools.bench.phases import TrainPhaseTimer, summarize_train_steps
from medvl.tools.bench.workload_data import sample_stats, write_workload_data
from medvl.tools.bench.workload_spec import WorkloadSizes, build_workload_model

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor
    from medvl.train import TrainConfig

logger = logging.getLogger(__name__)


def run_train_workload(
    sizes: WorkloadSizes,
    kind: str,
    folder: Path,
    peak_gflops: float | None,
    overrides: dict[str, Any] | None = None,
    model_and_processor: tuple[MedVLForConditionalGeneration, MedVLProcessor] | None = None,
) -> dict[str, Any]:
    """Fine-tune W2D or W3D with ``medvl.train.run_training`` and profile it.

    Args:
        sizes: workload sizes.
        kind: "w2d" or "w3d".
        folder: work folder (data, run output).
        peak_gflops: measured fp32 matmul peak (None: fractions skipped).
        overrides: ``TrainConfig`` sections merged over the workload's (e.g. ``{"data": {"packing": True}}``).
        model_and_processor: a ready model (else built; the run trains it in place).
    """
    from medvl.data.dataset import ConversationDataset
    from medvl.data.records import load_records
    from medvl.train import run_training

    started = time.perf_counter()
    model, processor = model_and_processor or build_workload_model(sizes, "2d" if kind == "w2d" else "3d")
    built = time.perf_counter()
    data = write_workload_data(sizes, processor, kind, folder / "data")
    written = time.perf_counter()
    cfg = workload_train_config(sizes, kind, data["records_file"], folder / "run", overrides)
    dataset = ConversationDataset(load_records(data["records_file"]), processor, max_length=4096)
    tokens, supervised = sample_stats(dataset)
    timer = TrainPhaseTimer()
    begin = time.perf_counter()
    out = run_training(cfg, model=model, processor=processor, callbacks=[timer])
    finished = time.perf_counter()
    metrics = json.loads((out / "metrics.json").read_text())
    startup = {
        "build_model": built - started,
        "write_data": written - built,
        "run_training_to_first_step": timer.train_begin - begin,
        "after_last_step": finished - timer.train_end,
    }
    batch, steps = _batch_and_steps(sizes, kind)
    result = _train_workload_result(model, batch, steps, tokens, supervised, metrics, timer, startup, peak_gflops)
    result = {"workload": kind, "config_overrides": overrides or {}, **result}
    logger.info(
        "%s: %.3f samples/s, median step %.3f s, %.2f of the fp32 peak",
        kind,
        result["samples_per_s"],
        result["median_step_seconds"],
        result["fraction_of_fp32_peak"] or float("nan"),
    )
    return result


def workload_train_config(
    sizes: WorkloadSizes, kind: str, records_file: str, output_dir: Path, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The ``TrainConfig`` of W2D / W3D: the LLM and connector train fully, the encoders are frozen.

    Args:
        sizes: workload sizes (batch, steps, learning rate, seed).
        kind: "w2d" or "w3d".
        records_file: the training records.
        output_dir: the run's output folder.
        overrides: ``TrainConfig`` sections merged over these.
    """
    from medvl.train import TrainConfig
    from medvl.utils.config import from_dict

    batch, steps = _batch_and_steps(sizes, kind)
    parts = {
        "llm": {"mode": "full"},
        "connector": {"mode": "full"},
        "vision": {"mode": "frozen"},
        "volume": {"mode": "frozen"},
    }
    raw: dict[str, dict[str, Any]] = {
        "data": {"train": [records_file], "max_length": 4096},
        "train": {
            "parts": parts,
            "lr": sizes.lr,
            "batch_size": batch,
            "max_steps": steps,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
            "logging_steps": 1,
            "save_steps": 10**6,
            "report_to": [],
            "progress_bar": False,
            "seed": sizes.seed,
        },
        "output": {"dir": str(output_dir), "overwrite": True},
    }
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return from_dict(TrainConfig, raw)


def _train_workload_result(
    model: MedVLForConditionalGeneration,
    batch: int,
    steps: int,
    tokens: list[int],
    supervised: list[int],
    metrics: dict[str, Any],
    timer: TrainPhaseTimer,
    startup: dict[str, float],
    peak_gflops: float | None,
) -> dict[str, Any]:
    """Samples/s, losses, start-up, essential FLOPs and their fraction of the peak, the phase profile."""
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    # which samples each step saw: the run covers steps * batch samples of the (shuffled) data set;
    # FLOPs use the data set's mean sample, scaled to the samples seen
    seen = steps * batch
    scale = seen / len(tokens)
    flops = {k: v * scale for k, v in train_flops(model, tokens, supervised, len(tokens)).items()}
    loop = timer.train_end - timer.train_begin
    profile = summarize_train_steps(timer.steps)
    median_step = profile["median_step_seconds"]
    return {
        "batch_size": batch,
        "steps": steps,
        "samples_seen": seen,
        "records": len(tokens),
        "tokens_per_sample": {"min": min(tokens), "max": max(tokens), "mean": float(np.mean(tokens))},
        "supervised_per_sample": float(np.mean(supervised)),
        "padding_fraction_padded": _padding_fraction(tokens, batch),
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "loop_seconds": loop,
        "samples_per_s": seen / loop,
        "median_step_seconds": median_step,
        "samples_per_s_median_step": batch / median_step,
        "startup_seconds": startup,
        "essential_flops": flops,
        "essential_gflops_per_s": flops["total"] / loop / 1e9,
        "fraction_of_fp32_peak": (flops["total"] / loop / 1e9 / peak_gflops) if peak_gflops else None,
        "fraction_of_fp32_peak_median_step": (flops["total"] / steps / median_step / 1e9 / peak_gflops)
        if peak_gflops
        else None,
        "phases": profile,
    }


def _batch_and_steps(sizes: WorkloadSizes, kind: str) -> tuple[int, int]:
    return (sizes.w2d_batch, sizes.w2d_steps) if kind == "w2d" else (sizes.w3d_batch, sizes.w3d_steps)


def _padding_fraction(tokens: Sequence[int], batch: int) -> float:
    """Padding share of the batches a padded collator would make of ``tokens`` in order."""
    real = padded = 0
    for k in range(0, len(tokens), batch):
        chunk = tokens[k : k + batch]
        real += sum(chunk)
        padded += len(chunk) * max(chunk)
    return 1.0 - real / padded
