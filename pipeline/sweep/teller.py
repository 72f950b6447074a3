"""Telling Optuna how a group's trials do: each epoch's value (for the pruner), and each trial's end.

The study is read once per epoch of a group and once per told trial (``PrunerView``), never once
per trial and epoch. A trial another process declared stale is dropped here instead of told twice.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from headstart.features.reporter import Reporter
from headstart.pipeline.config import SweepConfig
from headstart.pipeline.training.objective import Objective
from headstart.pipeline.sweep.space import TrialParams
from headstart.pipeline.sweep.trial_weights import save_trial_weights

FINISHED = ("COMPLETE", "PRUNED")
#: The validation measures a trial's record keeps (those its task has; the leaderboard's columns).
RECORDED = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "map", "micro_f1", "exact_match")


def trial_state(name: str) -> Any:
    """Optuna's TrialState of that name (optuna imported only when a sweep runs)."""
    from optuna.trial import TrialState

    return TrialState[name]


def trial_states(names: Sequence[str]) -> tuple:
    return tuple(trial_state(name) for name in names)


class Teller:
    """Reports a group's epochs to Optuna, prunes with the study's pruner, and tells finished trials.

    The study is read once per epoch of a group and once per told trial (``PrunerView``), never once
    per trial and epoch. A trial another process declared stale (its heartbeat was late: a starved
    CPU) is already FAIL and queued again; this process then drops it instead of telling it twice.
    """

    def __init__(self, study: Any, config: SweepConfig, objective: Objective, running: set[int],
                 reporter: Reporter, start: float,
                 on_trial: Callable[[int, int, float], None] | None) -> None:
        from headstart.pipeline.sweep.pruning import PrunerView

        self.study, self.config, self.objective, self.running = study, config, objective, running
        self.reporter = reporter
        self.start, self.on_trial = start, on_trial
        self.view = PrunerView(study, max_age=config.heartbeat)
        self.reported: dict[int, dict[int, float]] = {}   # trial number → step → value
        self.lost: set[int] = set()
        self.told = 0

    def epoch(self, members: list[tuple[Any, TrialParams]], epoch: int, values: dict[int, float]) -> set[int]:
        """Reports ``values`` (index → monitored value) at ``epoch``; returns the indices to stop."""
        from optuna.exceptions import UpdateFinishedTrialError

        stop = set()
        for i, value in values.items():
            trial = members[i][0]
            try:
                trial.report(value, epoch)
            except UpdateFinishedTrialError:
                self.lost.add(trial.number)  # stop training it: its rerun is someone else's now
                stop.add(i)
                continue
            self.reported.setdefault(trial.number, {})[epoch] = value
            if self.view.should_prune(trial, self.reported[trial.number]):
                stop.add(i)
        return stop

    def done(self, trial: Any, params: TrialParams, run: Any) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        self.running.discard(trial._trial_id)
        try:
            if trial.number in self.lost:
                raise UpdateFinishedTrialError(f"trial {trial.number}")
            if run.stopped != "pruned":  # written before the tell: a complete trial always has its weights
                save_trial_weights(Path(self.config.out), trial.number, run.weights)
            _tell(self.study, trial, params, run, self.objective)
        except UpdateFinishedTrialError:
            self.reporter.line(f"trial {trial.number:>3} was declared stale by another process (late heartbeat) "
                               "and queued again; dropped here")
            return
        self.told += 1
        if self.config.tensorboard:
            from headstart.pipeline.report.tensorboard_logs import write_history

            write_history(run.history, Path(self.config.tensorboard) / "trials" / f"trial_{trial.number:04d}")
        self.view.changed()
        trials = self.view.get_trials(states=trial_states(FINISHED))
        self.reporter.line(_trial_line(trials, trial.number, params, run, self.objective, self.config.trials))
        if self.on_trial is not None:
            self.on_trial(len(trials), self.config.trials, len(trials) / max(time.perf_counter() - self.start, 1e-9))


def _tell(study: Any, trial: Any, params: TrialParams, run: Any, objective: Objective) -> None:
    record = {
        "params": dataclasses.asdict(params), "best_epoch": run.best_epoch, "epochs": run.epochs_run,
        "stopped": run.stopped, "seconds": run.seconds, "history": run.history, "monitor": objective.history_key,
        "validation": {k: run.validation[k] for k in RECORDED if k in run.validation},
    }
    trial.set_user_attr("result", record)
    if run.stopped == "pruned":
        study.tell(trial, state=trial_state("PRUNED"))
    else:
        study.tell(trial, run.objective)


#: How a trial line says why the trial stopped (``TrialRun.stopped``).
STOP_WORDS = {"early": "early stop", "pruned": "pruned", "epochs": "all epochs"}


def _trial_line(trials: list, number: int, params: TrialParams, run: Any, objective: Objective, total: int) -> str:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: (objective.rank(t.value), t.number)) if complete else None
    best_text = f"best #{best.number} {best.value:.4f}" if best else "best -"  # none complete yet: all pruned
    v = run.validation
    watched = "" if objective.measure == "loss" else f" {objective.history_key} {run.objective:.4f}"
    stopped = STOP_WORDS.get(run.stopped, run.stopped)
    return (f"trial {number:>3} {params.cache} {stopped:<10} val_loss {v['loss']:.4f} "
            f"val_acc {v['accuracy']:.4f}{watched}  epochs {run.epochs_run}  {run.seconds:.1f} s  | {best_text}  "
            f"[{len(trials)}/{total}]")
