"""CPU throughput benchmarks of medvl, reported as ratios and as fractions of measured machine limits.

Performance is measured, not asserted. Every suite reports absolute numbers (tokens/s, volumes/s),
ratios between two ways of doing the same work (packed/padded, batched/single, cached/raw), and,
where a machine limit applies, the fraction of that limit *measured on this machine in the same run*:

* ``machine``: fp32 and bf16 matmul GFLOP/s (large square ``torch.mm``, best of N) at the torch thread
  count in use (and optionally other counts), memory bandwidth (large tensor copy, read + write bytes).
* ``train``: forward + backward of a small medvl model on a length-skewed batch of conversations from
  :class:`~medvl.data.dataset.ConversationDataset`: padded (:class:`~medvl.data.collator.PaddedCollator`)
  vs packed (:class:`~medvl.data.collator.PackingCollator`) tokens/s, each as model-FLOPs utilisation
  ``6 * N * tokens/s / fp32 matmul peak`` (N = LLM parameters that do matmul work, attention FLOPs not
  counted); and medvl's supervised-only logits vs full logits (every position, then cross-entropy):
  time and peak-RSS ratios.
* ``generate``: :func:`medvl.inference.generate`, greedy with the KV cache, exactly ``max_new_tokens``
  per prompt: batched tokens/s vs batch size 1.
* ``workloads`` (opt-in): the MedM-VL comparison workloads W2D, W3D (fine-tuning) and I2D (greedy
  decoding) at their real sizes, with essential FLOPs and per-phase profiles
  (:mod:`medvl.bench_workloads`).
* ``volume``: a synthetic HU CT (NIfTI, 256x256x128 by default) through
  :func:`medvl.imaging.load_volume` + :class:`~medvl.models.volume_processing_medvl.MedVLVolumeProcessor`:
  volumes/s and input-voxel GB/s as a fraction of the memory bandwidth; and the
  ``medvl data prepare`` cache (:mod:`medvl.data.prepare`, memory-mapped ``.npy``) vs raw loading.

The machine is usually shared: every timing is the best (minimum) of ``repeats`` runs after a
warm-up, and the load average before and after is recorded with the results.

Example::

    from medvl.bench import run_benchmarks, format_table
    results = run_benchmarks(["machine", "train"], quick=True)
    print(format_table(results))
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

SCHEMA = "medvl-bench/1"
SUITES = ("machine", "train", "generate", "volume", "workloads")
# what ``medvl bench`` runs without --suite: the MedM-VL workloads take minutes, so they are asked for
DEFAULT_SUITES = ("machine", "train", "generate", "volume")


@dataclass
class BenchSizes:
    """Problem sizes of one benchmark run (``full()`` / ``quick()`` presets).

    Args:
        repeats: timed repeats per measurement (the best is reported), after one warm-up run.
        matmul_n: largest side of the square matrices of the matmul peak.
        matmul_budget_s: the side stops growing once one product would take longer than this.
        copy_mb: size (MiB) of the tensor copied for the memory bandwidth.
        llm: LLM config overrides of the benchmark model (over ``configs/tiny.yaml``'s).
        tokenizer_vocab: vocabulary of the trained BPE tokenizer.
        train_lengths: target token lengths of the training batch's samples (length-skewed).
        gen_batch: prompts generated together in the batched run (and one by one in the other).
        gen_new_tokens: tokens generated per prompt.
        volume_shape: (X, Y, Z) voxels of the synthetic CT written as NIfTI.
        volume_spacing: voxel size (mm) of the synthetic CT.
        volume_target: ``target_shape`` (D, H, W) of the volume processor.
    """

    repeats: int = 3
    matmul_n: int = 2048
    matmul_budget_s: float = 1.0
    copy_mb: int = 256
    llm: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 256,
            "intermediate_size": 704,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            # a realistic LM head: a 16k vocabulary (the tokenizer's ids are a subset), so full
            # logits cost what they cost in a real LLM relative to its body
            "vocab_size": 16384,
        }
    )
    tokenizer_vocab: int = 1024
    train_lengths: tuple[int, ...] = (384, 192, 96, 64, 48, 48, 32, 32)
    gen_batch: int = 8
    gen_new_tokens: int = 32
    volume_shape: tuple[int, int, int] = (256, 256, 128)
    volume_spacing: tuple[float, float, float] = (0.75, 0.75, 2.5)
    volume_target: tuple[int, int, int] = (32, 256, 256)

    @classmethod
    def full(cls) -> BenchSizes:
        """The sizes documented in ``benchmarks/README.md``."""
        return cls()

    @classmethod
    def quick(cls) -> BenchSizes:
        """Toy sizes (seconds): checks the plumbing and the output schema, not the machine."""
        return cls(
            repeats=2,
            matmul_n=256,
            matmul_budget_s=0.05,
            copy_mb=16,
            llm={
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 2048,
            },
            tokenizer_vocab=512,
            train_lengths=(96, 48, 24, 16),
            gen_batch=4,
            gen_new_tokens=4,
            volume_shape=(48, 48, 24),
            volume_target=(16, 32, 32),
        )


# ---------------------------------------------------------------------------- timing helpers
def best_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
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
    """Temporarily run torch with ``n`` intra-op threads (None: keep the current count)."""
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


def peak_rss_delta_mib(fn: Callable[[], Any]) -> float | None:
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


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ---------------------------------------------------------------------------- machine
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
                "bf16_over_fp32": _ratio(bf16, fp32),
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
        out["fp32_scaling_vs_first"] = {str(m["threads"]): _ratio(m["fp32_gflops"], ref["fp32_gflops"]) for m in matmul}
    return out


# ---------------------------------------------------------------------------- model + data
def build_bench_model(sizes: BenchSizes) -> tuple[Any, Any]:
    """The benchmark model: ``configs/tiny.yaml``'s layout with the LLM scaled by ``sizes.llm``.

    Args:
        sizes: problem sizes (``llm`` config overrides, tokenizer vocabulary).

    Returns:
        ``(model, processor)`` from :func:`medvl.build.build_model`, float32, eval mode.
    """
    from medvl.build import LLMSpec, ModelSpec, TokenizerSpec, VisionSpec, build_model

    llm = {"model_type": "qwen2", "max_position_embeddings": 4096, "tie_word_embeddings": True, **sizes.llm}
    vision = VisionSpec(
        config={
            "model_type": "siglip_vision_model",
            "image_size": 64,
            "patch_size": 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        }
    )
    spec = ModelSpec(
        llm=LLMSpec(config=llm),
        vision=vision,
        tokenizer=TokenizerSpec(source="train", vocab_size=sizes.tokenizer_vocab),
    )
    return build_model(spec)


def flop_params(model: Any) -> int:
    """LLM parameters that do matmul work per token: all but the input embedding, head included.

    (With tied embeddings the shared matrix is counted once, as the head.)

    Args:
        model: a ``MedVLForConditionalGeneration``.
    """
    llm = model.language_model
    embed = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    params = {id(p): p.numel() for p in llm.parameters() if p is not embed}
    params[id(head)] = head.numel()
    return int(sum(params.values()))


def _words(n: int, rng: np.random.Generator) -> str:
    from medvl.tokenization import builtin_corpus

    words = " ".join(builtin_corpus(60, seed=0)).split()
    start = int(rng.integers(0, max(len(words) - n, 1)))
    out = words[start : start + n]
    while len(out) < n:
        out += words[: n - len(out)]
    return " ".join(out)


def skewed_records(processor: Any, lengths: Sequence[int], seed: int = 0) -> list[Any]:
    """Text-only conversations whose token lengths are close to ``lengths`` (a question, a long answer).

    Args:
        processor: the model's processor (its tokenizer sizes the texts).
        lengths: target token count of each record.
        seed: text selection seed.
    """
    from medvl.data.records import Record

    rng = np.random.default_rng(seed)
    tok = processor.tokenizer
    records = []
    for i, target in enumerate(lengths):
        question = "Describe the findings of this chest CT."
        n_words = max(int(target * 0.6), 2)
        for _ in range(8):  # adjust the word count towards the target token count
            answer = _words(n_words, rng)
            n_tok = len(tok(question + " " + answer)["input_ids"]) + 12  # + chat template tokens
            if abs(n_tok - target) <= max(2, target // 20):
                break
            n_words = max(int(n_words * target / n_tok), 2)
        records.append(
            Record(f"bench-{i}", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        )
    return records


# ---------------------------------------------------------------------------- train
def _full_logits_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The usual causal-LM loss: logits at EVERY position, then shifted cross-entropy."""
    out = model.language_model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
        logits_to_keep=0,
    )
    logits = out.logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


