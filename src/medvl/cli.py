"""The ``medvl`` command line: ``medvl VERB [args]``.

Each verb lives in ``medvl/commands/<verb>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verbs are imported lazily so that
``medvl --help`` and light verbs such as ``score`` do not pay for importing torch.

Errors: a verb that fails prints one line ``medvl VERB: error: what (record, file)`` to stderr, never
a traceback, and exits 2 for bad input (data, config, arguments, paths) or 1 for anything else
(130 on Ctrl-C). ``medvl --log-level DEBUG VERB ...`` lets the exception through with its traceback.
"""

from __future__ import annotations

import argparse
import errno
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
    try:
        return int(args._run(args) or 0)
    except Exception as err:  # noqa: BLE001 - the CLI's one place that turns errors into messages
        if _debug_enabled(args.log_level):
            raise
        code, message = classify_error(err)
        print(f"medvl {args.verb}: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if _debug_enabled(args.log_level):
            raise
        print(f"medvl {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------- errors -> one line + exit code
# exit codes: 2 = bad input (data, config, arguments, paths), 1 = anything else that failed
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
# OSErrors that say "the path you gave is wrong", as opposed to the machine failing (disk full, I/O)
_BAD_PATH_ERRNOS = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTEMPTY,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def _library_load_errors() -> tuple[type[BaseException], ...]:
    """Exception types that third-party readers raise for a malformed file (imported lazily)."""
    import yaml
    from safetensors import SafetensorError

    return (SafetensorError, yaml.YAMLError)


def classify_error(err: BaseException) -> tuple[int, str]:
    """Exit code and one-line message for an exception that ended a verb.

    Args:
        err: the exception.
    """
    from medvl.errors import MedVLDataError

    text = str(err).strip() or type(err).__name__
    if isinstance(err, MedVLDataError):
        return EXIT_BAD_INPUT, text
    if isinstance(err, OSError):
        # str(OSError) is "[Errno N] what: 'file'"; keep it, it names the file
        if err.errno in _BAD_PATH_ERRNOS or type(err) in (
            FileNotFoundError,
            FileExistsError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
        ):
            return EXIT_BAD_INPUT, text
        if err.errno == errno.ENOSPC:
            return EXIT_FAILURE, f"{text} (free some space or choose another output folder)"
        return EXIT_FAILURE, text
    if isinstance(err, ValueError):  # config choices, JSON/Unicode decoding, argument values
        return EXIT_BAD_INPUT, text
    if isinstance(err, _library_load_errors()):
        if "No space left" in text:
            return EXIT_FAILURE, f"{type(err).__name__}: {text} (free some space or choose another output folder)"
        return EXIT_BAD_INPUT, f"{type(err).__name__}: {text}"
    if isinstance(err, ImportError):
        return EXIT_FAILURE, f"{text} (a missing optional dependency: see the installation notes in README.md)"
    return EXIT_FAILURE, (
        f"unexpected {type(err).__name__}: {text}; rerun with --log-level DEBUG for the traceback "
        "and please report it if the input looks right"
    )


def _debug_enabled(level: str | None) -> bool:
    import logging
    import os

    level = level or os.environ.get("MEDVL_LOG_LEVEL", "")
    return str(level).upper() in ("DEBUG", str(logging.DEBUG))


if __name__ == "__main__":
    sys.exit(main())
