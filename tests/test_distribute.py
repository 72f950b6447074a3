"""`train-head` under tf.distribute (mirrored, multi-worker), mixed precision and XLA.

Logical CPU devices and ``MultiWorkerMirroredStrategy`` can only be set up before TensorFlow starts,
so the distributed runs happen in fresh subprocesses: mirrored over 2 logical CPUs
(``HEADSTART_LOGICAL_CPUS=2``), and 2 local worker processes on 127.0.0.1 ports with ``TF_CONFIG``.
Each is compared with the single-device run in this process on the same synthetic caches.

Tolerance: the same test accuracy, validation loss within 1e-4 relative, head weights within 1e-5
absolute. A distributed step minimises exactly the single-device batch mean, so the runs differ only
by float summation order — on the "even" cache (160 rows, batch 32 → 16 per replica) and on the
"uneven" one (161 rows: the epoch ends with a 1-row batch, and one replica gets none). Dropout is 0:
with dropout each replica draws its own masks, another random stream, as a change of seed would be.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from conftest import finish_processes as _finish
from conftest import free_ports as _free_ports
from conftest import head_weights, make_cache
from conftest import subprocess_env as _env
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.distribute.strategy import (_config_is_chief, batch_policy, chief_output_dir, precision,
                                 read_tf_config, resolve_strategy)
from headstart.pipeline.errors import OptionError
from headstart.pipeline.commands.head_training import train_head

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = ["curves.png", "head.keras", "history.csv", "metrics.json", "run.json"]
COUNTS = {"even": {"train": 160, "validation": 48, "test": 48},
          "uneven": {"train": 161, "validation": 48, "test": 48}}
BASE = dict(epochs=5, lr=5e-2, batch_size=32, seed=3, dropout=0.0)

# Runs train_head once per config given as JSON on the command line; one RESULT line per run.
WORKER = r"""
import json, sys
from headstart.features.reporter import LineReporter
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.commands.head_training import train_head
for config in json.loads(sys.argv[1]):
    if "fit_check" in config:
        sys.path.insert(0, "tests")
        from test_distribute import fit_check
        print("RESULT " + json.dumps(fit_check(config["fit_check"])))
        continue
    r = train_head(HeadConfig(**config), reporter=LineReporter(lambda m: print(m, file=sys.stderr)))
    print("RESULT " + json.dumps({"test_accuracy": r.test_accuracy, "val_loss": r.val_loss,
                                  "distribute": r.distribute, "run_dir": r.run_dir, "summary": r.summary}))
"""


def _start(configs: list[dict], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(configs)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def conv_model_and_data():
    """A small image model ending in the head (3 classes), and 49 images in batches of 16: the last
    batch has 1 image, so under 2 replicas one replica gets none (CPU Conv2D mishandles that)."""
    import tensorflow as tf

    from headstart.pipeline.model.head import build_head, compile_head

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same", name="conv"),
                              build_head((6, 6, 4), 3, dropout=0.0)])
    compile_head(model, 3, 1e-2)
    x = np.random.default_rng(0).normal(size=(49, 6, 6, 3)).astype(np.float32)
    y = np.argmax(x.mean(axis=(1, 2)), axis=1)
    # filter(): a dataset of unknown length, as finetune's (bad images filtered out) is.
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16).filter(lambda a, b: True)


def fit_check(strategy_name: str) -> dict:
    """``distribute.loop.distributed_fit`` on ``conv_model_and_data``: resumes at epoch 1, stops
    after epoch 3.

    Returns ``{"epochs": [...], "history": {...}}`` (what ``finetune`` relies on from ``fit``).
    """
    import tensorflow as tf

    from headstart.pipeline.distribute.loop import distributed_fit

    strategy, _ = resolve_strategy(strategy_name)
    with strategy.scope():
        model, data = conv_model_and_data()
    seen = []

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model._initial_epoch = 1  # as BackupAndRestore does

        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)
            self.model.stop_training = epoch == 3

    known = data.apply(tf.data.experimental.assert_cardinality(4))  # validation of a known length
    history = distributed_fit(model, data, num_classes=3, epochs=6, validation_data=known, callbacks=[Resume()])
    return {"epochs": seen, "history": history.history}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Per cache kind: (cache path, single-device run dir, its HeadResult)."""
    root = tmp_path_factory.mktemp("dist")
    runs = {}
    for kind, counts in COUNTS.items():
        cache = make_cache(root / f"{kind}.h5", counts=counts)
        out = root / f"single-{kind}"
        result = train_head(HeadConfig(features=str(cache), out=str(out), strategy="default", **BASE))
        assert result.distribute["replicas"] == 1 and result.test_accuracy > 0.9
        runs[kind] = (cache, out, result)
    return runs


