"""``medvl quickstart``: synthetic data -> small model from scratch -> train -> evaluate (see medvl.tools.quickstart)."""

from __future__ import annotations

import argparse
import json

HELP = "make synthetic data, train a small model from scratch, evaluate it against a blind baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl quickstart``.

    Args:
        parser: the sub-command parser to fill.
    """
    parser.add_argument("--kind", choices=("2d", "3d"), default="2d", help="2D radiographs or 3D CT volumes")
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--n", type=int, default=None, help="synthetic cases (default: the recipe's)")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per training run (default: the recipe's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; on a busy machine 1 can be much faster)",
    )
    parser.add_argument("--no-blind", action="store_true", help="skip the blind (blank image) baseline")


def run(args: argparse.Namespace) -> int:
    """Run ``medvl quickstart``.

    Args:
        args: parsed arguments (see add_arguments).
    """
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from medvl.tools.quickstart.evaluation import eval_commands
    from medvl.tools.quickstart.pipeline import run_quickstart
    from medvl.tools.quickstart.report import quickstart_table

    metrics = run_quickstart(
        args.kind, args.out, n_cases=args.n, max_steps=args.steps, seed=args.seed, blind=not args.no_blind
    )
    print(quickstart_table(metrics))
    ex = metrics["example"]
    print(f"\nexample ({ex['id']}):\n  Q: {ex['question']}\n  A: {ex['prediction']}\n  reference: {ex['reference']}")
    print(
        f"\nwall time {metrics['wall_s']:.0f} s; metrics in {args.out}/metrics.json, model in {args.out}/model, "
        f"loss curve in {args.out}/loss_curve.png"
    )
    for name, command in eval_commands(args.out, metrics).items():
        print(f"{name} numbers again: {command}")
    print(
        json.dumps(
            {"closed_accuracy": metrics["closed_accuracy"], "blind_closed_accuracy": metrics["blind_closed_accuracy"]}
        )
    )
    return 0
