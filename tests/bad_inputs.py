"""The bad-input corpus: every kind of broken input a new user can hand to medvl, as files on disk.

Each *kind* writes its inputs into a fresh folder and returns, per verb it concerns, a :class:`Case`:
the ``medvl`` arguments, the exit code the verb must give (2: bad input; 1: ``data check`` found
problems) and the words the message must contain (the record id, the file name, what is wrong).
``tests/test_bad_inputs.py`` runs every case through ``medvl.cli.main`` in-process and also checks
that no traceback is printed and that no file that existed before the run changed.

Groups: media, records, configs, checkpoints, cli (arguments), outputs (folders already in use).
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"


@dataclass
class Case:
    """One run of one verb on one bad input.

    Args:
        argv: arguments of ``medvl`` (without the program name).
        code: the exit code the run must give.
        names: substrings the output must contain (record ids, file names, the problem).
    """

    argv: list[str]
    code: int = 2
    names: tuple[str, ...] = ()


Maker = Callable[[Path, Path], dict[str, Case]]
KINDS: dict[str, tuple[str, Maker]] = {}  # kind -> (group, maker(folder, tiny model) -> {verb: case})


def kind(group: str) -> Callable[[Maker], Maker]:
    """Register a kind of bad input under its function name."""

    def register(fn: Maker) -> Maker:
        KINDS[fn.__name__] = (group, fn)
        return fn

    return register


# ------------------------------------------------------------------------------------------ helpers
def _msg(question: str, answer: str | None = "yes") -> list[dict]:
    turns = [{"role": "user", "content": question}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def _png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size * size).reshape(size, size) % 251).astype(np.uint8)).save(path)
    return path


def _npy(path: Path, shape=(16, 64, 64), value: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.full(shape, value, np.float32))
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _image_record(rid: str, image: str, question: str = "<image> Is it normal?") -> dict:
    return {"id": rid, "messages": _msg(question), "images": [image]}


def _infer(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "infer",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-new-tokens",
        "2",
        "--no-progress",
        *extra,
    ]


def _data_cases(d: Path, model: Path, rows: list, names: tuple[str, ...], check_code: int = 1) -> dict[str, Case]:
    """A bad records file, through the verbs that read records: ``infer`` (stops) and ``data check`` (reports)."""
    _png(d / "data" / "ok.png")
    f = _jsonl(d / "data" / "d.jsonl", [_image_record("good", "ok.png"), *rows])
    return {
        "infer": Case(_infer(model, f, d / "preds.jsonl"), 2, names),
        "data check": Case(["data", "check", str(f)], check_code, names),
    }


def _model_copy(d: Path, model: Path) -> Path:
    dst = d / "model"
    shutil.copytree(model, dst)
    return dst


def _recipe(d: Path, model: Path | None, data: Path | None, **sections) -> Path:
    cfg = {
        "model": {"path": str(model)} if model else {},
        "data": {"train": [str(data)] if data else [], "max_length": 256},
        "train": {"max_steps": 1, "batch_size": 2, "report_to": [], "progress_bar": False},
        "output": {"dir": str(d / "run")},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# which verbs each kind goes through (default: infer); filled by the makers' return keys at import
VERBS_OF: dict[str, tuple[str, ...]] = {}


def _verbs(*verbs: str) -> Callable[[Maker], Maker]:
    def mark(fn: Maker) -> Maker:
        VERBS_OF[fn.__name__] = verbs
        return fn

    return mark


BOTH = ("infer", "data check")


# ------------------------------------------------------------------------------------------ media
@kind("media")
@_verbs(*BOTH)
def missing_image(d, model):
    return _data_cases(d, model, [_image_record("r-missing", "nope.png")], ("r-missing", "nope.png", "not found"))


@kind("media")
@_verbs(*BOTH)
def truncated_png(d, model):
    raw = _png(d / "x.png", 64).read_bytes()
    (d / "data").mkdir(exist_ok=True)
    (d / "data" / "cut.png").write_bytes(raw[: len(raw) // 2])
    return _data_cases(d, model, [_image_record("r-cut", "cut.png")], ("r-cut", "cut.png"))


@kind("media")
@_verbs(*BOTH)
def garbage_png(d, model):
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "junk.png").write_bytes(b"not an image at all " * 20)
    return _data_cases(d, model, [_image_record("r-junk", "junk.png")], ("r-junk", "junk.png", "not a readable image"))


@kind("media")
@_verbs(*BOTH)
def zero_width_png(d, model):
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "zero.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return _data_cases(d, model, [_image_record("r-zero", "zero.png")], ("r-zero", "zero.png"))


@kind("media")
@_verbs(*BOTH)
def one_pixel_image(d, model):
    _png(d / "data" / "dot.png", 1)
    return _data_cases(d, model, [_image_record("r-dot", "dot.png")], ("r-dot", "dot.png", "degenerate"))


@kind("media")
@_verbs(*BOTH)
def float_tiff_without_window(d, model):
    (d / "data").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.linspace(0, 4000, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(
        d / "data" / "f.tif"
    )
    return _data_cases(d, model, [_image_record("r-float", "f.tif")], ("r-float", "f.tif", "window"))


@kind("media")
@_verbs(*BOTH)
def image_path_is_a_folder(d, model):
    (d / "data" / "folder.png").mkdir(parents=True)
    return _data_cases(d, model, [_image_record("r-dir", "folder.png")], ("r-dir", "folder.png", "directory"))


def _volume_cases(d: Path, model: Path, name: str, rid: str, words: tuple[str, ...]) -> dict[str, Case]:
    return _data_cases(
        d, model, [{"id": rid, "messages": _msg("<volume> Any nodule?"), "volumes": [name]}], (rid, name, *words)
    )


@kind("media")
@_verbs(*BOTH)
def missing_volume(d, model):
    return _volume_cases(d, model, "nope.nii.gz", "r-novol", ("not found",))


@kind("media")
@_verbs(*BOTH)
def nan_volume(d, model):
    _npy(d / "data" / "nan.npy", value=np.nan)
    return _volume_cases(d, model, "nan.npy", "r-nan", ("NaN",))


@kind("media")
@_verbs(*BOTH)
def one_voxel_volume(d, model):
    _npy(d / "data" / "voxel.npy", (1, 1, 1))
    return _volume_cases(d, model, "voxel.npy", "r-voxel", ("degenerate",))


@kind("media")
@_verbs(*BOTH)
def one_slice_volume(d, model):
    _npy(d / "data" / "slice.npy", (1, 64, 64))
    return _volume_cases(d, model, "slice.npy", "r-slice", ("degenerate",))


@kind("media")
@_verbs(*BOTH)
def four_d_volume(d, model):
    _npy(d / "data" / "4d.npy", (2, 4, 16, 16))
    return _volume_cases(d, model, "4d.npy", "r-4d", ("3D",))


@kind("media")
@_verbs(*BOTH)
def truncated_nifti(d, model):
    import nibabel as nib

    (d / "data").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((16, 64, 64), np.int16), np.eye(4)), d / "full.nii.gz")
    (d / "data" / "cut.nii.gz").write_bytes((d / "full.nii.gz").read_bytes()[:200])
    return _volume_cases(d, model, "cut.nii.gz", "r-nii", ())


@kind("media")
@_verbs(*BOTH)
def unsupported_volume_format(d, model):
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "v.mha").write_bytes(b"ObjectType = Image\n")
    return _volume_cases(d, model, "v.mha", "r-mha", ("unsupported volume format",))


@kind("media")
@_verbs(*BOTH)
def corrupt_dicom(d, model):
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    return _data_cases(d, model, [_image_record("r-dcm", "x.dcm")], ("r-dcm", "x.dcm"))


@kind("media")
@_verbs(*BOTH)
def empty_dicom_folder(d, model):
    (d / "data" / "series").mkdir(parents=True)
    return _volume_cases(d, model, "series", "r-series", ())


# ------------------------------------------------------------------------------------------ records
def _raw_records_cases(
    d: Path, model: Path, text: str | bytes, names: tuple[str, ...], suffix=".jsonl"
) -> dict[str, Case]:
    f = d / "data" / f"d{suffix}"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return {
        "infer": Case(_infer(model, f, d / "preds.jsonl"), 2, names),
        "data check": Case(["data", "check", str(f)], 1, names),
    }


@kind("records")
@_verbs(*BOTH)
def invalid_json_line(d, model):
    good = json.dumps({"id": "a", "messages": _msg("q")})
    return _raw_records_cases(d, model, good + "\n{not json\n", ("d.jsonl:2", "not valid JSON"))


@kind("records")
@_verbs(*BOTH)
def invalid_utf8(d, model):
    return _raw_records_cases(
        d, model, b'{"id": "a", "messages": [{"role": "user", "content": "caf\xe9"}]}\n', ("d.jsonl", "invalid UTF-8")
    )


@kind("records")
@_verbs(*BOTH)
def invalid_json_document(d, model):
    return _raw_records_cases(d, model, '[{"id": "a",', ("d.json", "not valid JSON"), suffix=".json")


@kind("records")
@_verbs(*BOTH)
def record_not_an_object(d, model):
    return _data_cases(d, model, ["[1, 2, 3]"], ("d.jsonl:2", "JSON object"))


@kind("records")
@_verbs(*BOTH)
def neither_messages_nor_conversations(d, model):
    return _data_cases(d, model, [{"id": "r-shape", "text": "hello"}], ("r-shape", "neither 'messages'"))


@kind("records")
@_verbs(*BOTH)
def unknown_role(d, model):
    return _data_cases(
        d,
        model,
        [{"id": "r-role", "messages": [{"role": "doctor", "content": "x"}]}],
        ("r-role", "unknown role 'doctor'", "valid roles"),
    )


@kind("records")
@_verbs(*BOTH)
def empty_answer(d, model):
    return _data_cases(
        d, model, [{"id": "r-empty", "messages": _msg("q", "  ")}], ("r-empty", "empty assistant answer")
    )


@kind("records")
@_verbs(*BOTH)
def more_markers_than_images(d, model):
    return _data_cases(
        d,
        model,
        [_image_record("r-markers", "ok.png", "<image><image> two?")],
        ("r-markers", "more <image> markers (2) than images (1)"),
    )


@kind("records")
@_verbs(*BOTH)
def fewer_markers_than_images(d, model):
    return _data_cases(
        d,
        model,
        [{"id": "r-fewer", "messages": _msg("no marker"), "images": ["ok.png"]}],
        ("r-fewer", "fewer <image> markers"),
    )


@kind("records")
@_verbs(*BOTH)
def marker_in_answer(d, model):
    return _data_cases(
        d,
        model,
        [{"id": "r-ans", "messages": _msg("q <image>", "see <image>"), "images": ["ok.png", "ok.png"]}],
        ("r-ans", "marker in an assistant answer"),
    )


@kind("records")
@_verbs(*BOTH)
def system_not_first(d, model):
    msgs = _msg("q") + [{"role": "system", "content": "late"}]
    return _data_cases(d, model, [{"id": "r-sys", "messages": msgs}], ("r-sys", "system message may only come first"))


@kind("records")
@_verbs(*BOTH)
def only_a_system_message(d, model):
    return _data_cases(
        d,
        model,
        [{"id": "r-only", "messages": [{"role": "system", "content": "x"}]}],
        ("r-only", "only a system message"),
    )


@kind("records")
@_verbs(*BOTH)
def unknown_content_part(d, model):
    msgs = [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "x"}]
    return _data_cases(
        d, model, [{"id": "r-part", "messages": msgs}], ("r-part", "unknown content part", "valid part types")
    )


@kind("records")
@_verbs(*BOTH)
def images_not_paths(d, model):
    return _data_cases(
        d,
        model,
        [{"id": "r-imgs", "messages": _msg("<image>"), "images": [3]}],
        ("r-imgs", "'images' must be a path or a list of paths"),
    )


@kind("records")
@_verbs(*BOTH)
def medmvl_unknown_speaker(d, model):
    rec = {"id": "r-spk", "conversations": [{"from": "robot", "value": "hi"}]}
    return _data_cases(d, model, [rec], ("r-spk", "unknown speaker 'robot'"))


@kind("records")
@_verbs(*BOTH)
def path_leaves_the_root(d, model):
    _png(d / "outside" / "secret.png")
    return _data_cases(
        d,
        model,
        [_image_record("r-escape", "../outside/secret.png")],
        ("r-escape", "../outside/secret.png", "outside the data root"),
    )


@kind("records")
@_verbs(*BOTH)
def absolute_path_outside_root(d, model):
    return _data_cases(
        d, model, [_image_record("r-abs", "/etc/passwd")], ("r-abs", "/etc/passwd", "outside the data root")
    )


@kind("records")
@_verbs(*BOTH)
def symlink_leaves_the_root(d, model):
    target = _png(d / "elsewhere" / "a.png")
    (d / "data").mkdir(parents=True, exist_ok=True)
    (d / "data" / "link.png").symlink_to(target)
    return _data_cases(d, model, [_image_record("r-link", "link.png")], ("r-link", "link.png", "outside the data root"))


@kind("records")
@_verbs(*BOTH)
def empty_records_file(d, model):
    return _raw_records_cases(d, model, "", ("d.jsonl", "no records"))


@kind("records")
@_verbs(*BOTH)
def records_file_not_found(d, model):
    f = d / "missing.jsonl"
    return {
        "infer": Case(_infer(model, f, d / "p.jsonl"), 2, ("missing.jsonl", "not found")),
        "data check": Case(["data", "check", str(f)], 1, ("missing.jsonl", "not found")),
    }


@kind("records")
@_verbs(*BOTH)
def invalid_window(d, model):
    return _data_cases(d, model, [{**_image_record("r-win", "ok.png"), "window": "sunset"}], ("r-win", "sunset"))


@kind("records")
@_verbs("infer", "data check")
def overlong_prompt(d, model):
    cases = _data_cases(d, model, [{"id": "r-long", "messages": _msg("word " * 2100)}], ("r-long", "2048"))
    cases["data check"] = Case([*cases["data check"].argv, "--model", str(model)], 1, ("r-long", "overlong"))
    return cases


@kind("records")
@_verbs("eval")
def eval_duplicate_ids(d, model):
    from medvl.tools.synth.dataset import synthesize

    synthesize("2d", 2, 0, d / "synth")
    lines = (d / "synth" / "train.jsonl").read_text().splitlines()
    twin = json.loads(lines[1])
    twin["id"] = json.loads(lines[0])["id"]
    (d / "synth" / "train.jsonl").write_text("\n".join([lines[0], json.dumps(twin), *lines[2:]]) + "\n")
    return {
        "eval": Case(
            [
                "eval",
                str(model),
                "--tasks",
                "synth_vqa",
                "--data",
                f"synth_vqa={d / 'synth'}",
                "--split",
                "train",
                "--out",
                str(d / "eval"),
                "--no-progress",
            ],
            2,
            ("duplicate sample id", twin["id"]),
        )
    }


@kind("records")
@_verbs("eval")
def eval_media_outside_root(d, model):
    from medvl.tools.synth.dataset import synthesize

    synthesize("2d", 2, 0, d / "synth")
    _png(d / "secret.png")
    rows = [json.loads(x) for x in (d / "synth" / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["images"] = ["../secret.png"] if row.get("images") else row.get("images", [])
    _jsonl(d / "synth" / "train.jsonl", rows)
    return {
        "eval": Case(
            [
                "eval",
                str(model),
                "--tasks",
                "synth_vqa",
                "--data",
                f"synth_vqa={d / 'synth'}",
                "--split",
                "train",
                "--out",
                str(d / "eval"),
                "--no-progress",
            ],
            2,
            ("../secret.png", "outside the data root"),
        )
    }


@kind("records")
@_verbs("eval")
def eval_release_path_outside_root(d, model):
    release = d / "VQA_RAD"
    (release / "VQA_RAD Image Folder").mkdir(parents=True)
    _png(d / "private" / "other_patient.png")
    entry = {
        "qid": 1,
        "image_name": "../../private/other_patient.png",
        "question": "Is it normal?",
        "answer": "yes",
        "answer_type": "CLOSED",
        "phrase_type": "test_freeform",
    }
    (release / "VQA_RAD Dataset Public.json").write_text(json.dumps([entry]))
    return {
        "eval": Case(
            [
                "eval",
                str(model),
                "--tasks",
                "vqa_rad",
                "--data",
                f"vqa_rad={release}",
                "--out",
                str(d / "eval"),
                "--no-progress",
            ],
            2,
            ("qid 1", "VQA_RAD Dataset Public.json", "other_patient.png", "outside the data root"),
        )
    }


@kind("records")
@_verbs("eval")
def eval_overlong_prompt(d, model):
    from medvl.tools.synth.dataset import synthesize

    synthesize("2d", 2, 0, d / "synth")
    rows = [json.loads(x) for x in (d / "synth" / "train.jsonl").read_text().splitlines()]
    rows[0]["messages"][0]["content"] += " word" * 2100
    _jsonl(d / "synth" / "train.jsonl", rows)
    return {
        "eval": Case(
            [
                "eval",
                str(model),
                "--tasks",
                "synth_vqa",
                "--data",
                f"synth_vqa={d / 'synth'}",
                "--split",
                "train",
                "--out",
                str(d / "eval"),
                "--no-progress",
            ],
            2,
            (rows[0]["id"], "2048 positions"),
        )
    }


@kind("records")
@_verbs("train")
def train_truncated_image(d, model):
    raw = _png(d / "x.png", 64).read_bytes()
    _png(d / "data" / "ok.png")
    (d / "data" / "cut.png").write_bytes(raw[: len(raw) // 2])
    f = _jsonl(
        d / "data" / "t.jsonl",
        [_image_record(f"ok{i}", "ok.png") for i in range(3)] + [_image_record("r-cut", "cut.png")],
    )
    return {"train": Case(["train", str(_recipe(d, model, f)), "train.max_steps=2"], 2, ("r-cut", "cut.png"))}


@kind("records")
@_verbs("train")
def train_empty_file(d, model):
    f = _jsonl(d / "data" / "t.jsonl", [])
    return {"train": Case(["train", str(_recipe(d, model, f))], 2, ("t.jsonl", "no records"))}


# ------------------------------------------------------------------------------------------ configs
@kind("configs")
@_verbs("train")
def train_unknown_key(d, model):
    return {"train": Case(["train", str(_recipe(d, model, d / "t.jsonl")), "train.lr_rate=1"], 2, ("lr_rate",))}


@kind("configs")
@_verbs("train")
def train_invalid_choice(d, model):
    return {
        "train": Case(
            ["train", str(_recipe(d, model, d / "t.jsonl")), "data.on_error=ignore"],
            2,
            ("on_error", "'ignore'", "valid"),
        )
    }


@kind("configs")
@_verbs("train")
def train_yaml_syntax_error(d, model):
    (d / "bad.yaml").write_text("model: {path: [unclosed\n")
    return {"train": Case(["train", str(d / "bad.yaml")], 2, ("bad.yaml",))}


@kind("configs")
@_verbs("train")
def train_recipe_not_found(d, model):
    return {"train": Case(["train", str(d / "nope.yaml")], 2, ("nope.yaml",))}


@kind("configs")
@_verbs("train")
def train_without_data(d, model):
    return {"train": Case(["train", str(_recipe(d, model, None))], 2, ("data.train",))}


@kind("configs")
@_verbs("train")
def train_model_path_missing(d, model):
    _jsonl(d / "t.jsonl", [{"id": "a", "messages": _msg("q")}])
    return {"train": Case(["train", str(_recipe(d, d / "no-model", d / "t.jsonl"))], 2, ("no-model",))}


def _build(d: Path, *overrides: str) -> dict[str, Case]:
    return {"build": Case(["build", str(TINY_YAML), "--out", str(d / "built"), *overrides], 2, ())}


@kind("configs")
@_verbs("build")
def build_heads_not_multiple_of_kv_heads(d, model):
    case = _build(d, "llm.config.num_attention_heads=8", "llm.config.num_key_value_heads=3")
    case["build"].names = ("num_attention_heads (8)", "num_key_value_heads (3)", "1, 2, 4, 8")
    return case


@kind("configs")
@_verbs("build")
def build_hidden_not_multiple_of_heads(d, model):
    case = _build(d, "vision.config.num_attention_heads=5")
    case["build"].names = ("vision.config", "hidden_size (64)", "num_attention_heads (5)")
    return case


@kind("configs")
@_verbs("build")
def build_patch_does_not_divide_image(d, model):
    case = _build(d, "vision.config.patch_size=24")
    case["build"].names = ("image_size 64", "patch_size 24")
    return case


@kind("configs")
@_verbs("build")
def build_llm_path_is_a_vision_tower(d, model):
    vision = d / "siglip"
    vision.mkdir()
    (vision / "config.json").write_text(
        json.dumps(
            {
                "model_type": "siglip_vision_model",
                "hidden_size": 32,
                "num_attention_heads": 4,
                "image_size": 32,
                "patch_size": 16,
            }
        )
    )
    case = _build(d, f"llm.path={vision}", "llm.config={}")
    case["build"].names = ("llm", "'siglip_vision_model'", "not a causal language model")
    return case


@kind("configs")
@_verbs("build")
def build_unknown_key(d, model):
    case = _build(d, "llm.colour=blue")
    case["build"].names = ("colour",)
    return case


@kind("configs")
@_verbs("build")
def build_config_not_found(d, model):
    return {"build": Case(["build", str(d / "nope.yaml"), "--out", str(d / "built")], 2, ("nope.yaml",))}


@kind("configs")
@_verbs("data check")
def registry_unknown_top_level_key(d, model):
    (d / "reg.yaml").write_text("datasets: {}\nroots: x\n")
    return {"data check": Case(["data", "check", str(d / "reg.yaml")], 2, ("reg.yaml", "roots", "valid keys"))}


@kind("configs")
@_verbs("data check")
def registry_bad_weight(d, model):
    _jsonl(d / "a.jsonl", [{"id": "a", "messages": _msg("q")}])
    (d / "reg.yaml").write_text("datasets:\n  a: {path: a.jsonl, weight: lots}\n")
    return {"data check": Case(["data", "check", str(d / "reg.yaml")], 2, ("weight", "lots"))}


# ------------------------------------------------------------------------------------------ checkpoints
def _good_data(d: Path) -> Path:
    _png(d / "data" / "ok.png")
    return _jsonl(d / "data" / "d.jsonl", [_image_record("good", "ok.png")])


@kind("checkpoints")
@_verbs("infer", "chat")
def model_folder_missing(d, model):
    m = d / "no-such-model"
    return {
        "infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, ("no-such-model",)),
        "chat": Case(["chat", str(m), "--prompt", "hi"], 2, ("no-such-model",)),
    }


@kind("checkpoints")
@_verbs("infer", "export")
def model_folder_without_config(d, model):
    m = _model_copy(d, model)
    (m / "config.json").unlink()
    return {
        "infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, ("model", "no config.json")),
        "export": Case(["export", str(m), "--as-llava", str(d / "llava")], 2, ("no config.json",)),
    }


@kind("checkpoints")
@_verbs("infer", "export", "chat")
def broken_config_json(d, model):
    m = _model_copy(d, model)
    (m / "config.json").write_text('{"model_type": "medvl", ')
    names = ("config.json", "not valid JSON")
    return {
        "infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, names),
        "export": Case(["export", str(m), "--as-llava", str(d / "llava")], 2, names),
        "chat": Case(["chat", str(m), "--prompt", "hi"], 2, names),
    }


@kind("checkpoints")
@_verbs("infer", "export", "chat")
def truncated_weights(d, model):
    m = _model_copy(d, model)
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    names = ("model.safetensors", "truncated")
    return {
        "infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, names),
        "export": Case(["export", str(m), "--as-llava", str(d / "llava")], 2, names),
        "chat": Case(["chat", str(m), "--prompt", "hi"], 2, names),
    }


@kind("checkpoints")
@_verbs("infer")
def weights_header_garbage(d, model):
    m = _model_copy(d, model)
    (m / "model.safetensors").write_bytes(b"\xff" * 64)
    return {"infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, ("model.safetensors", "damaged"))}


@kind("checkpoints")
@_verbs("infer")
def weights_missing(d, model):
    m = _model_copy(d, model)
    (m / "model.safetensors").unlink()
    return {"infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, ("model", "no weights"))}


@kind("checkpoints")
@_verbs("infer", "chat")
def tokenizer_missing(d, model):
    m = _model_copy(d, model)
    (m / "tokenizer.json").unlink()
    names = ("no tokenizer", "tokenizer.json")
    return {
        "infer": Case(_infer(m, _good_data(d), d / "p.jsonl"), 2, names),
        "chat": Case(["chat", str(m), "--prompt", "hi"], 2, names),
    }


def _medmvl_src(d: Path) -> Path:
    src = d / "medmvl"
    shutil.copytree(REPO / "tests" / "fixtures" / "medmvl" / "medmvl-2d-siglip-mlp" / "checkpoint", src)
    return src


@kind("checkpoints")
@_verbs("convert")
def convert_broken_config(d, model):
    src = _medmvl_src(d)
    (src / "config.json").write_text('{"lvlm_llm_type": ')
    return {"convert": Case(["convert", "medm-vl", str(src), str(d / "out")], 2, ("config.json", "not valid JSON"))}


@kind("checkpoints")
@_verbs("convert")
def convert_llm_is_a_vision_tower(d, model):
    src = _medmvl_src(d)
    vision = d / "siglip"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model", "hidden_size": 32}))
    (vision / "preprocessor_config.json").write_text("{}")
    return {
        "convert": Case(
            ["convert", "medm-vl", str(src), str(d / "out"), "--llm", str(vision)],
            2,
            ("--llm", "siglip", "not a causal language model"),
        )
    }


@kind("checkpoints")
@_verbs("convert")
def convert_not_a_medmvl_folder(d, model):
    return {"convert": Case(["convert", "medm-vl", str(model), str(d / "out")], 2, ("not a MedM-VL config",))}


@kind("checkpoints")
@_verbs("export")
def merge_lora_on_a_full_model(d, model):
    return {"export": Case(["export", str(model), "--merge-lora", str(d / "merged")], 2, ("not a LoRA adapter",))}


@kind("checkpoints")
@_verbs("train")
def resume_with_every_checkpoint_damaged(d, model):
    f = _jsonl(d / "t.jsonl", [{"id": "a", "messages": _msg("q")}])
    ckpt = d / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{")
    return {
        "train": Case(
            ["train", str(_recipe(d, model, f)), "train.resume=true"], 2, ("checkpoint-2", "no complete checkpoint")
        )
    }


# ------------------------------------------------------------------------------------------ cli arguments
@kind("cli")
@_verbs("cli")
def unknown_verb(d, model):
    return {"cli": Case(["trian"], 2, ("invalid choice", "trian"))}


@kind("cli")
@_verbs("infer")
def missing_required_option(d, model):
    return {"infer": Case(["infer", str(model), "--data", str(_good_data(d))], 2, ("--out",))}


@kind("cli")
@_verbs("infer")
def batch_size_zero(d, model):
    return {"infer": Case(_infer(model, _good_data(d), d / "p.jsonl", "--batch-size", "0"), 2, ("--batch-size",))}


@kind("cli")
@_verbs("infer")
def unknown_window_name(d, model):
    return {"infer": Case(_infer(model, _good_data(d), d / "p.jsonl", "--window", "sunset"), 2, ("sunset",))}


@kind("cli")
@_verbs("infer")
def not_a_number(d, model):
    return {"infer": Case(_infer(model, _good_data(d), d / "p.jsonl", "--max-new-tokens", "many"), 2, ("many",))}


@kind("cli")
@_verbs("eval")
def eval_unknown_task(d, model):
    return {"eval": Case(["eval", str(model), "--tasks", "nope", "--out", str(d / "e")], 2, ("unknown task 'nope'",))}


@kind("cli")
@_verbs("eval")
def eval_data_without_equals(d, model):
    return {
        "eval": Case(
            ["eval", str(model), "--tasks", "synth_vqa", "--data", str(d), "--out", str(d / "e")], 2, ("TASK=DIR",)
        )
    }


@kind("cli")
@_verbs("eval")
def eval_task_folder_missing(d, model):
    return {
        "eval": Case(
            ["eval", str(model), "--tasks", "synth_vqa", "--data", f"synth_vqa={d / 'none'}", "--out", str(d / "e")],
            2,
            ("none",),
        )
    }


@kind("cli")
@_verbs("score")
def score_input_missing(d, model):
    return {
        "score": Case(
            [
                "score",
                "--task",
                "vqa",
                "--protocol",
                "exact_norm",
                "--in",
                str(d / "p.jsonl"),
                "--out",
                str(d / "s.json"),
            ],
            2,
            ("p.jsonl",),
        )
    }


@kind("cli")
@_verbs("chat")
def chat_image_missing(d, model):
    return {"chat": Case(["chat", str(model), "--image", str(d / "nope.png"), "--prompt", "what?"], 2, ("nope.png",))}


@kind("cli")
@_verbs("chat")
def chat_marker_mismatch(d, model):
    img = _png(d / "a.png")
    return {
        "chat": Case(
            ["chat", str(model), "--image", str(img), "--prompt", "<image> and <image>?"],
            2,
            ("2 <image> marker(s)", "--image was given 1 time(s)"),
        )
    }


@kind("cli")
@_verbs("chat")
def chat_overlong_prompt(d, model):
    return {"chat": Case(["chat", str(model), "--prompt", "word " * 2100], 2, ("2048 positions",))}


@kind("cli")
@_verbs("data check")
def data_check_model_not_a_folder(d, model):
    f = _good_data(d)
    return {"data check": Case(["data", "check", str(f), "--model", str(d / "nope")], 2, ("nope", "not a folder"))}


# ------------------------------------------------------------------------------------------ output folders
@kind("outputs")
@_verbs("infer")
def infer_out_is_the_input(d, model):
    f = _good_data(d)
    return {"infer": Case(_infer(model, f, f), 2, ("d.jsonl", "input file"))}


@kind("outputs")
@_verbs("infer")
def infer_out_inside_the_checkpoint(d, model):
    m = _model_copy(d, model)
    return {"infer": Case(_infer(m, _good_data(d), m / "preds.jsonl"), 2, ("preds.jsonl", "inside the folder"))}


@kind("outputs")
@_verbs("infer")
def infer_out_of_another_model(d, model):
    (d / "p.jsonl").write_text(json.dumps({"id": "good", "prediction": "x", "reference": None, "run": "0" * 16}) + "\n")
    return {"infer": Case(_infer(model, _good_data(d), d / "p.jsonl"), 2, ("p.jsonl", "another model"))}


@kind("outputs")
@_verbs("infer")
def infer_out_is_a_folder(d, model):
    (d / "outdir").mkdir()
    return {"infer": Case(_infer(model, _good_data(d), d / "outdir"), 2, ("outdir",))}


@kind("outputs")
@_verbs("build")
def build_into_a_used_folder(d, model):
    (d / "built").mkdir()
    (d / "built" / "notes.txt").write_text("mine")
    return {
        "build": Case(["build", str(TINY_YAML), "--out", str(d / "built")], 2, ("built", "not empty", "--overwrite"))
    }


@kind("outputs")
@_verbs("export")
def export_onto_its_source(d, model):
    m = _model_copy(d, model)
    return {"export": Case(["export", str(m), "--as-llava", str(m), "--overwrite"], 2, ("model", "folder"))}


@kind("outputs")
@_verbs("export")
def export_into_a_used_folder(d, model):
    (d / "llava").mkdir()
    (d / "llava" / "keep.bin").write_bytes(b"1")
    return {"export": Case(["export", str(model), "--as-llava", str(d / "llava")], 2, ("llava", "not empty"))}


@kind("outputs")
@_verbs("convert")
def convert_into_a_used_folder(d, model):
    src = _medmvl_src(d)
    (d / "out").mkdir()
    (d / "out" / "keep.txt").write_text("mine")
    return {"convert": Case(["convert", "medm-vl", str(src), str(d / "out")], 2, ("out", "not empty"))}


@kind("outputs")
@_verbs("eval")
def eval_out_inside_the_checkpoint(d, model):
    m = _model_copy(d, model)
    return {
        "eval": Case(
            ["eval", str(m), "--tasks", "synth_vqa", "--data", f"synth_vqa={d}", "--out", str(m / "e")],
            2,
            ("inside the folder",),
        )
    }


@kind("outputs")
@_verbs("train")
def train_into_a_used_run_folder(d, model):
    f = _jsonl(d / "t.jsonl", [{"id": "a", "messages": _msg("q")}])
    (d / "run" / "checkpoint-3").mkdir(parents=True)
    (d / "run" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    return {"train": Case(["train", str(_recipe(d, model, f))], 2, ("already holds a run", "train.resume=true"))}


@kind("outputs")
@_verbs("data check")
def data_check_json_report_into_a_folder(d, model):
    f = _good_data(d)
    (d / "report").mkdir()
    return {"data check": Case(["data", "check", str(f), "--json", str(d / "report")], 2, ("report",))}
