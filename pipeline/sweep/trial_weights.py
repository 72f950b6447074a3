"""Each finished trial's kept head weights, on disk under ``DIR/trials/``, until ``DIR/best`` takes the winner's.

The batched trainer holds a trial's best-epoch weights only until the trial is told; the winner
is known only when the sweep ends, and it may have been trained by another process sharing the
study, or by an earlier run of a resumed sweep. So every completed trial's Dense weights are
written as ``DIR/trials/trial_NNNN.npz`` (float32 arrays only, read back without pickle) before
Optuna is told, and ``DIR/best`` is made from the winner's file (``sweep.best``): the very weights
the leaderboard measured, never a retrained copy. A pruned trial can never win and keeps none.
Once best/ is written, the files of the other trials that were finished then are removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

#: DIR's folder of trial weights (one of the sweep's files: ``study.SWEEP_FILES``).
TRIALS_DIR = "trials"


def weights_path(out: Path, number: int) -> Path:
    """Where trial ``number``'s weights lie in sweep directory ``out``."""
    return out / TRIALS_DIR / f"trial_{number:04d}.npz"


def save_trial_weights(out: Path, number: int, weights: dict[str, list[np.ndarray]]) -> None:
    """Writes trial ``number``'s Dense weights ({"hidden": [kernel (C, H), bias (H,)], "logits":
    [kernel (C|H, L), bias (L,)]}) atomically: a reader sees the whole file or none."""
    path = weights_path(out, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{layer}.{i}": np.asarray(w, np.float32) for layer, ws in weights.items() for i, w in enumerate(ws)}
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_trial_weights(out: Path, number: int) -> dict[str, list[np.ndarray]] | None:
    """Trial ``number``'s weights as ``save_trial_weights`` took them; None when there is no file
    (a trial trained by a sweep before trial weights were kept, or under another ``--out``)."""
    path = weights_path(out, number)
    if not path.is_file():
        return None
    weights: dict[str, list[np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in sorted(data.files, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
            weights.setdefault(key.split(".")[0], []).append(data[key])
    return weights


def remove_other_trials(out: Path, keep: int, finished: Iterable[int]) -> None:
    """Removes the weight files of the ``finished`` trials but ``keep``.

    Only trials finished when the leaderboard was read: a process sharing the study may be writing
    a newer trial's file now, which may yet win.
    """
    for number in finished:
        if number != keep:
            weights_path(out, number).unlink(missing_ok=True)


__all__ = ["TRIALS_DIR", "load_trial_weights", "remove_other_trials", "save_trial_weights", "weights_path"]
