"""The verbs of the ``medvl`` command line, one module each (see :mod:`medvl.cli`)."""

from __future__ import annotations


def parse_pairs(specs: list[str], flag: str, what: str) -> dict[str, str]:
    """``["a=x", "b=y"]`` -> ``{"a": "x", "b": "y"}`` for repeatable ``--flag NAME=VALUE`` options.

    Args:
        specs: the option's values as given.
        flag: the option's name, for the error (e.g. ``--data``).
        what: the expected form, for the error (e.g. ``TASK=DIR``).
    """
    pairs = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} expects {what}, got {spec!r}")
        pairs[name] = value
    return pairs
