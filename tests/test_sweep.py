"""``headstart sweep``: batched trials equal train-head, resume after SIGKILL, shared studies, shoot-outs.

Caches are synthetic Gaussian blobs (``test_train_head.make_cache``) unless a test needs images; the
one test on the real photos reuses the session's ``real_photo_cache`` and is marked slow.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from headstart.pipeline.cli import main
from headstart.pipeline.config import HeadConfig, SweepConfig
from headstart.pipeline.errors import DataError
from headstart.pipeline.sweep.space import SearchSpace, TrialParams
from conftest import make_cache, make_multilabel_cache

QUIET = {}
#: Largest difference allowed between a trial trained among others and train-head (a group of one,
#: bit-identical to a one-trial sweep: tests/test_sweep_best.py): the stacked step over a longer
#: trial axis rounds float32 sums in another order (measured: 1.2e-7).
TOLERANCE = 1e-5
#: A small space that still mixes every head kind and normalisation in one group.
SMALL = SearchSpace(epochs=6, patience=2, parallel=4, batch_size=(32,), hidden_units=(16,))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def finished(out: Path) -> list:
    import optuna

    study = optuna.load_study(study_name="headstart-sweep", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(deepcopy=False)


def assert_trials_are_train_head(path: Path, trials, runs, out: Path, *, epochs: int, patience: int, seed: int,
                                 **fields) -> None:
    """Each batched trial equals ``train-head`` alone with the same parameters (and ``fields``):
    epochs, every history column (the monitored one too), the kept weights and the validation loss."""
    from headstart.pipeline.commands.head_training import train_head

    for i, (params, run) in enumerate(zip(trials, runs)):
        alone = train_head(params.head_config(features=str(path), out=str(out / f"alone{i}"), epochs=epochs,
                                              patience=patience, seed=seed, **fields), **QUIET)
        assert run.best_epoch == alone.best_epoch and run.epochs_run == alone.epochs_run
        assert list(run.history) == list(alone.history)
        for column in run.history:
            np.testing.assert_allclose(run.history[column], alone.history[column], atol=TOLERANCE)
        head = keras.saving.load_model(out / f"alone{i}" / "head.keras", safe_mode=True, compile=False)
        for layer, weights in run.weights.items():
            for ours, theirs in zip(weights, head.get_layer(layer).get_weights()):
                np.testing.assert_allclose(ours, theirs, atol=TOLERANCE)
        assert abs(run.validation["loss"] - alone.val_loss) < TOLERANCE


@pytest.mark.slow
def test_batched_trials_equal_train_head_alone(tmp_path):
    """Every head kind and normalisation, with weight decay and label smoothing, in one group."""
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.head_group import train_group

    path = make_cache(tmp_path / "c.h5", classes=3, views=2, flip_validation=0.2)
    cache = load_caches([str(path)])[0]
    trials = [TrialParams("c", 1e-2, 0.0, 0.0, 0.0, 32, "linear", None, "none", True),
              TrialParams("c", 3e-3, 0.0, 0.1, 0.1, 32, "hidden", 16, "standardize", True),
              TrialParams("c", 1e-3, 0.0, 0.01, 0.05, 32, "linear", None, "l2", True)]
    runs = train_group(cache, trials, seed=3, epochs=6, patience=2)
    assert_trials_are_train_head(path, trials, runs, tmp_path, epochs=6, patience=2, seed=3)


def test_each_trial_of_a_group_can_start_from_its_own_seed(tmp_path):
    """Per-trial seeds (the view trials' seeds of one arm): trial i starts where ``train-head --seed
    seeds[i]`` starts, and its course in the group is the course it has alone under the group's seed."""
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.head_group import BatchedHeads, train_group

    cache = load_caches([str(make_cache(tmp_path / "c.h5", classes=3))])[0]
    params = TrialParams("c", 1e-2, 0.2, 0.0, 0.0, 32, "linear", None, "none", False)
    heads = BatchedHeads(cache, seed=3)
    heads.load([params] * 3, seeds=[3, 4, 3])
    start = [heads.weights_at(p)["logits"][0] for p in range(3)]
    for seed, kernel in zip((3, 4), start):
        keras.utils.set_random_seed(seed)
        head = build_head(cache.feature_shape, 3, dropout=0.2)
        np.testing.assert_array_equal(kernel, head.get_layer("logits").get_weights()[0])
    assert not np.allclose(start[0], start[1])
    together = train_group(cache, [params] * 2, seed=3, epochs=3, patience=3, trial_seeds=[3, 4])
    alone = train_group(cache, [params], seed=3, epochs=3, patience=3)[0]
    np.testing.assert_allclose(together[0].weights["logits"][0], alone.weights["logits"][0], atol=TOLERANCE)
    np.testing.assert_allclose(together[0].logits, alone.logits, atol=TOLERANCE)
    assert not np.allclose(together[0].logits, together[1].logits)


@pytest.mark.slow
def test_class_weighted_and_multi_label_trials_equal_train_head_alone(tmp_path):
    """Class weights from a FILE (early stopping on balanced accuracy), and sigmoid heads on a
    multi-label cache (early stopping on mAP): still train-head's computation, trial by trial."""
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.head_group import train_group
    from headstart.pipeline.training.class_weights import resolve_class_weights

    path = make_cache(tmp_path / "c.h5", classes=3, flip_validation=0.2)
    weights_file = tmp_path / "weights.toml"
    weights_file.write_text("class0 = 1.0\nclass1 = 4.0\nclass2 = 0.5\n")
    cache = load_caches([str(path)])[0]
    weights = resolve_class_weights(str(weights_file), cache.class_names, cache.labels["train"])
    trials = [TrialParams("c", 1e-2, 0.0, 0.0, 0.0, 32, "linear", None, "none", False),
              TrialParams("c", 3e-3, 0.0, 0.1, 0.1, 32, "hidden", 16, "standardize", False)]
    runs = train_group(cache, trials, seed=3, epochs=8, patience=2, monitor="balanced_accuracy",
                       sample_weights=weights.per_sample(cache.labels["train"]))
    assert all("val_balanced_accuracy" in run.history for run in runs)
    assert_trials_are_train_head(path, trials, runs, tmp_path / "weighted", epochs=8, patience=2, seed=3,
                                 class_weight=str(weights_file), monitor="balanced_accuracy")
    unweighted = train_group(cache, trials[:1], seed=3, epochs=8, patience=2)
    assert unweighted[0].history["loss"] != pytest.approx(runs[0].history["loss"])  # the weights do weigh

    ml_path = make_multilabel_cache(tmp_path / "ml.h5")
    ml = load_caches([str(ml_path)])[0]
    assert ml.multi_label and ml.labels["train"].shape == (160, 3)
    trials = [TrialParams("ml", 1e-2, 0.0, 0.0, 0.0, 32, "linear", None, "none", False),
              TrialParams("ml", 3e-3, 0.0, 0.1, 0.1, 32, "hidden", 16, "l2", False)]
    runs = train_group(ml, trials, seed=3, epochs=6, patience=1)
    assert all("val_map" in run.history and run.objective == max(run.history["val_map"]) for run in runs)
    assert {"map", "micro_f1", "exact_match"} <= set(runs[0].validation)
    assert_trials_are_train_head(ml_path, trials, runs, tmp_path / "ml", epochs=6, patience=1, seed=3)


@pytest.mark.slow
def test_one_trace_serves_every_group_and_a_reused_step_trains_as_a_fresh_one(tmp_path):
    """Groups load into the sweep's BatchedHeads and trials leave it without a new trace."""
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.head_group import BatchedHeads, train_group

    cache = load_caches([str(make_cache(tmp_path / "c.h5", flip_validation=0.2))])[0]
    first = [TrialParams("c", 2e-2, 0.3, 0.01, 0.1, 32, "hidden", 16, "l2", False),
             TrialParams("c", 1e-3, 0.0, 0.0, 0.0, 32, "linear", None, "none", False)]
    second = [TrialParams("c", 1e-2, 0.0, 0.1, 0.05, 32, "linear", None, "standardize", False),
              TrialParams("c", 5e-3, 0.0, 0.0, 0.0, 32, "hidden", 16, "l2", False),
              TrialParams("c", 3e-2, 0.0, 0.0, 0.0, 32, "hidden", 16, "none", False)]
    heads = BatchedHeads(cache, seed=1)
    train_group(cache, first, seed=1, epochs=5, patience=1, heads=heads)
    reused = train_group(cache, second, seed=1, epochs=8, patience=1, heads=heads)
    fresh = train_group(cache, second, seed=1, epochs=8, patience=1)
    assert len({run.epochs_run for run in reused}) > 1  # trials left the stacks at different epochs
    for a, b in zip(reused, fresh):
        assert a.epochs_run == b.epochs_run and a.best_epoch == b.best_epoch
        np.testing.assert_allclose(a.history["val_loss"], b.history["val_loss"], atol=TOLERANCE)
    # Two groups, new normalisations and trials leaving: still the first trace of each function.
    assert heads.train_step.experimental_get_tracing_count() <= 2
    assert heads.predict.experimental_get_tracing_count() <= 2


def test_trial_without_maximum_epochs_goes_past_the_default_until_patience_stops_it(tmp_path):
    """[sweep] epochs = 0: a trial still improving at the default maximum goes on (issue 20)."""
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.head_group import train_group

    cache = load_caches([str(make_cache(tmp_path / "c.h5", flip_validation=0.3, spread=2.0))])[0]
    trial = [TrialParams("c", 1e-3, 0.0, 0.0, 0.0, 32, "linear", None, "none", False)]
    default = SearchSpace().epochs
    capped = train_group(cache, trial, seed=0, epochs=default, patience=2)[0]
    free = train_group(cache, trial, seed=0, epochs=0, patience=2)[0]
    assert capped.stopped == "epochs" and capped.best_epoch == capped.epochs_run == default
    assert free.stopped == "early" and free.best_epoch > default and free.epochs_run == free.best_epoch + 2
    np.testing.assert_allclose(free.history["val_loss"][:default], capped.history["val_loss"], atol=TOLERANCE)


def test_pruner_view_decides_as_optunas_should_prune():
    """One snapshot of the study per epoch gives the pruner's own decision for every trial."""
    import optuna

    from headstart.pipeline.sweep.pruning import PrunerView

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for curve in ([0.9, 0.5, 0.4], [0.8, 0.6, 0.3], [0.7, 0.45, 0.35]):
        trial = study.ask()
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
        study.tell(trial, min(curve))
    view = PrunerView(study)
    decisions = []
    for curve in ([1.0, 0.9, 0.8], [0.6, 0.3, 0.2], [0.95, 0.4]):
        trial, reported = study.ask(), {}
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
            reported[step] = value
            decisions.append(view.should_prune(trial, reported))
            assert decisions[-1] == trial.should_prune()
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert True in decisions and False in decisions


def test_a_straggler_past_every_finished_trial_is_pruned_when_worse_than_their_median_best():
    """Past the last epoch any finished trial reached, MedianPruner never prunes; the sweep's pruner
    then compares the trial's best with the median of the finished trials' bests."""
    import optuna

    from headstart.pipeline.sweep.pruning import PrunerView, StragglerMedianPruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=StragglerMedianPruner(n_startup_trials=8, n_warmup_steps=2))
    view = PrunerView(study)

    def decide(curve: list[float]) -> bool:
        trial = study.ask()
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
        decision = view.should_prune(trial, dict(enumerate(curve, 1)))
        assert decision == trial.should_prune()  # the study's own pruner, through the snapshot
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        view.changed()
        return decision

    def finish(curve: list[float]) -> None:
        trial = study.ask()
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
        study.tell(trial, min(curve))
        view.changed()

    finish([0.9, 0.5, 0.3, 0.35, 0.4])        # best 0.3, stopped at epoch 5
    finish([0.8, 0.6, 0.4, 0.45, 0.5, 0.55])  # best 0.4, epoch 6
    creeping = [40.0 - 0.01 * e for e in range(20)]  # diverged, and improving by rounding-sized steps
    assert not decide(creeping)  # two finished trials: too few to judge it by
    finish([0.7, 0.5, 0.5, 0.6, 0.7])         # best 0.5
    assert decide(creeping)  # epoch 20, worse than the median best (0.4) of three: pruned
    assert not decide(creeping[:6])  # epoch 6: a finished trial got this far, MedianPruner's rule (8 to start)
    assert not decide([1.0, 0.9] + [0.38] * 10)  # past them all, but better than their median best: goes on
    assert not decide([float("nan")] * 2 + [5.0])  # epoch 3: not past the finished trials, not a straggler
    assert decide([float("nan")] * 12)  # never finite past them all: stopped, as MedianPruner stops a NaN trial


