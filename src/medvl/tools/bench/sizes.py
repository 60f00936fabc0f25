"""The suites of ``medvl bench`` and the problem sizes of one run (imports nothing heavy: ``--help`` reads it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
