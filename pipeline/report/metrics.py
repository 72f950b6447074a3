"""Evaluation measures of a single-label classifier: the one place every report takes them from.

``classification_metrics`` is what metrics.json, summary.json, ``evaluate`` and the sweep's
leaderboard record for a split. Beside accuracy it gives two measures that a skewed class balance
cannot flatter: balanced accuracy (the mean of the per-class recalls) and macro-F1 (the mean of the
per-class F1 scores). A head that always answers the majority class of a 10:1 split scores 0.91
accuracy but 0.5 balanced accuracy.

NumPy only: the CLI imports this module's callers at start-up.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: The headline measures of a split, in the order tables print them.
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Args:
        y_true: true class indices, (N,).
        y_pred: predicted class indices, (N,).
        num_classes: K.

    Returns:
        int64 (K, K); ``[i, j]`` counts rows of true class i predicted as j.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def balanced_accuracy(matrix: np.ndarray) -> float | None:
    """Mean recall over the classes that have rows (as scikit-learn's ``balanced_accuracy_score``).

    Args:
        matrix: a (K, K) confusion matrix, rows true classes.

    Returns:
        The measure in [0, 1]; None when there are no rows.
    """
    actual = matrix.sum(axis=1)
    present = actual > 0
    if not present.any():
        return None
    return float(np.mean(np.diag(matrix)[present] / actual[present]))


def macro_f1(matrix: np.ndarray) -> float | None:
    """Mean F1 over the classes that are true or predicted at least once (as scikit-learn's
    ``f1_score(average="macro")`` on the labels it sees); F1 of a class with no correct row is 0.

    Args:
        matrix: a (K, K) confusion matrix, rows true classes.

    Returns:
        The measure in [0, 1]; None when there are no rows.
    """
    correct = np.diag(matrix).astype(np.float64)
    actual, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    seen = (actual + predicted) > 0
    if not seen.any():
        return None
    # F1 = 2·TP / (2·TP + FP + FN) = 2·TP / (actual + predicted): no 0/0 for a seen class.
    return float(np.mean(2.0 * correct[seen] / (actual[seen] + predicted[seen])))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/support and the confusion matrix.

    Args:
        y_true: true class indices, (N,).
        y_pred: predicted class indices, (N,).
        class_names: name of each class index.

    Returns:
        ``{"rows", "accuracy", "balanced_accuracy", "macro_f1", "per_class": {name: {"precision",
        "recall", "support"}}, "confusion_matrix", "class_names"}``; ``confusion_matrix[i][j]``
        counts rows of true class i predicted as j. Precision of a class never predicted (and recall
        of a class with no rows) is 0.0, as scikit-learn reports with ``zero_division=0``; the three
        headline measures of zero rows are None.
    """
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    correct = np.diag(matrix)
    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = {
            "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(correct[i] / actual[i]) if actual[i] else 0.0,
            "support": int(actual[i]),
        }
    n = int(matrix.sum())
    return {
        "rows": n,
        "accuracy": float(correct.sum() / n) if n else None,
        "balanced_accuracy": balanced_accuracy(matrix),
        "macro_f1": macro_f1(matrix),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
    }
