"""Answer normalisers and tokenisers of the reference evaluation codes, re-implemented.

Each function reproduces one reference implementation *including its quirks*, because a number
is only comparable with the published ones when the text is normalised the same way. The quirks
are documented where they matter; none of them is "fixed" here (fixing them would change the
numbers). Sources (read, not copied):

- LLaVA-Med v1.0.0 ``llava/eval/eval_metrics/glossary.py`` (``normalize_word``) and ``utils.py``
  (``split_sentence``).
- lmms-eval ``lmms_eval/tasks/slake/utils.py`` (``normalize_answer`` with Chinese yes/no synonyms).
- M3D ``Bench/eval/metrics.py`` (SQuAD-style ``normalize_answer``).
- MedEvalKit ``utils/utils.py`` (``parse_response``, ``tokenize``).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict

# ---------------------------------------------------------------------------------------------
# LLaVA-Med v1.0.0 normalize_word
# ---------------------------------------------------------------------------------------------

# The VQA-v2 contraction table LLaVA-Med ships (only words without an apostrophe can match,
# because the punctuation pass runs before; the table is kept whole for fidelity).
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
# Number words -> digits ("none" becomes "0", which is why "No, there is none." -> "no there is 0").
_MANUAL_MAP = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# Quirk kept: "(?!<=\d)" is a negative *lookahead* for the literal "<=" (a typo of a lookbehind),
# so in effect every period not followed by a digit is removed.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_LLAVA_PUNCT = [
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]


def llava_med_normalize_word(text: str) -> str:
    """LLaVA-Med v1.0.0 ``normalize_word`` (VQA-v2 style answer normalisation).

    Quirks reproduced: a punctuation mark is deleted (not replaced by a space) when it touches a
    space anywhere in the text or when the text contains a digit-comma-digit group; periods are
    removed by ``re.sub(..., count=re.UNICODE)``, i.e. at most 32 of them (the flag was passed as
    the *count* argument); number words become digits, articles are dropped.

    Args:
        text: raw answer text.
    """
    token = text
    out = token
    has_digit_comma = _COMMA_STRIP.search(token) is not None
    for p in _LLAVA_PUNCT:
        if (p + " " in token or " " + p in token) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    token = _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))
    words = []
    for word in token.lower().split():
        word = _MANUAL_MAP.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    words = [_CONTRACTIONS.get(w, w) for w in words]
    return " ".join(words).replace(",", "")


def llava_med_split_sentence(sentence: str, n: int) -> dict[str, int]:
    """LLaVA-Med ``split_sentence``: n-gram counts of the lower-cased whitespace tokens.

    Args:
        sentence: text.
        n: n-gram order.
    """
    words: dict[str, int] = defaultdict(int)
    toks = sentence.lower().strip().split()
    for i in range(len(toks) - n + 1):
        gram = " ".join(toks[i : i + n])
        if gram:
            words[gram] += 1
    return dict(words)


# ---------------------------------------------------------------------------------------------
# lmms-eval SLAKE normalize_answer
# ---------------------------------------------------------------------------------------------

_EN_YES = {"yes", "yeah", "yep", "true"}
_EN_NO = {"no", "nope", "false"}
_ZH_YES = {"是", "是的", "有", "包含", "可以", "能", "会", "正常"}
_ZH_NO = {"否", "不是", "没有", "无", "不包含", "不能", "不会", "不可以", "不正常", "异常"}
_ZH_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～、，。；：《》？【】（）"
_SLAKE_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation + _ZH_PUNCTUATION})


def slake_normalize_answer(text: object) -> str:
    """lmms-eval SLAKE ``normalize_answer`` (English and Chinese short answers).

    Lower-case, drop parenthesised asides (ASCII and full-width), punctuation -> space, collapse
    spaces, "x ray"/"xray" -> "xray", and map whole-answer yes/no synonyms (English and Chinese,
    e.g. "是的" -> "yes", "不是" -> "no") to "yes"/"no".

    Args:
        text: the answer (None -> "").
    """
    s = "" if text is None else str(text)
    s = s.strip().lower()
    s = re.sub(r"\([^)]*\)", " ", s)
    s = re.sub(r"（[^）]*）", " ", s)
    s = s.translate(_SLAKE_PUNCT_TABLE)
    s = re.sub(r"\s+", " ", s).strip()
    if s in {"x ray", "xray"}:
        s = "xray"
    if s in _EN_YES or s in _ZH_YES:
        return "yes"
    if s in _EN_NO or s in _ZH_NO:
        return "no"
    return s


# ---------------------------------------------------------------------------------------------
# M3D (SQuAD) normalize_answer
# ---------------------------------------------------------------------------------------------

_ASCII_PUNCT = set(string.punctuation)


def squad_normalize_answer(text: str) -> str:
    """M3D ``Bench/eval/metrics.py`` ``normalize_answer`` (the SQuAD v1.1 normaliser).

    Lower-case, delete ASCII punctuation (so "3.5" -> "35", "T2-weighted" -> "t2weighted"),
    drop articles, collapse whitespace. Non-ASCII punctuation is kept.

    Args:
        text: answer text.
    """
    s = text.lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# MedEvalKit
# ---------------------------------------------------------------------------------------------

_MEDEVALKIT_ANSWER_PATTERNS = [
    "**answer**:",
    "**answer**",
    "*answer*:",
    "**answer:**",
    "answer is",
    "answer:",
    "答案:",
    "final answer",
    "final answer is",
]


def extract_boxed_content(text: str) -> str:
    """Content of the last ``\\boxed{...}`` (balanced braces), or the string "None".

    Mirrors ``mathruler.grader.extract_boxed_content`` as MedEvalKit uses it (its "None" string
    return value is relied upon by the caller).

    Args:
        text: model output.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return "None"
    i = start + len("\\boxed{")
    depth = 1
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return "".join(out).strip()
        out.append(ch)
        i += 1
    return "None"


