"""One head trainer: a sweep's trial and ``train-head`` give the same head, and ``DIR/best`` is the
winning trial's own head (its weights, its history), never a retrained copy.

train-head is a one-trial group of the sweep's batched trainer (``training.head_fit.fit_head``), so
the weights are asserted equal bit for bit (before train-head had a Keras loop of its own they
differed by up to 6.3e-7, float32 sums in another order); a learning rate 10% lower moves them by
more than 1e-3, which the test checks too, so it would see a changed formula.
"""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest

from headstart.pipeline.config import SweepConfig
from headstart.pipeline.sweep.space import SearchSpace
from conftest import make_cache

QUIET = {}
#: How far apart another learning rate puts the weights, at least.
DIFFERENT = 1e-3
#: The leaderboard's float64 validation loss against metrics.json's float32 one.
LOSS_ROUNDING = 1e-5


def _weights(run_dir: Path) -> list[np.ndarray]:
    head = keras.saving.load_model(run_dir / "head.keras", safe_mode=True, compile=False)
    return head.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("kind, normalize", [("linear", "none"), ("hidden", "standardize")])
def test_a_one_configuration_sweep_and_train_head_give_the_same_weights(tmp_path, kind, normalize):
    from headstart.pipeline.commands.head_training import train_head
    from headstart.pipeline.sweep.study import run_sweep, trial_params
    import optuna

    path = make_cache(tmp_path / "c.h5", classes=3, flip_validation=0.1)
    space = SearchSpace(epochs=5, patience=2, parallel=1, pruner="none").with_values(
        lr=3e-3, dropout=0.0, weight_decay=1e-3, label_smoothing=0.05, batch_size=32, head_kind=kind,
        hidden_units=16, normalize=normalize)
    result = run_sweep(SweepConfig(caches=(str(path),), out=str(tmp_path / "sw"), trials=1, seed=7), space, **QUIET)
    study = optuna.load_study(study_name="headstart-sweep", storage=result.storage)
    params = trial_params(study.trials[0])
    alone = train_head(params.head_config(features=str(path), out=str(tmp_path / "alone"), epochs=5, patience=2,
                                          seed=7), **QUIET)
    ours, theirs = _weights(Path(result.best_dir)), _weights(Path(alone.run_dir))
    assert [w.shape for w in ours] == [w.shape for w in theirs] and len(ours) >= 2
    largest = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs))
    print(f"{kind}/{normalize}: largest weight difference sweep vs train-head {largest:.3g}")
    assert largest == 0.0
    # A changed formula would show: train-head at another learning rate lands far away.
    import dataclasses

    slower = dataclasses.replace(params.head_config(features=str(path), out=str(tmp_path / "other"), epochs=5,
                                                    patience=2, seed=7), lr=3e-3 * 0.9)
    other = train_head(slower, **QUIET)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, _weights(Path(other.run_dir)))) > DIFFERENT


@pytest.mark.slow
def test_best_is_the_winning_trials_own_head_not_a_retrained_copy(tmp_path, monkeypatch):
    """best/ holds the trial's weights, not a copy trained again (training is forbidden here): its
    validation loss and history are the trial's."""
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.sweep.study import run_sweep
    from headstart.pipeline.training import head_fit

    def no_training(*args, **kwargs):
        raise AssertionError("best/ must not train")

    path = make_cache(tmp_path / "c.h5", flip_validation=0.1)
    space = SearchSpace(epochs=4, patience=2, parallel=4, batch_size=(32,), hidden_units=(16,)).with_values(
        dropout=0.4)
    out = tmp_path / "sw"
    monkeypatch.setattr(head_fit, "fit_head", no_training)
    result = run_sweep(SweepConfig(caches=(str(path),), out=str(out), trials=4, seed=1), space, **QUIET)
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    best = RunDir.open(out / "best", kind="head")
    assert best.record["sweep"]["trial"] == int(rows[0]["number"]) == result.best["number"]
    assert abs(best.metrics()["validation"]["loss"] - float(rows[0]["val_loss"])) < LOSS_ROUNDING
    import optuna

    trial = optuna.load_study(study_name="headstart-sweep", storage=result.storage).trials[int(rows[0]["number"])]
    history = trial.user_attrs["result"]["history"]
    np.testing.assert_allclose(best.history()["val_loss"], history["val_loss"], rtol=1e-6)
    assert best.record["best_epoch"] == trial.user_attrs["result"]["best_epoch"]
    # Only the winner's weight file is left once best/ holds it.
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"trial_{int(rows[0]['number']):04d}.npz"]
