"""The driver of ``medvl bench``: runs the asked suites after the ``machine`` suite and gathers the JSON."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from medvl.tools.bench.bench_model import build_bench_model
from medvl.tools.bench.generate_suite import bench_generate
from medvl.tools.bench.machine import bench_machine, load_average, machine_info
from medvl.tools.bench.sizes import DEFAULT_SUITES, SCHEMA, SUITES, BenchSizes
from medvl.tools.bench.train_suite import bench_train
from medvl.tools.bench.volume_suite import bench_volume

if TYPE_CHECKING:
    from medvl.tools.bench.workload_spec import WorkloadSizes

T = TypeVar("T")


def run_benchmarks(
    suites: Sequence[str] = DEFAULT_SUITES,
    *,
    quick: bool = False,
    sizes: BenchSizes | None = None,
    threads: Sequence[int] | None = None,
    workdir: str | Path | None = None,
    workload_sizes: WorkloadSizes | None = None,
) -> dict[str, Any]:
    """Run benchmark suites; returns the JSON-ready results (see ``benchmarks/README.md``).

    The ``machine`` suite always runs: the other suites' fractions refer to its measured limits.

    Args:
        suites: names among :data:`~medvl.tools.bench.sizes.SUITES`.
        quick: toy sizes (:meth:`BenchSizes.quick`) unless ``sizes`` is given.
        sizes: explicit problem sizes.
        threads: extra thread counts for the matmul peak (see :func:`bench_machine`).
        workdir: folder for synthetic volume files (default: temporary).
        workload_sizes: sizes of the ``workloads`` suite (default: ``WorkloadSizes.quick()`` with
            ``quick``, else ``full()``).
    """
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown benchmark suite(s) {', '.join(unknown)}; valid choices: {', '.join(SUITES)}")
    sizes = sizes or (BenchSizes.quick() if quick else BenchSizes.full())
    wanted = [s for s in SUITES if s in suites or s == "machine"]
    info = machine_info()
    info["load_average_start"] = load_average()
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "quick": quick,
        "suites": wanted,
        "sizes": asdict(sizes),
        "machine": info,
        "results": {},
    }
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - start
        return value

    limits = timed("machine", lambda: bench_machine(sizes, threads))
    results["results"]["machine"] = limits
    model_and_processor = None
    if "train" in wanted or "generate" in wanted:
        torch.manual_seed(0)
        model_and_processor = timed("build_model", lambda: build_bench_model(sizes))
    if "train" in wanted:
        results["results"]["train"] = timed(
            "train", lambda: bench_train(sizes, limits["fp32_peak_gflops"], model_and_processor)
        )
    if "generate" in wanted:
        results["results"]["generate"] = timed("generate", lambda: bench_generate(sizes, model_and_processor))
    if "volume" in wanted:
        results["results"]["volume"] = timed(
            "volume", lambda: bench_volume(sizes, limits["memory_bandwidth_gbs"], workdir)
        )
    if "workloads" in wanted:
        results["results"]["workloads"] = timed(
            "workloads", lambda: _run_workloads(limits, quick, workdir, workload_sizes)
        )
    info["load_average_end"] = load_average()
    info["wall_seconds"] = time.perf_counter() - started
    info["suite_seconds"] = seconds
    return results


def _run_workloads(
    limits: dict[str, Any], quick: bool, workdir: str | Path | None, sizes: WorkloadSizes | None
) -> dict[str, Any]:
    """The ``workloads`` suite against the measured limits (imported on use: the Trainer stack is slow to import)."""
    from medvl.tools.bench.workload_spec import WorkloadSizes
    from medvl.tools.bench.workloads import bench_workloads

    return bench_workloads(
        sizes or (WorkloadSizes.quick() if quick else WorkloadSizes.full()),
        limits["fp32_peak_gflops"],
        Path(workdir) / "workloads" if workdir else None,
        bandwidth_gbs=limits["memory_bandwidth_gbs"],
    )
