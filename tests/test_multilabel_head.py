"""The multi-label head: one sigmoid logit per class, per-class BCE, train-head on a multi-hot cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_multilabel_cache


def test_head_helpers_grow_the_multi_label_case():
    from headstart.pipeline.model.head import (build_head, head_labels, head_loss_and_metrics,
                                               logits_to_probabilities, num_logits, predict_classes)

    assert num_logits(2) == 1 and num_logits(2, multi_label=True) == 2
    head = build_head((8,), 2, multi_label=True)
    assert head.output_shape == (None, 2)
    logits = np.array([[0.0, 2.0], [-3.0, 0.5]])
    probs = logits_to_probabilities(logits, 2, multi_label=True)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)))  # independent sigmoids, rows not summing to 1
    np.testing.assert_array_equal(predict_classes(logits, 2, multi_label=True), [[1, 1], [0, 1]])
    np.testing.assert_array_equal(predict_classes(logits, 2, multi_label=True, thresholds=[0.4, 0.7]),
                                  [[1, 1], [0, 0]])
    targets = head_labels(np.array([[1, 0], [1, 1]]), 2, multi_label=True)
    assert targets.dtype == np.float32 and targets.shape == (2, 2)
    loss_fn, _ = head_loss_and_metrics(2, multi_label=True)
    # Binary cross-entropy per class, averaged over the 4 entries.
    z, y = logits, np.array([[1, 0], [1, 1]])
    expected = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    assert float(loss_fn(targets, logits)) == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_reaches_the_multi_label_loss():
    from headstart.pipeline.model.head import head_training_loss

    y, z = np.array([[1.0, 0.0]]), np.array([[4.0, -4.0]])
    plain = float(head_training_loss(2, multi_label=True)(y, z))
    smoothed = float(head_training_loss(2, 0.2, multi_label=True)(y, z))
    ys = y * 0.8 + 0.1
    expected = np.mean(np.maximum(z, 0) - z * ys + np.log1p(np.exp(-np.abs(z))))
    assert smoothed == pytest.approx(expected, rel=1e-5) and smoothed > plain


def test_train_head_on_a_multi_hot_cache(tmp_path):
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    cache = make_multilabel_cache(tmp_path / "ml.h5")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train-head", str(cache), "--out", str(out), "--epochs", "15",
                                       "--lr", "0.01", "--weight-decay", "0.001", "--label-smoothing", "0.05"])
    assert result.exit_code == 0, result.output
    assert "test mAP" in result.output and "val_map" in result.output
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    saved = json.loads((out / "thresholds.json").read_text())
    assert run["task"] == "multi_label" and run["head"]["multi_label"] and run["head"]["logits"] == 3
    assert run["head"]["loss"] == "binary_crossentropy"
    assert metrics["monitor"] == "val_map"
    assert saved == run["thresholds"] == metrics["thresholds"] and saved["chosen_on"] == "validation"
    cuts = [saved["thresholds"][n] for n in run["class_names"]]
    assert all(0 < t < 1 for t in cuts) and len(set(cuts)) == 3  # chosen, not the default 0.5
    test = metrics["test"]
    for key in ("map", "micro_f1", "macro_f1", "exact_match"):
        assert 0 <= test[key] <= 1
    assert set(test["per_class"]["shape0"]) >= {"precision", "recall", "f1", "average_precision", "threshold"}
    assert test["per_class"]["shape1"]["threshold"] == saved["thresholds"]["shape1"]
    # The label-frequency baseline (a constant score) has AP = the positive share, about 0.4.
    assert test["map"] > 0.85


def test_early_stopping_on_validation_map_keeps_the_highest_epoch():
    from headstart.pipeline.training.early_stopping import EarlyStopping

    stop = EarlyStopping("val_map", patience=1)
    assert stop.higher_is_better and stop.update(1, 0.5) and stop.update(2, 0.7)
    assert not stop.update(3, 0.6) and stop.exhausted and stop.best_epoch == 2
    assert not EarlyStopping("val_loss", 1).higher_is_better


def test_multi_label_head_refuses_a_distributed_strategy(tmp_path, monkeypatch):
    from headstart.pipeline.config import HeadConfig
    from headstart.pipeline.errors import OptionError
    from headstart.pipeline.commands import head_training

    cache = make_multilabel_cache(tmp_path / "ml.h5", counts={"train": 40, "validation": 16})

    class _Setup:
        replicas = 2

    monkeypatch.setattr("headstart.pipeline.distribute.strategy.set_up_strategy", lambda *a, **k: _Setup())
    with pytest.raises(OptionError, match="multi-label head trains on one device"):
        head_training.train_head(HeadConfig(features=str(cache), out=str(tmp_path / "r"), strategy="mirrored"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["diagnose"])  # sweep reads them now (tests/test_sweep.py)
def test_diagnose_refuses_a_multi_label_cache_in_one_line(tmp_path, command):
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    cache = make_multilabel_cache(tmp_path / "ml.h5", counts={"train": 40, "validation": 16})
    result = CliRunner().invoke(main, [command, str(cache), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{command} reads single-label caches only" in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_summary_plot_draws_per_class_ap_and_label_sets(tmp_path, monkeypatch):
    from headstart.pipeline.report import summary_plot

    drawn = {}
    monkeypatch.setattr(summary_plot, "_confusion", lambda *a: drawn.setdefault("confusion", True))
    real_ap = summary_plot._average_precision
    monkeypatch.setattr(summary_plot, "_average_precision",
                        lambda ax, per_class: (drawn.setdefault("ap", dict(per_class)), real_ap(ax, per_class)))
    samples = {"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([[1, 0], [1, 1]]),
               "predicted": np.array([[1, 0], [0, 1]]), "probability": np.full((2, 2), 0.7)}
    per_class = {"cat": {"average_precision": 0.9}, "sofa": {"average_precision": None}}
    out = tmp_path / "summary.png"
    summary_plot.plot_summary(out, head_history={"loss": [1.0, 0.5]}, finetune_history={},
                              class_names=["cat", "sofa"], samples=samples, per_class=per_class)
    assert out.stat().st_size > 1000 and drawn == {"ap": per_class}  # AP bars, no confusion matrix


def test_run_samples_of_a_multi_label_model_hold_label_sets(tmp_path):
    import json

    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.run.samples import SampleImages, write_samples
    from headstart.pipeline.training.predictions import PredictedBatch

    names = ["cat", "sofa"]
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "run.json").write_text(json.dumps({"kind": "finetune", "task": "single_label"}))
    assert RunDir(tmp_path / "single").thresholds(names) is None
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi" / "run.json").write_text(json.dumps(
        {"kind": "finetune", "task": "multi_label", "thresholds": {"thresholds": {"cat": 0.3, "sofa": 0.9}}}))
    cuts = RunDir(tmp_path / "multi").thresholds(names)
    np.testing.assert_allclose(cuts, [0.3, 0.9])
    samples = SampleImages(total=2, num_classes=2, thresholds=cuts)
    logits = np.array([[0.0, 3.0], [-2.0, 1.0]], np.float32)  # sigmoid: (0.5, 0.95), (0.12, 0.73)
    samples(PredictedBatch(images=np.zeros((2, 4, 4, 3), np.float32), labels=np.array([[1, 1], [0, 1]]),
                           logits=logits, keys=["a", "b"], positions=np.array([0, 1]), seen=2))
    assert len(samples.kept) == 2
    write_samples(tmp_path / "s.npz", samples, names, size=4, width=2)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["labels"], [[1, 1], [0, 1]])
        np.testing.assert_array_equal(z["predicted"], [[1, 1], [0, 0]])  # at 0.3 / 0.9, not 0.5
        assert z["probability"].shape == (2, 2)