def test_default_head_is_the_guides_head_bit_for_bit():
    from headstart.pipeline.model.head import build_head

    keras.utils.set_random_seed(0)
    head = build_head((8,), 2)
    assert [layer.name for layer in head.layers] == ["features", "dropout", "logits"]
    keras.utils.set_random_seed(0)
    # The builder as it was before the sweep's head kinds (git show 9742bbb:pipeline/model/head.py).
    inputs = keras.Input(shape=(8,), name="features")
    x = keras.layers.Dropout(0.2, name="dropout")(inputs)
    guide = keras.Model(inputs, keras.layers.Dense(1, name="logits", dtype="float32")(x), name="head")
    for a, b in zip(head.get_weights(), guide.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert HeadConfig().head_kind == "linear" and HeadConfig().normalize == "none"


@pytest.mark.slow
def test_sweep_writes_leaderboard_plot_and_best_run(tmp_path):
    path = make_cache(tmp_path / "c.h5", flip_validation=0.1)
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nepochs = 4\npatience = 2\nparallel = 5\nbatch_size = [32, 64]\nhidden_units = 16\n"
                    "dropout = 0.0\n")
    out = tmp_path / "sw"
    r = invoke("sweep", path, "--out", out, "--trials", 6, "--config", toml)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == 6 and {"val_loss", "val_accuracy", "val_macro_f1", "lr", "head_kind", "state"} <= set(rows[0])
    assert rows[0]["rank"] == "1" and float(rows[0]["val_loss"]) <= min(float(r["val_loss"]) for r in rows
                                                                         if r["state"] == "complete")
    assert (out / "sweep.png").stat().st_size > 1000
    run = json.loads((out / "best" / "run.json").read_text())
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert run["kind"] == "head" and run["sweep"]["trial"] == int(rows[0]["number"])
    assert metrics["test"]["accuracy"] is not None
    # DIR/best holds the trial's own head: its validation loss is the leaderboard's.
    assert abs(metrics["validation"]["loss"] - float(rows[0]["val_loss"])) < TOLERANCE
    assert not (out / "trials").exists() or [p.name for p in (out / "trials").iterdir()] == [
        f"trial_{int(rows[0]['number']):04d}.npz"]  # only the winner's weights are kept
    assert "trial" in r.output and str(out / "best") in r.output
    r = invoke("inspect", out / "best")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_multi_label_sweep_ranks_by_validation_map_and_best_is_a_multi_label_head_run(tmp_path):
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.head_training import train_head

    path = make_multilabel_cache(tmp_path / "ml.h5")
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nepochs = 5\npatience = 2\nparallel = 4\nbatch_size = 32\nhidden_units = 16\n"
                    "dropout = 0.0\n")
    out = tmp_path / "sw"
    r = invoke("sweep", path, "--out", out, "--trials", 4, "--config", toml)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert len(rows) == 4 and all(row["val_map"] and not row["val_balanced_accuracy"] for row in rows)
    complete = [row for row in rows if row["state"] == "complete"]
    assert rows[0]["rank"] == "1" and float(rows[0]["val_map"]) == max(float(row["val_map"]) for row in complete)
    assert " val_map " in r.output and "test mAP" in r.output  # the table's column, the last line
    study = finished(out)
    assert study[0].user_attrs["result"]["monitor"] == "val_map"
    for trial in (t for t in study if t.state.name == "COMPLETE"):  # Optuna was told mAP
        assert trial.value == pytest.approx(max(trial.user_attrs["result"]["history"]["val_map"]))
    best = RunDir.open(out / "best", kind="head")
    record = best.record
    assert best.multi_label and record["monitor"]["watched"] == "val_map" and record["sweep"]["monitor"] == "val_map"
    assert abs(best.metrics()["validation"]["map"] - float(rows[0]["val_map"])) < TOLERANCE
    # best/ is train-head's run of the trial, per-class thresholds chosen on validation included.
    params = {k: record["sweep"]["params"][k] for k in ("lr", "dropout", "weight_decay", "label_smoothing",
                                                        "batch_size", "head_kind", "normalize")}
    alone = train_head(HeadConfig(features=str(path), out=str(tmp_path / "alone"), epochs=5, patience=2,
                                  hidden_units=16, **params), **QUIET)
    alone_thresholds = RunDir.open(alone.run_dir, kind="head").thresholds(best.class_names)
    np.testing.assert_allclose(best.thresholds(best.class_names), alone_thresholds, atol=1e-4)
    assert (out / "best" / "thresholds.json").is_file()
    r = invoke("inspect", out / "best")
    assert r.exit_code == 0 and "multi-label" in r.output, r.output


