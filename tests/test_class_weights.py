"""``--class-weight`` (the weighted loss against a hand computation, in train-head's loop and the
distributed loop), its file format and refusals, and the imbalance warning of train-head and inspect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.features.reporter import LineReporter
from click.testing import CliRunner

from headstart.pipeline.cli import main
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.errors import OptionError
from headstart.pipeline.training.class_weights import balanced_weights, read_class_weight_file

CLASSES = ["cats", "dogs", "fish"]


def imbalanced_cache(path: Path, train_counts=(60, 6, 12), seed: int = 0) -> Path:
    """A cache of Gaussian blobs (16 features) with ``train_counts`` training rows per class and a
    balanced validation and test split of 12 rows per class."""
    from headstart.features.store import create_or_resume

    rng = np.random.default_rng(seed)
    k = len(train_counts)
    centres = rng.normal(0, 1.5, size=(k, 16))
    counts = {"train": list(train_counts), "validation": [12] * k, "test": [12] * k}
    writer = create_or_resume(str(path), config={"synthetic": True, "seed": seed}, provenance={"made_by": "test"},
                              class_names=CLASSES[:k], splits=list(counts), feature_shape=(16,), dtype="float32")
    for split, per_class in counts.items():
        labels = np.repeat(np.arange(k), per_class)
        labels = labels[rng.permutation(labels.size)]
        feats = (centres[labels] + rng.normal(size=(labels.size, 16))).astype("float32")
        writer.append(split, features=feats, labels=labels, keys=[f"{split}/{i}" for i in range(labels.size)],
                      consumed=labels.size)
        writer.finish_split(split)
    writer.finalize()
    return path


def per_row_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy from logits by hand: softplus form for one logit, log-sum-exp for several."""
    if logits.shape[1] == 1:
        z, y = logits[:, 0].astype(np.float64), labels.astype(np.float64)
        return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    z = logits.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    log_sum = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return log_sum - z[np.arange(len(labels)), labels]


def test_balanced_weights_are_inverse_class_frequency():
    np.testing.assert_allclose(balanced_weights([700, 70]), [770 / 1400, 770 / 140])
    w = balanced_weights([60, 6, 12, 0])
    np.testing.assert_allclose(w[:3], [78 / 240, 78 / 24, 78 / 48])
    assert w[3] == 0.0  # a class without rows weighs no row
    counts = np.array([60, 6, 12])
    assert np.sum(balanced_weights(counts) * counts) == pytest.approx(counts.sum())  # mean weight 1


@pytest.mark.parametrize("text, message", [
    ('cats = 1.0\ndogs = 2.0\nfish = 1.0\nbirds = 3.0', "unknown class 'birds'"),
    ('cats = 1.0\ndogs = 2.0', "no weight for class 'fish'"),
    ('cats = 1.0\ndogs = 0\nfish = 1.0', "class 'dogs' must be a positive number, got 0"),
    ('cats = 1.0\ndogs = -2.0\nfish = 1.0', "class 'dogs' must be a positive number"),
    ('cats = "heavy"\ndogs = 1.0\nfish = 1.0', "class 'cats' must be a positive number"),
    ('cats = [', "not valid TOML"),
])
def test_weight_file_refusals_name_the_file(tmp_path, text, message):
    path = tmp_path / "weights.toml"
    path.write_text(text)
    with pytest.raises(OptionError, match=message) as caught:
        read_class_weight_file(path, CLASSES)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_weight_file_toml_and_json(tmp_path):
    (tmp_path / "w.toml").write_text('fish = 4\ncats = 1.0\ndogs = 2.5\n')
    (tmp_path / "w.json").write_text(json.dumps({"dogs": 2.5, "cats": 1, "fish": 4.0}))
    for name in ("w.toml", "w.json"):
        np.testing.assert_array_equal(read_class_weight_file(tmp_path / name, CLASSES), [1.0, 2.5, 4.0])


