"""The model and data of the ``train`` and ``generate`` suites: a small medvl model, length-skewed chats.

The model is ``configs/tiny.yaml``'s layout (SigLIP tower + MLP connector + Qwen2 LLM, a BPE
tokenizer trained offline) with the LLM scaled by :attr:`BenchSizes.llm`; the conversations are
text-only, with token lengths close to the targets, so that padding and packing have work to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medvl.tools.bench.sizes import BenchSizes

if TYPE_CHECKING:
    from medvl.data.records import Record
    from medvl.models import MedVLForConditionalGeneration, MedVLProcessor


def build_bench_model(sizes: BenchSizes) -> tuple[MedVLForConditionalGeneration, MedVLProcessor]:
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


def flop_params(model: MedVLForConditionalGeneration) -> int:
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


def skewed_records(processor: MedVLProcessor, lengths: Sequence[int], seed: int = 0) -> list[Record]:
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