def test_sweep_refuses_a_monitor_or_class_weights_the_task_cannot_take(tmp_path):
    single = make_cache(tmp_path / "c.h5")
    multi = make_multilabel_cache(tmp_path / "ml.h5", counts={"train": 40, "validation": 16})
    for cache, flags, words in [(multi, ["--class-weight", "balanced"], "--class-weight balanced: class weights "
                                                                            "apply to single-label tasks"),
                                (multi, ["--monitor", "balanced_accuracy"], "--monitor balanced_accuracy needs a "
                                                                            "single-label task"),
                                (single, ["--monitor", "map"], "--monitor map needs a multi-label task"),
                                (single, ["--class-weight", tmp_path / "none.toml"], "none.toml")]:
        r = invoke("sweep", cache, "--out", tmp_path / "sw", *flags)
        lines = [line for line in r.output.splitlines() if line.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and words in lines[0], r.output
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_class_weighted_sweep_without_maximum_epochs_keeps_best_with_the_weights(tmp_path):
    """--class-weight FILE reaches every trial and best/ (recorded as train-head records it);
    [sweep] epochs = 0 trains each trial until early stopping."""
    from headstart.pipeline.store.rundir import RunDir

    path = make_cache(tmp_path / "c.h5", classes=3, flip_validation=0.2)
    weights_file = tmp_path / "weights.json"
    weights_file.write_text('{"class0": 1.0, "class1": 4.0, "class2": 0.5}')
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nepochs = 0\npatience = 1\nparallel = 3\nbatch_size = 32\nhidden_units = 16\n"
                    "dropout = 0.0\nlr = [1e-3, 1e-2]\n")
    out = tmp_path / "sw"
    r = invoke("sweep", path, "--out", out, "--trials", 3, "--config", toml, "--class-weight", weights_file)
    assert r.exit_code == 0, r.output
    assert "--class-weight" in r.output and "class1 4" in r.output
    for trial in finished(out):
        result = trial.user_attrs["result"]
        assert result["stopped"] == "early" and result["epochs"] == result["best_epoch"] + 1
    best = RunDir.open(out / "best", kind="head")
    assert best.record["class_weight"]["mode"] == "file"
    assert best.record["class_weight"]["weights"] == {"class0": 1.0, "class1": 4.0, "class2": 0.5}
    assert best.record["config"]["epochs"] == 0 and best.record["config"]["class_weight"] == str(weights_file)
    assert abs(best.metrics()["validation"]["loss"] - best.record["sweep"]["val_loss"]) < TOLERANCE
    # Another --class-weight is another study: refused, naming the option.
    r = invoke("sweep", path, "--out", out, "--trials", 3, "--config", toml)
    assert r.exit_code == 2 and "--class-weight" in r.output, r.output


