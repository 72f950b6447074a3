"""One trial's course inside a batched group: its history, early stopping, kept weights and record.

Every epoch the group predicts the validation split once for all its members (logits (T, N, L));
``validation_pass`` turns them into each member's ``val_loss``, ``val_accuracy`` and monitored
measure (as ``training.head_fit.evaluate_head`` computes them for one model), and each
``Member`` applies train-head's early-stopping rule (``training.early_stopping.EarlyStopping``) to
the monitored column. ``finish`` makes the trial's record, ``TrialRun``, with the validation
measures of its kept weights as train-head's metrics.json would hold them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from headstart.pipeline.training.head_params import SweepCache
from headstart.pipeline.training.objective import Objective
from headstart.pipeline.training.early_stopping import EarlyStopping


@dataclass
class TrialRun:
    """What one trial of a group produced.

    Attributes:
        history: per epoch ``loss, accuracy, val_loss, val_accuracy`` and, under a monitor other
            than val_loss, ``val_<measure>`` (train-head's history).
        best_epoch: 1-based epoch whose weights were kept.
        stopped: "early" (patience ran out), "pruned" (the pruner stopped it) or "epochs".
        validation: the kept weights' validation measures as train-head's metrics.json has them
            (``report.split_measures``): "loss", "accuracy", and "balanced_accuracy", "macro_f1"
            (single-label) or "map", "micro_f1", "macro_f1", "exact_match" (multi-label, at
            thresholds chosen on validation).
        seconds: this trial's share of the group's wall time.
        weights: the best epoch's Dense weights by layer name ("hidden", "logits").
        objective: the monitored value of the kept epoch: what Optuna is told.
        logits: float32 (N_val, L), the kept weights' validation logits (None without validation).
        epoch_seconds: wall seconds of each epoch the trial ran (the group's, validation included).
        note: why it stopped where it did, as train-head logs it: the early-stopping line, the
            warning that no epoch was finite, or "" (its last epoch, or pruned).
    """

    history: dict[str, list[float]]
    best_epoch: int
    stopped: str
    validation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    weights: dict = field(default_factory=dict)
    objective: float = math.nan
    logits: np.ndarray | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def epochs_run(self) -> int:
        return len(self.history["loss"])


class Member:
    """One trial's history and early stopping: train-head's rule on the monitored column, the best
    epoch's weights and validation logits kept.

    Without a validation split (train-head on a cache that has none, diagnose's fold heads) early
    stopping watches the training loss, and the history holds only "loss" and "accuracy".
    """

    def __init__(self, objective: Objective, patience: int, validation: bool = True) -> None:
        self.stopping = EarlyStopping(objective.history_key if validation else "loss", patience)
        # The history columns in train-head's order: "val_<measure>" last.
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        if validation:
            self.history.update({"val_loss": [], "val_accuracy": []})
        self.history.setdefault(self.stopping.monitor, [])
        self.best_weights: tuple[dict, np.ndarray | None] | None = None
        self.stopped: str | None = None
        self.epoch_seconds: list[float] = []
        self.never_finite = False

    @property
    def best_epoch(self) -> int:
        return self.stopping.best_epoch or 0

    def record(self, train_means: np.ndarray, val: dict[str, float], val_logits: np.ndarray | None, epoch: int,
               weights: Callable[[], dict]) -> None:
        """Appends one epoch (training means (2,): loss, accuracy; ``val``: this member's validation
        columns) and applies train-head's early-stopping rule."""
        self.history["loss"].append(float(train_means[0]))
        self.history["accuracy"].append(float(train_means[1]))
        for key, value in val.items():
            self.history[key].append(float(value))
        if self.stopping.update(epoch, self.history[self.stopping.monitor][-1]):
            self.best_weights = (weights(), val_logits)
        elif self.stopping.exhausted:
            self.stopped = "early"

    def finished(self, pruned: bool, last: bool, logits: np.ndarray | None, weights: Callable[[], dict]) -> bool:
        """Whether the trial stops after this epoch (early stopping, the pruner, or its last epoch)."""
        if self.stopped is None and (pruned or last):
            self.stopped = "pruned" if pruned else "epochs"
        if self.stopped is not None and self.best_weights is None:
            # Never finite: keep the last weights, as train-head does.
            self.never_finite = True
            self.stopping.best_epoch = len(self.history["loss"])
            self.stopping.best_value = self.history[self.stopping.monitor][-1]
            self.best_weights = (weights(), logits)
        return self.stopped is not None


def validation_pass(logits: np.ndarray, cache: SweepCache, objective: Objective) -> dict[str, np.ndarray]:
    """Every member's validation columns at once: logits (T, N, L) → {"val_loss", "val_accuracy"
    [, "val_<measure>"]: (T,)}.

    The loss is the unsmoothed one train-head's ``evaluate_head`` reports (Keras's cross-entropy
    from logits, here in float64: equal to float32 rounding), so trials compare on one scale; a
    multi-label head's is the binary cross-entropy averaged over rows and classes, its accuracy
    per label at probability 0.5. The monitored measure is ``training.monitor.validation_measure``.
    """
    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.training.monitor import validation_measure

    k, multi_label = len(cache.class_names), cache.multi_label
    labels = cache.labels["validation"]
    z = logits.astype(np.float64).reshape(len(logits), len(labels), -1)
    if k == 2 or multi_label:
        y = labels.astype(np.float64).reshape(len(labels), -1)[None]
        per = np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))
        loss = per.mean(axis=(1, 2))
    else:
        top = z.max(axis=-1, keepdims=True)
        log_norm = top[..., 0] + np.log(np.exp(z - top).sum(axis=-1))
        loss = (log_norm - np.take_along_axis(z, labels[None, :, None], axis=-1)[..., 0]).mean(axis=1)
    columns = {"val_loss": loss,
               "val_accuracy": np.array([np.mean(predict_classes(m, k, multi_label) == labels) for m in logits])}
    if objective.monitor != "val_loss":
        columns[objective.history_key] = np.array([validation_measure(objective.monitor, labels, m, k)
                                                   for m in logits])
    return columns


def finish(member: Member, cache: SweepCache, seconds: float) -> TrialRun:
    """The trial's record: history, best epoch, and validation measures of its kept weights (none
    without a validation split)."""
    from headstart.pipeline.report.split_measures import measure_splits

    weights, logits = member.best_weights
    validation: dict[str, Any] = {}
    if logits is not None:
        sections, _ = measure_splits({"validation": cache.labels["validation"]}, {"validation": logits},
                                     cache.class_names, multi_label=cache.multi_label)
        validation = sections["validation"]
        # The float64 loss early stopping and the leaderboard saw for that epoch (the same to rounding).
        validation["loss"] = member.history["val_loss"][member.best_epoch - 1]
    note = (member.stopping.never_finite_message() if member.never_finite
            else member.stopping.stop_message() if member.stopped == "early" else "")
    return TrialRun(history=member.history, best_epoch=member.best_epoch, stopped=member.stopped or "epochs",
                    validation=validation, seconds=seconds, weights=weights,
                    objective=float(member.stopping.best_value), logits=logits,
                    epoch_seconds=list(member.epoch_seconds), note=note)


__all__ = ["Member", "TrialRun", "finish", "validation_pass"]