def _assert_matches_single(single, kind: str, result: dict, run_dir: Path) -> None:
    _, single_dir, expected = single[kind]
    assert result["test_accuracy"] == expected.test_accuracy
    assert result["val_loss"] == pytest.approx(expected.val_loss, rel=1e-4)
    for a, b in zip(head_weights(run_dir), head_weights(single_dir)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def fit_reference():
    """``distributed_fit`` under the default strategy, and ``model.fit`` for its first epochs."""
    import tensorflow as tf

    reference = fit_check("default")
    model, data = conv_model_and_data()
    # Keras's fit is given the length: on a dataset of unknown length Keras 3.15 adds a phantom
    # optimizer step per epoch (the ``iterations`` counter only, which shifts Adam's bias correction).
    data = data.apply(tf.data.experimental.assert_cardinality(4))
    fit = model.fit(data, validation_data=data, epochs=3, verbose=0, shuffle=False).history
    return reference, fit


@pytest.mark.slow
def test_distributed_fit_matches_keras_fit(fit_reference):
    reference, fit = fit_reference
    assert reference["epochs"] == [1, 2, 3]  # resumed at epoch 1, stopped after epoch 3
    # Three epochs run, from fresh weights: the same numbers as Keras's fit for its first three.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(reference["history"][key], fit[key], rtol=1e-5)


@pytest.mark.slow
def test_epoch_feed_serves_every_epoch_from_one_iterator():
    # Making and ending a distributed iterator per epoch cost 25-40% of a short epoch; the feed
    # makes one. A dataset of unknown length gets its own first epoch, which counts the batches.
    from headstart.pipeline.distribute.loop import EpochFeed, train_epoch

    model, data = conv_model_and_data()
    feed = EpochFeed(model.distribute_strategy, data)
    assert feed.steps is None
    seen, iterators = [], []
    for _ in range(3):
        batches = []
        train_epoch(model, feed, 3, callbacks=SimpleNamespace(on_train_batch_end=batches.append))
        seen.append(batches)
        iterators.append(feed._iterator)
    assert seen == [[0, 1, 2, 3]] * 3 and feed.steps == 4
    assert iterators[0] is None and iterators[1] is iterators[2] is not None
    # A feed that promises more batches than its input holds fails loudly, not silently short.
    short = EpochFeed(model.distribute_strategy, data, steps=5, repeat=False)
    with pytest.raises(RuntimeError, match="after 4 of 5 batches"):
        train_epoch(model, short, 3)


def _assert_fit_check(result: dict, expected: dict) -> None:
    # Compared with the default-strategy run of the same check in this process.
    assert result["epochs"] == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(result["history"][key], expected["history"][key], rtol=1e-5)


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus(single, fit_reference, tmp_path):
    configs = [dict(features=str(single[k][0]), out=str(tmp_path / k), strategy="mirrored", **BASE)
               for k in COUNTS]
    [results] = _finish([_start([*configs, {"fit_check": "mirrored"}],
                                _env(tmp_path / "tmp", HEADSTART_LOGICAL_CPUS="2"))])
    _assert_fit_check(results.pop(), fit_reference[0])
    for kind, result in zip(COUNTS, results):
        _assert_matches_single(single, kind, result, tmp_path / kind)
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == RUN_FILES
    run = json.loads((tmp_path / "even" / "run.json").read_text())
    d = run["distribute"]
    assert (d["strategy"], d["replicas"], d["workers"], d["per_replica_batch_size"]) == ("mirrored", 2, 1, 16)
    assert d["global_batch_size"] == 32 and "lr unchanged" in d["lr_policy"] and len(d["devices"]) == 2
    assert run["config"]["strategy"] == "mirrored"


@pytest.mark.slow
def test_multiworker_two_local_workers_write_one_run(single, fit_reference, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    configs = [dict(features=str(single[k][0]), out=str(tmp_path / k), strategy="multiworker", **BASE)
               for k in COUNTS] + [{"fit_check": "multiworker"}]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(_start(configs, _env(tmp_path / f"tmp{index}", TF_CONFIG=json.dumps(tf_config))))
    chief_results, other_results = _finish(procs)
    _assert_fit_check(chief_results.pop(), fit_reference[0])
    _assert_fit_check(other_results.pop(), fit_reference[0])
    for kind, chief, other in zip(COUNTS, chief_results, other_results):
        _assert_matches_single(single, kind, chief, tmp_path / kind)
        assert chief["val_loss"] == other["val_loss"]  # one synchronised model, one early-stopping path
        assert (chief["distribute"]["is_chief"], other["distribute"]["is_chief"]) == (True, False)
        assert chief["distribute"]["replicas"] == 2 and chief["distribute"]["workers"] == 2
        assert "not this worker" in other["summary"] and other["run_dir"] == str(tmp_path / kind)
        # One set of outputs, from the chief; the other worker's scratch directory is gone.
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == RUN_FILES
    assert list((tmp_path / "tmp1").iterdir()) == []
    run = json.loads((tmp_path / "even" / "run.json").read_text())
    assert run["distribute"]["strategy"] == "multiworker" and run["distribute"]["worker_index"] == "worker:0"


@pytest.mark.slow
def test_mixed_precision_and_jit_compile(single, tmp_path):
    cache, _, single_result = single["even"]
    out = tmp_path / "run"
    result = train_head(HeadConfig(features=str(cache), out=str(out), strategy="default", mixed_precision=True,
                                   jit_compile=True, **BASE))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    # bfloat16 keeps 8 significant bits: the same accuracy, a loss close to the float32 run's.
    assert result.test_accuracy == single_result.test_accuracy
    assert result.val_loss == pytest.approx(single_result.val_loss, rel=0.5, abs=0.01)
    run = json.loads((out / "run.json").read_text())
    assert run["precision"] == {"policy": "mixed_bfloat16", "logits_dtype": "float32", "jit_compile": True}
    model = keras.saving.load_model(out / "head.keras", safe_mode=True)
    assert model.get_layer("dropout").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("logits").dtype_policy.name == "float32"
    logits = model.predict_on_batch(np.ones((3, 16), np.float32))
    assert logits.dtype == np.float32 and logits.shape == (3, 1)


def test_precision_context_restores_policy():
    with precision(True) as name:
        assert name == "mixed_bfloat16" == keras.mixed_precision.global_policy().name
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision(False) as name:
        assert name == "float32"


def test_options_and_refusals(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(OptionError, match="strategy must be one of"):
        resolve_strategy("ring")
    with pytest.raises(OptionError, match="needs TF_CONFIG") as err:
        resolve_strategy("multiworker")
    assert "\n" not in str(err.value)
    _, info = resolve_strategy("auto")  # no GPU, no TF_CONFIG here
    assert (info.strategy, info.replicas, info.is_chief) == ("default", 1, True)
    with pytest.raises(OptionError, match="not valid JSON"):
        read_tf_config({"TF_CONFIG": "{nope"})
    with pytest.raises(OptionError, match="not one of its cluster"):
        read_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker",
                                                                                           "index": 3}})})
    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert not _config_is_chief(two) and _config_is_chief({**two, "task": {"type": "worker", "index": 0}})
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert not _config_is_chief(with_chief)

    two_replicas = dataclasses.replace(info, replicas=2, strategy="mirrored")
    assert batch_policy(two_replicas, 64)["per_replica_batch_size"] == 32
    assert "as evenly as possible" in batch_policy(two_replicas, 33)["batch_policy"]
    with pytest.raises(OptionError, match="smaller than the 2 replicas"):
        batch_policy(two_replicas, 1)

    with chief_output_dir(tmp_path / "out", True) as out:
        assert out == tmp_path / "out"
    with chief_output_dir(tmp_path / "out", False) as out:
        scratch = out.parent
        assert scratch.is_dir() and out.name == "out" and tmp_path not in out.parents
    assert not scratch.exists()

    with pytest.raises(OptionError, match="strategy"):
        train_head(HeadConfig(features="x.h5", out=str(tmp_path / "r"), strategy="nope"))


