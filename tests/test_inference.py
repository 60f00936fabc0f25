"""The shared inference path: batched left-padded generation, chat, and the ``medvl infer`` / ``chat`` verbs.

Runs on the MedM-VL 2D fixture converted to medvl (a real trained tiny checkpoint whose greedy output
MedM-VL itself recorded), so the expected continuation is independent of medvl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.data.records import Record, load_records
from tests.conftest import fixture_path

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
    questions = [
        "Is there a lesion in the right lung?",
        "Describe the image.",
        "What is the size of the nodule seen in the upper lobe of the right lung?",
    ]
    recs = [
        Record(id=f"q{i}", messages=[{"role": "user", "content": "<image>\n" + q}], images=[image])
        for i, q in enumerate(questions)
    ]
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
    single = [
        generate(model, processor, [r], batch_size=1, max_new_tokens=6, min_new_tokens=6, progress=False)[0]
        for r in records
    ]
    batched = generate(model, processor, records, batch_size=4, max_new_tokens=6, min_new_tokens=6, progress=False)
    assert batched == single
    # batches of 2 are formed by prompt length (not record order); outputs still come back in record order
    assert (
        generate(model, processor, records, batch_size=2, max_new_tokens=6, min_new_tokens=6, progress=False) == single
    )
    assert batched[0] == " A hyperdense lesion of abo"  # the first 6 of MedM-VL's own 8 greedy tokens


def test_streamed_deltas_concatenate_to_the_batched_answers(loaded) -> None:
    """Every row of a batched generation streams deltas that add up to its returned (and unstreamed) text."""
    from medvl.inference import generate

    model, processor = loaded
    records = _records()
    plain = generate(model, processor, records, batch_size=4, max_new_tokens=8, progress=False)
    pieces: dict[int, list[str]] = {i: [] for i in range(len(records))}
    streamed = generate(
        model,
        processor,
        records,
        batch_size=4,
        max_new_tokens=8,
        progress=False,
        on_text=lambda i, d: pieces[i].append(d),
    )
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
    got = generate(
        model,
        processor,
        records,
        batch_size=4,
        max_new_tokens=6,
        min_new_tokens=6,
        progress=False,
        should_stop=lambda i: i == 1,
    )
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

    rec = Record(
        id="r",
        messages=[
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "gold"},
        ],
    )
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
    assert text.endswith(
        "USER: <image>\nIs there a lesion in the right lung? ASSISTANT: A hyperdense lesion"
        "<|im_end|>USER: Where? ASSISTANT:"
    )
    second = chat(model, processor, messages, images=[image], max_new_tokens=3)
    assert isinstance(second, str) and second


def test_infer_cli_reproduces_medmvl(model_dir: Path, tmp_path: Path, capsys) -> None:
    """``medvl infer`` on MedM-VL's inference file writes MedM-VL's greedy continuation."""
    from medvl.cli import main

    out = tmp_path / "preds.jsonl"
    rc = main(
        [
            "infer",
            str(model_dir),
            "--data",
            str(FIXTURE / "inputs" / "infer.json"),
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
            "--batch-size",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows[0].pop("run")) == 16  # fingerprint of model + generation settings (resume key)
    assert rows == [
        {
            "id": "medmvl-2d-siglip-mlp-infer-0",
            "prediction": " A hyperdense lesion of about",
            "reference": "Yes, there is a small nodule in the right lung.",
        }
    ]


def test_chat_cli_scripted(model_dir: Path, capsys) -> None:
    from medvl.cli import main

    rc = main(
        [
            "chat",
            str(model_dir),
            "--image",
            str(FIXTURE / "inputs" / "image.png"),
            "--prompt",
            "Is there a lesion in the right lung?",
            "--prompt",
            "Where?",
            "--max-new-tokens",
            "3",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "A hyperdense lesion" and len(lines) == 2


def test_infer_cli_bad_data(model_dir: Path, tmp_path: Path) -> None:
    from medvl.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "<image>\nq"}], "image": ["missing.png"]}])
    )
    assert main(["infer", str(model_dir), "--data", str(bad), "--out", str(tmp_path / "p.jsonl"), "--no-progress"]) == 2


# ---------------------------------------------------------------------------------------------
# Encode once per conversation (tiny model: a 2D tower and a 3D encoder) and streamed terminal chat
# ---------------------------------------------------------------------------------------------


def _tiny_media(tmp_path: Path) -> tuple[str, str]:
    """A random RGB PNG and a random-HU NIfTI (LPS storage, 2 mm slices) on disk."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    png = tmp_path / "image.png"
    Image.fromarray(rng.integers(0, 256, (80, 72, 3), dtype=np.uint8)).save(png)
    nii = tmp_path / "ct.nii.gz"
    hu = rng.normal(-300, 400, (40, 36, 20)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([-1.0, -1.0, 2.0, 1.0])), str(nii))
    return str(png), str(nii)


