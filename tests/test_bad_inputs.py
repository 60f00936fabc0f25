"""Every kind of bad input in ``tests/bad_inputs.py`` through every verb it concerns.

For each case: the exit code (2 bad input, 1 ``data check`` found problems), a message naming the
record / file and the problem, no Python traceback, and no file that existed before the run changed
(neither the inputs nor earlier outputs, nor the shared tiny checkpoint). Runs in-process
(``medvl.cli.main``), one tiny model for all cases.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from medvl.cli import main
from tests.bad_inputs import KINDS, VERBS_OF

CASES = [(name, verb) for name in KINDS for verb in VERBS_OF.get(name, ("infer",))]


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_the_corpus_is_large_enough():
    groups = {group for group, _ in KINDS.values()}
    assert len(KINDS) >= 60 and {"media", "records", "configs", "checkpoints", "cli", "outputs"} <= groups


@pytest.fixture(scope="module")
def model_snapshot(tiny_model_dir):
    return _snapshot(Path(tiny_model_dir))


@pytest.mark.parametrize(("kind", "verb"), CASES, ids=[f"{k}-{v.replace(' ', '_')}" for k, v in CASES])
def test_bad_input(kind, verb, tmp_path, tiny_model_dir, model_snapshot, capsys, caplog):
    _group, make = KINDS[kind]
    case = make(tmp_path, Path(tiny_model_dir))[verb]
    before = _snapshot(tmp_path)
    caplog.set_level(logging.WARNING)
    try:
        code = main(case.argv)
    except SystemExit as exc:  # argparse's own refusals (usage line + message, exit 2)
        code = exc.code
    captured = capsys.readouterr()
    text = captured.err + captured.out + caplog.text
    assert code == case.code, text[-2000:]
    for name in case.names:
        assert name in text, f"{name!r} not in the message:\n{text[-2000:]}"
    assert "Traceback" not in text
    after = _snapshot(tmp_path)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files that existed before were changed or lost: {changed}"
    assert _snapshot(Path(tiny_model_dir)) == model_snapshot