@pytest.mark.slow
def test_cli_options(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    cache = make_cache(tmp_path / "f.h5", counts={"train": 32, "test": 16})
    bad = CliRunner().invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "r"),
                                    "--strategy", "multiworker"])
    assert bad.exit_code == 2 and "TF_CONFIG" in bad.output and not (tmp_path / "r").exists()
    ok = CliRunner().invoke(main, ["train-head", str(cache), "--out", str(tmp_path / "r"), "--epochs", "1",
                                   "--strategy", "default", "--mixed-precision", "--jit-compile"])
    assert ok.exit_code == 0, ok.output
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["config"]["mixed_precision"] and run["config"]["jit_compile"]
    assert run["precision"]["policy"] == "mixed_bfloat16"


@pytest.mark.parametrize("classes", [2, 3])
def test_distributed_loop_trains_with_the_compiled_label_smoothing(classes):
    """The loop's training loss is the compiled (smoothed) loss, as fit's is; its evaluation loss
    stays the plain head loss. Before, --label-smoothing was dropped under --strategy."""
    import keras
    import tensorflow as tf

    from headstart.pipeline.distribute.loop import evaluate, train_epoch
    from headstart.pipeline.model.head import build_head, compile_head, head_labels, head_loss_and_metrics

    keras.utils.set_random_seed(0)
    model = build_head((8,), classes, dropout=0.0)
    compile_head(model, classes, 0.0, label_smoothing=0.3)  # lr 0: the logits below are the step's
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 8)).astype(np.float32)
    y = rng.integers(0, classes, 37)
    data = tf.data.Dataset.from_tensor_slices((x, head_labels(y, classes))).batch(16)
    logits = model.predict_on_batch(x)
    smoothed = float(model.loss(head_labels(y, classes), logits))
    plain = float(head_loss_and_metrics(classes)[0](head_labels(y, classes), logits))
    assert abs(smoothed - plain) > 1e-3  # the check below could tell them apart
    assert train_epoch(model, data, classes)["loss"] == pytest.approx(smoothed, rel=1e-5)
    assert evaluate(model, data, classes)["loss"] == pytest.approx(plain, rel=1e-5)
