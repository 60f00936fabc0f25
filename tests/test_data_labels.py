"""Labels: exactly the assistant answers (+ their end-of-turn token) are supervised, for every template.

Checked by decoding the supervised tokens back to text, with the real Qwen2 vocabulary, against
MedM-VL's own token ids and labels (fixtures), and on random conversations (hypothesis).
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from medvl.data.labels import IGNORE_INDEX, ConversationEncoder, OverlongSampleError
from medvl.data.records import load_records
from medvl.data.templates import LLAMA3, resolve_template
from medvl.errors import MedVLDataError
from tests.conftest import fixture_path
from tests.data_helpers import qwen2_tokenizer

FIXTURES = fixture_path("medmvl")
CONV = [
    {"role": "system", "content": "You are a radiologist."},
    {"role": "user", "content": "<image>\nWhich organ is shown?"},
    {"role": "assistant", "content": "The left lung."},
    {"role": "user", "content": "Is there a nodule? Size in mm."},
    {"role": "assistant", "content": "Yes, 6 mm in the upper lobe."},
]


def supervised_runs(enc) -> list[list[int]]:
    """Contiguous runs of supervised token ids."""
    runs, cur = [], []
    for i, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def check_runs(tok, enc, expected: list[str], merged: bool) -> None:
    """Decoded supervised runs equal the expected answers (plain: consecutive answers touch)."""
    got = [tok.decode(r) for r in supervised_runs(enc)]
    if merged:
        assert "".join(got) == "".join(expected)
    else:
        assert got == expected


def whole(tok, text: str, n_img: int = 1, n_vol: int = 1) -> list[int]:
    """How the processor tokenises a prompt: markers expanded in the string, then one tokenizer call."""
    text = text.replace("<image>", "<image>" * n_img).replace("<volume>", "<volume>" * n_vol)
    return tok(text, add_special_tokens=False)["input_ids"]


# template name, tokenizer kwargs, expected text of each supervised run given the answer
CASES = {
    "qwen2.5-own": ("auto", {}, lambda a: a + "<|im_end|>"),
    "chatml": ("chatml", {}, lambda a: a + "<|im_end|>"),
    "llama3": ("llama3", {}, lambda a: a + "<|eot_id|>"),
    # a tokenizer-provided (not bundled) Llama-3 template: the end of turn is detected, not declared
    "llama3-own": (LLAMA3, {}, lambda a: a + "<|eot_id|>"),
    "vicuna": ("vicuna", {}, lambda a: " " + a + "<|im_end|>"),
    "plain": ("plain", {}, lambda a: a + "<|im_end|>"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_supervised_tokens_decode_to_answers(case):
    template, kw, expect = CASES[case]
    tok = qwen2_tokenizer(**kw)
    enc = ConversationEncoder(tok, template, num_image_tokens=5)
    assert enc.boundary_safe  # byte-level BPE: segments tokenise as the whole string does
    out = enc.encode(CONV)
    answers = [m["content"] for m in CONV if m["role"] == "assistant"]
    check_runs(tok, out, [expect(a) for a in answers], merged=case == "plain")
    # the marker became exactly 5 placeholder ids, none of them supervised
    img = tok.convert_tokens_to_ids("<image>")
    pos = [i for i, t in enumerate(out.input_ids) if t == img]
    assert len(pos) == 5 and pos == list(range(pos[0], pos[0] + 5))
    assert all(out.labels[p] == IGNORE_INDEX for p in pos)
    # everything decodes back to the rendered conversation (no text lost or duplicated)
    assert tok.decode(out.input_ids) == out.text.replace("<image>", "<image>" * 5)


@pytest.mark.parametrize("case", ["qwen2.5-own", "llama3", "vicuna"])
def test_inference_prompt_equals_training_prefix(case):
    template, kw, _ = CASES[case]
    tok = qwen2_tokenizer(**kw)
    enc = ConversationEncoder(tok, template, num_image_tokens=3)
    train = enc.encode(CONV).input_ids
    for k in (2, 4):  # before the first and the second answer
        prompt = enc.encode_prompt(CONV[:k])
        assert prompt == train[: len(prompt)]
        assert prompt == whole(tok, enc.prompt_text(CONV[:k]), n_img=3)
        # a trailing assistant turn (the reference answer) is not part of the prompt
        assert enc.encode_prompt(CONV[: k + 1]) == prompt
    assert enc.prompt_text(CONV[:2]).endswith(
        {"qwen2.5-own": "<|im_start|>assistant\n", "llama3": "<|end_header_id|>\n\n", "vicuna": "ASSISTANT:"}[case]
    )


@pytest.mark.parametrize("kind", ["medmvl-2d-siglip-mlp", "medmvl-ct-siglip-attnpool"])
def test_vicuna_reproduces_medmvl_ids_and_labels(kind):
    """MedM-VL's own input_ids/labels (marker written as -200/-201) for its `qwen2` template."""
    folder = FIXTURES / kind
    expected = json.loads((folder / "expected.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder / "components" / "qwen2-tiny")
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<volume>"]})
    sentinel = {tok.convert_tokens_to_ids("<image>"): -200, tok.convert_tokens_to_ids("<volume>"): -201}
    enc = ConversationEncoder(tok, "medmvl")
    (train,) = load_records(folder / "inputs" / "train_case.json")
    out = enc.encode(train.messages)
    assert [sentinel.get(i, i) for i in out.input_ids] == expected["training"]["input_ids"]
    assert out.labels == expected["training"]["labels"]
    (infer,) = load_records(folder / "inputs" / "infer.json")
    assert [sentinel.get(i, i) for i in enc.encode_prompt(infer.messages)] == expected["inference"]["input_ids"]
    assert enc.prompt_text(infer.messages) == expected["inference"]["prompt"].replace("<image3d>", "<volume>")


def test_overlong_counts_media_tokens_and_is_never_truncated():
    tok = qwen2_tokenizer()
    conv = [{"role": "user", "content": "<volume> Findings?"}, {"role": "assistant", "content": "Normal."}]
    n_text = ConversationEncoder(tok, "chatml", num_volume_tokens=1).count_tokens(conv)
    enc = ConversationEncoder(tok, "chatml", num_volume_tokens=100, max_length=n_text + 98)
    assert enc.count_tokens(conv) == n_text + 99
    with pytest.raises(
        OverlongSampleError, match=rf"record 'r7'.*{n_text + 99} tokens .* > max_length {n_text + 98}"
    ) as info:
        enc.encode(conv, record="r7")
    assert info.value.length == n_text + 99
    enc.max_length = n_text + 99
    assert len(enc.encode(conv).input_ids) == n_text + 99


def test_errors():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = qwen2_tokenizer()
    with pytest.raises(MedVLDataError, match="no assistant answer"):
        ConversationEncoder(tok, "chatml").encode([{"role": "user", "content": "hi"}], record="x")
    with pytest.raises(ValueError, match="valid choices: auto, tokenizer, chatml, llama3, vicuna, plain, medmvl"):
        resolve_template("alpaca", tok)
    # a tokenizer without a chat template, and without the media token
    bare = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    bare_tok = PreTrainedTokenizerFast(tokenizer_object=bare, eos_token="[UNK]")
    with pytest.raises(ValueError, match="has no chat_template"):
        resolve_template("tokenizer", bare_tok)
    with pytest.raises(MedVLDataError, match="no single token for <image>"):
        ConversationEncoder(bare_tok, "plain").encode(
            [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "hi"}], record="x"
        )


# ------------------------------------------------------------------ property test
_TEXT = st.text(
    alphabet=st.sampled_from(list("abcXYZ 019.,:;!?'\"-\n\t") + ["é", "ü", "中", "肺", "😀", "\r"]),
    min_size=1,
    max_size=20,
)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        q = draw(_TEXT)
        marker = draw(st.sampled_from(["", "<image>", "<volume>", "<image>\n<volume>"]))
        q = marker + q if draw(st.booleans()) else q + marker
        msgs.append({"role": "user", "content": q})
        a = draw(_TEXT)
        if not a.strip():
            a = a + "x"
        msgs.append({"role": "assistant", "content": a})
    return msgs


@pytest.mark.parametrize("case", ["qwen2.5-own", "llama3", "vicuna", "plain"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(conv=conversations())
def test_random_conversations(case, conv):
    template, kw, expect = CASES[case]
    tok = qwen2_tokenizer(**kw)
    enc = ConversationEncoder(tok, template, num_image_tokens=2, num_volume_tokens=3)
    out = enc.encode(conv)
    answers = [unicodedata.normalize("NFC", m["content"].strip()) for m in conv if m["role"] == "assistant"]
    check_runs(tok, out, [expect(a) for a in answers], merged=case == "plain")
    assert len(out.input_ids) == enc.count_tokens(conv)
    if case == "plain":
        return
    for k, m in enumerate(conv):
        if m["role"] == "assistant":
            prompt = enc.encode_prompt(conv[:k])
            assert prompt == out.input_ids[: len(prompt)]
            assert all(lab == IGNORE_INDEX for lab in out.labels[: len(prompt)][-1:])
            assert prompt == whole(tok, enc.prompt_text(conv[:k]), 2, 3)