def bench_train(
    sizes: BenchSizes, peak_gflops: float | None, model_and_processor: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    """Training step (forward + backward) throughput: padded vs packed, supervised-only vs full logits.

    Args:
        sizes: problem sizes.
        peak_gflops: measured fp32 matmul peak (GFLOP/s) for the utilisation fractions (None: skipped).
        model_and_processor: a ready benchmark model (else built with :func:`build_bench_model`).
    """
    from medvl.data.collator import AdaptivePackingCollator, PackingCollator, PaddedCollator
    from medvl.data.dataset import ConversationDataset

    model, processor = model_and_processor or build_bench_model(sizes)
    model.train()
    records = skewed_records(processor, sizes.train_lengths)
    dataset = ConversationDataset(records, processor)
    samples = [dataset[i] for i in range(len(dataset))]
    padded = PaddedCollator(pad_token_id=processor.tokenizer.pad_token_id)(samples)
    packed = PackingCollator()(samples)
    # data.packing=true: bin-packed rows of the longest sample, only where it saves rows
    adaptive_collator = AdaptivePackingCollator(pad_token_id=processor.tokenizer.pad_token_id)
    adaptive = adaptive_collator(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    real_tokens = int(sum(lengths))
    padded_tokens = int(padded["input_ids"].numel())
    n_params = flop_params(model)

    def step(batch: dict[str, torch.Tensor], loss_fn: Callable | None = None) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            # medvl's training path: the LM head at supervised positions only (as MedVLTrainer asks)
            loss = loss_fn(model, batch) if loss_fn else model(**batch, return_supervised_logits_only=True).loss
            loss.backward()

        return run

    t_padded = best_time(step(padded), sizes.repeats)
    t_packed = best_time(step(packed), sizes.repeats)
    t_adaptive = best_time(step(adaptive), sizes.repeats)
    t_full = best_time(step(padded, _full_logits_loss), sizes.repeats)
    # peak memory last, each from a trimmed heap (see peak_rss_delta_mib)
    mem_supervised = peak_rss_delta_mib(step(padded))
    mem_full = peak_rss_delta_mib(step(padded, _full_logits_loss))
    model.zero_grad(set_to_none=True)
    model.eval()

    def mfu(tokens_per_s: float) -> float | None:
        return _ratio(6.0 * n_params * tokens_per_s / 1e9, peak_gflops)

    # medvl applies the LM head at supervised positions only: the FLOPs the step really needs are
    # 6 * (body * tokens + head * supervised), a smaller number than the 6 * N * tokens convention
    head = int(model.language_model.get_output_embeddings().weight.numel())
    supervised = int((padded["labels"][:, 1:] != -100).sum())  # positions whose next token is a target

    def mfu_needed(seconds: float) -> float | None:
        flops = 6.0 * ((n_params - head) * real_tokens + head * supervised)
        return _ratio(flops / seconds / 1e9, peak_gflops)

    tps_padded, tps_packed = real_tokens / t_padded, real_tokens / t_packed
    result = {
        "llm_flop_params": n_params,
        "lm_head_params": head,
        "vocab_size": int(model.config.text_config.vocab_size),
        "sample_lengths": lengths,
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "padding_fraction": 1.0 - real_tokens / padded_tokens,
        "supervised_tokens": supervised,
        "padded": {
            "seconds": t_padded,
            "tokens_per_s": tps_padded,
            "mfu_fp32": mfu(tps_padded),
            "mfu_fp32_supervised_head": mfu_needed(t_padded),
        },
        "packed": {
            "seconds": t_packed,
            "tokens_per_s": tps_packed,
            "mfu_fp32": mfu(tps_packed),
            "mfu_fp32_supervised_head": mfu_needed(t_packed),
        },
        "packed_over_padded": _ratio(tps_packed, tps_padded),
        "adaptive": {
            "rows": int(adaptive["input_ids"].shape[0]),
            "width": int(adaptive["input_ids"].shape[1]),
            "seconds": t_adaptive,
            "tokens_per_s": real_tokens / t_adaptive,
        },
        "adaptive_over_padded": _ratio(real_tokens / t_adaptive, tps_padded),
        "logits": {
            "supervised_seconds": t_padded,
            "full_seconds": t_full,
            "full_over_supervised_time": _ratio(t_full, t_padded),
            "supervised_peak_rss_mib": mem_supervised,
            "full_peak_rss_mib": mem_full,
            "full_over_supervised_peak_rss": _ratio(mem_full, mem_supervised),
        },
    }
    logger.info(
        "train: padded %.0f tok/s, packed %.0f tok/s (x%.2f); full logits x%.2f time",
        tps_padded,
        tps_packed,
        result["packed_over_padded"],
        result["logits"]["full_over_supervised_time"],
    )
    return result


# ---------------------------------------------------------------------------- generate
def bench_generate(sizes: BenchSizes, model_and_processor: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Greedy generation with the KV cache through :func:`medvl.inference.generate`: batched vs one by one.

    Every prompt generates exactly ``sizes.gen_new_tokens`` tokens (``min_new_tokens`` = max), so the
    token count is known whatever the random model predicts.

    Args:
        sizes: problem sizes.
        model_and_processor: a ready benchmark model (else built with :func:`build_bench_model`).
    """
    from medvl.inference import generate

    model, processor = model_and_processor or build_bench_model(sizes)
    model.eval()
    lengths = [24 + 4 * (i % 3) for i in range(sizes.gen_batch)]  # similar prompts, some left padding
    records = skewed_records(processor, lengths, seed=1)
    n = sizes.gen_new_tokens
    new_tokens = n * len(records)

    def run(batch_size: int) -> Callable[[], None]:
        return lambda: generate(
            model,
            processor,
            records,
            batch_size=batch_size,
            max_new_tokens=n,
            min_new_tokens=n,
            progress=False,
            use_cache=True,
        )

    t_batched = best_time(run(len(records)), sizes.repeats)
    t_single = best_time(run(1), sizes.repeats)
    result = {
        "prompts": len(records),
        "new_tokens_per_prompt": n,
        "batched": {"batch_size": len(records), "seconds": t_batched, "tokens_per_s": new_tokens / t_batched},
        "single": {"batch_size": 1, "seconds": t_single, "tokens_per_s": new_tokens / t_single},
        "batched_over_single": _ratio(t_single, t_batched),
    }
    logger.info(
        "generate: batched %.0f tok/s vs single %.0f tok/s",
        result["batched"]["tokens_per_s"],
        result["single"]["tokens_per_s"],
    )
    return result


# ---------------------------------------------------------------------------- volume
def synthetic_ct(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A chest-like HU phantom (int16): air, an elliptic body, two lungs, a spine, scanner noise.

    Args:
        shape: (X, Y, Z) voxels.
        seed: noise seed.
    """
    x, y, z = shape
    gx, gy = np.meshgrid(np.linspace(-1, 1, x), np.linspace(-1, 1, y), indexing="ij")
    slab = np.full((x, y), -1000.0, dtype=np.float32)
    slab[(gx / 0.9) ** 2 + (gy / 0.65) ** 2 < 1] = 40.0  # soft tissue
    for cx in (-0.4, 0.4):
        slab[((gx - cx) / 0.3) ** 2 + (gy / 0.45) ** 2 < 1] = -850.0  # lungs
    slab[(gx / 0.08) ** 2 + ((gy - 0.45) / 0.08) ** 2 < 1] = 700.0  # vertebra
    rng = np.random.default_rng(seed)
    volume = np.repeat(slab[:, :, None], z, axis=2) + rng.normal(0, 20, (x, y, z)).astype(np.float32)
    return np.clip(np.rint(volume), -1024, 3071).astype(np.int16)


def write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> Path:
    """Save an HU array as NIfTI (RAS affine with ``spacing``), int16 like scanners' exports."""
    import nibabel as nib

    affine = np.diag([*map(float, spacing), 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def bench_volume(sizes: BenchSizes, bandwidth_gbs: float | None, workdir: str | Path | None = None) -> dict[str, Any]:
    """Volume preprocessing throughput: NIfTI -> ``volume_values``, raw vs the prepared cache.

    Args:
        sizes: problem sizes (CT shape and spacing, processor target shape).
        bandwidth_gbs: measured memory bandwidth for the fraction (None: skipped).
        workdir: folder for the synthetic files (default: a temporary folder, removed afterwards).
    """
    from medvl.imaging import load_volume
    from medvl.models.volume_processing_medvl import MedVLVolumeProcessor

    processor = MedVLVolumeProcessor(target_shape=sizes.volume_target, window="lung")
    with contextlib.ExitStack() as stack:
        folder = (
            Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medvl-bench-")))
        )
        folder.mkdir(parents=True, exist_ok=True)
        array = synthetic_ct(sizes.volume_shape)
        files = {
            suffix: write_nifti(array, sizes.volume_spacing, folder / f"ct{suffix}") for suffix in (".nii.gz", ".nii")
        }
        voxels = int(array.size)
        voxel_bytes = voxels * 4  # the float32 HU array every step reads
        out: dict[str, Any] = {
            "volume_shape": list(sizes.volume_shape),
            "voxel_spacing_mm": list(sizes.volume_spacing),
            "target_shape": list(sizes.volume_target),
            "input_voxels": voxels,
        }
        for suffix, path in files.items():
            key = "nii_gz" if suffix.endswith(".gz") else "nii"
            t_load = best_time(lambda p=path: load_volume(p), sizes.repeats)
            volume = load_volume(path)
            t_proc = best_time(lambda v=volume: processor([v]), sizes.repeats)
            t_total = best_time(lambda p=path: processor([load_volume(p)]), sizes.repeats)
            gbs = voxel_bytes / t_total / 1e9
            out[key] = {
                "load_seconds": t_load,
                "process_seconds": t_proc,
                "total_seconds": t_total,
                "volumes_per_s": 1.0 / t_total,
                "voxel_gbs": gbs,
                "fraction_of_memory_bandwidth": _ratio(gbs, bandwidth_gbs),
            }
        out["cache"] = _bench_volume_cache(processor, files[".nii.gz"], sizes, folder / "cache", out["nii_gz"])
    logger.info("volume: %.2f volumes/s raw (.nii.gz)", out["nii_gz"]["volumes_per_s"])
    return out


def _bench_volume_cache(
    processor: Any, path: Path, sizes: BenchSizes, cache_dir: Path, raw: dict[str, Any]
) -> dict[str, Any]:
    from medvl.data.prepare import VolumeCache, prepare_volumes
    from medvl.data.records import Record

    record = Record("bench-ct", [{"role": "user", "content": "<volume>"}], volumes=[str(path)])
    out: dict[str, Any] = {"available": True, "reference": "nii_gz"}
    for dtype in ("float16", "int16"):
        folder = cache_dir / dtype
        start = time.perf_counter()
        summary = prepare_volumes([record], processor, folder, dtype=dtype, progress=False)
        t_prepare = time.perf_counter() - start
        cache = VolumeCache(folder)
        cache.check_processor(processor)
        t_get = best_time(lambda c=cache: c.get(str(path)), sizes.repeats)
        out[dtype] = {
            "prepare_seconds": t_prepare,
            "cache_bytes": summary["bytes"],
            "load_seconds": t_get,
            "volumes_per_s": 1.0 / t_get,
            "cached_over_raw": _ratio(raw["total_seconds"], t_get),
        }
    return out


# ---------------------------------------------------------------------------- driver
def run_benchmarks(
    suites: Sequence[str] = DEFAULT_SUITES,
    *,
    quick: bool = False,
    sizes: BenchSizes | None = None,
    threads: Sequence[int] | None = None,
    workdir: str | Path | None = None,
    workload_sizes: Any = None,
) -> dict[str, Any]:
    """Run benchmark suites; returns the JSON-ready results (see ``benchmarks/README.md``).

    The ``machine`` suite always runs: the other suites' fractions refer to its measured limits.

    Args:
        suites: names among :data:`SUITES`.
        quick: toy sizes (:meth:`BenchSizes.quick`) unless ``sizes`` is given.
        sizes: explicit problem sizes.
        threads: extra thread counts for the matmul peak (see :func:`bench_machine`).
        workdir: folder for synthetic volume files (default: temporary).
        workload_sizes: a :class:`medvl.bench_workloads.WorkloadSizes` (default: ``quick()`` with
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

    def timed(name: str, fn: Callable[[], Any]) -> Any:
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
        from medvl.bench_workloads import WorkloadSizes, bench_workloads

        wl_sizes = workload_sizes or (WorkloadSizes.quick() if quick else WorkloadSizes.full())
        results["results"]["workloads"] = timed(
            "workloads",
            lambda: bench_workloads(
                wl_sizes,
                limits["fp32_peak_gflops"],
                Path(workdir) / "workloads" if workdir else None,
                bandwidth_gbs=limits["memory_bandwidth_gbs"],
            ),
        )
    info["load_average_end"] = load_average()
    info["wall_seconds"] = time.perf_counter() - started
    info["suite_seconds"] = seconds
    return results


# ---------------------------------------------------------------------------- table
def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(suite, metric, value)`` rows of the headline numbers of :func:`run_benchmarks`' results."""
    rows: list[tuple[str, str, str]] = []
    r = results["results"]
    m = r["machine"]
    for mm in m["matmul"]:
        t = mm["threads"]
        rows += [
            ("machine", f"matmul fp32 GFLOP/s ({t} thr, n={mm['fp32_n']})", _fmt(mm["fp32_gflops"])),
            ("machine", f"matmul bf16 GFLOP/s ({t} thr, n={mm['bf16_n']})", _fmt(mm["bf16_gflops"])),
            ("machine", f"bf16 / fp32 ({t} thr)", _fmt(mm["bf16_over_fp32"])),
        ]
    rows.append(("machine", f"memory bandwidth GB/s (copy {m['copy_mib']} MiB, r+w)", _fmt(m["memory_bandwidth_gbs"])))
    if "train" in r:
        t = r["train"]
        rows += [
            ("train", f"padding fraction (lengths {t['sample_lengths']})", _fmt(t["padding_fraction"])),
            ("train", "padded tokens/s (fwd+bwd)", _fmt(t["padded"]["tokens_per_s"])),
            ("train", "packed tokens/s (fwd+bwd)", _fmt(t["packed"]["tokens_per_s"])),
            ("train", "packed / padded", _fmt(t["packed_over_padded"])),
            (
                "train",
                f"adaptive packing ({t['adaptive']['rows']} rows x {t['adaptive']['width']}) / padded",
                _fmt(t["adaptive_over_padded"]),
            ),
            ("train", "padded MFU (6N tok/s / fp32 peak)", _fmt(t["padded"]["mfu_fp32"])),
            ("train", "packed MFU (6N tok/s / fp32 peak)", _fmt(t["packed"]["mfu_fp32"])),
            (
                "train",
                "padded / packed MFU, head at supervised tokens only",
                f"{_fmt(t['padded']['mfu_fp32_supervised_head'])} / {_fmt(t['packed']['mfu_fp32_supervised_head'])}",
            ),
            (
                "train",
                f"full-logits / supervised-only time (vocab {t['vocab_size']})",
                _fmt(t["logits"]["full_over_supervised_time"]),
            ),
            ("train", "full-logits / supervised-only peak RSS", _fmt(t["logits"]["full_over_supervised_peak_rss"])),
            ("train", "supervised-only peak RSS MiB (above start)", _fmt(t["logits"]["supervised_peak_rss_mib"])),
            ("train", "full-logits peak RSS MiB (above start)", _fmt(t["logits"]["full_peak_rss_mib"])),
        ]
    if "generate" in r:
        g = r["generate"]
        rows += [
            (
                "generate",
                f"batched tokens/s (batch {g['batched']['batch_size']}, KV cache)",
                _fmt(g["batched"]["tokens_per_s"]),
            ),
            ("generate", "batch-1 tokens/s (KV cache)", _fmt(g["single"]["tokens_per_s"])),
            ("generate", "batched / batch-1", _fmt(g["batched_over_single"])),
        ]
    if "volume" in r:
        v = r["volume"]
        shape = "x".join(map(str, v["volume_shape"]))
        for key in ("nii_gz", "nii"):
            rows += [
                (
                    "volume",
                    f"{shape} .{key.replace('_', '.')} volumes/s (load + process)",
                    _fmt(v[key]["volumes_per_s"]),
                ),
                (
                    "volume",
                    f".{key.replace('_', '.')} load / process seconds",
                    f"{_fmt(v[key]['load_seconds'])} / {_fmt(v[key]['process_seconds'])}",
                ),
                (
                    "volume",
                    f".{key.replace('_', '.')} voxel GB/s, fraction of bandwidth",
                    f"{_fmt(v[key]['voxel_gbs'])}, {_fmt(v[key]['fraction_of_memory_bandwidth'])}",
                ),
            ]
        cache = v["cache"]
        if cache.get("available"):
            for dtype in ("float16", "int16"):
                rows.append(
                    (
                        "volume",
                        f"{dtype} cache volumes/s, cached / raw .nii.gz",
                        f"{_fmt(cache[dtype]['volumes_per_s'])}, {_fmt(cache[dtype]['cached_over_raw'])}",
                    )
                )
        else:
            rows.append(("volume", "cache", cache.get("reason", "n/a")))
    if "workloads" in r:
        from medvl.bench_workloads import workload_rows

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


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of :func:`table_rows`."""
    rows = [("suite", "metric", "value"), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
