"""Bootstrap intervals and the per-item values behind mean-over-items metrics."""

from __future__ import annotations

import numpy as np
import pytest

from medvl.eval.results import ScoreResult, bootstrap_ci, item_values


def test_bootstrap_matches_a_hand_written_percentile_bootstrap():
    values = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(values), size=(500, len(values)))
    means = [sum(values[j] for j in row) / len(values) for row in idx]
    low, high = bootstrap_ci(values, n_resamples=500, seed=7)
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_ci(values, n_resamples=500, seed=7) == (low, high)  # seeded: reproducible
    assert low < np.mean(values) < high
    assert bootstrap_ci([0.25] * 5, n_resamples=50) == (0.25, 0.25)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(values, n_resamples=0)


def test_item_values_only_when_they_reproduce_the_aggregate():
    rows = [
        {"id": "a", "answer_type": "CLOSED", "correct": 1},
        {"id": "b", "answer_type": "OPEN", "correct": 0},
        {"id": "c", "answer_type": "CLOSED", "correct": 0},
    ]
    res = ScoreResult("exact_norm", {"accuracy": 1 / 3, "closed_accuracy": 0.5, "open_accuracy": 0.0}, rows)
    assert item_values(res, "accuracy") == [1, 0, 0]
    assert item_values(res, "closed_accuracy") == [1, 0]
    wrong = ScoreResult("exact_norm", {"accuracy": 0.9}, rows)
    assert item_values(wrong, "accuracy") is None  # the column does not give the reported value
    corpus = ScoreResult("report", {"bleu_4": 0.2}, [{"id": "a", "bleu_4": 0.1}])
    assert item_values(corpus, "bleu_4") is None  # corpus BLEU is not a mean over reports


def test_corpus_bleu_bootstrap_reproduces_pycocoevalcap_and_brackets_it():
    from pycocoevalcap.bleu.bleu import Bleu

    from medvl.eval.report_metrics import bleu_bootstrap

    preds = [
        "the heart is normal in size",
        "no pleural effusion",
        "mild cardiomegaly is seen",
        "lungs are clear",
        "there is a small left effusion",
    ]
    refs = [
        "heart size is normal",
        "no pleural effusion or pneumothorax",
        "cardiomegaly is seen",
        "the lungs are clear",
        "small left pleural effusion",
    ]
    keys = range(len(preds))
    corpus, _ = Bleu(4).compute_score({k: [refs[k]] for k in keys}, {k: [preds[k]] for k in keys}, verbose=0)
    # intervals come back only when the summed per-report counts reproduce pycocoevalcap's corpus value
    ci = bleu_bootstrap(preds, refs, n_resamples=400, seed=3)
    assert set(ci) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
    for n in range(4):
        low, high = ci[f"bleu_{n + 1}"]
        assert low <= corpus[n] + 1e-12 and corpus[n] - 1e-12 <= high and low < high
    assert bleu_bootstrap(preds, refs, n_resamples=400, seed=3) == ci
    # a set of identical pairs: every resample has BLEU 1
    same = bleu_bootstrap(refs, refs, n_resamples=50, seed=0)
    assert all(v == pytest.approx([1.0, 1.0]) for v in same.values())
