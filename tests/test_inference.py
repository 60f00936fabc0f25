"""The shared inference path: batched left-padded generation, chat, and the ``medvl infer`` / ``chat`` verbs.

Runs on the MedM-VL 2D fixture converted to medvl (a real trained tiny checkpoint whose greedy output
MedM-VL itself recorded), so the expected continuation is independent of medvl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.data.records import Record, load_records

from conftest import fixture_path

FIXTURE = fixture_path("medmvl", "medmvl-2d-siglip-mlp")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from medvl.convert.medmvl import convert_medmvl

    return convert_medmvl(FIXTURE / "checkpoint", tmp_path_factory.mktemp("medmvl2d"))


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    from medvl.inference import load_model

    return load_model(model_dir, device="cpu")


def _records() -> list[Record]:
    image = str(FIXTURE / "inputs" / "image.png")
    questions = ["Is there a lesion in the right lung?", "Describe the image.",
                 "What is the size of the nodule seen in the upper lobe of the right lung?"]
    recs = [Record(id=f"q{i}", messages=[{"role": "user", "content": "<image>\n" + q}], images=[image])
            for i, q in enumerate(questions)]
    recs.append(Record(id="text-only", messages=[{"role": "user", "content": "What is a pulmonary nodule?"}]))
    return recs


def test_batched_left_padded_equals_one_by_one(loaded) -> None:
    """Left padding must not change any row's greedy continuation (positions, masks, media order)."""
    from medvl.inference import generate, prepare_batch

    model, processor = loaded
    records = _records()
    batch = prepare_batch(model, processor, records)
    assert batch["pixel_values"].shape[0] == 3
    # left padded: every row ends with the prompt's last token, padding sits at the front
    assert bool((batch["attention_mask"][:, -1] == 1).all()) and int(batch["attention_mask"][:, 0].sum()) < 4
    single = [generate(model, processor, [r], batch_size=1, max_new_tokens=6, min_new_tokens=6, progress=False)[0]
              for r in records]
    batched = generate(model, processor, records, batch_size=4, max_new_tokens=6, min_new_tokens=6, progress=False)
    assert batched == single
    # batches of 2 are formed by prompt length (not record order); outputs still come back in record order
    assert generate(model, processor, records, batch_size=2, max_new_tokens=6, min_new_tokens=6, progress=False) == single
    assert batched[0] == " A hyperdense lesion of abo"  # the first 6 of MedM-VL's own 8 greedy tokens


def test_prompt_is_last_user_turn(loaded) -> None:
    """A trailing assistant turn is left out; the reference comes from MedM-VL's ``answer`` or that turn."""
    from medvl.inference import prompt_messages, reference_of

    rec = Record(id="r", messages=[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                   {"role": "user", "content": "q2"}, {"role": "assistant", "content": "gold"}])
    assert prompt_messages(rec) == rec.messages[:3]
    assert reference_of(rec) == "gold"
    rec_medmvl = load_records(FIXTURE / "inputs" / "infer.json", root=FIXTURE / "inputs")[0]
    assert reference_of(rec_medmvl) == "Yes, there is a small nodule in the right lung."
    from medvl.errors import MedVLDataError

    with pytest.raises(MedVLDataError, match="no user turn"):
        prompt_messages(Record(id="bad", messages=[{"role": "system", "content": "x"}]))


def test_chat_multi_turn_uses_medmvl_rounds(loaded) -> None:
    """The second turn's prompt holds the first round exactly as MedM-VL's train format writes it."""
    from medvl.inference import chat

    model, processor = loaded
    image = str(FIXTURE / "inputs" / "image.png")
    messages = [{"role": "user", "content": "<image>\nIs there a lesion in the right lung?"}]
    first = chat(model, processor, messages, images=[image], max_new_tokens=3)
    assert first == " A hyperdense lesion"
    messages += [{"role": "assistant", "content": first.strip()}, {"role": "user", "content": "Where?"}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.endswith("USER: <image>\nIs there a lesion in the right lung? ASSISTANT: A hyperdense lesion"
                         "<|im_end|>USER: Where? ASSISTANT:")
    second = chat(model, processor, messages, images=[image], max_new_tokens=3)
    assert isinstance(second, str) and second


def test_infer_cli_reproduces_medmvl(model_dir: Path, tmp_path: Path, capsys) -> None:
    """``medvl infer`` on MedM-VL's inference file writes MedM-VL's greedy continuation."""
    from medvl.cli import main

    out = tmp_path / "preds.jsonl"
    rc = main(["infer", str(model_dir), "--data", str(FIXTURE / "inputs" / "infer.json"), "--out", str(out),
               "--max-new-tokens", "8", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows[0].pop("run")) == 16  # fingerprint of model + generation settings (resume key)
    assert rows == [{"id": "medmvl-2d-siglip-mlp-infer-0", "prediction": " A hyperdense lesion of about",
                     "reference": "Yes, there is a small nodule in the right lung."}]


def test_chat_cli_scripted(model_dir: Path, capsys) -> None:
    from medvl.cli import main

    rc = main(["chat", str(model_dir), "--image", str(FIXTURE / "inputs" / "image.png"),
               "--prompt", "Is there a lesion in the right lung?", "--prompt", "Where?", "--max-new-tokens", "3"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "A hyperdense lesion" and len(lines) == 2


def test_infer_cli_bad_data(model_dir: Path, tmp_path: Path) -> None:
    from medvl.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "<image>\nq"}],
                                "image": ["missing.png"]}]))
    assert main(["infer", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "p.jsonl"),
                 "--no-progress"]) == 2
