"""The MedM-VL workloads suite (``medvl bench --suite workloads --quick``): W2D, W3D and I2D run end to
end through the CLI; throughput, FLOP fractions, phase sums and decode weight bandwidth agree with the
raw numbers they derive from. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest

from medvl import cli
from medvl.tools.bench.phases import TRAIN_PHASES
from medvl.tools.bench.table import format_bench_table
from medvl.tools.bench.workload_spec import WorkloadSizes


def _positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    assert math.isfinite(value) and value > 0, f"{where} = {value}"


@pytest.fixture(scope="module")
def workload_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-wl") / "results.json"
    assert cli.main(["bench", "--quick", "--suite", "workloads", "--repeats", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_workloads_quick_suite_structure(workload_results):

    r = workload_results
    assert r["suites"] == ["machine", "workloads"]
    peak = r["results"]["machine"]["fp32_peak_gflops"]
    w = r["results"]["workloads"]
    _positive(w["import_seconds"], "import_seconds")
    sizes = WorkloadSizes.quick()
    for name, batch, steps in (("w2d", sizes.w2d_batch, sizes.w2d_steps), ("w3d", sizes.w3d_batch, sizes.w3d_steps)):
        t = w[name]
        assert t["batch_size"] == batch and t["steps"] == steps and t["samples_seen"] == batch * steps
        assert len(t["losses"]) == steps and all(math.isfinite(x) and x > 0 for x in t["losses"])
        assert t["samples_per_s"] == pytest.approx(batch * steps / t["loop_seconds"])
        assert t["fraction_of_fp32_peak"] == pytest.approx(
            t["essential_flops"]["total"] / t["loop_seconds"] / 1e9 / peak
        )
        phases = t["phases"]
        assert len(phases["step_seconds"]) == steps
        assert sum(phases["seconds"].values()) == pytest.approx(sum(phases["step_seconds"]))
        for p in TRAIN_PHASES[:-1]:  # "other" may be a hair below zero (clock granularity)
            assert phases["seconds"][p] >= 0, p
        # the frozen encoder runs in the step, or (lazy feature cache, the default) while batches load
        assert phases["seconds"]["encoder"] + phases["data_encoder_seconds"] > 0
        assert phases["data_encoder_seconds"] <= phases["seconds"]["data"] and phases["seconds"]["backward"] > 0
    lo, hi = sizes.w2d_lengths
    assert lo - 2 <= w["w2d"]["tokens_per_sample"]["min"] and w["w2d"]["tokens_per_sample"]["max"] <= hi
    i2d = w["i2d"]
    assert set(i2d["batches"]) == {str(b) for b in sizes.i2d_batches}
    for b in i2d["batches"].values():
        assert b["new_tokens_per_s"] == pytest.approx(i2d["prompts"] * i2d["new_tokens_per_prompt"] / b["seconds"])
        ph = b["phases"]
        # every row decodes new_tokens - 1 steps after its prefill
        assert ph["decode_steps"] == (i2d["new_tokens_per_prompt"] - 1) * -(-i2d["prompts"] // b["batch_size"])
        assert ph["seconds"]["prefill"] > 0 and ph["seconds"]["decode_forward"] > 0
        # a decode step reads every LLM weight once (fp32): bytes per step x steps / decode seconds
        t = WorkloadSizes.quick().llm
        layer = (
            2 * t["hidden_size"] ** 2
            + 2 * t["hidden_size"] * (t["hidden_size"] // t["num_attention_heads"] * t["num_key_value_heads"])
            + 3 * t["hidden_size"] * t["intermediate_size"]
        )
        weights = 4 * (t["num_hidden_layers"] * layer + t["hidden_size"] * t["vocab_size"])
        assert ph["decode_weight_gbs"] == pytest.approx(
            weights * ph["decode_steps"] / ph["seconds"]["decode_forward"] / 1e9
        )
        assert ph["decode_fraction_of_memory_bandwidth"] == pytest.approx(
            ph["decode_weight_gbs"] / r["results"]["machine"]["memory_bandwidth_gbs"]
        )
    assert set(i2d["texts_sha"]) == set(i2d["batches"])
    table = format_bench_table(r)
    for label in ("workloads/w2d", "workloads/w3d", "workloads/i2d"):
        assert f"\n{label} " in table
