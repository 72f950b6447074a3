"""Balanced accuracy and macro-F1 (pipeline/report/metrics.py) against scikit-learn, and in the reports."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from headstart.pipeline.report.metrics import classification_metrics


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 3), (2, 5)])
def test_balanced_accuracy_and_macro_f1_match_scikit_learn(seed, k):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, 60)
    y_pred = np.where(rng.random(60) < 0.6, y_true, rng.integers(0, k, 60))
    m = classification_metrics(y_true, y_pred, [f"c{i}" for i in range(k)])
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_majority_answer_scores_high_accuracy_but_half_balanced_accuracy():
    y_true = [0] * 91 + [1] * 9
    m = classification_metrics(y_true, [0] * 100, ["cats", "dogs"])
    assert m["accuracy"] == pytest.approx(0.91)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # F1 of cats = 2·91/(91+100); dogs is true but never predicted: F1 0.
    assert m["macro_f1"] == pytest.approx((2 * 91 / 191 + 0.0) / 2)


def test_a_class_absent_from_the_split_is_left_out_and_zero_rows_give_none():
    # Class "c" neither occurs nor is predicted: as scikit-learn, it does not dilute the means.
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx(f1_score([0, 0, 1, 1], [0, 1, 1, 1], average="macro"))
    empty = classification_metrics([], [], ["a", "b"])
    assert empty["accuracy"] is None and empty["balanced_accuracy"] is None and empty["macro_f1"] is None
