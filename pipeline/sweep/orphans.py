"""What a killed sweep leaves behind and nobody owns: RUNNING trials without a heartbeat, and
half-written ``.best-PID/`` directories.

A process records a trial's first heartbeat right after ``study.ask()``; killed in between (or
inside ``ask`` itself, which creates the trial before the sampler runs), it leaves a RUNNING trial
with no heartbeat row. Optuna only ever finds trials stale by their heartbeat, so that one was never
failed and a resumed ``sweep`` waited for it for ever (21 complete + 18 pruned + 1 such trial of
``--trials 40``: the rerun slept in its wait loop). ``adopt_silent_trials`` gives each such trial a
heartbeat on the owner's behalf: a live owner beats on as usual, a dead one stays silent, so after
the grace period Optuna's own stale check fails it and queues it again, whatever state it was left
in. Every wait of the sweep is thereby bounded by the liveness of the process that holds a trial.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

_BEST_TMP = re.compile(r"^\.best-(\d+)$")
#: A trial's weights being written (``trial_weights.save_trial_weights``): ``trials/.trial_NNNN-PID.npz``.
_TRIAL_TMP = re.compile(r"^\.trial_\d+-(\d+)\.npz$")


def adopt_silent_trials(study: Any, storage: Any) -> list[int]:
    """Records a heartbeat for every RUNNING trial of ``study`` that has none yet.

    Args:
        study: the Optuna study.
        storage: its ``RDBStorage`` with heartbeats on.

    Returns:
        The numbers of the trials adopted (for the log).
    """
    silent = _running_without_heartbeat(storage, study._study_id)
    numbers = []
    for trial_id, number in silent:
        storage.record_heartbeat(trial_id)
        numbers.append(number)
    return numbers


def _running_without_heartbeat(storage: Any, study_id: int) -> list[tuple[int, int]]:
    """(trial id, number) of the study's RUNNING trials that have no heartbeat row.

    Optuna has no public call for it; this reads the two tables of its schema (``trials``,
    ``trial_heartbeats``) through the storage's own models, as its ``_get_stale_trial_ids`` does.
    """
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    session = storage.scoped_session()
    try:
        rows = (session.query(models.TrialModel.trial_id, models.TrialModel.number)
                .outerjoin(models.TrialHeartbeatModel,
                           models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id,
                        models.TrialModel.state == TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_id.is_(None))
                .all())
        session.commit()
    finally:
        session.close()
    return [(int(trial_id), int(number)) for trial_id, number in rows]


def remove_dead_best_dirs(out: Path) -> list[str]:
    """Removes ``OUT/.best-PID/`` directories and ``OUT/trials/.trial_NNNN-PID.npz`` files whose process is
    gone (a killed final write of best/, or of a trial's weights).

    A directory of a live process (another sweep sharing OUT, writing its best/ now) is left alone.

    Returns:
        The names removed.
    """
    removed = []
    for entry in sorted(out.iterdir()) if out.is_dir() else ():
        match = _BEST_TMP.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    trials = out / "trials"
    for entry in sorted(trials.iterdir()) if trials.is_dir() else ():
        match = _TRIAL_TMP.match(entry.name)
        if match and entry.is_file() and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)  # a trial's weights half-written when its process was killed
            removed.append(f"trials/{entry.name}")
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a directory of this process's name is left over from a killed earlier one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
