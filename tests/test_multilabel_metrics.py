"""Multi-label measures and thresholds (pipeline/report/multilabel_metrics.py), by hand and against
scikit-learn where it is installed (an oracle for the tests only; the code is NumPy)."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.pipeline.report import multilabel_metrics as mm
from headstart.pipeline.store.chain_record import thresholds_from_record


def test_average_precision_by_hand():
    # Ranked: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = 1/2·1 + 1/2·2/3.
    assert mm.average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)
    assert mm.average_precision([0, 0], [0.3, 0.2]) is None  # no positive: undefined
    # Ties form one step: both rows at 0.5 enter together (precision 1/2 at recall 1).
    assert mm.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_measures_by_hand():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.3, 0.2], [0.1, 0.1, 0.7]])
    m = mm.multilabel_metrics(y, p, [0.5, 0.5, 0.5], ["a", "b", "c"])
    # Predicted sets: {a,c}, {b}, {a}, {c}. a: TP2; b: TP1 FN1; c: TP1 FP1.
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "average_precision": 1.0,
                                   "support": 2, "threshold": 0.5}
    assert m["per_class"]["b"]["recall"] == 0.5 and m["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["precision"] == 0.5
    assert m["exact_match"] == m["accuracy"] == 0.5  # rows 0 and 1
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # b: ranked 0.7 (pos), 0.3 (pos), …: AP 1; c: 0.7 (neg), 0.6 (pos): AP 1/2.
    assert m["map"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["label_cardinality"] == 1.25 and m["task"] == "multi_label"


def test_measures_agree_with_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    p = np.clip(0.5 * y + rng.random((200, 4)) * 0.7, 0, 1).round(2)  # rounded: ties included
    cuts = np.array([0.4, 0.5, 0.6, 0.7])
    m = mm.multilabel_metrics(y, p, cuts, list("abcd"))
    pred = (p >= cuts).astype(int)
    assert m["map"] == pytest.approx(sk.average_precision_score(y, p, average="macro"))
    assert m["micro_f1"] == pytest.approx(sk.f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert m["exact_match"] == pytest.approx(sk.accuracy_score(y, pred))
    for c, name in enumerate("abcd"):
        assert m["per_class"][name]["average_precision"] == pytest.approx(sk.average_precision_score(y[:, c], p[:, c]))
        assert m["per_class"][name]["precision"] == pytest.approx(sk.precision_score(y[:, c], pred[:, c]))


def test_thresholds_maximise_each_class_f1_on_validation():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1]])
    p = np.array([[0.30, 0.9], [0.25, 0.1], [0.20, 0.8], [0.05, 0.7], [0.28, 0.6]])
    cuts = mm.choose_thresholds(y, p)
    # Class 0: the three positives are the three highest (0.30, 0.28, 0.25); next lower is 0.20.
    assert cuts[0] == pytest.approx((0.25 + 0.20) / 2)
    pred = mm.predict_label_sets(p, cuts)
    np.testing.assert_array_equal(pred[:, 0], y[:, 0])
    # Every other cut scores no better F1 for class 1.
    best = mm.multilabel_metrics(y, p, cuts, ["a", "b"])["per_class"]["b"]["f1"]
    for t in np.unique(p[:, 1]):
        trial = mm.multilabel_metrics(y, p, [0.5, t], ["a", "b"])["per_class"]["b"]["f1"]
        assert trial <= best + 1e-12
    # A class without positives keeps the default.
    assert mm.choose_thresholds(np.zeros((3, 1)), np.array([[0.9], [0.1], [0.4]]))[0] == mm.DEFAULT_THRESHOLD


def test_threshold_record_round_trips_by_class_name():
    record = mm.thresholds_record([0.2, 0.7], ["cat", "sofa"], "validation")
    assert record["chosen_on"] == "validation" and "F1" in record["rule"]
    np.testing.assert_array_equal(thresholds_from_record(record, ["sofa", "cat", "new"]), [0.7, 0.2, 0.5])
    assert "no validation split" in mm.thresholds_record([0.5], ["x"], None)["rule"]
