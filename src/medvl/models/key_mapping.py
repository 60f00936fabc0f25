"""Rename a state dict by a table of rows, as transformers' ``convert_*_to_hf.py`` scripts do.

REMOTE-CODE SAFE: standard library only (copied into checkpoints with the modules that use it).

A table is a list of ``(regex, target)`` rows. The first row whose regex matches a key WHOLE renames
it: ``target`` is a ``re`` template (``\\1`` refers to the regex's groups), or None to drop the key on
purpose (a part the target model does not have, e.g. a CLIP's text encoder). Keys no row matches
are returned, so that each caller refuses them with its own error naming them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

Row = tuple[str, str | None]
Value = TypeVar("Value")


def rename_keys(state_dict: Mapping[str, Value], rows: list[Row]) -> tuple[dict[str, Value], list[str]]:
    """Rename every key by the first row whose regex matches it whole.

    Args:
        state_dict: the source weights (name -> tensor).
        rows: ``(regex, target)`` pairs; target is a ``re`` template or None to drop the key.

    Returns:
        ``(renamed, unmapped)``: the renamed weights, and the source keys no row matches.
    """
    compiled = [(re.compile(pattern), target) for pattern, target in rows]
    renamed: dict[str, Value] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        for pattern, target in compiled:
            match = pattern.fullmatch(key)
            if match is not None:
                if target is not None:
                    renamed[match.expand(target)] = value
                break
        else:
            unmapped.append(key)
    return renamed, unmapped
