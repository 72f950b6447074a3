"""``--monitor``: what early stopping and the stage gate watch.

``val_loss`` (the default; lower is better) or a validation measure where higher is better:
``balanced_accuracy``, ``macro_f1`` (single-label tasks) and ``map`` (multi-label tasks, whose
default it is: ``effective_monitor``). The measures are computed once per epoch from the validation
split's logits: train-head's loop has them already, finetune's ``fit`` gets them from
``stage_fit.ValidationMeasure`` (single-label) or ``stage_fit.MultiLabelValidation``. In the history they are
``val_<name>``, beside ``val_loss``. One measure decides: the stage gate compares the seeded and the
fine-tuned model on the monitored measure itself (the validation loss under ``val_loss``), on the
epoch early stopping kept by that same measure.

NumPy only: options are checked before TensorFlow starts.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from headstart.features.errors import Arg
from headstart.pipeline.config import MONITORS
from headstart.pipeline.errors import OptionError
from headstart.pipeline.report.metrics import balanced_accuracy, confusion_matrix, macro_f1


def _single_label(measure: Callable[[np.ndarray], float | None]) -> Callable[..., float]:
    def compute(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> float:
        from headstart.pipeline.model.head import predict_classes

        value = measure(confusion_matrix(labels, predict_classes(logits, num_classes), num_classes))
        return float("nan") if value is None else value

    return compute


def _mean_average_precision(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> float:
    # NaN when no class has a positive row: never an improvement.
    from headstart.pipeline.model.head import logits_to_probabilities
    from headstart.pipeline.report.multilabel_metrics import mean_average_precision

    value = mean_average_precision(labels, logits_to_probabilities(logits, num_classes, True))
    return float("nan") if value is None else value


#: Monitor → ``f(labels, logits, num_classes) -> float`` on the validation split. Labels as the
#: split holds them (int (N,) single-label, multi-hot (N, K) multi-label); logits (N, 1 or K).
VALIDATION_MEASURES: dict[str, Callable[..., float]] = {
    "balanced_accuracy": _single_label(balanced_accuracy),
    "macro_f1": _single_label(macro_f1),
    "map": _mean_average_precision,
}
#: The monitors each task allows.
TASK_MONITORS = {"single_label": ("val_loss", "balanced_accuracy", "macro_f1"), "multi_label": ("val_loss", "map")}


def check_monitor(monitor: str, *, has_validation: bool | None = None, multi_label: bool = False) -> None:
    """Refuses a monitor the run cannot watch, in one line.

    Args:
        monitor: one of ``MONITORS``.
        has_validation: whether the training data has a validation split (None: not known yet).
        multi_label: whether the task is multi-label.

    Raises:
        OptionError: an unknown monitor, one the task does not allow, or a measure without a
            validation split.
    """
    if monitor not in MONITORS:
        raise OptionError.invalid("monitor", monitor, f"must be one of {', '.join(MONITORS)}", shown=repr(monitor))
    task = "multi_label" if multi_label else "single_label"
    if monitor not in TASK_MONITORS[task]:
        raise OptionError(Arg("monitor", monitor), f" needs a {'single' if multi_label else 'multi'}-label task; "
                          f"this one is {task.replace('_', '-')} ({', '.join(TASK_MONITORS[task])} apply)")
    if monitor != "val_loss" and has_validation is False:
        raise OptionError(Arg("monitor", monitor), " needs a validation split, and there is none")


def effective_monitor(monitor: str, multi_label: bool) -> str:
    """What a run watches: a multi-label task's default is validation mAP (its loss says little
    about the ranking per class); otherwise ``monitor`` as given."""
    return "map" if multi_label and monitor == "val_loss" else monitor


def history_key(monitor: str, has_validation: bool) -> str:
    """The history column early stopping watches: "val_loss", "loss" (no validation split), or
    "val_<measure>"."""
    if monitor == "val_loss":
        return "val_loss" if has_validation else "loss"
    return f"val_{monitor}"


def gate_measure(monitor: str, multi_label: bool = False) -> str:
    """The validation measure the stage gate (and the fine-tuning probes) compare, as a split's
    measures name it: "loss" under val_loss (lower is better), else the (effective) monitor."""
    monitor = effective_monitor(monitor, multi_label)
    return "loss" if monitor == "val_loss" else monitor


def validation_measure(monitor: str, labels: np.ndarray, logits: np.ndarray, num_classes: int) -> float:
    """The monitored measure of one validation pass (NaN when it is undefined, e.g. no rows).

    Args:
        monitor: a measure of ``VALIDATION_MEASURES``.
        labels: the split's labels; logits: (N, 1 or K).
        num_classes: K.
    """
    if monitor not in VALIDATION_MEASURES:
        raise OptionError(Arg("monitor", monitor), ": this build cannot compute it yet")
    return float(VALIDATION_MEASURES[monitor](labels, logits, num_classes))


def labels_from_targets(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels a measure takes, from a batch's training targets (``model.head.head_labels``'s form):
    int64 (N,) from float (N, 1) binary targets or int (N,) sparse ones; multi-hot (N, K) as they are."""
    targets = np.asarray(targets)
    if targets.ndim == 2 and targets.shape[1] > 1:
        return targets  # multi-hot rows of a multi-label task
    return targets.reshape(-1).astype(np.int64)
