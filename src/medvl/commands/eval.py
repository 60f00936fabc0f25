"""``medvl eval MODEL --tasks a,b [--out DIR]``: benchmark a checkpoint (resumable)."""

from __future__ import annotations

import argparse

HELP = "Evaluate a model on benchmark tasks (predictions JSONL, results JSON/markdown/PNG; resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Args:
    parser: the ``eval`` sub-parser.
    """
    parser.add_argument("model", help="medvl checkpoint folder")
    from medvl.eval.tasks import available_tasks

    parser.add_argument("--tasks", required=True, help="comma-separated task names: " + ", ".join(available_tasks()))
    parser.add_argument("--out", default="runs/eval", help="output folder (default runs/eval)")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=DIR", help="release folder of a task")
    parser.add_argument("--data-root", default=None, help="folder with each release under its default name")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept media paths that leave a task's data root (refused by default)",
    )
    parser.add_argument(
        "--protocol",
        action="append",
        default=[],
        metavar="TASK=PROTOCOL",
        help="score a VQA task with another protocol, e.g. slake=llava_med_v1",
    )
    parser.add_argument("--split", default=None, help="split (default: each task's test split)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="override the tasks' generation length")
    parser.add_argument("--bertscore-model", default=None, help="local model folder for BERTScore")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    parser.add_argument(
        "--tokenization",
        default="auto",
        choices=["auto", "ptb", "lowercase_whitespace"],
        help="report tasks: pycocoevalcap tokenisation (auto = PTB when Java is present)",
    )
    parser.add_argument(
        "--clinical",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="report tasks: clinical metric run by its package on a local model folder "
        "(f1_chexbert, radgraph, ratescore; pip install medvl[clinical]; see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--bootstrap-resamples",
        type=int,
        default=1000,
        help="resamples of the bootstrap 95%% intervals of mean-over-items metrics (0: none)",
    )
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the headline table.

    Args:
        args: parsed arguments.
    """
    from medvl.data.records import outside_root_allowed

    with outside_root_allowed(args.allow_outside_root):  # media of the tasks' records must stay in their roots
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    """The body of :func:`run` (the data-root setting applies around it)."""
    from medvl.commands import parse_pairs
    from medvl.eval.runner import EvalConfig, evaluate, markdown_table

    data = parse_pairs(args.data, "--data", "TASK=DIR")
    protocols = parse_pairs(args.protocol, "--protocol", "TASK=PROTOCOL")
    clinical = parse_pairs(args.clinical, "--clinical", "NAME=FOLDER")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    generation = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    cfg = EvalConfig(
        tasks=tasks,
        out_dir=args.out,
        data=data,
        data_root=args.data_root,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        generation=generation,
        protocols=protocols,
        bertscore_model=args.bertscore_model,
        meteor=not args.no_meteor,
        tokenization=args.tokenization,
        progress=not args.no_progress,
        bootstrap_resamples=args.bootstrap_resamples,
        bootstrap_seed=args.bootstrap_seed,
        clinical=clinical,
    )
    results = evaluate(cfg, model=args.model)
    print(markdown_table(results), end="")
    print(f"wrote {args.out}/results.json, results.md, results.png, predictions/, scores/")
    return 0
