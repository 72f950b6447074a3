"""`finetune` under tf.distribute: mirrored over 2 logical CPUs, and 2 local workers killed with
SIGKILL after their first committed epoch and resumed with ``--resume``.

Each distributed run happens in fresh subprocesses (logical devices and the multi-worker runtime can
only be set up before TensorFlow starts) and is compared with a single-device run in this process on
the same images, head run and options. Tolerance: the same test accuracy give or take one test
image. The steps are not bit-identical, because augmentation and dropout draw their random masks per
replica, another random stream as a change of seed would be (``test_distribute.py`` shows the loop
itself matches one device to 1e-5 without them).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import pytest

from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig
from conftest import BACKBONE, make_splits, make_weights_file
from conftest import finish_processes as _finish
from conftest import free_ports as _free_ports
from conftest import subprocess_env as _env

REPO = Path(__file__).resolve().parents[1]
# One finetune run from a JSON config; argv[2] seconds of sleep after every committed epoch (room
# for the test's SIGKILL). Prints one RESULT line, which test_distribute._finish collects.
WORKER = r"""
import json, sys, time, keras
from headstart.features.reporter import LineReporter
from headstart.pipeline.config import FinetuneConfig
from headstart.pipeline.finetuning.finetuning import finetune

class Slow(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(float(sys.argv[2]))

lines = []
r = finetune(FinetuneConfig(**json.loads(sys.argv[1])), reporter=LineReporter(lines.append),
             callbacks=[Slow()] if float(sys.argv[2]) else [])
print("RESULT " + json.dumps({"test_accuracy": r.test_accuracy, "epochs_run": r.epochs_run,
                              "run_dir": r.run_dir, "lines": lines}))
"""
RUN_FILES = {"run.json", "metrics.json", "model.keras", "history.csv"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Images, a weights file, a cache, a head run, and the single-device finetune to compare with."""
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.finetuning.finetuning import finetune
    from headstart.pipeline.commands.head_training import train_head

    root = tmp_path_factory.mktemp("dist-finetune")
    data = make_splits(root / "images")
    weights = make_weights_file(root / "w.weights.h5")
    extract_features(ExtractConfig(source=str(data), out=str(root / "f.h5"), weights=str(weights), batch_size=8,
                                   **BACKBONE))
    train_head(HeadConfig(features=str(root / "f.h5"), out=str(root / "head"), epochs=20, lr=1e-2, patience=20,
                          batch_size=8))
    options = {"source": str(data), "head": str(root / "head"), "epochs": 3, "batch_size": 8, "patience": 10,
               "parity_samples": 4, "lr": 1e-4, "seed": 0}
    single = finetune(FinetuneConfig(out=str(root / "single"), **options))
    return SimpleNamespace(root=root, options=options, single=single)


def _start(config: dict, env: dict[str, str], sleep: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(config), str(sleep)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _workers(configs: list[dict], tmp: Path, tag: str, sleep: float = 0.0) -> list[subprocess.Popen]:
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    return [_start(config, _env(tmp / f"{tag}{i}", TF_CONFIG=json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})), sleep)
        for i, config in enumerate(configs)]


def _assert_like_single(prepared, out: Path, result: dict, replicas: int, workers: int) -> None:
    assert result["epochs_run"] == 3
    assert abs(result["test_accuracy"] - prepared.single.test_accuracy) <= 1 / 8 + 1e-9  # 8 test images
    assert RUN_FILES <= {p.name for p in out.iterdir()} and not (out / "backup").exists()
    run = json.loads((out / "run.json").read_text())
    assert (run["distribute"]["replicas"], run["distribute"]["workers"]) == (replicas, workers)
    # No phantom steps: Keras's fit counts one extra step per epoch on a dataset of unknown length
    # (16 images, batch 8: 2 steps per epoch).
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert int(model.optimizer.iterations.numpy()) == 3 * 2


@pytest.mark.slow
def test_finetune_mirrored_over_two_logical_cpus(prepared, tmp_path):
    out = tmp_path / "mirrored"
    config = {**prepared.options, "out": str(out), "strategy": "mirrored"}
    [[result]] = _finish([_start(config, _env(tmp_path / "tmp", HEADSTART_LOGICAL_CPUS="2"))], timeout=240)
    _assert_like_single(prepared, out, result, replicas=2, workers=1)


@pytest.mark.slow
def test_finetune_two_workers_killed_and_resumed(prepared, tmp_path):
    out = tmp_path / "workers"
    config = {**prepared.options, "out": str(out), "strategy": "multiworker", "resume": True}
    state = out / "backup" / "finetune" / "state.json"
    procs = _workers([config] * 2, tmp_path, "first", sleep=120)
    try:
        deadline = time.monotonic() + 240
        while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no epoch committed in time"
            time.sleep(0.2)
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert json.loads(state.read_text())["epoch"] == 1 and not (out / "run.json").exists()

    # A worker that cannot see the chief's backup (here: another --out) would start from epoch 0
    # while the chief resumes after epoch 1; both stop with one clear error instead of hanging.
    blind = _workers([config, {**config, "out": str(tmp_path / "elsewhere")}], tmp_path, "blind")
    try:
        for proc in blind:
            _, stderr = proc.communicate(timeout=240)
            # The workers call the library from Python, so the error names the argument (resume), not a flag.
            assert proc.returncode == 1 and "RunDirError: resume: the workers would start finetune from " \
                "different epochs" in stderr and "filesystem all workers share" in stderr, stderr[-2000:]
    finally:
        for proc in blind:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert json.loads(state.read_text())["epoch"] == 1  # the chief's backup is untouched

    [chief], [other] = _finish(_workers([config] * 2, tmp_path, "again"), timeout=240)
    # Both workers resume from the chief's backup (the other one from a copy of it), run the last
    # 2 epochs in step, and only the chief keeps files; the other's scratch directory is gone.
    for result in (chief, other):
        assert "finetune: resuming after epoch 1 of 3" in result["lines"]
        assert sum(line.startswith("finetune epoch") for line in result["lines"]) == 2
    assert chief["test_accuracy"] == other["test_accuracy"] and chief["run_dir"] == str(out)
    _assert_like_single(prepared, out, chief, replicas=2, workers=2)
    assert list((tmp_path / "again1").iterdir()) == []
