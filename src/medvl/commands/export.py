"""``medvl export MODEL --as-llava OUT`` / ``medvl export ADAPTER --merge-lora OUT``.

``--as-llava``: a 2D CLIP/SigLIP + MLP model as a stock Hugging Face ``llava`` checkpoint
(``LlavaForConditionalGeneration`` + ``AutoProcessor``, no medvl needed; what vLLM / SGLang serve).
Other layouts are refused with the reason; their medvl checkpoint loads with ``trust_remote_code``.

``--merge-lora``: fold a LoRA adapter written by ``medvl train`` into its base model.
"""

from __future__ import annotations

import argparse
import logging

HELP = "export a model: stock HF LLaVA (--as-llava) or a LoRA adapter merged into its base (--merge-lora)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl export``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder (or LoRA adapter folder with --merge-lora)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--as-llava", metavar="OUT", help="write a stock transformers LLaVA checkpoint to OUT")
    what.add_argument("--merge-lora", metavar="OUT", help="merge the LoRA adapter MODEL into its base, write to OUT")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT (refused otherwise; the source folder is never replaced)",
    )


def run(args: argparse.Namespace) -> int:
    """Export and print where it went.

    Args:
        args: parsed arguments.
    """
    if args.merge_lora:
        from medvl.train.lora import merge_lora  # lazy: pulls in PEFT

        out = merge_lora(args.model, args.merge_lora, overwrite=args.overwrite)
        print(f"saved {out}  (LoRA merged; loads without PEFT)")
        return 0
    from medvl.export import export_llava

    out = export_llava(args.model, args.as_llava, overwrite=args.overwrite)
    print(f"saved {out}  (stock LLaVA: LlavaForConditionalGeneration + AutoProcessor, no medvl needed)")
    return 0
