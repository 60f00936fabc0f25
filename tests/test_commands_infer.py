"""``medvl infer``: per-batch appends that survive a bad record, resume, and refusal of unsafe outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvl.cli import main


def _dataset(tmp_path: Path, n: int = 4, missing_at: int | None = None) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(data / "a.png")
    rows = []
    for i in range(n):
        img = "missing.png" if i == missing_at else "a.png"
        rows.append(
            {
                "id": f"q{i}",
                "messages": [
                    {"role": "user", "content": f"<image> question {i}?"},
                    {"role": "assistant", "content": f"answer {i}"},
                ],
                "images": [img],
            }
        )
    f = data / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _infer(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "infer",
            str(model),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            "--batch-size",
            "1",
            "--no-progress",
            *extra,
        ]
    )


def test_bad_record_keeps_earlier_predictions_and_rerun_continues(tiny_model_dir, tmp_path, capsys):
    data = _dataset(tmp_path, missing_at=2)
    out = tmp_path / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out) == 2
    err = capsys.readouterr().err
    assert "record 'q2'" in err and "missing.png" in err and "Traceback" not in err
    first = out.read_text().splitlines()
    assert [json.loads(x)["id"] for x in first] == ["q0", "q1"]  # flushed per batch, not lost
    # the user fixes the file; the same command continues after q1 and keeps q0, q1 byte for byte
    (data.parent / "missing.png").write_bytes((data.parent / "a.png").read_bytes())
    assert _infer(tiny_model_dir, data, out) == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == first and [json.loads(x)["id"] for x in lines] == ["q0", "q1", "q2", "q3"]
    # a fresh run from scratch writes the same predictions (greedy), so resuming changed nothing
    fresh = tmp_path / "fresh.jsonl"
    assert _infer(tiny_model_dir, data, fresh) == 0
    assert fresh.read_text() == out.read_text()


def test_cut_last_line_is_regenerated(tiny_model_dir, tmp_path):
    data = _dataset(tmp_path, n=3)
    out = tmp_path / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out) == 0
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # Ctrl-C / full disk in the middle of line 2
    assert _infer(tiny_model_dir, data, out) == 0
    assert out.read_text() == full


def test_other_settings_or_model_are_not_mixed_in(tiny_model_dir, tmp_path, capsys):
    data = _dataset(tmp_path, n=2)
    out = tmp_path / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out) == 0
    before = out.read_text()
    assert _infer(tiny_model_dir, data, out, "--max-new-tokens", "5") == 2
    assert "another model, other generation settings" in capsys.readouterr().err
    assert out.read_text() == before


@pytest.mark.parametrize("where", ["input", "checkpoint"])
def test_output_over_an_input_is_refused(tiny_model_dir, tmp_path, capsys, where):
    data = _dataset(tmp_path, n=1)
    before = data.read_bytes()
    out = data if where == "input" else Path(tiny_model_dir) / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and ("choose another --out" in err or "outside it" in err)
    assert data.read_bytes() == before and not (Path(tiny_model_dir) / "preds.jsonl").exists()


def _long_prompt_data(tmp_path: Path) -> Path:
    f = _dataset(tmp_path, n=3)
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    rows[1]["messages"][0]["content"] = "<image> " + "word " * 2100  # tiny model: 2048 positions
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_overlong_prompt_is_an_error_naming_the_record(tiny_model_dir, tmp_path, capsys):
    data = _long_prompt_data(tmp_path)
    out = tmp_path / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out) == 2
    err = capsys.readouterr().err
    assert "record 'q1'" in err and str(data) in err and "2048 positions" in err and "Traceback" not in err
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["q0"]


def test_overlong_prompt_skipped_and_counted_when_asked(tiny_model_dir, tmp_path, capsys):
    data = _long_prompt_data(tmp_path)
    out = tmp_path / "preds.jsonl"
    assert _infer(tiny_model_dir, data, out, "--on-overlong", "skip", "--batch-size", "3") == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    assert rows[1]["prediction"] is None and rows[1]["skipped"] == "overlong"
    assert isinstance(rows[0]["prediction"], str) and isinstance(rows[2]["prediction"], str)
    assert "1 over-long prompts skipped" in capsys.readouterr().out


def test_chat_refuses_an_overlong_prompt(tiny_model_dir, capsys, caplog):
    assert main(["chat", str(tiny_model_dir), "--prompt", "word " * 2100, "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err + caplog.text  # the verb logs the error (stderr in a terminal)
    assert "2048 positions" in err and "Traceback" not in err


def test_window_from_the_command_line_or_the_record_reaches_the_image_loader(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.array([[0, 500], [1000, 4000]], dtype=np.float32), mode="F").save(data / "f.tif")
    row = {"id": "f", "messages": [{"role": "user", "content": "<image> ?"}], "images": ["f.tif"]}
    (data / "d.jsonl").write_text(json.dumps(row) + "\n")
    assert _infer(tiny_model_dir, data / "d.jsonl", tmp_path / "a.jsonl") == 2  # float TIFF: no fixed scale
    assert "f.tif" in capsys.readouterr().err
    assert _infer(tiny_model_dir, data / "d.jsonl", tmp_path / "b.jsonl", "--window", "500,1000") == 0
    (data / "e.jsonl").write_text(json.dumps({**row, "window": "minmax"}) + "\n")
    assert _infer(tiny_model_dir, data / "e.jsonl", tmp_path / "c.jsonl") == 0
