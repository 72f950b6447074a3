"""One split's measures from its logits: the one dispatch between single- and multi-label tasks.

``measure_split`` is what train-head's, finetune's and evaluate's metrics sections are made of:
the loss the head trains with (unsmoothed, mean over rows — and over classes for multi-label),
then ``headstart.pipeline.report.metrics.classification_metrics`` for a single-label task or
``headstart.pipeline.report.multilabel_metrics.multilabel_metrics`` (at the saved per-class
thresholds) for a multi-label one. Keras is imported only inside the functions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def split_loss(labels: np.ndarray, logits: np.ndarray, num_classes: int, multi_label: bool = False) -> float | None:
    """The head's (unsmoothed) loss on one split, as ``model.evaluate`` reports it; None for no rows."""
    from headstart.pipeline.model.head import head_labels, head_loss_and_metrics

    if not len(labels):
        return None
    loss_fn, _ = head_loss_and_metrics(num_classes, multi_label=multi_label)
    return float(loss_fn(head_labels(labels, num_classes, multi_label), logits))


def choose_split_thresholds(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class thresholds maximising F1 on these (validation) rows; float64 (C,)."""
    from headstart.pipeline.model.head import logits_to_probabilities
    from headstart.pipeline.report.multilabel_metrics import choose_thresholds

    return choose_thresholds(labels, logits_to_probabilities(logits, num_classes, True))


def measure_split(labels: np.ndarray, logits: np.ndarray, class_names: Sequence[str], *,
                  multi_label: bool = False, thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """{"loss", **the task's measures} of one split.

    Args:
        labels: (N,) class indices, or (N, C) multi-hot rows when ``multi_label``.
        logits: (N, 1) or (N, C) head logits.
        class_names: name of each class.
        multi_label: the task.
        thresholds: (C,) multi-label decision thresholds; None means 0.5 for every class.
    """
    from headstart.pipeline.model.head import logits_to_probabilities, predict_classes

    k = len(class_names)
    measures: dict[str, Any] = {"loss": split_loss(labels, logits, k, multi_label)}
    if multi_label:
        from headstart.pipeline.report.multilabel_metrics import DEFAULT_THRESHOLD, multilabel_metrics

        cuts = np.full(k, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
        probabilities = logits_to_probabilities(logits, k, True) if len(labels) else np.zeros((0, k))
        measures.update(multilabel_metrics(np.asarray(labels).reshape(-1, k), probabilities, cuts, class_names))
        return measures
    from headstart.pipeline.report.metrics import classification_metrics

    measures.update(classification_metrics(labels, predict_classes(logits, k), class_names))
    return measures


def measure_splits(labels: dict[str, np.ndarray], logits: dict[str, np.ndarray], class_names: Sequence[str], *,
                   multi_label: bool = False) -> tuple[dict[str, Any], dict | None]:
    """metrics.json's "validation" and "test" sections, and (multi-label) the thresholds behind them.

    Multi-label thresholds are chosen on the validation split (``choose_split_thresholds``) and used
    for every split; without a validation split each class keeps 0.5.

    Args:
        labels, logits: split name → its labels and logits; an absent split gives None.

    Returns:
        ({"validation": section or None, "test": section or None}, thresholds record or None for
        a single-label task; see ``multilabel_metrics.thresholds_record``).
    """
    from headstart.pipeline.report.multilabel_metrics import DEFAULT_THRESHOLD, thresholds_record

    record, cuts = None, None
    if multi_label:
        k = len(class_names)
        chosen_on = "validation" if len(labels.get("validation", ())) else None
        cuts = (choose_split_thresholds(labels["validation"], logits["validation"], k) if chosen_on
                else np.full(k, DEFAULT_THRESHOLD))
        record = thresholds_record(cuts, class_names, chosen_on)
    sections = {name: (measure_split(labels[name], logits[name], class_names, multi_label=multi_label,
                                     thresholds=cuts) if name in logits else None)
                for name in ("validation", "test")}
    return sections, record