@pytest.mark.slow
def test_weighted_training_loss_equals_the_hand_computation(tmp_path):
    """One epoch at a vanishing learning rate: the loss train-head reports is Σ w_c(i) · l_i / N over
    the training rows, with w = n / (k · n_c), l the cross-entropy of the (unchanged) head's logits."""
    import keras

    from headstart.features.cache import open_cache
    from headstart.pipeline.commands.head_training import train_head

    cache = imbalanced_cache(tmp_path / "f.h5")
    lines: list[str] = []
    base = dict(features=str(cache), epochs=1, lr=1e-12, batch_size=16, dropout=0.0, seed=1)
    weighted = train_head(HeadConfig(out=str(tmp_path / "balanced"), class_weight="balanced", **base), reporter=LineReporter(lines.append))
    plain = train_head(HeadConfig(out=str(tmp_path / "none"), **base))
    with open_cache(cache) as c:
        x, labels = c.split("train").features[:], np.asarray(c.split("train").labels)
    model = keras.saving.load_model(tmp_path / "balanced" / "head.keras", safe_mode=True, compile=False)
    losses = per_row_loss(model.predict_on_batch(x), labels)
    w = np.array([78 / 180, 78 / 18, 78 / 36])  # n / (k · n_c): 78 rows, 3 classes, 60/6/12 per class
    assert weighted.history["loss"][0] == pytest.approx(np.mean(w[labels] * losses), rel=1e-5)
    assert plain.history["loss"][0] == pytest.approx(np.mean(losses), rel=1e-5)
    assert abs(np.mean(w[labels] * losses) - np.mean(losses)) > 0.05  # the weights do change the loss
    # Validation loss is never weighted: both runs report the same.
    assert weighted.val_loss == pytest.approx(plain.val_loss, rel=1e-5)

    run = json.loads((tmp_path / "balanced" / "run.json").read_text())
    assert run["class_weight"]["mode"] == "balanced" and run["class_weight"]["train_counts"] == {
        "cats": 60, "dogs": 6, "fish": 12}
    assert run["class_weight"]["weights"] == pytest.approx(dict(zip(CLASSES, w)))
    assert json.loads((tmp_path / "none" / "run.json").read_text())["class_weight"]["mode"] == "none"
    assert any(line.startswith("--class-weight balanced: cats 0.4333, dogs 4.333, fish 2.167") for line in lines)


def test_distributed_loop_weighs_rows_as_train_on_batch_does():
    """``distribute.loop.train_epoch`` with (x, y, w) batches, 3 classes, an uneven last batch."""
    import keras
    import tensorflow as tf

    from headstart.pipeline.distribute.loop import train_epoch
    from headstart.pipeline.model.head import build_head, compile_head

    keras.utils.set_random_seed(0)
    model = build_head((8,), 3, dropout=0.0)
    compile_head(model, 3, 0.0)  # lr 0: the weights stay, so the logits below are the step's
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 8)).astype(np.float32)
    y = rng.integers(0, 3, 37)
    w = np.array([0.5, 3.0, 1.25], np.float32)[y]
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)
    logs = train_epoch(model, data, 3)
    losses = per_row_loss(model.predict_on_batch(x), y)
    assert logs["loss"] == pytest.approx(np.sum(w * losses) / 37, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(np.argmax(model.predict_on_batch(x), 1) == y))


def test_imbalance_warning_in_train_head_and_inspect(tmp_path):
    cache = imbalanced_cache(tmp_path / "f.h5", train_counts=(60, 6, 30))
    runner = CliRunner()
    warning = "warning: the training split is imbalanced: cats 60 rows, dogs 6 (10.0×); consider --class-weight balanced"
    r = runner.invoke(main, ["inspect", str(cache)])
    assert r.exit_code == 0 and warning in r.output, r.output
    r = runner.invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "a"), "--epochs", "1"])
    assert r.exit_code == 0 and r.output.count(warning) == 1, r.output
    r = runner.invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "b"), "--epochs", "1",
                             "--class-weight", "balanced"])
    assert r.exit_code == 0 and "imbalanced" not in r.output, r.output
    # 5× exactly is not "over 5×": no warning.
    even = imbalanced_cache(tmp_path / "even.h5", train_counts=(30, 6, 12))
    r = runner.invoke(main, ["inspect", str(even)])
    assert r.exit_code == 0 and "imbalanced" not in r.output


def test_cli_refuses_bad_class_weights_before_any_work(tmp_path):
    cache = imbalanced_cache(tmp_path / "f.h5")
    (tmp_path / "w.toml").write_text("cats = 1\ndogs = 2\nbirds = 1\n")
    runner = CliRunner()
    for value, message in ((str(tmp_path / "w.toml"), "unknown class 'birds'"),
                           ("balancd", "neither none nor balanced nor an existing")):
        out = tmp_path / "run"
        r = runner.invoke(main, ["train-head", str(cache), "--out", str(out), "--class-weight", value])
        assert r.exit_code == 2 and message in r.output and not out.exists(), r.output


