"""The ``workloads`` suite (``medvl bench --suite workloads``): W2D, W3D fine-tuning and I2D decoding.

The workloads and their sizes are in :mod:`~medvl.tools.bench.workload_spec`, their data in
:mod:`~medvl.tools.bench.workload_data`; each one reports throughput, essential FLOPs
(:mod:`~medvl.tools.bench.flops`) as a fraction of the fp32 matmul peak the ``machine`` suite measured
in the same run, and a per-phase profile (:mod:`~medvl.tools.bench.phases`). Start-up is reported
separately: a user waits for it too.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from medvl.tools.bench.decode_workload import run_decode_workload
from medvl.tools.bench.train_workload import run_train_workload
from medvl.tools.bench.workload_spec import WORKLOADS, WorkloadSizes


def import_seconds() -> float:
    """Wall time of importing medvl's training and inference stack in a fresh interpreter: part of
    every ``medvl train`` / ``medvl infer`` run's start-up (torch, transformers, accelerate, ...)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import medvl.train.run, medvl.train.trainer, medvl.inference"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def bench_workloads(
    sizes: WorkloadSizes,
    peak_gflops: float | None,
    workdir: str | Path | None = None,
    which: Sequence[str] = WORKLOADS,
    overrides: dict[str, dict[str, Any]] | None = None,
    bandwidth_gbs: float | None = None,
) -> dict[str, Any]:
    """Run the workloads; returns JSON-ready results (see the module doc).

    Args:
        sizes: workload sizes.
        peak_gflops: measured fp32 matmul peak (the ``machine`` suite's).
        workdir: folder for data and runs (default: temporary, removed afterwards).
        which: workloads among :data:`~medvl.tools.bench.workload_spec.WORKLOADS`.
        overrides: per-workload ``TrainConfig`` section overrides (``{"w2d": {"data": {...}}}``).
        bandwidth_gbs: measured memory bandwidth (the ``machine`` suite's), for I2D's decode steps.
    """
    unknown = [w for w in which if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; valid choices: {', '.join(WORKLOADS)}")
    out: dict[str, Any] = {"sizes": asdict(sizes), "import_seconds": import_seconds()}
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medvl-wl-")))
        for name in which:
            torch.manual_seed(sizes.seed)
            if name == "i2d":
                out[name] = run_decode_workload(sizes, root / name, peak_gflops, bandwidth_gbs=bandwidth_gbs)
            else:
                out[name] = run_train_workload(sizes, name, root / name, peak_gflops, (overrides or {}).get(name))
    return out
