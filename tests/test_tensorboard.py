"""`--tensorboard DIR`: Keras' own TensorBoard callback logs train-head's custom epoch loop, finetune's
fit and `headstart run`'s reused stages; the events are read back with TensorBoard's event reader."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from headstart.pipeline.cli import main
from conftest import make_cache


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of the scalars in one TensorBoard run directory (TF2 writes them as tensors)."""
    reader = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    reader.Reload()
    out = {}
    for tag in reader.Tags()[event_accumulator.TENSORS]:
        if reader.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":  # not the model summary
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in reader.Tensors(tag)]
    return out


def history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_logged_like_history(log_dir: Path, rows: list[dict[str, float]]) -> None:
    train, val = scalars(log_dir / "train"), scalars(log_dir / "validation")
    for tag, key, logged in (("epoch_loss", "loss", train), ("epoch_accuracy", "accuracy", train),
                             ("epoch_loss", "val_loss", val), ("epoch_accuracy", "val_accuracy", val)):
        assert [step for step, _ in logged[tag]] == list(range(len(rows))), (tag, key)
        assert [v for _, v in logged[tag]] == pytest.approx([r[key] for r in rows], rel=1e-5), (tag, key)


@pytest.mark.slow
def test_train_head_logs_every_epoch_of_its_own_loop(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    logs = tmp_path / "tb"
    result = CliRunner().invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "head"), "--epochs", "4",
                                       "--patience", "10", "--tensorboard", str(logs), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = history(tmp_path / "head" / "history.csv")
    assert len(rows) == 4
    assert_logged_like_history(logs, rows)
    assert "epoch_learning_rate" in scalars(logs / "train")  # the callback's own extra: it saw the optimizer


def test_tensorboard_dir_that_is_a_file_is_refused_before_training(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    (tmp_path / "tb").write_text("not a directory")
    result = CliRunner().invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "head"),
                                       "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2
    assert "--tensorboard" in result.output and "is a file" in result.output
    assert not (tmp_path / "head").exists()


def test_a_reused_stage_is_replayed_through_the_keras_callback(tmp_path):
    from headstart.pipeline.store.files import write_history_csv
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.report.tensorboard_logs import write_history

    recorded = {"loss": [0.9, 0.5, 0.4], "accuracy": [0.5, 0.75, 0.875],
                "val_loss": [1.0, 0.6, 0.7], "val_accuracy": [0.5, 0.625, 0.75]}
    write_history_csv(recorded, tmp_path / "history.csv")
    assert write_history(RunDir(tmp_path).history(), tmp_path / "tb")  # what headstart run replays
    assert_logged_like_history(tmp_path / "tb", history(tmp_path / "history.csv"))
    assert not write_history(RunDir(tmp_path / "missing").history(), tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_finetune_logs_the_seeded_head_and_the_fine_tuning(tmp_path):
    from conftest import BACKBONE, make_splits, make_weights_file

    data = make_splits(tmp_path / "images")
    weights = make_weights_file(tmp_path / "w.weights.h5")
    logs = tmp_path / "tb"
    result = CliRunner().invoke(main, [str(a) for a in (
        "finetune", data, "--out", tmp_path / "tuned", "--backbone", BACKBONE["backbone"], "--alpha",
        BACKBONE["alpha"], "--image-size", BACKBONE["image_size"], "--weights", weights, "--epochs", 2,
        "--head-epochs", 2, "--batch-size", 8, "--head-batch-size", 8, "--patience", 5, "--tensorboard", logs,
        "--quiet")])
    assert result.exit_code == 0, result.output
    assert_logged_like_history(logs, history(tmp_path / "tuned" / "history.csv"))
    head = scalars(logs / "head" / "train")
    assert [step for step, _ in head["epoch_loss"]] == [0, 1]
