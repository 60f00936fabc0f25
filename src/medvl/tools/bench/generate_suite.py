"""The ``generate`` suite: greedy decoding with the KV cache through :func:`medvl.inference.generate`.

Exactly ``max_new_tokens`` per prompt; batched tokens/s vs batch size 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from medvl.tools.bench.bench_model import build_bench_model, skewed_records
from medvl.tools.bench.sizes import BenchSizes
from medvl.tools.bench.timing import best_time, safe_ratio

if TYPE_CHECKING:
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor

logger = logging.getLogger(__name__)


def bench_generate(
    sizes: BenchSizes, model_and_processor: tuple[MedVLForConditionalGeneration, MedVLProcessor] | None = None
) -> dict[str, Any]:
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

    def run(batch_size: int) -> Callable[[], list[str]]:
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
    result: dict[str, Any] = {
        "prompts": len(records),
        "new_tokens_per_prompt": n,
        "batched": {"batch_size": len(records), "seconds": t_batched, "tokens_per_s": new_tokens / t_batched},
        "single": {"batch_size": 1, "seconds": t_single, "tokens_per_s": new_tokens / t_single},
        "batched_over_single": safe_ratio(t_single, t_batched),
    }
    logger.info(
        "generate: batched %.0f tok/s vs single %.0f tok/s",
        result["batched"]["tokens_per_s"],
        result["single"]["tokens_per_s"],
    )
    return result
