"""CTViT (CT-CLIP's 3D encoder) at the released size on a CUDA GPU: time per volume and peak memory.

Builds ``CTViTModel`` with CT-CLIP v2's arguments (dim 512, codebook 8192, 480 x 480 in-plane, patch 20,
temporal patch 10, 4 spatial + 4 temporal layers, 8 heads of 32) and feeds (B, 1, 240, 480, 480)
volumes (CT-CLIP's preprocessed CT-RATE size: 24 x 24 x 24 = 13,824 tokens), in bf16 (attention
through torch's scaled_dot_product_attention, as always in medvl's CTViT). Measures, per batch size:

* forward (no grad, eval): seconds per volume, volumes/s, peak allocated memory;
* forward + backward (encoder trainable, loss on the straight-through quantised tokens): seconds per
  volume, peak memory; again with activation checkpointing per transformer block;
* how many codebook indices the bf16 forward picks like the float32 forward (same weights, same input).

Weights are random unless ``--weights DIR`` names a CT-CLIP weights folder (as ``medvl build``
reads it). Timing: CUDA events around each call after warm-up, median of ``--repeats``.

Run: ``python benchmarks/ctvit_gpu.py --out ctvit_gpu.json`` (CUDA GPU; ~2 minutes on an H100).
``--tiny`` runs the same code on the CPU at toy sizes to check the script, and says nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from medvl.models.ctvit import CTCLIP_RELEASED_KWARGS, CTViTConfig, CTViTModel

logger = logging.getLogger("ctvit_gpu")


def _ct_like(batch: int, config: CTViTConfig, device: str, seed: int = 0) -> torch.Tensor:
    """Volumes in CT-CLIP's [-1, 1] range: air (-1), a body ellipse of soft tissue, darker lungs."""
    g = torch.Generator().manual_seed(seed)
    t, (h, w) = config.num_frames, config.image_size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    body = (yy / 0.7) ** 2 + (xx / 0.9) ** 2 < 1
    lungs = (((xx.abs() - 0.4) / 0.3) ** 2 + (yy / 0.5) ** 2) < 1
    plane = torch.full((h, w), -1.0)
    plane[body] = 0.04
    plane[lungs] = -0.85
    vol = plane.expand(batch, 1, t, h, w).clone()
    vol += 0.02 * torch.randn(vol.shape, generator=g)
    return vol.clamp(-1, 1).to(device)


def _timed(fn, repeats: int, device: str) -> tuple[float, int]:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up, and peak allocated bytes."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return statistics.median(times), peak


def build(config: CTViTConfig, weights: str | None, device: str, dtype: torch.dtype) -> CTViTModel:
    """The encoder with random or CT-CLIP weights, on ``device`` in ``dtype``."""
    torch.manual_seed(0)
    model = CTViTModel(config)
    if weights:
        from medvl.build import load_ctclip_folder

        _, state_dict = load_ctclip_folder(weights, {"num_frames": config.num_frames})
        model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype)


def measure(config: CTViTConfig, weights: str | None, batches: list[int], repeats: int, device: str) -> dict:
    """All measurements as a JSON-ready dict."""
    results: dict = {"config": config.to_dict(), "device": device, "batches": {}}
    if device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
    model = build(config, weights, device, torch.bfloat16)
    for batch in batches:
        x = _ct_like(batch, config, device).to(torch.bfloat16)
        entry: dict = {}
        model.eval().requires_grad_(False)

        def forward() -> None:
            with torch.no_grad():
                model(x)

        seconds, peak = _timed(forward, repeats, device)
        entry["forward_s_per_volume"] = seconds / batch
        entry["forward_volumes_per_s"] = batch / seconds
        entry["forward_peak_gib"] = peak / 2**30
        model.train().requires_grad_(True)

        def forward_backward() -> None:
            model.zero_grad(set_to_none=True)
            out = model(x)
            out.last_hidden_state.float().square().mean().backward()

        for suffix, checkpointing in (("", False), ("_checkpointing", True)):
            if checkpointing:
                model.activation_checkpointing_enable()
            try:
                seconds, peak = _timed(forward_backward, repeats, device)
                entry[f"train{suffix}_s_per_volume"] = seconds / batch
                entry[f"train{suffix}_peak_gib"] = peak / 2**30
            except torch.OutOfMemoryError:
                entry[f"train{suffix}_s_per_volume"] = None
                entry[f"train{suffix}_peak_gib"] = "out of memory"
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            if checkpointing:
                model.activation_checkpointing_disable()
            model.zero_grad(set_to_none=True)
        results["batches"][str(batch)] = entry
        logger.info("batch %d: %s", batch, entry)
    # bf16 vs float32 code choice on the same input
    x = _ct_like(1, config, device, seed=1)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        bf16_ids = model(x.to(torch.bfloat16)).codebook_indices
        fp32_ids = model.float()(x).codebook_indices
    results["bf16_vs_fp32_same_code_fraction"] = float((bf16_ids == fp32_ids).float().mean())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="ctvit_gpu.json", help="JSON results file")
    parser.add_argument("--weights", default=None, help="CT-CLIP weights folder (default: random weights)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test at toy sizes (no timing value)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.tiny:
        device = "cpu"
        config = CTViTConfig(
            dim=32,
            codebook_size=64,
            image_size=32,
            patch_size=8,
            temporal_patch_size=4,
            spatial_depth=1,
            temporal_depth=1,
            dim_head=8,
            heads=2,
            num_frames=16,
        )
        batches, repeats = [1, 2], 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (use --tiny to check the script on a CPU)")
        device = "cuda"
        config = CTViTConfig(**CTCLIP_RELEASED_KWARGS, num_frames=240)
        batches, repeats = args.batch, args.repeats
    results = measure(config, args.weights, batches, repeats, device)
    results["torch"] = torch.__version__
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print(json.dumps(results["batches"], indent=2))  # CLI output
    print("bf16 vs fp32 same code fraction:", results["bf16_vs_fp32_same_code_fraction"])


if __name__ == "__main__":
    main()
