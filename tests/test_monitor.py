"""``--monitor``: early stopping on a measure where higher is better, in train-head and the run
table, and its one-line refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from headstart.features.reporter import LineReporter
from click.testing import CliRunner

from conftest import make_cache
from headstart.pipeline.cli import main
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.errors import OptionError
from headstart.pipeline.report.metrics import classification_metrics
from headstart.pipeline.training.early_stopping import EarlyStopping
from headstart.pipeline.training.monitor import check_monitor, history_key


def test_early_stopping_on_a_measure_keeps_the_highest_epoch():
    stopping = EarlyStopping("val_balanced_accuracy", patience=2)
    assert stopping.higher_is_better and not EarlyStopping("val_loss", 2).higher_is_better
    marks = [stopping.update(epoch, value) for epoch, value in enumerate([0.5, 0.7, 0.7, 0.6], start=1)]
    assert marks == [True, True, False, False]  # equal is no improvement, as Keras
    assert stopping.best_epoch == 2 and stopping.best_value == 0.7 and stopping.exhausted
    assert not EarlyStopping("val_macro_f1", 1).update(1, float("nan"))
    loss = EarlyStopping("val_loss", 2)
    assert [loss.update(e, v) for e, v in enumerate([0.5, 0.7, 0.4], start=1)] == [True, False, True]


def test_monitor_refusals_are_one_line():
    check_monitor("balanced_accuracy", has_validation=True)
    check_monitor("map", has_validation=True, multi_label=True)
    for kwargs, message in (({"monitor": "map"}, "^monitor='map' needs a multi-label task"),
                            ({"monitor": "macro_f1", "multi_label": True}, "needs a single-label task"),
                            ({"monitor": "balanced_accuracy", "has_validation": False}, "needs a validation split"),
                            ({"monitor": "accuracy"}, "^monitor must be one of")):
        with pytest.raises(OptionError, match=message) as caught:
            check_monitor(**kwargs)
        assert "\n" not in str(caught.value)
    assert history_key("val_loss", False) == "loss" and history_key("macro_f1", True) == "val_macro_f1"


@pytest.mark.slow
def test_train_head_stops_on_validation_balanced_accuracy(tmp_path):
    from headstart.pipeline.commands.head_training import train_head

    cache = make_cache(tmp_path / "f.h5", classes=3, flip_validation=0.3)
    out = tmp_path / "run"
    lines: list[str] = []
    result = train_head(HeadConfig(features=str(cache), out=str(out), epochs=12, lr=5e-2, batch_size=16, patience=2,
                                   monitor="balanced_accuracy"), reporter=LineReporter(lines.append))
    rows = list(csv.DictReader((out / "history.csv").open()))
    values = [float(r["val_balanced_accuracy"]) for r in rows]
    # The kept epoch is the first with the highest validation balanced accuracy.
    assert result.best_epoch == int(np.argmax(values)) + 1
    assert json.loads((out / "metrics.json").read_text())["monitor"] == "val_balanced_accuracy"
    assert json.loads((out / "run.json").read_text())["monitor"] == {"option": "balanced_accuracy",
                                                                      "watched": "val_balanced_accuracy"}
    assert any("val_balanced_accuracy" in line for line in lines if line.startswith("epoch 1/"))
    if len(rows) < 12:
        assert any("early stopping: val_balanced_accuracy has not improved" in line for line in lines)
    # The restored head's validation balanced accuracy is the best epoch's.
    validation = result.metrics["validation"]
    assert validation["balanced_accuracy"] == pytest.approx(max(values))
    matrix = np.array(validation["confusion_matrix"])
    assert validation["balanced_accuracy"] == pytest.approx(np.mean(np.diag(matrix) / matrix.sum(axis=1)))


def test_cli_refuses_monitor_that_cannot_work(tmp_path):
    cache = make_cache(tmp_path / "f.h5", counts={"train": 32, "test": 16})
    runner = CliRunner()
    out = tmp_path / "run"
    r = runner.invoke(main, ["train-head", str(cache), "--out", str(out), "--monitor", "macro_f1"])
    assert r.exit_code == 2 and "--monitor macro_f1 needs a validation split" in r.output and not out.exists()
    r = runner.invoke(main, ["train-head", str(cache), "--out", str(out), "--monitor", "map"])
    assert r.exit_code == 2 and "--monitor map needs a multi-label task" in r.output and not out.exists()
    r = runner.invoke(main, ["train-head", str(cache), "--out", str(out), "--monitor", "auc"])
    assert r.exit_code == 2 and "auc" in r.output
