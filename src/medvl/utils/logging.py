"""Logging set-up for the CLI (library code only ever calls ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int | None = None) -> None:
    """Configure the root logger once for command-line use.

    Args:
        level: a logging level name or number; defaults to ``$MEDVL_LOG_LEVEL`` or INFO.
    """
    level = level or os.environ.get("MEDVL_LOG_LEVEL", "INFO")
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # transformers is chatty at INFO; keep its warnings only.
    logging.getLogger("transformers").setLevel(max(logging.WARNING, logging.getLogger().level))
