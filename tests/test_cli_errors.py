"""The CLI's error rule: one line naming what is wrong, an exit code (2 bad input, 1 other, 130 Ctrl-C),
no traceback unless ``--log-level DEBUG``."""

from __future__ import annotations

import pytest

from medvl.cli import main


def test_log_level_before_the_verb_is_not_taken_for_the_verb(capsys):
    # `medvl --log-level DEBUG score --help` used to parse DEBUG as the verb
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "DEBUG", "score", "--help"])
    assert exc.value.code == 0
    assert "--protocol" in capsys.readouterr().out


def _raising_verb(exc: BaseException):
    def run(args):
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "expected"),
    [
        (ValueError("data.template: invalid choice 'x'; valid: chatml, llama3"), 2, "valid: chatml"),
        (FileNotFoundError(2, "No such file or directory", "/data/missing.png"), 2, "/data/missing.png"),
        (OSError(28, "No space left on device", "/out/model.safetensors"), 1, "/out/model.safetensors"),
        (RuntimeError("boom"), 1, "--log-level DEBUG"),
    ],
)
def test_errors_become_one_line_and_an_exit_code(monkeypatch, capsys, exc, code, expected):
    import medvl.commands.score as score

    monkeypatch.setattr(score, "run", _raising_verb(exc))
    assert main(["score", "--task", "vqa", "--in", "a", "--out", "b"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("medvl score: error: ") and expected in err
    assert len(err.strip().splitlines()) <= 2


def test_data_error_names_record_and_file(monkeypatch, capsys):
    import medvl.commands.score as score
    from medvl.errors import MedVLDataError

    monkeypatch.setattr(score, "run", _raising_verb(MedVLDataError("corrupt PNG", record="q7", path="/d/a.png")))
    assert main(["score", "--task", "vqa", "--in", "a", "--out", "b"]) == 2
    assert "record 'q7', file '/d/a.png': corrupt PNG" in capsys.readouterr().err


def test_debug_log_level_shows_the_traceback(monkeypatch):
    import medvl.commands.score as score

    monkeypatch.setattr(score, "run", _raising_verb(ValueError("bad")))
    with pytest.raises(ValueError, match="bad"):
        main(["--log-level", "DEBUG", "score", "--task", "vqa", "--in", "a", "--out", "b"])


def test_interrupt_exits_130(monkeypatch, capsys):
    import medvl.commands.score as score

    monkeypatch.setattr(score, "run", _raising_verb(KeyboardInterrupt()))
    assert main(["score", "--task", "vqa", "--in", "a", "--out", "b"]) == 130
    assert "interrupted" in capsys.readouterr().err
