"""The ``machine`` suite: the limits every other suite's fractions refer to, measured in the same run.

fp32 and bf16 matmul GFLOP/s (large square ``torch.mm``, best of N) at the torch thread count in use
(and optionally other counts), and memory bandwidth (large tensor copy, read + write bytes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medvl.tools.bench.sizes import BenchSizes
from medvl.tools.bench.timing import best_time, safe_ratio, torch_threads

logger = logging.getLogger(__name__)


def machine_info() -> dict[str, Any]:
    """Static facts about this machine and the software versions."""
    import transformers

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int, budget_s: float = 0.25) -> tuple[float, int]:
    """Best GFLOP/s of a square matmul (2 n^3 FLOPs) at the current thread count.

    The side grows from 256 by doubling up to ``n`` while one product takes under ``budget_s``: CPUs
    without native bf16 (AVX2-only) run bf16 matmuls ~100x slower than fp32, and a fixed large side
    would then take minutes.

    Args:
        n: largest matrix side.
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        repeats: timed runs (best reported).
        budget_s: time of one product above which the side stops growing.

    Returns:
        ``(gflops, side used)``.
    """
    gen = torch.Generator().manual_seed(0)
    side = min(256, n)
    while True:
        a = torch.randn(side, side, generator=gen).to(dtype)
        b = torch.randn(side, side, generator=gen).to(dtype)
        out = torch.empty(side, side, dtype=dtype)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        once = time.perf_counter() - start
        if side * 2 > n or once * 8 > budget_s:  # the next side costs 8x
            break
        side *= 2
    seconds = best_time(lambda: torch.mm(a, b, out=out), repeats, warmup=0)  # the probe was the warm-up
    return 2.0 * side**3 / seconds / 1e9, side


def memory_bandwidth_gbs(mib: int, repeats: int) -> float:
    """Best GB/s (1e9 bytes, read + write counted) of copying a ``mib`` MiB float32 tensor.

    Args:
        mib: tensor size in MiB (make it far larger than the last-level cache).
        repeats: timed runs (best reported).
    """
    numel = mib * 1024 * 1024 // 4
    src = torch.ones(numel, dtype=torch.float32)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), repeats)
    return 2.0 * src.numel() * 4 / seconds / 1e9


def bench_machine(sizes: BenchSizes, threads: Sequence[int] | None = None) -> dict[str, Any]:
    """Measured limits: matmul GFLOP/s (fp32, bf16) and memory bandwidth.

    Args:
        sizes: problem sizes.
        threads: extra torch thread counts at which to measure the matmul peak (the count in use is
            always measured and is the reference of every fraction).
    """
    in_use = torch.get_num_threads()
    counts = list(dict.fromkeys([in_use, *(threads or [])]))
    matmul = []
    for n_threads in counts:
        with torch_threads(n_threads) as actual:
            fp32, n_fp32 = matmul_gflops(sizes.matmul_n, torch.float32, sizes.repeats, sizes.matmul_budget_s)
            bf16, n_bf16 = matmul_gflops(sizes.matmul_n, torch.bfloat16, sizes.repeats, sizes.matmul_budget_s)
        matmul.append(
            {
                "threads": actual,
                "fp32_n": n_fp32,
                "bf16_n": n_bf16,
                "fp32_gflops": fp32,
                "bf16_gflops": bf16,
                "bf16_over_fp32": safe_ratio(bf16, fp32),
            }
        )
        logger.info("matmul %d threads: fp32 %.1f GFLOP/s, bf16 %.1f GFLOP/s", actual, fp32, bf16)
    bandwidth = memory_bandwidth_gbs(sizes.copy_mb, sizes.repeats)
    logger.info("memory bandwidth (copy, read+write): %.2f GB/s", bandwidth)
    ref = matmul[0]
    out: dict[str, Any] = {
        "threads": in_use,
        "matmul": matmul,
        "fp32_peak_gflops": ref["fp32_gflops"],
        "bf16_peak_gflops": ref["bf16_gflops"],
        "memory_bandwidth_gbs": bandwidth,
        "copy_mib": sizes.copy_mb,
    }
    if len(matmul) > 1:
        out["fp32_scaling_vs_first"] = {
            str(m["threads"]): safe_ratio(m["fp32_gflops"], ref["fp32_gflops"]) for m in matmul
        }
    return out
