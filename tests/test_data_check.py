"""``medvl data check``: every kind of problem is found, counted per source, and sets the exit code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medvl.cli import main
from medvl.data.check import check_data


def _msg(q, a="ok"):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def make_bad_dataset(tmp_path):
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "ok.png").read_bytes()[:40])
    vol = np.zeros((16, 64, 64), np.float32)
    np.save(tmp_path / "ok.npy", vol)
    vol[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", vol)
    lines = [
        json.dumps({"id": "good", "messages": _msg("<image> what?"), "images": ["ok.png"]}),
        json.dumps({"id": "good-vol", "messages": _msg("<volume> what?"), "volumes": ["ok.npy"]}),
        json.dumps({"id": "again", "messages": _msg("<image> same file"), "images": ["ok.png"]}),
        json.dumps({"id": "again", "messages": _msg("same id")}),
        json.dumps({"id": "text", "messages": _msg("a long question " * 30)}),
        json.dumps({"id": "missing", "messages": _msg("<image>"), "images": ["nope.png"]}),
        json.dumps({"id": "trunc", "messages": _msg("<image>"), "images": ["trunc.png"]}),
        json.dumps({"id": "nan", "messages": _msg("<volume>"), "volumes": ["nan.npy"]}),
        json.dumps({"id": "more-markers", "messages": _msg("<image><image>"), "images": ["ok.png"]}),
        json.dumps({"id": "empty", "messages": _msg("q", "")}),
        json.dumps({"id": "role", "messages": [{"role": "doctor", "content": "x"}]}),
        "{not json",
    ]
    raw = "\n".join(lines).encode() + b'\n{"id": "latin", "messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    (tmp_path / "d.jsonl").write_bytes(raw)
    return tmp_path / "d.jsonl"


def test_check_counts_every_problem(tmp_path, tiny_processor):
    path = make_bad_dataset(tmp_path)
    report = check_data(path, tiny_processor, max_length=60, progress=False)
    (src,) = report.sources
    assert src.records == 13
    assert src.problems == {
        "undecodable": 1,
        "invalid_json": 1,
        "marker_mismatch": 1,
        "empty_answer": 1,
        "invalid_record": 1,  # unknown role
        "outside_root": 0,
        "duplicate_id": 1,
        "missing_media": 1,
        "unreadable_media": 2,  # truncated PNG, NaN volume
        "overlong": 1,  # the long text question
    }
    # media references of the records that parsed; ok.png is read once but found twice
    assert src.images == 4 and src.volumes == 2 and src.media_found == 3
    kinds = {k for k, _ in report.issues}
    assert kinds == {k for k, n in src.problems.items() if n}
    text = "\n".join(m for _, m in report.issues)
    assert "record 'missing'" in text and "nope.png" in text
    assert "record 'nan'" in text and "nan.npy" in text
    assert "d.jsonl:12" in text and "line 12 is not valid JSON" in text
    assert "d.jsonl:13" in text and "invalid UTF-8" in text
    assert "record 'again'" in text and "duplicate record id (first seen as d.jsonl:3)" in text
    overlong = [m for k, m in report.issues if k == "overlong"]
    assert any("record 'text'" in m for m in overlong)
    assert not report.ok
    assert len(src.tokens) == src.records - 5  # every record that parsed got a token count


def test_check_token_counts_include_media(tmp_path, tiny_processor):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    rows = [{"id": "t", "messages": _msg("hi")}, {"id": "i", "messages": _msg("<image>hi"), "images": ["a.png"]}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    report = check_data(tmp_path / "d.json", tiny_processor, progress=False)
    text_only, with_image = report.sources[0].tokens
    # the marker is one token of the text; the model sees num_image_tokens placeholders instead
    assert with_image - text_only == tiny_processor.num_image_tokens
    assert report.ok


def test_cli_exit_codes_and_per_source_report(tmp_path, tiny_model_dir, capsys):
    bad = make_bad_dataset(tmp_path)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"id": "g", "messages": _msg("<image> q"), "images": ["ok.png"]}]))
    assert main(["data", "check", str(good), "--model", str(tiny_model_dir)]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    reg = tmp_path / "reg.yaml"
    reg.write_text(f"datasets:\n  clean: {{path: {good}}}\n  dirty: {{path: {bad}, split: test}}\n")
    out_json = tmp_path / "report.json"
    assert main(["data", "check", str(reg), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "clean" in out and "dirty" in out and "problem(s)" in out
    data = json.loads(out_json.read_text())
    assert [s["name"] for s in data["sources"]] == ["clean", "dirty"]
    assert data["sources"][0]["records"] == 1 and data["totals"]["missing_media"] == 1 and not data["ok"]


def test_cli_synth_then_check(tmp_path, capsys):
    """`medvl data synth` (medvl.tools.synth) is wired in, and its output passes the checker."""
    assert main(["data", "synth", "--kind", "2d", "--n", "3", "--size", "64", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "s" / "train.jsonl")]) == 0
    assert "OK: no problems found" in capsys.readouterr().out


def test_check_reports_media_outside_the_root(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "secret.png")
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(data / "ok.png")
    rows = [
        {"id": "ok", "messages": _msg("<image> q"), "images": ["ok.png"]},
        {"id": "escape", "messages": _msg("<image> q"), "images": ["../secret.png"]},
        {"id": "abs", "messages": _msg("<image> q"), "images": [str(tmp_path / "secret.png")]},
    ]
    f = data / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = check_data(f, progress=False)
    assert report.totals()["outside_root"] == 2 and not report.ok
    assert all("outside the data root" in m for k, m in report.issues if k == "outside_root")
    assert main(["data", "check", str(f)]) == 1
    out = capsys.readouterr().out
    assert "[outside_root] record 'escape'" in out and "OK: no problems" not in out
    assert main(["data", "check", str(f), "--allow-outside-root"]) == 0


def test_check_reports_an_empty_file_instead_of_ok(tmp_path, capsys):
    for name, text in (("empty.jsonl", ""), ("blank.json", "\n\n"), ("array.json", "[]")):
        f = tmp_path / name
        f.write_text(text)
        report = check_data(f, progress=False)
        assert not report.ok and "holds no records" in report.issues[0][1] and name in report.issues[0][1]
        assert main(["data", "check", str(f)]) == 1
        assert "OK: no problems" not in capsys.readouterr().out


def test_check_with_model_reports_prompts_longer_than_its_positions(tmp_path, tiny_model_dir, capsys):
    rows = [
        {"id": "short", "messages": _msg("a short question")},
        {"id": "huge", "messages": _msg("word " * 2100)},
    ]  # tiny model: 2048 positions
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["data", "check", str(f), "--model", str(tiny_model_dir)]) == 1
    out = capsys.readouterr().out
    assert "[overlong] record 'huge'" in out and "record 'short'" not in out and "max_length 2048" in out


def test_degenerate_media_are_errors_and_small_ones_warnings(tmp_path, tiny_processor):
    Image.fromarray(np.full((1, 1), 9, np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "small.png")
    np.save(tmp_path / "voxel.npy", np.zeros((1, 1, 1), np.float32))
    np.save(tmp_path / "slice.npy", np.zeros((1, 64, 64), np.float32))
    np.save(tmp_path / "thin.npy", np.zeros((3, 64, 64), np.float32))
    rows = [
        {"id": "dot", "messages": _msg("<image> q"), "images": ["dot.png"]},
        {"id": "small", "messages": _msg("<image> q"), "images": ["small.png"]},
        {"id": "voxel", "messages": _msg("<volume> q"), "volumes": ["voxel.npy"]},
        {"id": "slice", "messages": _msg("<volume> q"), "volumes": ["slice.npy"]},
        {"id": "thin", "messages": _msg("<volume> q"), "volumes": ["thin.npy"]},
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = check_data(f, progress=False)
    errors = {m.split("'")[1]: m for k, m in report.issues}
    assert set(errors) == {"dot", "voxel", "slice"} and all("degenerate" in m for m in errors.values())
    assert "1x1 pixels" in errors["dot"] and "(1, 1, 1)" in errors["voxel"] and "(1, 64, 64)" in errors["slice"]
    warned = {m.split("'")[1] for k, m in report.warnings}
    assert warned == {"small", "thin"} and report.totals()["unreadable_media"] == 3
    assert "2 warning(s)" in report.format()
    # the training dataset refuses the degenerate ones naming record and file (it would feed a flat tensor)
    from medvl.data.dataset import ConversationDataset
    from medvl.data.records import load_records
    from medvl.errors import MedVLDataError

    ds = ConversationDataset(load_records(f), tiny_processor)
    for i, rid in enumerate(["dot", "small", "voxel", "slice", "thin"]):
        if rid in errors:
            with pytest.raises(MedVLDataError, match=f"record '{rid}'.*degenerate"):
                ds[i]
        else:
            assert ds[i]["id"] == rid


def test_a_custom_image_loader_is_called_with_the_path_only(tmp_path):
    # as in training (ConversationDataset): the record's window applies to medvl's own loader; a custom
    # loader is path -> image (it used to receive window=..., and such records were reported unreadable)
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "ok.png")
    row = {"id": "w", "messages": _msg("<image> what?"), "images": ["ok.png"], "window": [40, 400]}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    seen = []

    def loader(path):
        seen.append(path)
        return Image.open(path).convert("RGB")

    report = check_data(tmp_path / "d.jsonl", image_loader=loader, progress=False)
    assert seen == [str(tmp_path / "ok.png")]
    assert report.sources[0].valid_records == 1 and report.issues == []
    # medvl's loader applies the window (a fixed window is valid for an 8-bit PNG)
    assert check_data(tmp_path / "d.jsonl", progress=False).sources[0].valid_records == 1
