"""Atomic folder writes: complete or absent, never half-written under the final name."""

from __future__ import annotations

import pytest

from medvl.train.checkpoint import atomic_dir, clean_staging, staging_path


def test_atomic_dir_appears_only_when_complete(tmp_path):
    final = tmp_path / "checkpoint-3"
    with atomic_dir(final) as staging:
        (staging / "a.txt").write_text("one")
        assert not final.exists()  # nothing under the final name while writing
    assert (final / "a.txt").read_text() == "one"
    assert not staging_path(final).exists()


def test_crash_while_writing_leaves_previous_version(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as staging:
        (staging / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as staging:
            (staging / "weights").write_text("v2-partial")
            raise RuntimeError("disk full")
    assert (final / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replacing_an_existing_folder(tmp_path):
    final = tmp_path / "model"
    for version in ("v1", "v2"):
        with atomic_dir(final) as staging:
            (staging / "weights").write_text(version)
    assert (final / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_clean_staging_removes_only_leftovers(tmp_path):
    (tmp_path / ".staging-checkpoint-4" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "checkpoint-2").mkdir()
    removed = clean_staging(tmp_path)
    assert [p.name for p in removed] == [".staging-checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
