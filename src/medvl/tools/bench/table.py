"""The plain-text table of ``medvl bench``: the headline numbers of :func:`~medvl.tools.bench.run.run_benchmarks`.

One row function per suite; each returns ``(suite, metric, value)`` rows.
"""

from __future__ import annotations

from typing import Any

from medvl.tools.bench.phases import TRAIN_PHASES

Row = tuple[str, str, str]


def format_value(value: object) -> str:
    """A table cell: ``n/a`` for unknown, 4 significant digits for floats (scientific when tiny or huge).

    Args:
        value: a number, None or anything printable.
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def format_bench_table(results: dict[str, Any]) -> str:
    """A plain-text table of :func:`table_rows` (what ``medvl bench`` prints).

    Args:
        results: the results of :func:`~medvl.tools.bench.run.run_benchmarks`.
    """
    rows = [("suite", "metric", "value"), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_rows(results: dict[str, Any]) -> list[Row]:
    """``(suite, metric, value)`` rows of the headline numbers of every suite that ran.

    Args:
        results: the results of :func:`~medvl.tools.bench.run.run_benchmarks`.
    """
    r = results["results"]
    rows = machine_rows(r["machine"])
    if "train" in r:
        rows += train_rows(r["train"])
    if "generate" in r:
        rows += generate_rows(r["generate"])
    if "volume" in r:
        rows += volume_rows(r["volume"])
    if "workloads" in r:
        rows += workload_rows(r["workloads"])
    info = results["machine"]
    rows.append(
        (
            "run",
            "torch threads / load average start -> end",
            f"{info['torch_threads']} / {info['load_average_start']} -> {info.get('load_average_end')}",
        )
    )
    return rows


def machine_rows(m: dict[str, Any]) -> list[Row]:
    """Rows of the ``machine`` suite: matmul peaks per thread count, memory bandwidth."""
    rows: list[Row] = []
    for mm in m["matmul"]:
        t = mm["threads"]
        rows += [
            ("machine", f"matmul fp32 GFLOP/s ({t} thr, n={mm['fp32_n']})", format_value(mm["fp32_gflops"])),
            ("machine", f"matmul bf16 GFLOP/s ({t} thr, n={mm['bf16_n']})", format_value(mm["bf16_gflops"])),
            ("machine", f"bf16 / fp32 ({t} thr)", format_value(mm["bf16_over_fp32"])),
        ]
    rows.append(
        ("machine", f"memory bandwidth GB/s (copy {m['copy_mib']} MiB, r+w)", format_value(m["memory_bandwidth_gbs"]))
    )
    return rows


def train_rows(t: dict[str, Any]) -> list[Row]:
    """Rows of the ``train`` suite: padded vs packed, utilisation, full vs supervised-only logits."""
    return [
        ("train", f"padding fraction (lengths {t['sample_lengths']})", format_value(t["padding_fraction"])),
        ("train", "padded tokens/s (fwd+bwd)", format_value(t["padded"]["tokens_per_s"])),
        ("train", "packed tokens/s (fwd+bwd)", format_value(t["packed"]["tokens_per_s"])),
        ("train", "packed / padded", format_value(t["packed_over_padded"])),
        (
            "train",
            f"adaptive packing ({t['adaptive']['rows']} rows x {t['adaptive']['width']}) / padded",
            format_value(t["adaptive_over_padded"]),
        ),
        ("train", "padded MFU (6N tok/s / fp32 peak)", format_value(t["padded"]["mfu_fp32"])),
        ("train", "packed MFU (6N tok/s / fp32 peak)", format_value(t["packed"]["mfu_fp32"])),
        (
            "train",
            "padded / packed MFU, head at supervised tokens only",
            f"{format_value(t['padded']['mfu_fp32_supervised_head'])} / {format_value(t['packed']['mfu_fp32_supervised_head'])}",
        ),
        (
            "train",
            f"full-logits / supervised-only time (vocab {t['vocab_size']})",
            format_value(t["logits"]["full_over_supervised_time"]),
        ),
        ("train", "full-logits / supervised-only peak RSS", format_value(t["logits"]["full_over_supervised_peak_rss"])),
        ("train", "supervised-only peak RSS MiB (above start)", format_value(t["logits"]["supervised_peak_rss_mib"])),
        ("train", "full-logits peak RSS MiB (above start)", format_value(t["logits"]["full_peak_rss_mib"])),
    ]


def generate_rows(g: dict[str, Any]) -> list[Row]:
    """Rows of the ``generate`` suite: batched vs batch-1 tokens/s."""
    return [
        (
            "generate",
            f"batched tokens/s (batch {g['batched']['batch_size']}, KV cache)",
            format_value(g["batched"]["tokens_per_s"]),
        ),
        ("generate", "batch-1 tokens/s (KV cache)", format_value(g["single"]["tokens_per_s"])),
        ("generate", "batched / batch-1", format_value(g["batched_over_single"])),
    ]


def volume_rows(v: dict[str, Any]) -> list[Row]:
    """Rows of the ``volume`` suite: raw ``.nii.gz`` / ``.nii`` throughput, then the prepared caches."""
    rows: list[Row] = []
    shape = "x".join(map(str, v["volume_shape"]))
    for key in ("nii_gz", "nii"):
        suffix = "." + key.replace("_", ".")
        raw = v[key]
        rows += [
            ("volume", f"{shape} {suffix} volumes/s (load + process)", format_value(raw["volumes_per_s"])),
            (
                "volume",
                f"{suffix} load / process seconds",
                f"{format_value(raw['load_seconds'])} / {format_value(raw['process_seconds'])}",
            ),
            (
                "volume",
                f"{suffix} voxel GB/s, fraction of bandwidth",
                f"{format_value(raw['voxel_gbs'])}, {format_value(raw['fraction_of_memory_bandwidth'])}",
            ),
        ]
    cache = v["cache"]
    for dtype in ("float16", "int16"):
        rows.append(
            (
                "volume",
                f"{dtype} cache volumes/s, cached / raw .nii.gz",
                f"{format_value(cache[dtype]['volumes_per_s'])}, {format_value(cache[dtype]['cached_over_raw'])}",
            )
        )
    return rows


def workload_rows(results: dict[str, Any]) -> list[Row]:
    """Rows of the ``workloads`` suite (:func:`~medvl.tools.bench.workloads.bench_workloads`' results).

    Args:
        results: the suite's results.
    """
    rows: list[Row] = []
    if "import_seconds" in results:
        rows.append(
            (
                "workloads",
                "start-up: import of the train + inference stack, fresh process (s)",
                format_value(results["import_seconds"]),
            )
        )
    for name in ("w2d", "w3d"):
        if name in results:
            rows += _train_workload_rows(f"workloads/{name}", results[name])
    if "i2d" in results:
        rows += _decode_workload_rows(results["i2d"])
    return rows


def _train_workload_rows(s: str, r: dict[str, Any]) -> list[Row]:
    return [
        (s, f"samples/s (loop wall, {r['steps']} steps x batch {r['batch_size']})", format_value(r["samples_per_s"])),
        (
            s,
            "median step s / samples/s at the median step",
            f"{format_value(r['median_step_seconds'])} / {format_value(r['samples_per_s_median_step'])}",
        ),
        (
            s,
            "tokens per sample (mean), supervised",
            f"{format_value(r['tokens_per_sample']['mean'])}, {format_value(r['supervised_per_sample'])}",
        ),
        (s, "essential GFLOP per step", format_value(r["essential_flops"]["total"] / r["steps"] / 1e9)),
        (
            s,
            "fraction of fp32 peak (loop / median step)",
            f"{format_value(r['fraction_of_fp32_peak'])} / {format_value(r['fraction_of_fp32_peak_median_step'])}",
        ),
        (
            s,
            "phases % (" + ", ".join(TRAIN_PHASES) + ")",
            " ".join(format_value(100 * (r["phases"]["fraction"][p] or 0)) for p in TRAIN_PHASES),
        ),
        (s, "encoder s inside data loading (lazy feature cache)", format_value(r["phases"]["data_encoder_seconds"])),
        (
            s,
            "start-up s (data set + cache + trainer before step 1)",
            format_value(r["startup_seconds"]["run_training_to_first_step"]),
        ),
        (s, "first loss", format_value(r["first_loss"])),
    ]


def _decode_workload_rows(r: dict[str, Any]) -> list[Row]:
    s = "workloads/i2d"
    rows: list[Row] = []
    for batch, b in r["batches"].items():
        p = b["phases"]
        rows += [
            (
                s,
                f"batch {batch}: new tokens/s ({r['prompts']} prompts x {r['new_tokens_per_prompt']})",
                format_value(b["new_tokens_per_s"]),
            ),
            (s, f"batch {batch}: fraction of fp32 peak", format_value(b["fraction_of_fp32_peak"])),
            (
                s,
                f"batch {batch}: s preprocess / prefill / decode fwd / outside fwd",
                " / ".join(
                    format_value(p["seconds"][k])
                    for k in ("preprocess", "prefill", "decode_forward", "outside_forward_between_steps")
                ),
            ),
            (
                s,
                f"batch {batch}: ms per decode step: forward / outside",
                f"{format_value(p['decode_forward_ms_per_step'])} / {format_value(p['outside_forward_ms_per_step'])}",
            ),
            (
                s,
                f"batch {batch}: decode weight GB/s, fraction of memory bandwidth",
                f"{format_value(p['decode_weight_gbs'])}, {format_value(p['decode_fraction_of_memory_bandwidth'])}",
            ),
        ]
    return rows
