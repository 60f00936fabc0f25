"""GPU check of medvl at the paper's real sizes (random weights, bf16, sdpa).

Builds the MedM-VL-2D layout (SigLIP base patch16-256 + 2-layer GELU MLP + Qwen2.5-3B config) and
the MedM-VL-CT-Chest layouts (SigLIP slice by slice + attention pooling; 3D ViT + spatial pooling)
from configs only, then measures on the GPU:

* the bf16 matmul peak of this card (8192^3), the reference for the fractions below;
* training step (forward + backward) throughput in tokens/s and model FLOPs utilisation
  (6 * params * tokens / time / measured peak), with and without supervised-only logits
  (peak memory shows what not materialising prompt/image logits saves);
* padded vs packed (padding-free, position_ids) loss equality at bf16;
* generation: prefill + greedy decoding with the KV cache, tokens/s;
* the volume encoders' forward+backward time per CT volume.

Run: ``python benchmarks/gpu_check.py --out results.json`` (needs a CUDA GPU; ~3 minutes on an H100).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from medvl.models import MedVLConfig, MedVLForConditionalGeneration

logger = logging.getLogger("gpu_check")

QWEN25_3B = dict(
    model_type="qwen2",
    hidden_size=2048,
    intermediate_size=11008,
    num_hidden_layers=36,
    num_attention_heads=16,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1e6,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
SIGLIP_BASE_256 = dict(
    model_type="siglip_vision_model",
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=256,
    patch_size=16,
)
VIT3D_BASE = dict(
    model_type="medvl_vit3d",
    image_size=[32, 256, 256],
    patch_size=[4, 16, 16],
    in_channels=1,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
)
IMAGE_ID, VOLUME_ID = 151665, 151666
DEVICE = "cuda"


def shrink_for_smoke_test() -> None:
    """--tiny: the same code path on the CPU with toy sizes (to check the script before renting a GPU)."""
    global DEVICE, IMAGE_ID, VOLUME_ID
    DEVICE = "cpu"
    IMAGE_ID, VOLUME_ID = 4000, 4001
    QWEN25_3B.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=4096)
    for cfg in (SIGLIP_BASE_256, VIT3D_BASE):
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def sync() -> None:
    if DEVICE == "cuda":
        sync()


def timed(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` on the GPU."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak() -> float:
    n = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    seconds = timed(lambda: a @ b, repeats=10, warmup=3)
    return 2 * n**3 / seconds / 1e12


def build(**kwargs) -> MedVLForConditionalGeneration:
    config = MedVLConfig(text_config=dict(QWEN25_3B), image_token_id=IMAGE_ID, volume_token_id=VOLUME_ID, **kwargs)
    config._attn_implementation = "sdpa"
    with torch.device(DEVICE):
        model = MedVLForConditionalGeneration(config)
    return model.to(torch.bfloat16)


def sample_batch(config, batch: int, text_len: int, supervised_frac: float, media: str):
    n_media = config.num_image_tokens if media == "image" else config.num_volume_tokens
    token = IMAGE_ID if media == "image" else VOLUME_ID
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, IMAGE_ID - 1, (batch, text_len), generator=gen)
    ids = torch.cat([text[:, :8], torch.full((batch, n_media), token), text[:, 8:]], dim=1)
    labels = torch.full_like(ids, -100)
    n_sup = max(1, int(text_len * supervised_frac))
    labels[:, -n_sup:] = ids[:, -n_sup:]
    return ids.to(DEVICE), labels.to(DEVICE)


def train_step_stats(model, ids, labels, media_kw, peak_tflops, params, full_logits: bool) -> dict:
    model.train()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        model.zero_grad(set_to_none=True)
        if full_logits:  # what a plain causal LM does: logits for every position, prompt and image included
            out = model(input_ids=ids, **media_kw, use_cache=False)
            logits = out.logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        else:
            loss = model(input_ids=ids, **media_kw, labels=labels).loss
        loss.backward()
        return loss

    seconds = timed(step, repeats=3, warmup=1)
    tokens = ids.numel()
    tflops = 6 * params * tokens / seconds / 1e12
    return {
        "seconds_per_step": seconds,
        "tokens_per_s": tokens / seconds,
        "model_tflops": tflops,
        "mfu_vs_measured_peak": tflops / peak_tflops,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
    }


def check_2d(results: dict, peak: float) -> None:
    model = build(vision_config=dict(SIGLIP_BASE_256), image_connector={"type": "mlp", "depth": 2})
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = sum(p.numel() for p in model.parameters())
    batch, text_len = 8, 768
    ids, labels = sample_batch(model.config, batch, text_len, 0.25, "image")
    pixels = torch.randn(batch, 3, 256, 256, device=DEVICE, dtype=torch.bfloat16)
    res = {"params": params, "batch": batch, "seq_len": ids.shape[1], "image_tokens": model.config.num_image_tokens}
    res["train_supervised_logits"] = train_step_stats(model, ids, labels, {"pixel_values": pixels}, peak, params, False)
    res["train_full_logits"] = train_step_stats(model, ids, labels, {"pixel_values": pixels}, peak, params, True)

    # padded vs packed: two rows of different lengths, as a padded batch and as one packed row
    model.eval()
    with torch.no_grad():
        short, long_ = 300, 500
        n_img = model.config.num_image_tokens
        rows = [ids[0, : n_img + short], ids[1, : n_img + long_]]
        labs = [labels[0, : n_img + short].clone(), labels[1, : n_img + long_].clone()]
        for lab, row in zip(labs, rows):
            lab[-100:] = row[-100:]
        pad = len(rows[1]) - len(rows[0])
        padded_ids = torch.stack([torch.nn.functional.pad(rows[0], (0, pad), value=0), rows[1]])
        padded_lab = torch.stack([torch.nn.functional.pad(labs[0], (0, pad), value=-100), labs[1]])
        mask = (
            torch.arange(padded_ids.shape[1], device=DEVICE)[None]
            < torch.tensor([[len(rows[0])], [len(rows[1])]], device=DEVICE)
        ).long()
        loss_padded = model(input_ids=padded_ids, attention_mask=mask, pixel_values=pixels[:2], labels=padded_lab).loss
        packed_ids = torch.cat(rows)[None]
        packed_lab = torch.cat([labs[0], labs[1]])[None]
        packed_lab[0, len(rows[0])] = -100
        pos = torch.cat([torch.arange(len(r), device=DEVICE) for r in rows])[None]
        loss_packed = model(input_ids=packed_ids, position_ids=pos, pixel_values=pixels[:2], labels=packed_lab).loss
        res["packed_vs_padded"] = {
            "loss_padded": loss_padded.item(),
            "loss_packed": loss_packed.item(),
            "abs_diff": abs(loss_padded.item() - loss_packed.item()),
        }

        # generation: prefill + 128 greedy tokens with the KV cache
        prompt = ids[:, : n_img + 64]
        new = 128

        def gen():
            return model.generate(  # noqa: F821 - called before the `del model` below
                input_ids=prompt,
                pixel_values=pixels,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
            )

        seconds = timed(gen, repeats=2, warmup=1)
        res["generate"] = {
            "batch": batch,
            "prompt_len": prompt.shape[1],
            "new_tokens": new,
            "seconds": seconds,
            "new_tokens_per_s": batch * new / seconds,
        }
    results["medm_vl_2d_3b"] = res
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def check_volume(results: dict, peak: float, name: str, **kwargs) -> None:
    model = build(**kwargs)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = sum(p.numel() for p in model.parameters())
    batch, text_len = 2, 256
    ids, labels = sample_batch(model.config, batch, text_len, 0.5, "volume")
    channels = 3 if model.config.volume_encoder == "slicewise" else 1
    side = 256
    volumes = torch.randn(batch, channels, 32, side, side, device=DEVICE, dtype=torch.bfloat16)
    res = {"params": params, "batch": batch, "seq_len": ids.shape[1], "volume_tokens": model.config.num_volume_tokens}
    res["train_supervised_logits"] = train_step_stats(
        model, ids, labels, {"volume_values": volumes}, peak, params, False
    )
    model.eval()
    with torch.no_grad():
        res["volume_features_seconds_per_volume"] = timed(lambda: model.get_volume_features(volumes), repeats=3) / batch  # noqa: F821 - called before the `del model` below
    results[name] = res
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_results.json")
    parser.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (smoke test of this script)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.tiny:
        shrink_for_smoke_test()
    results: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__}
    import transformers

    results["transformers"] = transformers.__version__
    peak = matmul_peak()
    results["bf16_matmul_peak_tflops"] = peak
    for name, fn in [
        ("2d", lambda: check_2d(results, peak)),
        (
            "ct_slicewise",
            lambda: check_volume(
                results,
                peak,
                "medm_vl_ct_chest_slicewise_attnpool",
                volume_config=dict(SIGLIP_BASE_256),
                volume_encoder="slicewise",
                volume_num_slices=32,
                volume_connector={"type": "attn_pool", "num_queries": 256, "num_heads": 8, "depth": 2},
            ),
        ),
        (
            "ct_vit3d",
            lambda: check_volume(
                results,
                peak,
                "medm_vl_ct_chest_vit3d_spatialpool",
                volume_config=dict(VIT3D_BASE),
                volume_encoder="vit3d",
                volume_connector={"type": "spatial_pool", "pool_stride": [2, 2, 2], "depth": 2},
            ),
        ),
    ]:
        try:
            fn()
        except Exception as err:  # keep the other checks' numbers when one fails
            logger.exception("check %s failed", name)
            results[f"{name}_error"] = repr(err)
        logger.info("%s", json.dumps(results, indent=1))
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
