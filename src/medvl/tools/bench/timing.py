"""Measuring on a shared machine: best-of-N wall time, torch thread counts, peak resident memory of a call."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import time
from collections.abc import Callable, Iterator

import torch


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Best (minimum) wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs.

    The minimum, not the mean: on a shared machine other processes only ever add time.

    Args:
        fn: the work to time.
        repeats: timed runs (>= 1).
        warmup: untimed runs first (allocator, caches, lazy initialisation).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Temporarily run torch with ``n`` intra-op threads (None: keep the current count).

    Args:
        n: intra-op thread count.
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _rss_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS so that the next peak is measured from a clean RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_delta_mib(fn: Callable[[], object]) -> float | None:
    """Peak resident memory (MiB) that ``fn()`` adds above the RSS at its start (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs`` = 5) after trimming the heap, so the
    number is the peak of this call alone. None where the kernel does not offer it.

    Args:
        fn: the work to measure (run once).
    """
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return None
    start = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    if start is None or peak is None:
        return None
    return max(peak - start, 0) / 1024.0


def safe_ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where either is unknown or ``b`` is 0 (a ratio the results cannot give).

    Args:
        a: numerator.
        b: denominator.
    """
    if a is None or b is None or b == 0:
        return None
    return a / b
