"""I2D: greedy decoding of the W2D model through :func:`medvl.inference.generate`, profiled per phase.

At each batch size of ``WorkloadSizes.i2d_batches``: new tokens/s, essential FLOPs as a fraction of
the fp32 matmul peak, the phases of the ``generate`` calls
(:class:`~medvl.tools.bench.phases.DecodePhaseTimer`) and the weight bytes per second the decode
forwards read (at small batches memory bandwidth, not FLOPs, is the limit a decode step meets).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medvl.tools.bench.flops import decode_weight_bytes, generate_flops
from medvl.tools.bench.phases import DecodePhaseTimer
from medvl.tools.bench.workload_data import write_workload_data
from medvl.tools.bench.workload_spec import WorkloadSizes, build_workload_model

if TYPE_CHECKING:
    from medvl.data.records import Record
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)


def run_decode_workload(
    sizes: WorkloadSizes,
    folder: Path,
    peak_gflops: float | None,
    model_and_processor: tuple[MedVLForConditionalGeneration, MedVLProcessor] | None = None,
    gen_kwargs: dict[str, Any] | None = None,
    bandwidth_gbs: float | None = None,
) -> dict[str, Any]:
    """I2D: greedy decoding of the W2D model at each batch size of ``sizes.i2d_batches``.

    Args:
        sizes: workload sizes.
        folder: work folder (images, records).
        peak_gflops: measured fp32 matmul peak (None: fractions skipped).
        model_and_processor: a ready W2D model (else built).
        gen_kwargs: extra ``generate`` keyword arguments.
        bandwidth_gbs: measured memory bandwidth: a decode step reads every LLM weight once, so at
            small batches the weight bytes per second of the decode forwards, not FLOPs, meet a limit.
    """
    from medvl.data.dataset import encoder_for
    from medvl.data.records import load_records
    from medvl.inference import generate

    model, processor = model_and_processor or build_workload_model(sizes, "2d")
    model.eval()
    data = write_workload_data(sizes, processor, "i2d", folder / "data")
    records = load_records(data["records_file"])
    encoder = encoder_for(processor)
    lengths = [len(encoder.encode_prompt(r.messages)) for r in records]
    n = sizes.i2d_new_tokens
    flops = generate_flops(model, lengths, n)
    out: dict[str, Any] = {
        "workload": "i2d",
        "prompts": len(records),
        "new_tokens_per_prompt": n,
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "essential_flops": flops,
        "batches": {},
    }
    generate(model, processor, records[:1], batch_size=1, max_new_tokens=2, min_new_tokens=2, progress=False)  # warm-up
    texts_sha = {}
    for batch_size in sizes.i2d_batches:
        timer, texts = decode_in_batches(model, processor, records, batch_size, n, gen_kwargs)
        wall = sum(b["wall"] for b in timer.batches)
        out["batches"][str(batch_size)] = {
            "batch_size": batch_size,
            "seconds": wall,
            "new_tokens_per_s": n * len(records) / wall,
            "essential_gflops_per_s": flops["total"] / wall / 1e9,
            "fraction_of_fp32_peak": flops["total"] / wall / 1e9 / peak_gflops if peak_gflops else None,
            "phases": _decode_phases(model, timer, n, len(records), bandwidth_gbs),
        }
        texts_sha[str(batch_size)] = _sha(texts)
        logger.info(
            "i2d batch %d: %.1f new tok/s, outside forward %.2f ms/token",
            batch_size,
            out["batches"][str(batch_size)]["new_tokens_per_s"],
            out["batches"][str(batch_size)]["phases"]["outside_forward_ms_per_token"] or 0,
        )
    out["texts_sha"] = texts_sha
    return out


def decode_in_batches(
    model: MedVLForConditionalGeneration,
    processor: MedVLProcessor,
    records: list[Record],
    batch_size: int,
    new_tokens: int,
    gen_kwargs: dict[str, Any] | None = None,
) -> tuple[DecodePhaseTimer, list[str]]:
    """Generate exactly ``new_tokens`` per record, one ``generate`` call per batch, timing each call.

    Args:
        model: the W2D model.
        processor: its processor.
        records: the prompts.
        batch_size: records per ``generate`` call.
        new_tokens: tokens generated per record.
        gen_kwargs: extra ``generate`` keyword arguments.

    Returns:
        the timer (its ``batches`` hold each call's start, wall time and model forwards) and the texts.
    """
    from medvl.inference import generate

    timer = DecodePhaseTimer(model)
    texts: list[str] = []
    with timer:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            b: dict[str, Any] = {"start": time.perf_counter()}
            first = len(timer.modules.calls["model"])
            texts += generate(
                model,
                processor,
                chunk,
                batch_size=batch_size,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                progress=False,
                **(gen_kwargs or {}),
            )
            b["wall"] = time.perf_counter() - b["start"]
            b["calls"] = timer.modules.calls["model"][first:]
            timer.batches.append(b)
    return timer, texts


def _decode_phases(
    model: MedVLForConditionalGeneration,
    timer: DecodePhaseTimer,
    new_tokens: int,
    rows: int,
    bandwidth_gbs: float | None,
) -> dict[str, Any]:
    """The timer's phase summary plus the weight bytes per second of the decode forwards."""
    summary = timer.summary(new_tokens, rows)
    decode_s = summary["seconds"]["decode_forward"]
    gbs = decode_weight_bytes(model) * summary["decode_steps"] / decode_s / 1e9 if decode_s else None
    summary["decode_weight_gbs"] = gbs
    summary["decode_fraction_of_memory_bandwidth"] = gbs / bandwidth_gbs if bandwidth_gbs and gbs else None
    return summary


def _sha(texts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]