@pytest.mark.slow
def test_monitor_decides_which_trial_wins_and_what_the_result_reports(tmp_path):
    """The same trials (same seed: the sampler's random start draws the same parameters) ranked by
    validation loss and by balanced accuracy: another winner, each the best by its own measure."""
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.sweep.study import run_sweep

    path = make_cache(tmp_path / "c.h5", classes=3, flip_validation=0.3, spread=2.0)
    # Fixed values (what a caller fixes for the options a user set): never asked of the sampler.
    space = SearchSpace(epochs=6, patience=2, parallel=6, hidden_units=(16,)).with_values(batch_size=32, dropout=0.0)
    results, boards = {}, {}
    for monitor in ("val_loss", "balanced_accuracy"):
        out = tmp_path / monitor
        results[monitor] = run_sweep(SweepConfig(caches=(str(path),), out=str(out), trials=6, monitor=monitor),
                                     space, **QUIET)
        boards[monitor] = {int(r["number"]): r for r in csv.DictReader((out / "leaderboard.csv").open())}
        assert all(r["batch_size"] == "32" and float(r["dropout"]) == 0.0 for r in boards[monitor].values())
        for trial in (t for t in finished(out) if t.state.name == "COMPLETE"):  # Optuna is told the monitor
            assert trial.value == pytest.approx(float(boards[monitor][trial.number][results[monitor].monitor]))
    by_loss, by_balanced = results["val_loss"], results["balanced_accuracy"]
    drawn = {monitor: {n: r["lr"] for n, r in board.items()} for monitor, board in boards.items()}
    assert drawn["val_loss"] == drawn["balanced_accuracy"]
    assert by_balanced.monitor == "val_balanced_accuracy" and by_loss.monitor == "val_loss"
    assert by_loss.best["number"] != by_balanced.best["number"]
    balanced = {n: float(r["val_balanced_accuracy"]) for n, r in boards["balanced_accuracy"].items()}
    assert by_balanced.best_value == max(balanced.values()) > balanced[by_loss.best["number"]]
    assert by_loss.best_value == min(float(r["val_loss"]) for r in boards["val_loss"].values())
    # What `headstart run --recipe auto` reads back.
    assert by_balanced.best_val_accuracy == by_balanced.best["val_accuracy"]
    assert by_balanced.best_params["lr"] == by_balanced.best["lr"] and by_balanced.best_params["cache"] == "c"
    best = RunDir.open(by_balanced.best_dir, kind="head").record
    assert best["monitor"] == {"option": "balanced_accuracy", "watched": "val_balanced_accuracy"}
    assert by_balanced.best_test["accuracy"] == by_balanced.best_test_accuracy is not None