def test_run_flags_and_toml_keys_reach_both_stages(tmp_path, monkeypatch):
    from headstart.pipeline.run.toml_config import read_config_file, resolve_run_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.toml").write_text("cats = 1\ndogs = 4\n")
    toml = tmp_path / "run.toml"
    toml.write_text('[head]\nclass_weight = "w.toml"\nmonitor = "macro_f1"\n[finetune]\nmonitor = "balanced_accuracy"\n')
    config = resolve_run_config("data", "out", file_values=read_config_file(toml))
    assert config.head.class_weight == str(tmp_path / "w.toml") and config.finetune.class_weight == "none"
    assert (config.head.monitor, config.finetune.monitor) == ("macro_f1", "balanced_accuracy")
    flagged = resolve_run_config("data", "out", file_values=read_config_file(toml),
                                 flags={"class_weight": "balanced", "monitor": "val_loss"})
    assert flagged.head.class_weight == flagged.finetune.class_weight == "balanced"
    assert flagged.head.monitor == flagged.finetune.monitor == "val_loss"
    r = CliRunner().invoke(main, ["run", "data", "--out", "o", "--monitor", "auc"])
    assert r.exit_code == 2 and "--monitor" in r.output


def test_finetune_training_batches_carry_their_class_weight(tmp_path):
    from conftest import make_class_folders
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.training.labelled_dataset import labelled_dataset

    make_class_folders(tmp_path / "images", per_class=3)
    source = resolve_source(str(tmp_path / "images"), validation_fraction=0.0, test_fraction=0.0)
    data = labelled_dataset(source, "train", image_size=16, num_classes=2, batch_size=4, class_weights=[0.5, 3.0])
    labels, weights = [], []
    for _, y, w in data.as_numpy_iterator():
        labels.append(y.reshape(-1))
        weights.append(w)
    labels, weights = np.concatenate(labels).astype(int), np.concatenate(weights)
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(weights, np.array([0.5, 3.0], np.float32)[labels])


@pytest.mark.slow
@pytest.mark.assets
def test_balanced_weights_raise_balanced_accuracy_with_dogs_cut_to_70(real_photo_cache, tmp_path):
    """The 2,000 real photos, training dogs cut to 70 (cats 700; validation and test unchanged) by
    --exclude on the shared cache: --class-weight balanced raises test balanced accuracy over none
    (same seed). Five seeds: benchmarks/class_weight.py."""
    import csv

    from headstart.features.cache import open_cache
    from headstart.pipeline.commands.head_training import train_head

    cache = real_photo_cache["cache"]
    with open_cache(cache) as c:
        split, names = c.split("train"), list(c.class_names)
        dogs = sorted(k for k, y in zip(split.keys, split.labels) if names[int(y)] == "dogs")
    cut = tmp_path / "cut.csv"
    with open(cut, "w", newline="") as f:
        csv.writer(f).writerows([["key"], *([k] for k in dogs[70:])])
    results, lines = {}, []
    for mode in ("none", "balanced"):
        results[mode] = train_head(HeadConfig(features=str(cache), out=str(tmp_path / mode), exclude=str(cut),
                                              class_weight=mode, seed=0), reporter=LineReporter(lines.append)).metrics["test"]
    run = json.loads((tmp_path / "balanced" / "run.json").read_text())
    assert run["class_weight"]["train_counts"] == {"cats": 700, "dogs": 70}
    assert run["class_weight"]["weights"] == pytest.approx({"cats": 0.55, "dogs": 5.5})
    assert results["none"]["rows"] == results["balanced"]["rows"] == 400  # the test split is unchanged
    assert any("training split is imbalanced: cats 700 rows, dogs 70 (10.0×)" in line for line in lines)
    print({mode: {k: round(m[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1")}
           for mode, m in results.items()})
    assert results["balanced"]["balanced_accuracy"] > results["none"]["balanced_accuracy"]


def test_finetune_counts_labels_from_the_head_cache_else_from_the_source(tmp_path):
    from conftest import make_class_folders
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.training.class_weights import finetune_train_labels, resolve_class_weights

    make_class_folders(tmp_path / "images", per_class=3)
    (tmp_path / "images" / "cats" / "broken.jpg").write_text("not an image")  # not trained on: not counted
    source = resolve_source(str(tmp_path / "images"), validation_fraction=0.0, test_fraction=0.0)
    labels, origin = finetune_train_labels(None, source)
    assert origin == "source" and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    cache = imbalanced_cache(tmp_path / "f.h5", train_counts=(5, 2))
    labels, origin = finetune_train_labels(str(cache), _Keys(["train/0", "train/1", "train/6"]))
    assert origin == f"cache {cache}" and len(labels) == 3  # only the rows the source still has
    with pytest.raises(OptionError, match="class weights apply to single-label tasks"):
        resolve_class_weights("balanced", CLASSES[:2], None, multi_label=True)


class _Keys:
    """A stand-in source whose training split has only the given keys (as --exclude leaves it)."""

    def __init__(self, keys):
        self._keys = keys

    def keys(self, split):
        return list(self._keys)