class _EncoderCalls:
    """Counts forward calls of the model's 2D tower and volume encoder (real modules, forward hooks)."""

    def __init__(self, model) -> None:
        self.counts = {"image": 0, "volume": 0}
        self.handles = [
            model.vision_tower.register_forward_hook(lambda *_: self._hit("image")),
            model.volume_encoder.register_forward_hook(lambda *_: self._hit("volume")),
        ]

    def _hit(self, kind: str) -> None:
        self.counts[kind] += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def test_encoded_media_answer_like_files_and_encode_once(tiny_model, tiny_processor, tmp_path: Path) -> None:
    """Two turns about one image and one volume: the same greedy answers with and without the encoder
    cache, and with the cache the encoders run once (at ``encode_media``) instead of once per turn."""
    from medvl.inference import EncodedMedia, chat, encode_media, prepare_batch, stream_chat

    png, nii = _tiny_media(tmp_path)
    model, processor = tiny_model, tiny_processor
    options = dict(max_new_tokens=6, min_new_tokens=6)
    turns = ["<image>\n<volume>\nIs there a nodule?", "Which lobe?"]
    calls = _EncoderCalls(model)
    try:
        plain, messages = [], []
        for question in turns:
            messages.append({"role": "user", "content": question})
            plain.append(chat(model, processor, messages, images=[png], volumes=[nii], **options))
            messages.append({"role": "assistant", "content": plain[-1].strip()})
        assert calls.counts == {"image": 2, "volume": 2}  # once per turn without the cache

        calls.counts = {"image": 0, "volume": 0}
        images, volumes = encode_media(model, processor, images=[png], volumes=[nii])
        assert calls.counts == {"image": 1, "volume": 1}
        assert isinstance(images[0], EncodedMedia) and images[0].kind == "image" and images[0].source == png
        assert tuple(images[0].features.shape) == (16, 64)  # 4 x 4 patches of the tiny SigLIP, width 64
        assert tuple(volumes[0].features.shape) == (64, 64)  # 4 x 4 x 4 patches of the tiny 3D ViT
        cached, messages = [], []
        for question in turns:
            messages.append({"role": "user", "content": question})
            cached.append(chat(model, processor, messages, images=images, volumes=volumes, **options))
            messages.append({"role": "assistant", "content": cached[-1].strip()})
        assert cached == plain
        assert calls.counts == {"image": 1, "volume": 1}  # no encoder call in either turn
        # streamed with the cache: the same pieces; a mix of cached and raw media: the same answer
        assert (
            "".join(stream_chat(model, processor, messages[:3], images=images, volumes=volumes, **options)) == plain[1]
        )
        assert chat(model, processor, messages[:1], images=images, volumes=[nii], **options) == plain[0]
        assert calls.counts == {"image": 1, "volume": 2}
    finally:
        calls.close()
    # the encoded path tokenises exactly like the processor
    raw = prepare_batch(model, processor, [Record(id="a", messages=messages[:3], images=[png], volumes=[nii])])
    enc = prepare_batch(model, processor, [Record(id="a", messages=messages[:3], images=images, volumes=volumes)])
    assert raw["input_ids"].tolist() == enc["input_ids"].tolist()
    assert "pixel_values" in raw and "image_encoder_features" in enc and "pixel_values" not in enc


def test_encoded_media_count_mismatch_names_the_record(tiny_model, tiny_processor, tmp_path: Path) -> None:
    from medvl.errors import MedVLDataError
    from medvl.inference import encode_media, prepare_batch

    png, _ = _tiny_media(tmp_path)
    images, _ = encode_media(tiny_model, tiny_processor, images=[png])
    rec = Record(id="rec-7", messages=[{"role": "user", "content": "no marker here"}], images=images)
    with pytest.raises(MedVLDataError, match="rec-7.*1 media given for 0 <image> marker"):
        prepare_batch(tiny_model, tiny_processor, [rec])


