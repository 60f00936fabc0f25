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
    rows = [{"id": "a", "answer_type": "CLOSED", "correct": 1}, {"id": "b", "answer_type": "OPEN", "correct": 0},
            {"id": "c", "answer_type": "CLOSED", "correct": 0}]
    res = ScoreResult("exact_norm", {"accuracy": 1 / 3, "closed_accuracy": 0.5, "open_accuracy": 0.0}, rows)
    assert item_values(res, "accuracy") == [1, 0, 0]
    assert item_values(res, "closed_accuracy") == [1, 0]
    wrong = ScoreResult("exact_norm", {"accuracy": 0.9}, rows)
    assert item_values(wrong, "accuracy") is None  # the column does not give the reported value
    corpus = ScoreResult("report", {"bleu_4": 0.2}, [{"id": "a", "bleu_4": 0.1}])
    assert item_values(corpus, "bleu_4") is None  # corpus BLEU is not a mean over reports
