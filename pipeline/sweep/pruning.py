"""Optuna's pruner for a whole group's epoch at once: the study is read once, not once per trial.

``Trial.should_prune()`` reads every trial of the study from its storage (for SQLite, one query of
all trials with all their reported values) to decide one trial; a group of batched trials asks
that for each of its trials every epoch, and on a 64-trial sweep those reads cost more than the
training. A pruner needs only the study's direction and its trials (``BasePruner.prune(study,
trial)``), so ``PrunerView`` gives it a snapshot of them, re-read when this process has told a
trial since, or when the snapshot is older than a few seconds (trials other processes finish then
count from the next epoch on, as they would had they finished a moment later). The decision is the
pruner's own: the study's pruner object, called with the trial's reported values.

``StragglerMedianPruner`` is the sweep's "median" pruner: Optuna's ``MedianPruner``, which compares a
trial only at epochs some finished trial also reached, plus the same median rule past them. A
trial that has already run longer than every finished trial and is still worse than their median
best is stopped. Without it a diverging trial whose loss creeps down by rounding-sized steps
(a digits sweep at 224 px: validation loss 40 → 18 over 1,000 epochs while the finished trials
had stopped by epoch 76 at 0.22–0.85) holds its whole group, and the round, for its 1,000 epochs.
"""

from __future__ import annotations

import math
import statistics
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


class StragglerMedianPruner:
    """Optuna's ``MedianPruner``, and past every finished trial's last epoch, the median of their best values.

    At an epoch some finished (COMPLETE) trial reported, the decision is ``MedianPruner``'s own. At
    a later epoch ``MedianPruner`` has nothing to compare with and never prunes; here a finished
    trial counts with the best value it reached (what early stopping restored: it would have
    stayed there), and the trial is pruned when its own best so far is worse than their median.
    That needs ``n_straggler_trials`` finished trials rather than ``n_startup_trials``: the trial
    has already had more epochs than any of them.

    Args:
        n_startup_trials, n_warmup_steps: ``MedianPruner``'s.
        n_straggler_trials: finished trials needed before a straggler is compared with them.
    """

    def __init__(self, n_startup_trials: int = 8, n_warmup_steps: int = 2, n_straggler_trials: int = 3) -> None:
        from optuna.pruners import MedianPruner

        self._median = MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
        self._warmup, self._stragglers = n_warmup_steps, n_straggler_trials

    def prune(self, study: Any, trial: Any) -> bool:
        """Whether ``trial`` (a FrozenTrial with its reported values) stops now (``BasePruner.prune``)."""
        from optuna.study import StudyDirection
        from optuna.trial import TrialState

        if self._median.prune(study, trial):
            return True
        step = trial.last_step
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if step is None or step < self._warmup or len(finished) < self._stragglers:
            return False
        if any(t.last_step is not None and t.last_step >= step for t in finished):
            return False  # some finished trial got this far: the median rule above has spoken
        maximize = study.direction == StudyDirection.MAXIMIZE
        best = _best(trial, maximize)
        if best is None:
            return True  # never finite: as MedianPruner, a NaN trial stops
        bests = [b for t in finished if (b := _best(t, maximize)) is not None]
        if len(bests) < self._stragglers:
            return False
        median = statistics.median(bests)
        return best < median if maximize else best > median


def _best(trial: Any, maximize: bool) -> float | None:
    """A trial's best finite reported value, or None when none was finite."""
    finite = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
    return (max if maximize else min)(finite) if finite else None