def test_print_stream_writes_each_piece_before_the_next_is_generated() -> None:
    """The terminal gets text while generation is still running; whitespace at the ends is dropped."""
    import io

    from medvl.commands.chat import print_stream

    out = io.StringIO()
    seen: list[str] = []

    def pieces():
        for piece in [" ", " A", " hyper", "dense", " lesion", " \n"]:
            seen.append(out.getvalue())
            yield piece

    assert print_stream(pieces(), out, prefix="model> ") == "A hyperdense lesion"
    assert out.getvalue() == "model> A hyperdense lesion\n"
    # when the 4th piece was requested, the 2nd and 3rd were already on the terminal
    assert seen[3] == "model> A hyper"


def test_chat_cli_streams_and_encodes_each_medium_once(
    tiny_model_dir: Path, tiny_model, tiny_processor, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``medvl chat`` with an image and a volume over two turns prints ``chat``'s answers, encoding once."""
    from medvl.cli import main
    from medvl.inference import chat
    from medvl.models import MedVLForConditionalGeneration

    png, nii = _tiny_media(tmp_path)
    counts = {"image": 0, "volume": 0}
    real_images, real_volumes = (
        MedVLForConditionalGeneration.encode_images,
        MedVLForConditionalGeneration.encode_volumes,
    )

    def counting(kind, real):
        def wrapped(self, values):
            counts[kind] += 1
            return real(self, values)

        return wrapped

    monkeypatch.setattr(MedVLForConditionalGeneration, "encode_images", counting("image", real_images))
    monkeypatch.setattr(MedVLForConditionalGeneration, "encode_volumes", counting("volume", real_volumes))
    rc = main(
        [
            "chat",
            str(tiny_model_dir),
            "--image",
            png,
            "--volume",
            nii,
            "--prompt",
            "Is there a nodule?",
            "--prompt",
            "Which lobe?",
            "--max-new-tokens",
            "5",
            "--min-new-tokens",
            "5",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert counts == {"image": 1, "volume": 1}
    lines = capsys.readouterr().out.splitlines()
    monkeypatch.undo()
    messages = [{"role": "user", "content": "<image>\n<volume>\nIs there a nodule?"}]
    first = chat(tiny_model, tiny_processor, messages, images=[png], volumes=[nii], max_new_tokens=5, min_new_tokens=5)
    messages += [{"role": "assistant", "content": first.strip()}, {"role": "user", "content": "Which lobe?"}]
    second = chat(tiny_model, tiny_processor, messages, images=[png], volumes=[nii], max_new_tokens=5, min_new_tokens=5)
    assert lines == [first.strip(), second.strip()]


def test_generate_detailed_per_row_limits_and_usage(loaded) -> None:
    """Per-record max_new_tokens in one batch equal separate runs at those limits; token counts are exact."""
    from medvl.inference import generate, generate_detailed, prompt_messages

    model, processor = loaded
    records = _records()
    limits = [2, 5, 3, 4]
    got = generate_detailed(
        model, processor, records, batch_size=4, max_new_tokens=limits, min_new_tokens=5, progress=False
    )
    for rec, n, g in zip(records, limits, got):
        alone = generate(model, processor, [rec], batch_size=1, max_new_tokens=n, min_new_tokens=5, progress=False)[0]
        assert g.text == alone and g.completion_tokens == n and g.finish_reason == "length"
        # prompt tokens: the processor's own tokenisation of the rendered prompt, no padding
        text = processor.apply_chat_template(prompt_messages(rec), add_generation_prompt=True)
        ids = processor.tokenizer(processor.expand_text(text))["input_ids"]
        assert g.prompt_tokens == len(ids)
    # a row cut by should_stop reports it
    cut = generate_detailed(
        model,
        processor,
        records[:2],
        batch_size=2,
        max_new_tokens=6,
        min_new_tokens=6,
        progress=False,
        should_stop=lambda i: i == 1,
    )
    assert cut[0].finish_reason == "length" and cut[0].completion_tokens == 6
    assert cut[1].finish_reason in ("cancelled", "stop") and cut[1].completion_tokens < 6


def test_completion_counts_tokens_before_the_end_and_names_why_it_finished() -> None:
    from medvl.inference import _completion

    eos, pad = {2}, 0
    assert _completion([5, 6, 2, 0], 4, eos, pad, lambda: False) == (2, "stop")  # eos not counted
    assert _completion([5, 0, 0], 3, eos, pad, lambda: False) == (1, "cancelled")  # padded: stopped early
    assert _completion([5, 6], 4, eos, pad, lambda: False) == (2, "cancelled")  # ended before its limit
    assert _completion([5, 6, 7], 3, eos, pad, lambda: False) == (3, "length")
    assert _completion([5, 6, 7], 3, eos, pad, lambda: True) == (3, "cancelled")  # should_stop said so
