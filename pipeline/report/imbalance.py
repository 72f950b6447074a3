"""The imbalance warning: one line when the largest training class is over 5× the smallest.

``inspect`` (on a cache) and ``train-head`` print it; it suggests ``--class-weight balanced`` and is
silent once class weights are set. NumPy only: ``inspect`` runs without TensorFlow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Largest over smallest training class above which the warning is printed.
IMBALANCE_RATIO = 5.0


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows per class.

    Args:
        labels: int class indices, (N,).
        num_classes: K.

    Returns:
        int64 (K,).
    """
    return np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=num_classes)[:num_classes]


def imbalance_warning(counts: Sequence[int], class_names: Sequence[str], *,
                      class_weight: str = "none") -> str | None:
    """The warning line for a training split's class counts, or None when it is balanced enough.

    Args:
        counts: training rows per class, (K,).
        class_names: name of each class.
        class_weight: the run's ``--class-weight``; anything but "none" silences the warning.

    Returns:
        e.g. ``"warning: the training split is imbalanced: cats 700 rows, dogs 70 (10.0×); consider
        --class-weight balanced"``; None when the ratio is at most ``IMBALANCE_RATIO``, when class
        weights are set, or when there are fewer than two classes.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if class_weight != "none" or counts.size < 2:
        return None
    big, small = int(np.argmax(counts)), int(np.argmin(counts))
    if counts[big] <= IMBALANCE_RATIO * counts[small]:
        return None
    ratio = f"{counts[big] / counts[small]:.1f}×" if counts[small] else "no rows of the smallest"
    return (f"warning: the training split is imbalanced: {class_names[big]} {counts[big]} rows, "
            f"{class_names[small]} {counts[small]} ({ratio}); consider --class-weight balanced")