def _between_tags(text: str, tag: str) -> str:
    start_tag, end_tag = f"<{tag}>", f"</{tag}>"
    parts = []
    start = text.find(start_tag)
    while start != -1:
        end = text.find(end_tag, start + len(start_tag))
        if end == -1:
            break
        parts.append(text[start + len(start_tag) : end])
        start = text.find(start_tag, end + len(end_tag))
    return " ".join(parts).strip()


def medevalkit_parse_response(response: str) -> str:
    """MedEvalKit ``parse_response``: lower-case, take ``\\boxed{}`` / ``<answer>`` content, then
    the text after the last answer cue ("answer:", "the answer is", ...).

    Quirk kept: any response containing the word "boxed" without a ``\\boxed{`` becomes "none".

    Args:
        response: model output.
    """
    response = response.lower()
    if "boxed" in response:
        response = extract_boxed_content(response)
    elif "<answer>" in response:
        response = _between_tags(response, "answer") or response
    for pattern in _MEDEVALKIT_ANSWER_PATTERNS:
        if pattern in response:
            response = response.split(pattern)[-1]
    return response


def medevalkit_tokenize(text: str) -> list[str]:
    """MedEvalKit ``tokenize``: lower-case, detach periods, split on single spaces.

    Splitting on ``" "`` (not on whitespace) keeps empty tokens for double spaces, as the
    reference does.

    Args:
        text: text to tokenise.
    """
    return text.lower().replace(".", " .").split(" ")


def jieba_tokenize(text: str) -> list[str]:
    """Chinese word segmentation with jieba (precise mode, ``jieba.lcut``), whitespace dropped.

    Args:
        text: text (mixed Chinese/Latin is fine).
    """
    import jieba  # imported lazily: building its dictionary costs ~1 s

    jieba.setLogLevel(60)  # jieba logs its dictionary load at INFO on the root of its own logger
    return [t for t in jieba.lcut(text) if t.strip()]


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains CJK ideographs (used to pick the Chinese tokeniser).

    Args:
        text: text.
    """
    return re.search(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]", text) is not None
