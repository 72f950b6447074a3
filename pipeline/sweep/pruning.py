"""Optuna's pruner for a whole group's epoch at once: the study is read once, not once per trial.

``Trial.should_prune()`` reads every trial of the study from its storage (for SQLite, one query of
all trials with all their reported values) to decide one trial; a group of batched trials asks
that for each of its trials every epoch, and on a 64-trial sweep those reads cost more than the
training. A pruner needs only the study's direction and its trials (``BasePruner.prune(study,
trial)``), so ``PrunerView`` gives it a snapshot of them, re-read when this process has told a
trial since, or when the snapshot is older than a few seconds (trials other processes finish then
count from the next epoch on, as they would had they finished a moment later). The decision is the
pruner's own: the study's pruner object, called with the trial's reported values.
"""

from __future__ import annotations

import time
from typing import Any


class PrunerView:
    """What a pruner reads of a study (``direction``, ``get_trials``), from one cached snapshot.

    Args:
        study: the ``optuna.Study``; its ``pruner`` decides.
        max_age: seconds a snapshot is used before it is read again.
    """

    def __init__(self, study: Any, max_age: float = 5.0) -> None:
        self._study, self._max_age = study, max_age
        self.direction = study.direction
        self._trials: list | None = None
        self._read_at = 0.0

    def changed(self) -> None:
        """Marks the snapshot stale: this process has just told a trial."""
        self._trials = None

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list:
        """The study's trials at the last read (as ``Study.get_trials``; never copied)."""
        if self._trials is None or time.monotonic() - self._read_at > self._max_age:
            self._trials = self._study.get_trials(deepcopy=False)
            self._read_at = time.monotonic()
        return [t for t in self._trials if states is None or t.state in states]

    def should_prune(self, trial: Any, reported: dict[int, float]) -> bool:
        """The study's pruner on ``trial`` (an ``optuna.Trial``) with its ``reported`` values (step → value)."""
        from optuna.pruners import NopPruner
        from optuna.trial import FrozenTrial, TrialState

        if isinstance(self._study.pruner, NopPruner):
            return False  # never reads the study: skip the snapshot
        frozen = FrozenTrial(number=trial.number, state=TrialState.RUNNING, value=None, datetime_start=None,
                             datetime_complete=None, params=trial.params, distributions=trial.distributions,
                             user_attrs={}, system_attrs={}, intermediate_values=dict(reported),
                             trial_id=trial._trial_id)
        return bool(self._study.pruner.prune(self, frozen))
