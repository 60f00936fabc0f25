"""Records: native and MedM-VL/LLaVA files load into the same Record; bad input gets a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.data.records import Record, load_records
from medvl.errors import MedVLDataError
from tests.conftest import fixture_path

FIXTURES = fixture_path("medmvl")


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_native_jsonl_with_parts_and_root(tmp_path):
    rows = [
        {
            "id": "a",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nIs it normal?"}]},
                {"role": "assistant", "content": "No."},
            ],
            "images": "img/a.png",
            "answer_type": "closed",
        },
        {
            "messages": [
                {"role": "user", "content": "Define atelectasis."},
                {"role": "assistant", "content": "Collapse."},
            ]
        },
    ]
    f = _write_jsonl(tmp_path / "d.jsonl", rows)
    recs = load_records(f, root="/data/root")
    assert recs[0] == Record(
        id="a",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>\nIs it normal?"},
            {"role": "assistant", "content": "No."},
        ],
        images=["/data/root/img/a.png"],
        volumes=[],
        meta={"answer_type": "closed", "source": "d", "file": str(f)},
    )
    # text-only, id from file name + line number
    assert recs[1].id == "d.jsonl:2" and recs[1].images == [] and recs[1].volumes == []


def test_inline_media_paths_in_parts(tmp_path):
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "volume", "volume": "ct.nii.gz"}, {"type": "text", "text": " Findings?"}],
            },
            {"role": "assistant", "content": "Clear."},
        ]
    }
    f = tmp_path / "d.json"
    f.write_text(json.dumps([row]))
    (rec,) = load_records(f)
    assert rec.volumes == [str(tmp_path / "ct.nii.gz")]
    assert rec.messages[0]["content"] == "<volume> Findings?"


@pytest.mark.parametrize("kind", ["medmvl-2d-siglip-mlp", "medmvl-ct-siglip-attnpool"])
def test_medmvl_fixture_records_load_unchanged(kind):
    inputs = FIXTURES / kind / "inputs"
    (train,) = load_records(inputs / "train_case.json")
    (infer,) = load_records(inputs / "infer.json")
    raw = json.loads((inputs / "train_case.json").read_text())[0]
    assert train.id == raw["id"]
    assert [m["role"] for m in train.messages] == ["user", "assistant"] * (len(raw["conversations"]) // 2)
    assert [m["content"] for m in train.messages] == [
        c["value"].replace("<image3d>", "<volume>") for c in raw["conversations"]
    ]
    if "ct" in kind:
        assert train.volumes == [str(inputs / "volume.npy")] and train.images == []
        assert infer.messages[0]["content"].startswith("<volume>\n")
    else:
        assert train.images == [str(inputs / "image.png")] and train.volumes == []
    # MedM-VL inference files carry the reference answer in "answer"
    assert infer.meta["reference"] == json.loads((inputs / "infer.json").read_text())[0]["answer"]
    assert infer.messages[-1]["role"] == "user"


def test_medmvl_separate_volume_root(tmp_path):
    row = {
        "conversations": [
            {"from": "human", "value": "<image>\n<image3d>\nCompare."},
            {"from": "gpt", "value": "Same."},
        ],
        "image": "x.png",
        "image3d": ["v.npy"],
    }
    f = tmp_path / "m.json"
    f.write_text(json.dumps([row]))
    (rec,) = load_records(f, root="/imgs", volume_root="/vols")
    assert rec.images == ["/imgs/x.png"] and rec.volumes == ["/vols/v.npy"]
    assert rec.messages[0]["content"] == "<image>\n<volume>\nCompare."


def _err(tmp_path, rows, name="bad.jsonl", **kw) -> str:
    f = _write_jsonl(tmp_path / name, rows)
    with pytest.raises(MedVLDataError) as info:
        load_records(f, **kw)
    return str(info.value)


def test_errors_name_record_file_and_problem(tmp_path):
    ok_user = {"role": "user", "content": "<image> what?"}
    msg = _err(tmp_path, [{"id": "r1", "messages": [ok_user, {"role": "assistant", "content": "x"}], "images": []}])
    assert "'r1'" in msg and "bad.jsonl" in msg and "more <image> markers (1) than images (0)" in msg
    msg = _err(
        tmp_path, [{"id": "r2", "messages": [ok_user, {"role": "assistant", "content": "x"}], "images": ["a", "b"]}]
    )
    assert "'r2'" in msg and "fewer <image> markers (1) than images (2)" in msg
    msg = _err(tmp_path, [{"id": "r3", "messages": [{"role": "doctor", "content": "hi"}]}])
    assert "'r3'" in msg and "unknown role 'doctor'" in msg and "system, user, assistant" in msg
    msg = _err(
        tmp_path, [{"id": "r4", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}]
    )
    assert "'r4'" in msg and "empty assistant answer" in msg
    msg = _err(tmp_path, [{"id": "r5", "conversations": [{"from": "gpt", "value": ""}]}])
    assert "'r5'" in msg and "empty assistant answer" in msg
    msg = _err(tmp_path, [{"id": "r6", "conversations": [{"from": "nurse", "value": "hi"}]}])
    assert "unknown speaker 'nurse'" in msg


def test_jsonl_line_that_is_not_json_reports_line_number(tmp_path):
    f = tmp_path / "broken.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}]})
    f.write_text(good + "\n" + good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(MedVLDataError, match=r"broken.jsonl:3.*line 3 is not valid JSON"):
        load_records(f)


def test_invalid_utf8_is_reported(tmp_path):
    f = tmp_path / "latin.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode()
    f.write_bytes(good + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(MedVLDataError, match=r"latin.jsonl.*invalid UTF-8 at byte \d+ \(line 2\)"):
        load_records(f)


def test_missing_records_file(tmp_path):
    with pytest.raises(MedVLDataError, match="records file not found"):
        load_records(tmp_path / "nope.json")


# ---------------------------------------------------------------- media paths stay inside the data root
def _one_image(path: str) -> dict:
    return {
        "id": "r1",
        "messages": [{"role": "user", "content": "<image> ?"}, {"role": "assistant", "content": "x"}],
        "images": [path],
    }


@pytest.mark.parametrize("media", ["../outside/secret.png", "../../../../etc/passwd", "/etc/passwd", "sub/../../x.png"])
def test_media_outside_the_root_is_refused(tmp_path, media):
    from medvl.errors import MediaOutsideRootError

    data = tmp_path / "data"
    data.mkdir()
    f = _write_jsonl(data / "d.jsonl", [_one_image(media)])
    with pytest.raises(MediaOutsideRootError) as exc:
        load_records(f)
    msg = str(exc.value)
    assert "record 'r1'" in msg and str(f) in msg and repr(media) in msg and "--allow-outside-root" in msg


def test_symlink_leaving_the_root_is_refused_and_opt_in_accepts(tmp_path):
    from medvl.data.records import outside_root_allowed
    from medvl.errors import MediaOutsideRootError

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes(b"x")
    (data / "link.png").symlink_to(elsewhere / "a.png")
    (data / "in.png").write_bytes(b"x")
    (data / "inner_link.png").symlink_to(data / "in.png")
    f = _write_jsonl(data / "d.jsonl", [_one_image("link.png")])
    with pytest.raises(MediaOutsideRootError):
        load_records(f)
    # the record keeps the path as written (made absolute), not the symlink target
    assert load_records(f, allow_outside_root=True)[0].images == [str(data / "link.png")]
    with outside_root_allowed():
        assert load_records(f)[0].images == [str(data / "link.png")]
    with outside_root_allowed(), pytest.raises(MediaOutsideRootError):
        load_records(f, allow_outside_root=False)  # an explicit argument wins
    # a symlink that stays inside, an absolute path inside, and a root that is itself a symlink are fine
    g = _write_jsonl(data / "g.jsonl", [_one_image("inner_link.png"), {**_one_image(str(data / "in.png")), "id": "r2"}])
    assert [r.images for r in load_records(g)] == [[str(data / "inner_link.png")], [str(data / "in.png")]]
    (tmp_path / "data_link").symlink_to(data)
    assert load_records(tmp_path / "data_link" / "g.jsonl")[1].images == [str(data / "in.png")]


def test_explicit_root_decides_what_is_inside(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lists").mkdir()
    f = _write_jsonl(tmp_path / "lists" / "d.jsonl", [_one_image("../img/a.png")])
    with pytest.raises(MedVLDataError, match="outside the data root"):
        load_records(f)
    # the usual layout: lists/ and img/ side by side, paths relative to their common root
    g = _write_jsonl(tmp_path / "lists" / "g.jsonl", [_one_image("img/a.png")])
    assert load_records(g, root=tmp_path)[0].images == [str(tmp_path / "img" / "a.png")]


def test_media_paths_gives_paths_and_names_the_record_holding_loaded_media():
    from PIL import Image

    rec = Record(id="r1", messages=[], images=[Path("/data/a.png"), "/data/b.png"], volumes=["/data/ct.nii.gz"])
    assert rec.media_paths("image") == ["/data/a.png", "/data/b.png"]
    assert rec.media_paths("volume") == ["/data/ct.nii.gz"]
    # inference builds records around uploads decoded in memory; the file-reading steps refuse them by name
    in_memory = Record(id="upload-7", messages=[], images=["/data/a.png", Image.new("RGB", (4, 4))])
    with pytest.raises(MedVLDataError, match=r"upload-7.*image 1 is a Image, not a file path"):
        in_memory.media_paths("image")
    assert in_memory.media_paths("volume") == []
