"""``medvl train CONFIG.yaml [key=value ...]``: train or fine-tune a model from a YAML recipe.

Multi-process: ``torchrun --nproc_per_node N -m medvl train CONFIG.yaml`` (DDP), add
``train.deepspeed=configs/deepspeed/zero3.json`` for DeepSpeed ZeRO, or pass FSDP settings through
``train.hf_args``.
"""

from __future__ import annotations

import argparse
import logging
import os

HELP = "train or fine-tune a model from a YAML recipe (stages, full/LoRA, resume, multi-process)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl train``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("config", help="YAML recipe with sections model, data, train, output")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.lr=2e-4 train.parts.llm.mode=lora output.dir=runs/x train.resume=true",
    )


def run(args: argparse.Namespace) -> int:
    """Load the recipe and train; prints the output folder.

    Args:
        args: parsed arguments.
    """
    from medvl.train.config import load_train_config, unfilled_placeholders
    from medvl.train.run import final_model_dir, run_training

    try:
        cfg = load_train_config(args.config, args.overrides)
        unfilled = unfilled_placeholders(cfg)
        if unfilled:
            raise ValueError("the recipe still has placeholder paths; fill them in (in the YAML or as key=value "
                             "overrides): " + ", ".join(unfilled))
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    out = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per torchrun process
        print(f"output: {out}\nmodel:  {final_model_dir(out)}")
    return 0
