"""Output safety: fresh output folders, outputs over inputs, model fingerprints."""

from __future__ import annotations

import shutil

import pytest

from medvl.cli import main
from medvl.utils.paths import fresh_output_dir, model_fingerprint, refuse_output_over_inputs, settings_fingerprint
from tests.conftest import TINY_YAML


def test_fresh_output_dir_refuses_non_empty_and_keeps_the_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty \\(notes.txt\\).*--overwrite"):
        with fresh_output_dir(out):
            pytest.fail("must refuse before yielding")
    assert (out / "notes.txt").read_text() == "mine"


def test_fresh_output_dir_appears_only_when_complete(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with fresh_output_dir(out) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert not out.exists() and not list(tmp_path.iterdir())  # no staging folder left either
    empty = tmp_path / "empty"
    empty.mkdir()
    with fresh_output_dir(empty) as staging:
        assert staging != empty and not (empty / "a").exists()
        (staging / "a").write_text("1")
    assert (empty / "a").read_text() == "1"
    with fresh_output_dir(empty, overwrite=True) as staging:  # replaced as a whole
        (staging / "b").write_text("2")
    assert sorted(p.name for p in empty.iterdir()) == ["b"]


def test_output_over_inputs(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    for out in (src, src / "sub", tmp_path):
        with pytest.raises(ValueError, match="--out"):
            refuse_output_over_inputs(out, folders=[src])
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(ValueError):
        refuse_output_over_inputs(tmp_path / "link" / "x", folders=[src])  # symlinks resolved
    refuse_output_over_inputs(tmp_path / "other", folders=[src])
    with pytest.raises(ValueError, match="is the input file"):
        refuse_output_over_inputs(tmp_path / "." / "d.jsonl", inputs=[tmp_path / "d.jsonl"])
    with pytest.raises(ValueError, match="inside the folder"):  # even with overwrite, never the source
        with fresh_output_dir(src, overwrite=True, reads=[src]):
            pytest.fail("must refuse before yielding")
    assert src.is_dir()


def test_model_fingerprint_follows_content_not_path(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"x": 1}')
    (a / "model.safetensors").write_bytes(bytes(3 << 20))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert model_fingerprint(a) == model_fingerprint(b)
    raw = bytearray((b / "model.safetensors").read_bytes())
    raw[len(raw) // 2] = 1  # one byte in the middle (a LoRA merge may touch only middle tensors)
    (b / "model.safetensors").write_bytes(bytes(raw))
    assert model_fingerprint(a) != model_fingerprint(b)
    (b / "model.safetensors").write_bytes(bytes(3 << 20))
    (b / "config.json").write_text('{"x": 2}')
    assert model_fingerprint(a) != model_fingerprint(b)
    assert settings_fingerprint(a=1, b=[2]) == settings_fingerprint(b=[2], a=1) != settings_fingerprint(a=2, b=[2])


def test_build_export_refuse_used_targets(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("do not delete")
    yaml = str(TINY_YAML)
    assert main(["build", yaml, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["build", yaml, "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    before = sorted(p.name for p in out.iterdir())
    # export onto its own source is refused even with --overwrite; the source is untouched
    assert main(["export", str(out), "--as-llava", str(out), "--overwrite"]) == 2
    assert "folder" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    # a refused export (volume model) leaves no half-written target
    assert main(["export", str(tiny_model_dir), "--as-llava", str(tmp_path / "llava")]) == 2
    assert not (tmp_path / "llava").exists() and not any(p.name.startswith(".staging") for p in tmp_path.iterdir())


def test_a_full_disk_names_the_output_folder(tmp_path, capsys):
    from safetensors import SafetensorError

    from medvl.cli import classify_error

    out = tmp_path / "ckpt"
    with pytest.raises(OSError) as exc:
        with fresh_output_dir(out, flag="--out"):
            raise SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
    assert exc.value.errno == 28 and str(out) in str(exc.value) and not out.exists()
    code, message = classify_error(exc.value)
    assert code == 1 and str(out) in message and "free some space" in message