@pytest.mark.slow
def test_sweep_logs_every_trial_to_tensorboard(tmp_path):
    from test_tensorboard import scalars

    path = make_cache(tmp_path / "c.h5", flip_validation=0.1)
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nepochs = 3\npatience = 2\nparallel = 2\nbatch_size = 32\nhidden_units = 16\n")
    out, logs = tmp_path / "sw", tmp_path / "tb"
    r = invoke("sweep", path, "--out", out, "--trials", 2, "--config", toml, "--tensorboard", logs)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    for row in rows:
        trial = logs / "trials" / f"trial_{int(row['number']):04d}"
        val_loss = [v for _, v in scalars(trial / "validation")["epoch_loss"]]
        assert len(val_loss) == int(row["epochs"]) and len(scalars(trial / "train")["epoch_loss"]) == len(val_loss)
        assert min(val_loss) == pytest.approx(float(row["val_loss"]), rel=1e-5)
    best = int(rows[0]["number"])  # the best trial's history, at the log root as train-head logs it
    assert scalars(logs / "validation")["epoch_loss"] == scalars(logs / "trials" / f"trial_{best:04d}" / "validation")["epoch_loss"]


def test_bad_search_space_toml_refused_in_one_line(tmp_path):
    path = make_cache(tmp_path / "c.h5")
    for text, words in [("[sweep]\nlr = [0.1, 0.001]\n", "lr"), ("[sweep]\nhead_kind = 'mlp'\n", "head_kind"),
                        ("[sweep]\nlearning_rate = 1\n", "learning_rate"), ("[sweep\n", "not valid TOML"),
                        ("[sweep]\nweight_decay = [0, 1]\n", "weight_decay")]:
        toml = tmp_path / "bad.toml"
        toml.write_text(text)
        r = invoke("sweep", path, "--out", tmp_path / "sw", "--config", toml)
        assert r.exit_code == 2, r.output
        assert words in r.output and str(toml) in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


