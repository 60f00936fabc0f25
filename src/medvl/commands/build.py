"""``medvl build CONFIG.yaml --out DIR [key=value ...]``: assemble a model from parts and save it.

Every part (LLM, 2D tower, 3D encoder) is a local pretrained folder or a config for random
initialisation; the saved folder is a self-contained checkpoint (config, safetensors, processor,
tokenizer, chat template and the model code for ``trust_remote_code``).
"""

from __future__ import annotations

import argparse
import logging

HELP = "assemble a model from parts (LLM, 2D/3D encoders, connectors, tokenizer) and save a checkpoint"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl build``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument(
        "config",
        help="build YAML (see configs/tiny.yaml; a shipped one also by name, e.g. tiny): "
        "llm, vision, volume, tokenizer",
    )
    # nargs="+": argparse cannot give positionals that follow an option to an earlier positional
    # list, so `CONFIG --out DIR k=v` collects `DIR k=v` here and run() splits them.
    parser.add_argument("--out", required=True, nargs="+", metavar="DIR", help="output checkpoint folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty output folder (refused otherwise; written to a staging folder first)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. llm.config.hidden_size=128 vision.connector.depth=1",
    )


def run(args: argparse.Namespace) -> int:
    """Build, save and print a one-line summary.

    Args:
        args: parsed arguments.
    """
    from medvl.build import build_model, load_model_spec, save_checkpoint

    out_dir, overrides = args.out[0], [*args.overrides, *args.out[1:]]
    from medvl.recipes import resolve_config_file

    spec = load_model_spec(resolve_config_file(args.config), overrides)
    model, processor = build_model(spec)
    out = save_checkpoint(model, processor, out_dir, overwrite=args.overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"saved {out}  ({n_params / 1e6:.2f}M parameters; {model.config.num_image_tokens} tokens per image, "
        f"{model.config.num_volume_tokens} per volume)"
    )
    return 0
