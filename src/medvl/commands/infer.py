"""``medvl infer MODEL --data FILE --out preds.jsonl``: batch inference over a dataset file.

Reads native or MedM-VL/LLaVA records; the prompt is each record's conversation up to (excluding)
a trailing assistant turn (for MedM-VL inference files: the last human turn), rendered with the
model's own chat template. Writes one JSON line per sample: ``id``, ``prediction``, ``reference``
(``answer`` of MedM-VL files, else the trailing assistant turn, else null).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "batch inference: generate answers for a dataset file and write JSONL predictions"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl infer``.

    Args:
        parser: the verb's sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    parser.add_argument("--data", required=True, help="records file (native or MedM-VL/LLaVA JSON/JSONL)")
    parser.add_argument("--root", help="folder media paths are relative to (default: the data file's folder)")
    parser.add_argument("--out", required=True, help="output JSONL (id, prediction, reference)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept media paths that leave the data root (refused by default)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, help="sampling temperature (with --do-sample)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (with --do-sample)")
    parser.add_argument("--num-beams", type=int, help="beam search width")
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--limit", type=int, help="only the first N records")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: float32 on CPU")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def generation_options(args: argparse.Namespace) -> dict:
    """Optional generation settings given on the command line (shared with ``medvl chat``).

    Args:
        args: parsed arguments.
    """
    names = {"temperature": "temperature", "top_p": "top_p", "num_beams": "num_beams",
             "repetition_penalty": "repetition_penalty"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def run(args: argparse.Namespace) -> int:
    """Generate for every record and write the predictions.

    Args:
        args: parsed arguments.
    """
    from medvl.data.records import load_records
    from medvl.errors import MedVLDataError
    from medvl.inference import generate, load_model, reference_of

    try:
        records = load_records(args.data, root=args.root, allow_outside_root=args.allow_outside_root)
    except (MedVLDataError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    if args.limit is not None:
        records = records[: args.limit]
    model, processor = load_model(args.model, dtype=args.dtype, device=args.device)
    try:
        predictions = generate(
            model,
            processor,
            records,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.min_new_tokens,
            do_sample=args.do_sample,
            progress=not args.no_progress,
            **generation_options(args),
        )
    except MedVLDataError as err:
        logger.error("%s", err)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for rec, pred in zip(records, predictions):
            f.write(json.dumps({"id": rec.id, "prediction": pred, "reference": reference_of(rec)}, ensure_ascii=False))
            f.write("\n")
    print(f"wrote {len(records)} predictions to {out}")
    return 0
