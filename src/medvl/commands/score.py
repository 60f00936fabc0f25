"""``medvl score``: score a prediction file made anywhere (VQA protocols or report metrics)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "Score predictions (JSONL) with a named VQA protocol or the report-generation metrics."

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Args:
    parser: the ``score`` sub-parser.
    """
    parser.add_argument("--task", required=True, choices=["vqa", "report"], help="vqa or report")
    parser.add_argument(
        "--protocol",
        default=None,
        help="VQA protocol: llava_med_v1, exact_norm, medevalkit, m3d, mcq, uni_med "
        "(required for --task vqa; report scoring has the one protocol 'report')",
    )
    parser.add_argument("--in", dest="inp", required=True, help="predictions JSONL")
    parser.add_argument("--out", required=True, help="scores JSON to write")
    parser.add_argument(
        "--candidates",
        default=None,
        help="llava_med_v1: LLaVA-Med train_open_answers.json for the candidate open accuracy",
    )
    parser.add_argument(
        "--reference-prf-mixup",
        action="store_true",
        help="medevalkit: reproduce MedEvalKit's precision/recall/F1 key mix-up",
    )
    parser.add_argument("--bertscore-model", default=None, help="local model folder for BERTScore (m3d, report)")
    parser.add_argument(
        "--tokenization",
        default="auto",
        choices=["auto", "ptb", "lowercase_whitespace"],
        help="report: pycocoevalcap tokenisation (auto = PTB when Java is present)",
    )
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java/WordNet process)")
    parser.add_argument("--lang", default="auto", choices=["auto", "en", "zh"], help="report: language of the texts")
    parser.add_argument(
        "--clinical",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="report: clinical metric run by its package on a local model folder: f1_chexbert, radgraph, "
        "ratescore (pip install medvl[clinical]; folder layouts in docs/benchmarks.md)",
    )


def _protocol_options(args: argparse.Namespace) -> dict:
    opts: dict = {}
    if args.protocol == "llava_med_v1" and args.candidates:
        data = json.loads(Path(args.candidates).read_text(encoding="utf-8"))
        # LLaVA-Med's train_open_answers.json is {"0": [answers]}; a bare list is accepted too
        cands = data.get("0") if isinstance(data, dict) else data
        if not isinstance(cands, list):
            raise ValueError(f'--candidates {args.candidates}: expected a list or {{"0": [...]}} of answers')
        opts["candidates"] = cands
    if args.protocol == "medevalkit":
        opts["reference_prf_mixup"] = args.reference_prf_mixup
    if args.protocol == "m3d":
        opts["bertscore_model"] = args.bertscore_model
        opts["with_meteor"] = not args.no_meteor
    return opts


def run(args: argparse.Namespace) -> int:
    """Score ``--in`` and write ``--out``; prints the aggregate table.

    Args:
        args: parsed arguments.
    """
    from medvl.eval.predictions import read_report_predictions, read_vqa_predictions

    if args.task == "vqa":
        from medvl.eval.vqa import get_protocol

        if not args.protocol:
            raise ValueError(
                "--task vqa needs --protocol (valid: exact_norm, llava_med_v1, m3d, mcq, medevalkit, uni_med)"
            )
        protocol = get_protocol(args.protocol)  # unknown names fail before reading the file
        items = read_vqa_predictions(args.inp)
        result = protocol(items, **_protocol_options(args))
    else:
        from medvl.eval.report_metrics import score_reports

        if args.protocol not in (None, "report"):
            raise ValueError(f"--task report has the single protocol 'report'; got --protocol {args.protocol!r}")
        from medvl.commands import parse_pairs

        clinical = parse_pairs(args.clinical, "--clinical", "NAME=FOLDER")
        ids, preds, refs = read_report_predictions(args.inp)
        result = score_reports(
            ids,
            preds,
            refs,
            tokenization=args.tokenization,
            meteor=not args.no_meteor,
            lang=args.lang,
            bertscore_model=args.bertscore_model,
            clinical=clinical,
        )
    out = {"task": args.task, "input": str(args.inp), **result.to_dict()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"protocol: {result.protocol}  items: {len(result.per_item)}")
    for key, value in result.aggregate.items():
        print(f"  {key:28s} {value:.4f}" if isinstance(value, float) else f"  {key:28s} {value}")
    print(f"wrote {args.out}")
    return 0
