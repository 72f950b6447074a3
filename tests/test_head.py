"""The head builder, the run-directory helpers and the feature loaders, without a feature cache."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import h5py
import keras
import numpy as np
import pytest

from headstart.pipeline.store import files as report
from headstart.pipeline.store.curves import plot_curves
from headstart.pipeline.store.provenance import library_versions
from headstart.pipeline.report.summary_table import format_summary_table
from headstart.pipeline.report.metrics import classification_metrics
from headstart.pipeline.errors import OptionError
from headstart.pipeline.model.head import (build_head, compile_head, head_labels, logits_to_probabilities,
                           predict_classes)
from headstart.pipeline.training.head_data import FeatureRows, plan_epoch, shuffle_geometry, split_nbytes


@pytest.mark.parametrize("shape, classes, units", [((16,), 2, 1), ((16,), 5, 5), ((3, 3, 8), 2, 1),
                                                    ((3, 3, 8), 4, 4)])
def test_head_shapes_and_safe_mode_round_trip(tmp_path, shape, classes, units):
    model = build_head(shape, classes, dropout=0.3)
    assert model.output_shape == (None, units)
    assert any(isinstance(l, keras.layers.GlobalAveragePooling2D) for l in model.layers) == (len(shape) == 3)
    compile_head(model, classes, 1e-3)
    x = np.random.default_rng(0).normal(size=(7, *shape)).astype("float32")
    path = tmp_path / "head.keras"
    report.save_model_atomic(model, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.keras"]  # no temp file left
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), model.predict_on_batch(x))


def test_head_refuses_bad_arguments():
    with pytest.raises(OptionError, match="at least 2 classes"):
        build_head((8,), 1)
    with pytest.raises(OptionError, match="dropout"):
        build_head((8,), 2, dropout=1.0)
    with pytest.raises(OptionError, match="feature shape"):
        build_head((4, 8), 2)


def test_loss_matches_compiled_metrics():
    # Binary: one logit, labels (N, 1) float, accuracy counts logit > 0 as class 1.
    model = compile_head(build_head((4,), 2, dropout=0.0), 2, 1e-3)
    x = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype(np.int64)
    logs = model.evaluate(x, head_labels(y, 2), verbose=0, return_dict=True)
    logits = model.predict_on_batch(x)
    assert logs["accuracy"] == pytest.approx(np.mean(predict_classes(logits, 2) == y))
    # Multi-class: sparse labels.
    model = compile_head(build_head((4,), 3, dropout=0.0), 3, 1e-3)
    y = np.arange(32) % 3
    logs = model.evaluate(x, head_labels(y, 3), verbose=0, return_dict=True)
    assert logs["accuracy"] == pytest.approx(np.mean(predict_classes(model.predict_on_batch(x), 3) == y))


def test_probabilities():
    p = logits_to_probabilities(np.array([[0.0], [800.0], [-800.0]]), 2)
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    p = logits_to_probabilities(np.array([[1.0, 2.0, 3.0], [1000.0, 0.0, 0.0]]), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[1, 0] == pytest.approx(1.0) and np.all(np.diff(p[0]) > 0)
    np.testing.assert_array_equal(predict_classes(np.array([[0.0], [0.1], [-3]]), 2), [0, 1, 0])


def test_classification_metrics():
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 1], ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.6) and m["rows"] == 5
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 1.0, "support": 2}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 1}


def test_run_dir_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = {"loss": [0.9, 0.5, 0.6], "accuracy": [0.5, 0.8, 0.7],
               "val_loss": [0.8, 0.4, 0.5], "val_accuracy": [0.6, 0.9, 0.85]}
    report.write_history_csv(history, run / "history.csv")
    plot_curves(history, run / "curves.png", best_epoch=2, title="t")
    report.write_json_atomic(run / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")})
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and float(rows[1]["val_loss"]) == 0.4
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "m.json").read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": None}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # temp files all renamed
    assert report.read_history(run / "history.csv") == history  # the one history.csv format, both ways


def test_summary_table():
    table = format_summary_table([("best epoch", 3), ("val accuracy", 0.91234), ("test", None)],
                                        title="train-head")
    lines = table.splitlines()
    assert lines[0] == "train-head" and "0.9123" in table and lines[-2].endswith("| -")
    assert set(library_versions()) >= {"tensorflow", "keras", "numpy", "h5py", "python"}


def test_plan_epoch_is_seeded_and_covers_every_view():
    plan = plan_epoch(7, 0, 1000, views=3)
    assert len(plan.windows) == 1 and sorted(plan.order) == list(range(1000))
    assert set(np.unique(plan.choice)) == {0, 1, 2, 3}  # the original is one of the K+1 choices
    again = plan_epoch(7, 0, 1000, views=3)
    np.testing.assert_array_equal(plan.order, again.order)
    np.testing.assert_array_equal(plan.choice, again.choice)
    assert not np.array_equal(plan.order, plan_epoch(7, 1, 1000, views=3).order)
    assert not np.array_equal(plan.order, plan_epoch(8, 0, 1000, views=3).order)
    assert plan_epoch(-1, 0, 10).choices is None


def test_plan_windows_hold_whole_blocks():
    plan = plan_epoch(0, 0, 103, block_rows=4, window_rows=40)
    # 26 blocks (the last of 3 rows), 10 per window.
    assert [len(set(w // 4)) for w in plan.windows] == [10, 10, 6]
    assert sorted(plan.order) == list(range(103))
    for window in plan.windows:
        blocks = set(window // 4)
        assert sum(min(4, 103 - 4 * b) for b in blocks) == len(window)  # every block whole
    assert shuffle_geometry(8192) == (128, 8192) and shuffle_geometry(10 << 20) == (1, 64)


@dataclass
class _Split:
    features: object
    labels: np.ndarray
    views: object

    def __len__(self):
        return len(self.labels)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_memory_and_stream_loaders_give_identical_batches(tmp_path, dtype):
    rng = np.random.default_rng(0)
    n, k = 103, 2
    feats = rng.normal(size=(n, 2, 2, 3)).astype(dtype)
    views = rng.normal(size=(n, k, 2, 2, 3)).astype(dtype)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("features", data=feats, chunks=(8, 2, 2, 3))
        f.create_dataset("views", data=views, chunks=(8, k, 2, 2, 3))
    with h5py.File(tmp_path / "f.h5", "r") as f:
        split = _Split(f["features"], np.arange(n), f["views"])
        assert split_nbytes(split, with_views=True) == n * 12 * np.dtype(dtype).itemsize * 3
        memory = FeatureRows(split, in_memory=True, with_views=True)
        stream = FeatureRows(split, in_memory=False, with_views=True)
        for plan in (plan_epoch(3, 0, n, views=k), plan_epoch(3, 1, n, views=k, block_rows=3, window_rows=21)):
            expected = list(memory.train_batches(plan, 16))
            assert [len(r) for _, r in expected] == [16] * 6 + [7]
            assert all(x.dtype == np.float32 for x, _ in expected)
            np.testing.assert_array_equal(np.concatenate([r for _, r in expected]), plan.order)
            flat_x = np.concatenate([x for x, _ in expected])
            for j, (row, view) in enumerate(zip(plan.order, plan.choice)):  # each row in its planned view
                want = feats[row] if view == 0 else views[row, view - 1]
                np.testing.assert_array_equal(flat_x[j], want.astype(np.float32))
            got = list(stream.train_batches(plan, 16))
            assert len(got) == len(expected)
            for (xa, ra), (xb, rb) in zip(expected, got):
                np.testing.assert_array_equal(ra, rb)
                np.testing.assert_array_equal(xa, xb)
        for rows in (memory, stream):
            evals = list(rows.eval_batches(16))
            np.testing.assert_array_equal(np.concatenate([x for x, _ in evals]), feats.astype(np.float32))
            np.testing.assert_array_equal(np.concatenate([r for _, r in evals]), np.arange(n))
