"""The ``medvl`` command line: ``medvl VERB [args]``.

Each verb lives in ``medvl/commands/<verb>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verbs are imported lazily so that
``medvl --help`` and light verbs such as ``score`` do not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medvl.utils.logging import setup_logging

# verb -> module under medvl.commands (order is the order shown in --help). Every verb listed here
# must exist: tests/test_cli.py imports each module and checks its HELP/add_arguments/run.
VERBS: dict[str, str] = {
    "quickstart": "quickstart",
    "build": "build",
    "train": "train",
    "infer": "infer",
    "chat": "chat",
    "eval": "eval",
    "score": "score",
    "demo": "demo",
    "serve": "serve",
    "export": "export",
    "convert": "convert",
    "data": "data",
    "bench": "bench",
}


def _requested_verb(argv: list[str]) -> str | None:
    """The first positional argument, skipping the value of ``--log-level VALUE``."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``medvl`` console script.

    Args:
        argv: arguments without the program name (defaults to ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="medvl", description="Medical vision-language models.")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    # Only the requested verb's module is imported; the others get a placeholder help line.
    requested = _requested_verb(argv)
    for verb, module in VERBS.items():
        if verb == requested:
            mod = importlib.import_module(f"medvl.commands.{module}")
            p = sub.add_parser(verb, help=getattr(mod, "HELP", None), description=getattr(mod, "HELP", None))
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(verb, help=f"(medvl {verb} --help)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