def test_mismatched_caches_refused_naming_the_difference(tmp_path):
    from headstart.pipeline.sweep.caches import load_caches

    a = make_cache(tmp_path / "a.h5")
    b = make_cache(tmp_path / "b.h5", classes=3)
    with pytest.raises(DataError, match="classes"):
        load_caches([str(a), str(b)])
    c = make_cache(tmp_path / "c.h5", counts={"train": 150, "validation": 48, "test": 48})
    with pytest.raises(DataError, match="train/15.* only in"):
        load_caches([str(a), str(c)])
    r = invoke("sweep", a, c, "--out", tmp_path / "sw")
    assert r.exit_code == 2 and "caches differ" in r.output and not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_two_caches_of_different_backbones_ranked_in_one_leaderboard(tmp_path):
    from headstart.pipeline.sweep.study import run_sweep

    # Same images (keys, labels, splits); features of another width and quality, as another backbone gives.
    wide = make_cache(tmp_path / "wide.h5", shape=(32,), spread=0.8)
    narrow = make_cache(tmp_path / "narrow.h5", shape=(8,), seed=1, spread=3.0)
    result = run_sweep(SweepConfig(caches=(str(wide), str(narrow)), out=str(tmp_path / "sw"), trials=10),
                       SearchSpace(epochs=5, patience=2, parallel=10, batch_size=(32,), hidden_units=(16,)), **QUIET)
    rows = list(csv.DictReader((tmp_path / "sw" / "leaderboard.csv").open()))
    assert {r["cache"] for r in rows} == {"wide", "narrow"} and len(rows) == 10
    assert result.best["cache"] == "wide"  # the better features win the shoot-out
    assert json.loads((tmp_path / "sw" / "best" / "run.json").read_text())["cache"]["path"] == str(wide)


