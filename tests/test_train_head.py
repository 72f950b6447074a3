"""`train_head` on synthetic feature caches: heads, loaders, determinism, early stopping, run dir.

Caches are written with ``headstart.features.store.create_or_resume`` from Gaussian blobs, so no backbone
runs; the one test on real images is marked slow and skips without ../shared/assets.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from headstart.features.reporter import LineReporter

from conftest import head_weights, make_cache
from headstart.features.errors import StoreError
from headstart.features.cache import open_cache
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.errors import DataError, OptionError, RunDirError
from headstart.pipeline.model.head import predict_classes
from headstart.pipeline.commands.head_training import train_head

QUIET = {}


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_binary_head_writes_a_complete_run_dir(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    out = tmp_path / "run"
    lines = []
    result = train_head(HeadConfig(features=str(cache), out=str(out), epochs=6, lr=1e-2, batch_size=32),
                        reporter=LineReporter(lines.append))
    assert result.test_accuracy > 0.95 and result.val_accuracy > 0.95
    assert result.loader == "memory" and any(l.startswith("epoch 1/6") for l in lines)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "head.keras", "history.csv",
                                                      "metrics.json", "run.json"]

    run = json.loads((out / "run.json").read_text())
    with open_cache(cache) as c:
        assert run["cache"]["fingerprint"] == c.fingerprint
        assert run["cache"]["config"] == c.config and run["cache"]["provenance"] == c.provenance
        test_x, test_y = c.split("test").features[:], c.split("test").labels
    assert run["class_names"] == ["class0", "class1"] and run["feature_shape"] == [16]
    assert run["config"]["epochs"] == 6 and run["config"]["lr"] == 1e-2
    assert {"tensorflow", "keras", "h5py", "numpy"} <= set(run["versions"])
    assert run["timings"]["seconds_per_epoch"] > 0 and run["best_epoch"] == result.best_epoch

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert set(metrics["test"]["per_class"]) == {"class0", "class1"}
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 48

    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == result.epochs_run and set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss",
                                                               "val_accuracy"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # The saved head reproduces the reported test predictions, loaded in safe mode.
    model = keras.saving.load_model(out / "head.keras", safe_mode=True)
    logits = model.predict_on_batch(test_x)
    assert logits.shape == (48, 1)
    matrix = np.zeros((2, 2), int)
    np.add.at(matrix, (test_y, predict_classes(logits, 2)), 1)
    assert matrix.tolist() == metrics["test"]["confusion_matrix"]
    assert "best epoch" in result.summary and "test accuracy" in result.summary
    # Balanced accuracy and macro-F1 beside accuracy, recomputed from the confusion matrix.
    recall = np.diag(matrix) / matrix.sum(axis=1)
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(recall.mean())
    assert metrics["test"]["macro_f1"] == pytest.approx(np.mean(2 * np.diag(matrix) / (matrix.sum(0) + matrix.sum(1))))
    assert "test balanced accuracy" in result.summary and "test macro-F1" in result.summary


def test_multiclass_head_on_spatial_float16_features(tmp_path):
    cache = make_cache(tmp_path / "f.h5", classes=4, shape=(2, 2, 8), dtype="float16")
    result = train_head(HeadConfig(features=str(cache), out=str(tmp_path / "run"), epochs=8, lr=1e-2,
                                   batch_size=32), **QUIET)
    assert result.test_accuracy > 0.9
    assert np.array(result.metrics["test"]["confusion_matrix"]).shape == (4, 4)
    model = keras.saving.load_model(tmp_path / "run" / "head.keras", safe_mode=True)
    assert model.output_shape == (None, 4)


@pytest.mark.slow
def test_memory_and_stream_are_bit_identical_and_deterministic(tmp_path, monkeypatch):
    from headstart.pipeline.training import head_data
    from tensorflow.python.framework import config as tf_config

    # An augmented-views cache, so the per-epoch view draw is part of what must agree; small
    # windows (128 rows of 2-row blocks) so the plan spans windows and batches straddle them.
    monkeypatch.setattr(head_data, "WINDOW_BYTES", 128 * 16 * 4)
    cache = make_cache(tmp_path / "f.h5", views=2, spread=2.0)
    base = dict(features=str(cache), epochs=3, lr=1e-2, batch_size=24, seed=5, deterministic=True)
    first = train_head(HeadConfig(out=str(tmp_path / "a"), **base), **QUIET)
    again = train_head(HeadConfig(out=str(tmp_path / "b"), **base), **QUIET)
    stream = train_head(HeadConfig(out=str(tmp_path / "c"), memory_limit_mb=0, **base), **QUIET)
    assert not tf_config.is_op_determinism_enabled()  # restored after the run
    assert (first.loader, again.loader, stream.loader) == ("memory", "memory", "stream")
    assert first.history == again.history == stream.history
    assert_same_weights(head_weights(tmp_path / "a"), head_weights(tmp_path / "b"))
    assert_same_weights(head_weights(tmp_path / "a"), head_weights(tmp_path / "c"))
    other = train_head(HeadConfig(out=str(tmp_path / "d"), **{**base, "seed": 6, "epochs": 1}), **QUIET)
    assert not np.array_equal(head_weights(tmp_path / "d")[-2], head_weights(tmp_path / "a")[-2])
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    assert run["loader"] == "stream" and run["cache"]["views"] == 2
    assert run["shuffle"] == {"block_rows": 2, "window_rows": 128, "seed": 5}


def test_views_are_drawn_per_image_per_epoch(tmp_path, monkeypatch):
    from headstart.pipeline.training import head_data

    cache = make_cache(tmp_path / "f.h5", views=3)
    plans = []
    original = head_data.plan_epoch

    def spy(*args, **kwargs):
        plans.append(original(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(head_data, "plan_epoch", spy)
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "run"), epochs=3, patience=5), **QUIET)
    assert len(plans) == 3
    for plan in plans:
        assert sorted(plan.order) == list(range(160)) and set(np.unique(plan.choice)) == {0, 1, 2, 3}
    assert not np.array_equal(plans[0].choice, plans[1].choice)  # a fresh view per image each epoch


@pytest.mark.slow
def test_early_stopping_restores_the_best_epoch(tmp_path):
    # 40% of validation labels are wrong: validation loss falls while the head finds the direction,
    # then rises as its logits grow confident.
    cache = make_cache(tmp_path / "f.h5", flip_validation=0.4, spread=2.0)
    base = dict(features=str(cache), lr=0.01, batch_size=32, seed=1, deterministic=True)
    stopped = train_head(HeadConfig(out=str(tmp_path / "a"), epochs=40, patience=2, **base), **QUIET)
    val_loss = stopped.history["val_loss"]
    assert stopped.best_epoch == int(np.argmin(val_loss)) + 1 > 1  # not simply the first epoch
    assert stopped.epochs_run == stopped.best_epoch + 2 < 40
    assert stopped.val_loss == pytest.approx(val_loss[stopped.best_epoch - 1], rel=1e-6)
    # Training for exactly best_epoch epochs gives the weights early stopping restored.
    exact = train_head(HeadConfig(out=str(tmp_path / "b"), epochs=stopped.best_epoch, patience=99, **base),
                       **QUIET)
    assert exact.history["val_loss"] == val_loss[:stopped.best_epoch]
    assert_same_weights(head_weights(tmp_path / "a"), head_weights(tmp_path / "b"))


def test_zero_epochs_trains_until_early_stopping_past_the_default_maximum(tmp_path):
    """--epochs 0: no maximum; a run whose best epoch is the default maximum's last goes on."""
    from headstart.pipeline.training.early_stopping import UNLIMITED_EPOCHS, epoch_limit

    cache = make_cache(tmp_path / "f.h5", flip_validation=0.3, spread=2.0)
    base = dict(features=str(cache), lr=1e-3, batch_size=32, patience=2, deterministic=True)
    capped = train_head(HeadConfig(out=str(tmp_path / "capped"), **base), **QUIET)  # epochs: the default 20
    assert capped.epochs_run == HeadConfig().epochs == capped.best_epoch  # still improving when cut short
    lines = []
    free = train_head(HeadConfig(out=str(tmp_path / "free"), epochs=0, **base), reporter=LineReporter(lines.append))
    assert free.best_epoch > HeadConfig().epochs and free.epochs_run == free.best_epoch + 2
    assert free.history["val_loss"][:20] == capped.history["val_loss"]  # the same run, not cut short
    assert any(line.startswith("epoch 21  ") for line in lines) and "early stopping" in lines[-1]
    assert epoch_limit(0) == UNLIMITED_EPOCHS == 1000 and epoch_limit(7) == 7


