"""Early stopping: the one rule both training loops follow (``train-head``'s and ``fit_stage``'s).

It is ``keras.callbacks.EarlyStopping(monitor=..., patience=..., restore_best_weights=True)``'s
rule, kept as plain state so that ``fit_stage``'s backup can commit it with each epoch and a
resumed run continues with the same counters: an epoch improves when the monitored value is
finite and strictly better than the best so far — lower for a loss, higher for a measure of
``config.HIGHER_IS_BETTER`` (``val_balanced_accuracy``, ``val_macro_f1``, ``val_map``: Keras's
``mode="auto"`` decides the same way from the name); after ``patience`` epochs without improvement
training stops, and the best epoch's weights are restored. When no epoch was ever finite, the last
epoch's weights are kept, with a warning.

No maximum: an epoch count of 0 (``train-head --epochs 0``, ``[sweep] epochs = 0``) means "until
early stopping stops it": the best epoch being the last one never ends training.
``UNLIMITED_EPOCHS`` (1000) is only a safety cap for a monitor that keeps improving by
rounding-sized steps for ever; ``epoch_limit`` is the one reading of the count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headstart.pipeline.config import HIGHER_IS_BETTER

#: The safety cap of a run without a maximum epoch count (``epochs = 0``).
UNLIMITED_EPOCHS = 1000


def epoch_limit(epochs: int) -> int:
    """The most epochs a loop runs: ``epochs``, or ``UNLIMITED_EPOCHS`` for 0 (until early stopping)."""
    return int(epochs) if epochs > 0 else UNLIMITED_EPOCHS


@dataclass
class EarlyStopping:
    """Best epoch and patience counter of one training stage.

    Attributes:
        monitor: "val_loss" or "loss" (lower is better), or "val_<measure>" of a measure where
            higher is better (``higher_is_better``).
        patience: epochs without improvement before stopping (0 stops at the first one).
        best_epoch: 1-based epoch of the best value so far, None before any finite value.
        best_value: that value.
        wait: epochs since the best one.
    """

    monitor: str
    patience: int
    best_epoch: int | None = None
    best_value: float | None = None
    wait: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Records epoch ``epoch`` (1-based) ending with ``value``; returns whether it is the new best."""
        if math.isfinite(value) and (self.best_value is None or self._better(value, self.best_value)):
            self.best_epoch, self.best_value, self.wait = epoch, float(value), 0
            return True
        self.wait += 1
        return False

    @property
    def higher_is_better(self) -> bool:
        """Whether the monitored value improves upwards (a measure) rather than downwards (a loss)."""
        return self.monitor.removeprefix("val_") in HIGHER_IS_BETTER

    def _better(self, value: float, best: float) -> bool:
        return value > best if self.higher_is_better else value < best

    @property
    def exhausted(self) -> bool:
        """Whether patience has run out (there is a best epoch, and it is ``patience`` epochs back)."""
        return self.best_epoch is not None and self.wait >= self.patience

    def stop_message(self) -> str:
        """The log line when training stops early."""
        return (f"early stopping: {self.monitor} has not improved for {self.wait} epoch(s); "
                f"restoring epoch {self.best_epoch}")

    def never_finite_message(self) -> str:
        """The warning when no epoch had a finite value (the last weights are kept)."""
        return f"warning: {self.monitor} was never finite; keeping the last epoch's weights"