def _sweep_process(cache: Path, out: Path, trials: int, parallel: int, epochs: int) -> subprocess.Popen:
    code = ("import sys; from headstart.pipeline.config import SweepConfig;"
            "from headstart.features.reporter import LineReporter;"
            "from headstart.pipeline.sweep.space import SearchSpace;"
            "from headstart.pipeline.sweep.study import run_sweep;"
            f"r = run_sweep(SweepConfig(caches=({str(cache)!r},), out={str(out)!r}, trials={trials}, heartbeat=2),"
            f" SearchSpace(epochs={epochs}, patience=100, parallel={parallel}, batch_size=(16,), hidden_units=(16,),"
            " pruner='none'), reporter=LineReporter(lambda m: print(m, flush=True)));"
            "print('trained', r.trained_here, flush=True)")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


@pytest.mark.slow
def test_resume_after_sigkill_gives_exactly_n_trials(tmp_path):
    cache = make_cache(tmp_path / "c.h5", counts={"train": 640, "validation": 48, "test": 48})
    out = tmp_path / "sw"
    proc = _sweep_process(cache, out, trials=6, parallel=3, epochs=40)
    for line in proc.stdout:  # kill in the second round: 3 trials told, 3 running
        if "[3/6]" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = [t.state.name for t in finished(out)]
    assert states.count("COMPLETE") == 3 and "RUNNING" in states
    resumed = _sweep_process(cache, out, trials=6, parallel=3, epochs=40)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    trials = finished(out)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 6
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert interrupted, "the killed trials are marked failed"
    reruns = [t for t in done if "failed_trial" in t.system_attrs]
    assert {t.system_attrs["failed_trial"] for t in reruns} == {t.number for t in interrupted}
    for rerun in reruns:  # an interrupted trial is rerun with its own parameters
        assert rerun.params == trials[rerun.system_attrs["failed_trial"]].params
    assert len(list(csv.DictReader((out / "leaderboard.csv").open()))) == 6


def test_best_of_the_same_trial_written_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    """Processes sharing a study finish together and may retrain the same best trial at once."""
    from headstart.pipeline.sweep import best

    def written(path: Path, trial: int) -> Path:
        path.mkdir()
        (path / "run.json").write_text(json.dumps({"kind": "head", "sweep": {"trial": trial}}))
        return path

    # Theirs lands between our removal of best/ and our move: the move fails, theirs stays.
    monkeypatch.setattr(best.shutil, "rmtree", lambda path, ignore_errors=False: None)
    theirs, ours = written(tmp_path / "best", 7), written(tmp_path / ".best-1", 7)
    best._move_into_place(ours, theirs, 7)
    assert json.loads((theirs / "run.json").read_text())["sweep"]["trial"] == 7
    with pytest.raises(OSError):  # a best/ of another trial is never taken for ours
        best._move_into_place(written(tmp_path / ".best-2", 8), theirs, 8)


