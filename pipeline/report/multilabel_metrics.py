"""Evaluation measures of a multi-label classifier, and the per-class decision thresholds.

A multi-label head gives one sigmoid probability per class; a row may carry any set of labels.
The measures (NumPy only, written to agree with scikit-learn's definitions, which the tests check
by hand-computed examples):

- per class: precision, recall, F1 at the class's decision threshold, and average precision (AP,
  the threshold-free area under the precision/recall steps, scikit-learn's
  ``average_precision_score``: sum over thresholds of (R_n - R_{n-1}) · P_n);
- micro-F1 (TP, FP, FN pooled over classes), macro-F1 (the mean of the per-class F1);
- mAP: the mean AP over the classes that have at least one positive row;
- exact-match ratio: rows whose predicted label set equals the true one (scikit-learn's
  ``accuracy_score`` on multi-label rows); reported as ``accuracy`` too, so the tables that print
  accuracy for single-label runs print this for multi-label ones.

Thresholds: ``choose_thresholds`` picks, per class, the probability cut that maximises that class's
F1 on the validation split (ties: the highest such cut, the fewest positives); a class with no
positive validation row keeps 0.5. They are saved with the model and used by ``evaluate`` and
``predict``; validation measures computed with them are therefore optimistic, test measures are not.

NumPy only: the CLI imports this module's callers at start-up.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from headstart.pipeline.store.chain_record import DEFAULT_THRESHOLD

#: The headline measures of a multi-label split, in the order tables print them.
HEADLINE = ("map", "micro_f1", "macro_f1", "exact_match")
#: How the thresholds were chosen, as run.json records it.
THRESHOLD_RULE = "per class, the probability cut maximising F1 on the validation split"


def average_precision(y_true: Sequence[int], scores: Sequence[float]) -> float | None:
    """Average precision of one class (scikit-learn's ``average_precision_score``).

    Args:
        y_true: (N,) 0/1 truth.
        scores: (N,) scores, higher meaning more likely positive; tied scores form one step.

    Returns:
        AP in [0, 1]; None when the class has no positive row (AP is undefined there).
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    # The last row of each run of tied scores: every threshold is one distinct score.
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tp = np.cumsum(y)[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # F1 = 2TP / (2TP + FP + FN); 0 where the class is neither true nor predicted (zero_division=0).
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def choose_thresholds(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per-class decision thresholds maximising each class's F1 on the given (validation) rows.

    A row is predicted positive for class c when its probability is at least ``thresholds[c]``.
    Candidates are the probabilities the class's rows take; the best one is returned as the
    midpoint between it and the next lower probability, so rows just below the chosen one stay
    negative without the cut sitting on a training point.

    Args:
        y_true: (N, C) 0/1 truth.
        probabilities: (N, C) sigmoid probabilities.

    Returns:
        float64 (C,); ``DEFAULT_THRESHOLD`` for a class with no positive row.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.full(y.shape[1], DEFAULT_THRESHOLD)
    for c in range(y.shape[1]):
        positives = int(y[:, c].sum())
        if positives == 0:
            continue
        order = np.argsort(-p[:, c], kind="stable")
        s, t = p[order, c], y[order, c]
        last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
        tp = np.cumsum(t)[last]
        fp = last + 1 - tp
        f1 = _f1_counts(tp, fp, positives - tp)
        best = int(np.argmax(f1))  # first maximum: the highest cut among equally good ones
        below = s[last[best] + 1] if last[best] + 1 < len(s) else 0.0
        thresholds[c] = (s[last[best]] + below) / 2.0
    return thresholds


def predict_label_sets(probabilities: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Multi-hot predictions: probability at least the class's threshold. int64 (N, C).

    The rule ``headstart.pipeline.model.head.predict_classes`` applies to logits.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    return (p >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.int64)


def multilabel_metrics(y_true: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float],
                       class_names: Sequence[str]) -> dict[str, Any]:
    """Every multi-label measure of one split.

    Args:
        y_true: (N, C) 0/1 truth.
        probabilities: (N, C) sigmoid probabilities.
        thresholds: (C,) decision thresholds (``choose_thresholds``).
        class_names: name of each class column.

    Returns:
        ``{"task": "multi_label", "rows", "accuracy" (= exact_match), "exact_match", "map",
        "micro_f1", "macro_f1", "balanced_accuracy" (None: a single-label measure), "per_class":
        {name: {"precision", "recall", "f1", "average_precision", "support", "threshold"}},
        "label_cardinality" (mean labels per row), "class_names"}``. Precision of a class never
        predicted is 0.0 (``zero_division=0``); AP of a class without positives is None and left
        out of mAP; the headline measures of zero rows are None.
    """
    y = np.asarray(y_true, dtype=np.int64).reshape(-1, len(class_names))
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(class_names))
    predicted = predict_label_sets(p, thresholds)
    tp = (predicted * y).sum(axis=0)
    fp = (predicted * (1 - y)).sum(axis=0)
    fn = ((1 - predicted) * y).sum(axis=0)
    f1 = _f1_counts(tp, fp, fn)
    ap = [average_precision(y[:, c], p[:, c]) for c in range(len(class_names))]
    per_class = {name: {"precision": float(tp[c] / (tp[c] + fp[c])) if tp[c] + fp[c] else 0.0,
                        "recall": float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else 0.0,
                        "f1": float(f1[c]), "average_precision": ap[c], "support": int(y[:, c].sum()),
                        "threshold": float(thresholds[c])}
                 for c, name in enumerate(class_names)}
    n = len(y)
    defined = [a for a in ap if a is not None]
    exact = float(np.mean((predicted == y).all(axis=1))) if n else None
    return {
        "task": "multi_label",
        "rows": n,
        "accuracy": exact,
        "exact_match": exact,
        "map": float(np.mean(defined)) if defined else None,
        "micro_f1": float(_f1_counts(tp.sum(), fp.sum(), fn.sum())) if n else None,
        "macro_f1": float(np.mean(f1)) if n else None,
        "balanced_accuracy": None,
        "per_class": per_class,
        "label_cardinality": float(y.sum(axis=1).mean()) if n else None,
        "class_names": list(class_names),
    }


def mean_average_precision(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """mAP alone (what early stopping and the stage gate watch): mean AP over classes with positives."""
    y = np.asarray(y_true)
    p = np.asarray(probabilities)
    defined = [a for a in (average_precision(y[:, c], p[:, c]) for c in range(y.shape[1])) if a is not None]
    return float(np.mean(defined)) if defined else None


def thresholds_record(thresholds: Sequence[float], class_names: Sequence[str], chosen_on: str | None) -> dict:
    """thresholds.json / run.json's "thresholds": class → threshold, and how they were chosen.

    Args:
        chosen_on: the split they were chosen on ("validation"), or None when there was none to
            choose on and every class kept ``DEFAULT_THRESHOLD``.
    """
    return {"task": "multi_label",
            "thresholds": {name: float(t) for name, t in zip(class_names, thresholds)},
            "chosen_on": chosen_on,
            "rule": THRESHOLD_RULE if chosen_on else f"no validation split: {DEFAULT_THRESHOLD} for every class"}


def summary_rows(validation: dict | None, test: dict | None) -> list[tuple[str, Any]]:
    """The (label, value) rows the train-head and finetune tables print for a multi-label run."""
    val, tst = validation or {}, test or {}
    return [("validation mAP", val.get("map")), ("validation loss", val.get("loss")),
            ("test mAP", tst.get("map")), ("test micro-F1", tst.get("micro_f1")),
            ("test macro-F1", tst.get("macro_f1")), ("test exact match", tst.get("exact_match")),
            ("test loss", tst.get("loss"))]
