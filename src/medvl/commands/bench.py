"""``medvl bench [--suite NAME,...] [--out results.json] [--quick]``: measured throughput on this machine.

Reports tokens/s, volumes/s, ratios (packed/padded, batched/single, cached/raw) and fractions of this
machine's limits measured in the same run (matmul peak, memory bandwidth). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "measure throughput (training, generation, volume preprocessing) as ratios and fractions of this machine's peak"

logger = logging.getLogger(__name__)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl bench``.

    Args:
        parser: the verb's sub-parser.
    """
    from medvl.tools.bench.sizes import DEFAULT_SUITES, SUITES

    parser.add_argument(
        "--suite",
        type=_names,
        default=list(DEFAULT_SUITES),
        metavar="NAME,...",
        help=f"suites to run, comma-separated, from: {', '.join(SUITES)} (default: "
        f"{', '.join(DEFAULT_SUITES)}; workloads = the MedM-VL workloads W2D, W3D, I2D, "
        "minutes; machine always runs, the others' fractions refer to it)",
    )
    parser.add_argument("--out", default=None, metavar="results.json", help="write the results as JSON here")
    parser.add_argument(
        "--quick", action="store_true", help="toy sizes (seconds): checks the plumbing, not the machine"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (best reported)")
    parser.add_argument(
        "--threads",
        type=_ints,
        default=None,
        metavar="N,...",
        help="also measure the matmul peak at these torch thread counts (e.g. 1,2)",
    )
    parser.add_argument("--workdir", default=None, help="folder for the synthetic CT files (default: temporary)")


def run(args: argparse.Namespace) -> int:
    """Run the suites, print the table, write the JSON.

    Args:
        args: parsed arguments.
    """
    from dataclasses import replace

    from medvl.tools.bench.run import run_benchmarks
    from medvl.tools.bench.sizes import BenchSizes
    from medvl.tools.bench.table import format_bench_table

    sizes = BenchSizes.quick() if args.quick else BenchSizes.full()
    if args.repeats is not None:
        if args.repeats < 1:
            logger.error("--repeats must be >= 1, got %d", args.repeats)
            return 2
        sizes = replace(sizes, repeats=args.repeats)
    try:
        results = run_benchmarks(args.suite, quick=args.quick, sizes=sizes, threads=args.threads, workdir=args.workdir)
    except ValueError as err:
        logger.error("%s", err)
        return 2
    print(format_bench_table(results))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0