@pytest.mark.slow
def test_two_processes_share_one_study_without_duplicates(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    out = tmp_path / "sw"
    out.mkdir()
    procs = [_sweep_process(cache, out, trials=8, parallel=3, epochs=3) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trials = finished(out)
    numbers = [t.number for t in trials if t.state.name == "COMPLETE"]
    assert len(numbers) == 8 and len(set(numbers)) == 8
    trained = [int(o.strip().splitlines()[-1].split()[-1]) for o in outputs]
    assert sum(trained) == 8
    told = [int(line.split()[1]) for o in outputs for line in o.splitlines()
            if line.startswith("trial ") and "dropped here" not in line]
    assert sorted(told) == sorted(numbers)  # every trial trained by exactly one process


@pytest.mark.slow
def test_finetune_accepts_the_sweeps_best_head_with_parity(tmp_path):
    from conftest import BACKBONE, make_splits, make_weights_file

    data = make_splits(tmp_path / "images")
    weights = make_weights_file(tmp_path / "w.weights.h5")
    cache = tmp_path / "f.h5"
    r = invoke("extract-features", data, "--out", cache, "--backbone", BACKBONE["backbone"], "--alpha",
               BACKBONE["alpha"], "--image-size", BACKBONE["image_size"], "--weights", weights, "--quiet")
    assert r.exit_code == 0, r.output
    # The kinds whose layers finetune must rebuild: a hidden layer after standardisation.
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nhead_kind = 'hidden'\nnormalize = 'standardize'\nhidden_units = 8\nepochs = 3\n"
                    "batch_size = 8\nparallel = 2\n")
    out = tmp_path / "sw"
    r = invoke("sweep", cache, "--out", out, "--trials", 2, "--config", toml, "--quiet")
    assert r.exit_code == 0, r.output
    tuned = tmp_path / "tuned"
    r = invoke("finetune", data, "--head", out / "best", "--out", tuned, "--epochs", 1, "--batch-size", 8,
               "--parity-samples", 4, "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert metrics["parity"]["samples"] == 4 and metrics["parity"]["max_abs_diff"] <= metrics["parity"]["tolerance"]


@pytest.mark.slow
def test_sweep_on_real_photos_finds_a_head_at_least_as_good(real_photo_cache, tmp_path):
    from headstart.pipeline.commands.head_training import train_head
    from headstart.pipeline.sweep.study import run_sweep

    cache = str(real_photo_cache["cache"])
    result = run_sweep(SweepConfig(caches=(cache,), out=str(tmp_path / "sw"), trials=16),
                       SearchSpace(parallel=16), **QUIET)
    default = train_head(HeadConfig(features=cache, out=str(tmp_path / "default")), **QUIET)
    print(f"sweep best test accuracy {result.best_test_accuracy:.4f}, default {default.test_accuracy:.4f}, "
          f"{result.seconds:.1f} s")
    # Selection is on validation: the best trial's validation loss beats the default head's.
    assert result.best["val_loss"] < default.val_loss
    assert result.best_test_accuracy >= default.test_accuracy - 0.01


@pytest.mark.slow
def test_run_with_sweep_reuses_its_head_stage_and_finetunes_the_best(tmp_path):
    from conftest import make_class_folders
    from test_runner import make_weights_file as runner_weights

    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(tmp_path / "images" / split, per_class=n, seed=seed)
    weights = runner_weights(tmp_path / "w.weights.h5")
    toml = tmp_path / "run.toml"
    toml.write_text("[sweep]\nepochs = 3\nparallel = 3\nbatch_size = 8\nhidden_units = 8\n")
    flags = ["--recipe", "guide", "--backbone", "mobilenet", "--alpha", 0.25, "--image-size", 32,
             "--weights", weights, "--epochs", 1, "--batch-size", 8, "--config", toml, "--sweep", 3,
             "--class-weight", "balanced"]
    run_dir = tmp_path / "run"
    r = invoke("run", tmp_path / "images", "--out", run_dir, *flags)
    assert r.exit_code == 0, r.output
    summary = json.loads((run_dir / "summary.json").read_text())["stages"]
    best = json.loads((run_dir / "head" / "run.json").read_text())["sweep"]
    assert summary["head"]["sweep"]["trials"] == 3 and summary["head"]["sweep"]["best_trial"] == best["trial"]
    head = json.loads((run_dir / "head" / "run.json").read_text())
    assert head["class_weight"]["mode"] == "balanced"  # [head] class_weight reaches the sweep and best/
    assert (run_dir / "sweep" / "leaderboard.csv").is_file() and (run_dir / "finetune" / "model.keras").is_file()
    assert "[sweep]" in (run_dir / "config.toml").read_text()
    again = invoke("run", tmp_path / "images", "--out", run_dir, *flags)
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "summary.json").read_text())["stages"]["head"]["status"] == "reused"
