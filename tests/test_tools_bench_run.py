"""medvl bench (``medvl.tools.bench.run``, ``.table``): the --quick suites run end to end through the CLI
with a complete, finite, positive schema whose derived numbers (ratios, utilisation, padding
accounting) agree with the raw ones; the table lists every suite. No timing assertions: speed is
measured, never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medvl import cli
from medvl.tools.bench.run import run_benchmarks
from medvl.tools.bench.sizes import DEFAULT_SUITES
from medvl.tools.bench.table import format_bench_table

RSS_PEAK_RESETTABLE = Path("/proc/self/clear_refs").exists()


def _positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    assert math.isfinite(value) and value > 0, f"{where} = {value}"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    assert cli.main(["bench", "--quick", "--repeats", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_quick_suite_schema_and_ratios(quick_results):
    r = quick_results
    assert r["schema"] == "medvl-bench/1" and r["quick"] is True
    assert r["suites"] == list(DEFAULT_SUITES)
    assert r["machine"]["torch_threads"] >= 1
    assert len(r["machine"]["load_average_start"]) == 3
    m = r["results"]["machine"]
    for key in ("fp32_peak_gflops", "bf16_peak_gflops", "memory_bandwidth_gbs"):
        _positive(m[key], key)
    _positive(m["matmul"][0]["bf16_over_fp32"], "bf16_over_fp32")
    # the reference peak is the one measured at the thread count in use
    assert m["matmul"][0]["threads"] == r["machine"]["torch_threads"]

    t = r["results"]["train"]
    lengths = t["sample_lengths"]
    assert t["real_tokens"] == sum(lengths)
    assert t["padded_tokens"] == len(lengths) * max(lengths)
    assert t["padding_fraction"] == pytest.approx(1 - sum(lengths) / (len(lengths) * max(lengths)))
    for mode in ("padded", "packed"):
        for key in ("seconds", "tokens_per_s", "mfu_fp32"):
            _positive(t[mode][key], f"train.{mode}.{key}")
        assert t[mode]["tokens_per_s"] == pytest.approx(t["real_tokens"] / t[mode]["seconds"])
    assert t["packed_over_padded"] == pytest.approx(t["packed"]["tokens_per_s"] / t["padded"]["tokens_per_s"])
    a = t["adaptive"]
    assert 1 <= a["rows"] < len(lengths) and a["width"] == max(lengths)  # rows of the longest sample
    assert a["tokens_per_s"] == pytest.approx(t["real_tokens"] / a["seconds"])
    assert t["padded"]["mfu_fp32"] == pytest.approx(
        6 * t["llm_flop_params"] * t["padded"]["tokens_per_s"] / 1e9 / m["fp32_peak_gflops"]
    )
    # the head runs at supervised positions only: fewer FLOPs than 6 N T, so a smaller fraction
    body = t["llm_flop_params"] - t["lm_head_params"]
    needed = 6 * (body * t["real_tokens"] + t["lm_head_params"] * t["supervised_tokens"])
    assert t["packed"]["mfu_fp32_supervised_head"] == pytest.approx(
        needed / t["packed"]["seconds"] / 1e9 / m["fp32_peak_gflops"]
    )
    assert t["packed"]["mfu_fp32_supervised_head"] < t["packed"]["mfu_fp32"]
    for key, value in t["logits"].items():
        if value is None and "rss" in key and not RSS_PEAK_RESETTABLE:
            continue  # a kernel without /proc/self/clear_refs: peak memory is not measured
        _positive(value, f"train.logits.{key}")
    assert 0 < t["supervised_tokens"] < t["real_tokens"]  # prompts and templates are not supervised

    g = r["results"]["generate"]
    for key in ("batched", "single"):
        _positive(g[key]["tokens_per_s"], f"generate.{key}")
        # exactly new_tokens_per_prompt tokens per prompt (min_new_tokens = max_new_tokens)
        assert g[key]["tokens_per_s"] == pytest.approx(g["prompts"] * g["new_tokens_per_prompt"] / g[key]["seconds"])
    _positive(g["batched_over_single"], "batched_over_single")

    v = r["results"]["volume"]
    assert v["input_voxels"] == int(np.prod(v["volume_shape"]))
    for fmt in ("nii_gz", "nii"):
        for key in ("load_seconds", "process_seconds", "volumes_per_s", "voxel_gbs", "fraction_of_memory_bandwidth"):
            _positive(v[fmt][key], f"volume.{fmt}.{key}")
        assert v[fmt]["voxel_gbs"] == pytest.approx(v["input_voxels"] * 4 * v[fmt]["volumes_per_s"] / 1e9)
    if v["cache"]["available"]:
        for dtype in ("float16", "int16"):
            _positive(v["cache"][dtype]["cached_over_raw"], f"cache.{dtype}")
            _positive(v["cache"][dtype]["cache_bytes"], f"cache.{dtype}.bytes")


def test_table_lists_every_suite(quick_results):
    table = format_bench_table(quick_results)
    for suite in DEFAULT_SUITES:
        assert f"\n{suite} " in table
    assert "packed / padded" in table and "batched / batch-1" in table
    assert "n/a" not in table or not RSS_PEAK_RESETTABLE


def test_unknown_suite_lists_the_valid_ones(capsys):
    with pytest.raises(ValueError, match="valid choices: machine, train, generate, volume"):
        run_benchmarks(["train", "warp"], quick=True)
    assert cli.main(["bench", "--quick", "--suite", "warp"]) == 2
