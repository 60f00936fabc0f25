"""Tests for the ``medvl`` dispatcher."""

from __future__ import annotations

import pytest

from medvl.cli import VERBS, main


def test_unknown_verb_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-verb"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "VERB" in out
    # every verb whose command module exists is offered
    import importlib.util

    for verb, module in VERBS.items():
        if importlib.util.find_spec(f"medvl.commands.{module}") is not None:
            assert verb in out
