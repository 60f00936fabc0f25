"""medvl bench: the --quick suite runs end to end with a complete, finite, positive schema; the pieces
that derive numbers (FLOP parameter count, peak RSS, synthetic CT, padding accounting) are checked
against independently computed values. No timing assertions: speed is measured, never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medvl import cli
from medvl.bench import (
    DEFAULT_SUITES,
    flop_params,
    format_table,
    peak_rss_delta_mib,
    run_benchmarks,
    synthetic_ct,
    write_nifti,
)

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
    table = format_table(quick_results)
    for suite in DEFAULT_SUITES:
        assert f"\n{suite} " in table
    assert "packed / padded" in table and "batched / batch-1" in table
    assert "n/a" not in table or not RSS_PEAK_RESETTABLE


def test_flop_params_counts_qwen2_matmul_weights(tiny_model):
    c = tiny_model.config.text_config
    h, i, v, layers = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (h // c.num_attention_heads)
    # q/k/v carry biases in Qwen2, o and the MLP do not; two RMSNorms per layer + the final one;
    # the tied embedding is counted once, as the LM head
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert c.tie_word_embeddings
    assert flop_params(tiny_model) == layers * per_layer + h + v * h


def test_peak_rss_delta_sees_a_64_mib_tensor():
    def allocate():
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        return float(x[-1])

    delta = peak_rss_delta_mib(allocate)
    if delta is None:
        pytest.skip("this kernel does not expose /proc/self/clear_refs")
    assert 60 <= delta < 200


def test_synthetic_ct_round_trips_through_load_volume(tmp_path):
    from medvl.imaging import load_volume

    array = synthetic_ct((40, 32, 6))
    assert array.dtype == np.int16 and array.shape == (40, 32, 6)
    # air in the corner, soft tissue in the middle, lung at x = -0.4 of the half-width (noise sd 20 HU)
    assert array[0, 0, 0] < -900 and -100 < array[20, 16, 3] < 200 and -1000 < array[12, 16, 3] < -700
    path = write_nifti(array, (0.75, 0.75, 2.5), tmp_path / "ct.nii.gz")
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    assert volume.spacing == pytest.approx((0.75, 0.75, 2.5))


def test_unknown_suite_lists_the_valid_ones(capsys):
    with pytest.raises(ValueError, match="valid choices: machine, train, generate, volume"):
        run_benchmarks(["train", "warp"], quick=True)
    assert cli.main(["bench", "--quick", "--suite", "warp"]) == 2


# ---------------------------------------------------------------------------- workloads (W2D, W3D, I2D)
@pytest.fixture(scope="module")
def workload_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-wl") / "results.json"
    assert cli.main(["bench", "--quick", "--suite", "workloads", "--repeats", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_workloads_quick_suite_structure(workload_results):
    from medvl.bench_workloads import TRAIN_PHASES, WorkloadSizes

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
    table = format_table(r)
    for label in ("workloads/w2d", "workloads/w3d", "workloads/i2d"):
        assert f"\n{label} " in table


def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def test_workload_flops_equal_the_hand_formula():
    from medvl.bench_workloads import WorkloadSizes, build_workload_model, generate_flops, train_flops

    sizes = WorkloadSizes.quick()
    model, _ = build_workload_model(sizes, "2d")
    text, vis = model.config.text_config, model.config.vision_config
    layers = model.language_model.model.layers
    per_layer = _linear_weights(layers[0])  # q, k, v, o, gate, up, down, counted from the modules
    head = model.language_model.lm_head.weight.numel()
    d_q = text.num_attention_heads * (text.hidden_size // text.num_attention_heads)
    tokens, supervised = [40, 45], [5, 6]
    llm = sum(3 * len(layers) * (2 * t * per_layer + 2 * t * t * d_q) for t in tokens)
    # CLIP 32 px / patch 16: 4 patches + CLS; feature layer -2 of 3 blocks: 2 blocks run, forward only
    tower_layers = [m for m in model.vision_tower.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 3][0]
    enc_tokens, h = 5, vis.hidden_size
    conv = [m for m in model.vision_tower.modules() if isinstance(m, torch.nn.Conv2d)][0].weight.numel()
    encoder = 2 * (2 * enc_tokens * _linear_weights(tower_layers[0]) + 4 * enc_tokens**2 * h) + 2 * 4 * conv
    w_conn = _linear_weights(model.image_connector)
    w_first = model.image_connector.mlp[0].weight.numel()
    t = 4 * 2  # 4 image tokens x 2 images
    connector = 2 * w_conn * t + 2 * w_conn * t + 2 * (w_conn - w_first) * t
    got = train_flops(model, tokens, supervised, media_items=2)
    assert got["llm"] == llm and got["lm_head"] == 6 * 11 * head
    assert got["encoder"] == pytest.approx(2 * encoder) and got["connector"] == connector
    assert got["total"] == pytest.approx(llm + 6 * 11 * head + 2 * encoder + connector)

    prompts, n = [30, 33], 3
    gen = generate_flops(model, prompts, n)
    prefill = sum(len(layers) * (2 * p * per_layer + 2 * p * p * d_q) + 2 * head for p in prompts)
    prefill += 2 * (encoder + 2 * w_conn * 4)
    # n - 1 decode steps per prompt; step j attends to p + j positions
    decode = sum(
        2 * per_layer * len(layers) + 4 * (p + j) * d_q * len(layers) + 2 * head for p in prompts for j in (1, 2)
    )
    assert gen["prefill"] == pytest.approx(prefill) and gen["decode"] == decode
