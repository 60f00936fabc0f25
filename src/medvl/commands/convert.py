"""``medvl convert medm-vl SRC OUT [--llm DIR --vision DIR --volume DIR]``: import foreign checkpoints.

MedM-VL's checkpoints name their LLM / vision tower / 3D encoder by hub id and carry only their
weights; pass local folders holding those parts' config (and tokenizer / preprocessor) files. The
result is a self-contained medvl checkpoint that reproduces MedM-VL's outputs.
"""

from __future__ import annotations

import argparse
import logging

HELP = "import a checkpoint from another framework (medm-vl) as a self-contained medvl checkpoint"

FORMATS = ("medm-vl",)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl convert``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("format", choices=FORMATS, help="source format")
    parser.add_argument("src", help="source checkpoint folder (MedM-VL: config.json with lvlm_* fields + weights)")
    parser.add_argument("out", help="output medvl checkpoint folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder (refused otherwise; written to a staging folder first)",
    )
    parser.add_argument(
        "--llm", metavar="DIR", help="local folder of the LLM the checkpoint names (config + tokenizer)"
    )
    parser.add_argument(
        "--vision", metavar="DIR", help="local folder of the 2D tower (config.json + preprocessor_config.json)"
    )
    parser.add_argument("--volume", metavar="DIR", help="local folder of the 3D encoder (MedM-CLIP / M3D-CLIP config)")
    parser.add_argument(
        "--tower-input",
        choices=("auto", "image", "volume"),
        default="auto",
        help="what a MedM-VL 2D tower takes in medvl: auto (attn_pooling -> CT volumes slice by "
        "slice, as MedM-VL-CT-Chest; otherwise 2D images), image or volume",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="cast the weights (default: keep the checkpoint's dtype)",
    )


def run(args: argparse.Namespace) -> int:
    """Convert and print where the checkpoint went.

    Args:
        args: parsed arguments.
    """
    from medvl.convert.medmvl import convert_medmvl

    out = convert_medmvl(
        args.src,
        args.out,
        llm=args.llm,
        vision=args.vision,
        volume=args.volume,
        dtype=args.dtype,
        tower_input=args.tower_input,
        overwrite=args.overwrite,
    )
    print(f"saved {out}  (medvl checkpoint converted from MedM-VL {args.src}; try: medvl chat {out})")
    return 0