def test_validation_predicted_in_chunks_changes_nothing(tmp_path, monkeypatch):
    """The trainer predicts validation a chunk of rows at a time (a streamed split never sits in
    memory whole): 5-row chunks give the default's history and weights, and each epoch's log line
    carries that epoch's history row."""
    from headstart.pipeline.training import head_group

    cache = make_cache(tmp_path / "f.h5", flip_validation=0.2)
    base = dict(features=str(cache), epochs=3, lr=1e-2, batch_size=24, seed=2)
    whole = train_head(HeadConfig(out=str(tmp_path / "a"), **base), **QUIET)
    monkeypatch.setattr(head_group, "VALIDATION_CHUNK_BYTES", 5 * 16 * 4)  # 5 rows of 16 float32
    lines = []
    chunked = train_head(HeadConfig(out=str(tmp_path / "b"), **base), reporter=LineReporter(lines.append))
    assert whole.history == chunked.history and len(whole.history["val_loss"]) == 3
    assert_same_weights(head_weights(tmp_path / "a"), head_weights(tmp_path / "b"))
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs[0].startswith("epoch 1/3") and f"val_loss {chunked.history['val_loss'][0]:.4f}" in epochs[0]
    timings = json.loads((tmp_path / "b" / "run.json").read_text())["timings"]
    assert len(epochs) == len(timings["epoch_seconds"]) == 3 and min(timings["epoch_seconds"]) > 0


