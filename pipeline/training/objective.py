"""What a sweep selects on: the ``--monitor`` measure on validation, and which way is better.

One object answers, for every part of the sweep, what train-head's ``--monitor`` answers for one
head: the column each trial's early stopping watches (``history_key``: "val_loss" or
"val_<measure>"), the value Optuna is told and its pruner sees each epoch, the study's direction
(minimise a loss, maximise a measure), the leaderboard's order and the column it shows. A
multi-label cache's default is validation mAP (``training.monitor.effective_monitor``), as in
train-head. No TensorFlow or Optuna here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headstart.pipeline.config import HIGHER_IS_BETTER


@dataclass(frozen=True)
class Objective:
    """The monitored validation measure of a sweep.

    Attributes:
        monitor: the effective monitor: "val_loss", "balanced_accuracy", "macro_f1" or "map".
    """

    monitor: str = "val_loss"

    @property
    def history_key(self) -> str:
        """The history column early stopping watches, and the leaderboard's column: "val_loss", "val_map" …"""
        from headstart.pipeline.training.monitor import history_key

        return history_key(self.monitor, True)

    @property
    def measure(self) -> str:
        """The key of a trial's validation record: "loss", "map", "balanced_accuracy" or "macro_f1"."""
        return "loss" if self.monitor == "val_loss" else self.monitor

    @property
    def higher_is_better(self) -> bool:
        return self.monitor in HIGHER_IS_BETTER

    @property
    def direction(self) -> str:
        """Optuna's study direction."""
        return "maximize" if self.higher_is_better else "minimize"

    def rank(self, value: float | None) -> float:
        """A sort key, best first: the loss itself, a measure negated; a missing or NaN value last."""
        if value is None or not math.isfinite(float(value)):
            return math.inf
        return -float(value) if self.higher_is_better else float(value)

    def best(self, values: list[float]) -> float:
        """The best of ``values`` (non-empty)."""
        return min(values, key=self.rank)


def sweep_objective(monitor: str, multi_label: bool) -> Objective:
    """The objective of ``sweep --monitor MONITOR`` on caches of that task.

    Raises:
        OptionError: a monitor the task does not allow (``training.monitor.check_monitor``).
    """
    from headstart.pipeline.training.monitor import check_monitor, effective_monitor

    check_monitor(monitor, has_validation=True, multi_label=multi_label)
    return Objective(effective_monitor(monitor, multi_label))


__all__ = ["Objective", "sweep_objective"]
