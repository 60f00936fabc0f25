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


def test_streamed_deltas_concatenate_to_the_batched_answers(loaded) -> None:
    """Every row of a batched generation streams deltas that add up to its returned (and unstreamed) text."""
    from medvl.inference import generate

    model, processor = loaded
    records = _records()
    plain = generate(model, processor, records, batch_size=4, max_new_tokens=8, progress=False)
    pieces: dict[int, list[str]] = {i: [] for i in range(len(records))}
    streamed = generate(model, processor, records, batch_size=4, max_new_tokens=8, progress=False,
                        on_text=lambda i, d: pieces[i].append(d))
    assert streamed == plain
    assert ["".join(pieces[i]) for i in range(len(records))] == plain
    assert len(pieces[0]) > 1  # really incremental, not one final chunk
    assert "".join(pieces[0]).startswith(" A hyperdense lesion of abo")  # MedM-VL's own greedy tokens


def test_should_stop_ends_one_row_and_not_the_others(loaded) -> None:
    """A row flagged to stop (a client that left) ends early; the other rows are unchanged."""
    from medvl.inference import generate

    model, processor = loaded
    records = _records()
    full = generate(model, processor, records, batch_size=4, max_new_tokens=6, min_new_tokens=6, progress=False)
    got = generate(model, processor, records, batch_size=4, max_new_tokens=6, min_new_tokens=6, progress=False,
                   should_stop=lambda i: i == 1)
    assert got[0] == full[0] and got[2:] == full[2:]
    assert len(processor.tokenizer(got[1])["input_ids"]) < len(processor.tokenizer(full[1])["input_ids"])


def test_stream_chat_and_in_memory_media_equal_chat(loaded) -> None:
    """``stream_chat`` yields the pieces of ``chat``'s answer; a decoded PIL image equals its file path."""
    from medvl.imaging.image2d import load_image
    from medvl.inference import chat, stream_chat

    model, processor = loaded
    path = str(FIXTURE / "inputs" / "image.png")
    messages = [{"role": "user", "content": "<image>\nIs there a lesion in the right lung?"}]
    answer = chat(model, processor, messages, images=[path], max_new_tokens=8)
    pieces = list(stream_chat(model, processor, messages, images=[load_image(path)], max_new_tokens=8))
    assert "".join(pieces) == answer and len(pieces) > 1
    # closing the generator early stops the worker (no thread left behind)
    import threading

    before = threading.active_count()
    gen = stream_chat(model, processor, messages, images=[path], max_new_tokens=64, min_new_tokens=64)
    next(gen)
    gen.close()
    assert threading.active_count() == before


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


def test_generate_detailed_per_row_limits_and_usage(loaded) -> None:
    """Per-record max_new_tokens in one batch equal separate runs at those limits; token counts are exact."""
    from medvl.inference import generate, generate_detailed, prompt_messages

    model, processor = loaded
    records = _records()
    limits = [2, 5, 3, 4]
    got = generate_detailed(model, processor, records, batch_size=4, max_new_tokens=limits, min_new_tokens=5,
                            progress=False)
    for rec, n, g in zip(records, limits, got):
        alone = generate(model, processor, [rec], batch_size=1, max_new_tokens=n, min_new_tokens=5, progress=False)[0]
        assert g.text == alone and g.completion_tokens == n and g.finish_reason == "length"
        # prompt tokens: the processor's own tokenisation of the rendered prompt, no padding
        text = processor.apply_chat_template(prompt_messages(rec), add_generation_prompt=True)
        ids = processor.tokenizer(processor.expand_text(text))["input_ids"]
        assert g.prompt_tokens == len(ids)
    # a row cut by should_stop reports it
    cut = generate_detailed(model, processor, records[:2], batch_size=2, max_new_tokens=6, min_new_tokens=6,
                            progress=False, should_stop=lambda i: i == 1)
    assert cut[0].finish_reason == "length" and cut[0].completion_tokens == 6
    assert cut[1].finish_reason in ("cancelled", "stop") and cut[1].completion_tokens < 6
