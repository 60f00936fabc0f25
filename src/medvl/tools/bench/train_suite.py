"""The ``train`` suite: forward + backward of the benchmark model on a length-skewed batch of conversations.

Padded (:class:`~medvl.data.collator.PaddedCollator`) vs packed
(:class:`~medvl.data.collator.PackingCollator`) vs adaptively packed tokens/s, each as model-FLOPs
utilisation ``6 * N * tokens/s / fp32 matmul peak`` (N = LLM parameters that do matmul work,
attention FLOPs not counted); and medvl's supervised-only logits vs full logits (every position, then
cross-entropy): time and peak-RSS ratios.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from medvl.tools.bench.bench_model import build_bench_model, flop_params, skewed_records
from medvl.tools.bench.sizes import BenchSizes
from medvl.tools.bench.timing import best_time, peak_rss_delta_mib, safe_ratio

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
LossFn = Callable[["MedVLForConditionalGeneration", Batch], torch.Tensor]


@dataclass
class TrainBatches:
    """The same samples collated three ways.

    Args:
        lengths: token count of each sample.
        padded: one row per sample, padded to the longest.
        packed: all samples in one row (``position_ids`` restart per sample).
        adaptive: ``data.packing=true``: bin-packed rows of the longest sample's width.
    """

    lengths: list[int]
    padded: Batch
    packed: Batch
    adaptive: Batch


def collate_three_ways(processor: MedVLProcessor, sizes: BenchSizes) -> TrainBatches:
    """Length-skewed conversations (``sizes.train_lengths``) through the three collators.

    Args:
        processor: the benchmark model's processor.
        sizes: problem sizes.
    """
    from medvl.data.collator import AdaptivePackingCollator, PackingCollator, PaddedCollator
    from medvl.data.dataset import ConversationDataset

    dataset = ConversationDataset(skewed_records(processor, sizes.train_lengths), processor)
    # (None would be a record skipped by data.on_error=skip: not set here, so every record is a sample)
    samples = [sample for i in range(len(dataset)) if (sample := dataset[i]) is not None]
    pad = processor.tokenizer.pad_token_id
    return TrainBatches(
        lengths=[len(s["input_ids"]) for s in samples],
        padded=PaddedCollator(pad_token_id=pad)(samples),
        packed=PackingCollator()(samples),
        adaptive=AdaptivePackingCollator(pad_token_id=pad)(samples),
    )


def full_logits_loss(model: MedVLForConditionalGeneration, batch: Batch) -> torch.Tensor:
    """The usual causal-LM loss: logits at EVERY position, then shifted cross-entropy.

    Args:
        model: the benchmark model.
        batch: a collated text-only batch.
    """
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


def training_step(
    model: MedVLForConditionalGeneration, batch: Batch, loss_fn: LossFn | None = None
) -> Callable[[], None]:
    """One forward + backward on ``batch`` as a callable (to time it).

    Args:
        model: the model, in train mode.
        batch: a collated batch.
        loss_fn: the loss; None: medvl's training path, the LM head at supervised positions only (as
            ``MedVLTrainer`` asks).
    """

    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch) if loss_fn else model(**batch, return_supervised_logits_only=True).loss
        loss.backward()

    return run


def bench_train(
    sizes: BenchSizes,
    peak_gflops: float | None,
    model_and_processor: tuple[MedVLForConditionalGeneration, MedVLProcessor] | None = None,
) -> dict[str, Any]:
    """Training step (forward + backward) throughput: padded vs packed, supervised-only vs full logits.

    Args:
        sizes: problem sizes.
        peak_gflops: measured fp32 matmul peak (GFLOP/s) for the utilisation fractions (None: skipped).
        model_and_processor: a ready benchmark model (else built with :func:`build_bench_model`).
    """
    model, processor = model_and_processor or build_bench_model(sizes)
    model.train()
    batches = collate_three_ways(processor, sizes)
    seconds = {
        "padded": best_time(training_step(model, batches.padded), sizes.repeats),
        "packed": best_time(training_step(model, batches.packed), sizes.repeats),
        "adaptive": best_time(training_step(model, batches.adaptive), sizes.repeats),
        "full": best_time(training_step(model, batches.padded, full_logits_loss), sizes.repeats),
    }
    # peak memory last, each from a trimmed heap (see peak_rss_delta_mib)
    peak_mib = {
        "supervised": peak_rss_delta_mib(training_step(model, batches.padded)),
        "full": peak_rss_delta_mib(training_step(model, batches.padded, full_logits_loss)),
    }
    model.zero_grad(set_to_none=True)
    model.eval()
    result = _train_result(model, batches, seconds, peak_mib, peak_gflops)
    logger.info(
        "train: padded %.0f tok/s, packed %.0f tok/s (x%.2f); full logits x%.2f time",
        result["padded"]["tokens_per_s"],
        result["packed"]["tokens_per_s"],
        result["packed_over_padded"],
        result["logits"]["full_over_supervised_time"],
    )
    return result


def _train_result(
    model: MedVLForConditionalGeneration,
    batches: TrainBatches,
    seconds: dict[str, float],
    peak_mib: dict[str, float | None],
    peak_gflops: float | None,
) -> dict[str, Any]:
    """The suite's JSON: throughputs, utilisation fractions and the logits comparison."""
    real_tokens = int(sum(batches.lengths))
    padded_tokens = int(batches.padded["input_ids"].numel())
    n_params = flop_params(model)
    # medvl applies the LM head at supervised positions only: the FLOPs the step really needs are
    # 6 * (body * tokens + head * supervised), a smaller number than the 6 * N * tokens convention
    head = int(model.language_model.get_output_embeddings().weight.numel())
    supervised = int((batches.padded["labels"][:, 1:] != -100).sum())  # positions whose next token is a target

    def mfu(tokens_per_s: float) -> float | None:
        return safe_ratio(6.0 * n_params * tokens_per_s / 1e9, peak_gflops)

    def mfu_needed(step_seconds: float) -> float | None:
        flops = 6.0 * ((n_params - head) * real_tokens + head * supervised)
        return safe_ratio(flops / step_seconds / 1e9, peak_gflops)

    def layout(name: str) -> dict[str, Any]:
        tokens_per_s = real_tokens / seconds[name]
        return {
            "seconds": seconds[name],
            "tokens_per_s": tokens_per_s,
            "mfu_fp32": mfu(tokens_per_s),
            "mfu_fp32_supervised_head": mfu_needed(seconds[name]),
        }

    padded, packed = layout("padded"), layout("packed")
    adaptive_tps = real_tokens / seconds["adaptive"]
    return {
        "llm_flop_params": n_params,
        "lm_head_params": head,
        "vocab_size": int(model.config.get_text_config().vocab_size),
        "sample_lengths": batches.lengths,
        "real_tokens": real_tokens,
        "padded_tokens": padded_tokens,
        "padding_fraction": 1.0 - real_tokens / padded_tokens,
        "supervised_tokens": supervised,
        "padded": padded,
        "packed": packed,
        "packed_over_padded": safe_ratio(packed["tokens_per_s"], padded["tokens_per_s"]),
        "adaptive": {
            "rows": int(batches.adaptive["input_ids"].shape[0]),
            "width": int(batches.adaptive["input_ids"].shape[1]),
            "seconds": seconds["adaptive"],
            "tokens_per_s": adaptive_tps,
        },
        "adaptive_over_padded": safe_ratio(adaptive_tps, padded["tokens_per_s"]),
        "logits": {
            "supervised_seconds": seconds["padded"],
            "full_seconds": seconds["full"],
            "full_over_supervised_time": safe_ratio(seconds["full"], seconds["padded"]),
            "supervised_peak_rss_mib": peak_mib["supervised"],
            "full_peak_rss_mib": peak_mib["full"],
            "full_over_supervised_peak_rss": safe_ratio(peak_mib["full"], peak_mib["supervised"]),
        },
    }