def test_without_validation_split_watches_training_loss(tmp_path):
    cache = make_cache(tmp_path / "f.h5", counts={"train": 64, "test": 32})
    lines = []
    result = train_head(HeadConfig(features=str(cache), out=str(tmp_path / "run"), epochs=2),
                        reporter=LineReporter(lines.append))
    assert result.metrics["validation"] is None and result.metrics["monitor"] == "loss"
    assert result.test_accuracy is not None and any("no validation split" in l for l in lines)


@pytest.mark.slow
def test_refusals(tmp_path):
    good = make_cache(tmp_path / "good.h5")
    run = lambda features, out="run", **kw: train_head(
        HeadConfig(features=str(features), out=str(tmp_path / out), epochs=1, **kw), **QUIET)

    partial = make_cache(tmp_path / "partial.h5", finalize=False)
    for path in (partial, Path(f"{partial}.partial")):
        with pytest.raises(StoreError, match="incomplete") as err:
            run(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)

    no_train = make_cache(tmp_path / "no_train.h5", counts={"validation": 16, "test": 16})
    with pytest.raises(DataError, match="no 'train' split") as err:
        run(no_train)
    assert str(no_train) in str(err.value)

    future = make_cache(tmp_path / "future.h5")
    with h5py.File(future, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(StoreError, match=r"format.version|99") as err:
        run(future)
    assert str(future) in str(err.value)

    with pytest.raises(StoreError, match="no such file"):
        run(tmp_path / "missing.h5")
    with pytest.raises(OptionError, match="^epochs"):
        train_head(HeadConfig(features=str(good), out=str(tmp_path / "x"), epochs=-1), **QUIET)
    assert not (tmp_path / "run").exists()  # nothing created by refused runs

    first = run(good)
    assert run(good).reused and not first.reused  # the same options on the same cache: already done
    with pytest.raises(RunDirError, match=r"\(--seed 0 there, 5 now\); pass --overwrite"):
        run(good, seed=5)
    result = run(good, overwrite=True)
    assert math.isfinite(result.val_loss)


@pytest.mark.slow
@pytest.mark.assets
def test_accuracy_on_cats_vs_dogs_2k(real_photo_cache, tmp_path):
    """The guide's recipe on real photos: MobileNetV2 0.35 at 128 px, test accuracy >= 0.88."""
    # The session's cache is extract-features' output for exactly this recipe (conftest.real_photo_cache).
    cache = real_photo_cache["cache"]
    result = train_head(HeadConfig(features=str(cache), out=str(tmp_path / "run"), seed=0,
                                   deterministic=True), **QUIET)
    assert result.metrics["test"]["rows"] == 400
    assert result.test_accuracy >= 0.88, result.summary


@pytest.mark.slow
def test_cli_train_head(tmp_path):
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    cache = make_cache(tmp_path / "f.h5")
    args = ["train-head", str(cache), "--out", str(tmp_path / "run"), "--epochs", "2", "--seed", "3",
            "--deterministic"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "best epoch" in first.output and (tmp_path / "run" / "run.json").is_file()
    again = CliRunner().invoke(main, args)  # the same options: already done (tests/test_out_dir.py)
    assert again.exit_code == 0 and "already done" in again.output
    refused = CliRunner().invoke(main, [*args[:4], "--epochs", "3", *args[6:]])
    assert refused.exit_code == 2 and "(--epochs 2 there, 3 now)" in refused.output and "--overwrite" in refused.output
    missing = CliRunner().invoke(main, ["train-head", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "nope.h5" in missing.output
