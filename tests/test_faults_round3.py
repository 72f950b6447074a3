"""Faults and bad input, round three (issue 28, items 1-4 and 11): code in a crafted SavedModel, a
stale cache after a folder edit, concurrent sweeps, a killed ``diagnose --overwrite``, handwriting
called the same picture. Items 5-10 are tests/test_faults_round3_io.py's.

One parametrised table, one row per fault, each reproducing it as the issue describes it; every row
asserts what the fault did not do: one line and the right exit code, nothing run from the file,
nothing stale reused, nothing marked complete that is not. Rows that run a backbone, a diagnosis or
two sweeps are marked slow.

| # | fault | before | now | row |
|---|---|---|---|---|
| 1 | `predict` on a SavedModel whose `class_names` and `serving_default` call `tf.io.write_file` | both files written, exit 0 | refused before loading, one line naming the op, exit 2, nothing written | crafted_saved_model |
| 1 | a SavedModel with a signature headstart never writes | loaded and served | refused naming its signatures | foreign_signatures |
| 1 | headstart's own export | loads | loads (the check passes it) | genuine_export |
| 2 | a cat moved into `dogs/` after extraction | "already complete … nothing to do", old labels | "the folder … changed since …; use --overwrite", exit 2, cache untouched; `--overwrite` gives the new labels | folder_edited_after_extraction |
| 2 | `run`'s extract key after a folder edit | unchanged: every stage reused | changes with any file added, removed, moved or rewritten | run_extract_key_sees_the_folder |
| 2 | `headstart run` again after the same edit (slow) | every stage "reused" | refused in one line; with `--overwrite` every stage runs again | run_after_a_folder_edit |
| 3 | a sweep asking a trial beyond `--trials` in a race | `AttributeError: 'Study' object has no attribute 'set_trial_user_attr'`, trials left RUNNING | the surplus trial told FAIL and marked, the sweep goes on | surplus_trial_in_a_race |
| 3 | two sweeps creating one fresh `--storage` | `UNIQUE constraint failed: alembic_version.version_num` / "table … already exists" | the loser tries again and opens the winner's schema | storage_creation_race |
| 3 | two sweeps, different `--out`, one fresh `--storage` (slow) | crash as above | both exit 0, every trial finished once | two_sweeps_on_one_storage |
| 3 | `.study.lock` after a finished sweep | left in DIR | never created; an old one is removed | no_lock_file_left |
| 4 | `diagnose --overwrite` killed after label_issues.csv | old report.json beside the new CSV; the next run "already done" with the old findings | report.json marked unfinished before any file is written; the old options are refused in one line, the interrupted ones redo it | diagnose_overwrite_killed_mid_write |
| 11 | 1,797 real handwritten digits (no two alike), white ink on a blank 28×28 canvas | 99 pairs "the same picture by pixels" (1.1-3.0 levels over the whole thumbnail) | none (closest two: 6.7 levels where either inks); the byte and upscaled copies found | sparse_handwriting_called_the_same_picture |
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_cache, make_class_folders, subprocess_env, assert_one_line_error
from headstart.pipeline.cli import main


def _invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


_one_line_error = assert_one_line_error


EXTRACT = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none",
           "--batch-size", "4"]


# -- 1. a SavedModel runs only what headstart's export writes --------------------------------------


def _crafted_saved_model(target: Path, marker: Path, *, names_signature: str = "class_names") -> None:
    """A SavedModel whose serving and class-names signatures write files, as an attacker would make it."""
    import tensorflow as tf

    class Crafted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
        def serve(self, images):
            tf.io.write_file(str(marker) + ".serve", "ran")
            return {"logits": tf.reduce_mean(images, axis=[1, 2])[:, :2]}

        @tf.function(input_signature=[])
        def names(self):
            tf.io.write_file(str(marker) + ".names", "ran")
            return {"class_names": tf.constant(["cat", "dog"])}

    module = Crafted()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve,
                                                         names_signature: module.names})


def crafted_saved_model(tmp_path):
    model, marker = tmp_path / "saved_model", tmp_path / "pwned"
    _crafted_saved_model(model, marker)
    image = make_class_folders(tmp_path / "images", per_class=1) / "cats"
    result = _invoke(["predict", model, next(image.iterdir())])
    _one_line_error(result, 2, str(model), "WriteFile")
    assert not list(tmp_path.glob("pwned*")), "code from the file ran"


def foreign_signatures(tmp_path):
    from headstart.pipeline.errors import RunDirError
    from headstart.pipeline.commands.predictor import load_predictor

    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
        def serve(self, images):
            return {"logits": tf.reduce_mean(images, axis=[1, 2])[:, :2]}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve,
                                                                  "debug": module.serve})
    with pytest.raises(RunDirError, match=r"signatures \(debug, serving_default\)"):
        load_predictor(tmp_path / "sm")


def genuine_export(tmp_path):
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.commands.export import export_model
    from headstart.pipeline.commands.predictor import load_predictor

    parts = build_backbone_parts("mobilenet", weights="none", image_size=32, alpha=0.25)
    model = build_chain(parts.backbone, parts.preprocessing, parts.pooling,
                        head=build_head(parts.info.feature_shape, 3))
    export_model(model, tmp_path, ["saved_model"], class_names=["a", "b", "c"])
    predictor = load_predictor(tmp_path / "saved_model")
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    assert predictor.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(predictor.logits(images), model.predict_on_batch(images), atol=1e-4)


# -- 2. a folder is keyed by its listing ---------------------------------------------------------


def folder_edited_after_extraction(tmp_path):
    from headstart.features.cache import open_cache

    root = make_class_folders(tmp_path / "images", per_class=6)
    cache = tmp_path / "f.h5"
    assert _invoke(["extract-features", root, "--out", cache, *EXTRACT]).exit_code == 0
    before = cache.stat().st_mtime_ns
    moved = sorted((root / "cats").iterdir())[0]
    moved.rename(root / "dogs" / moved.name)  # a cat filed as a dog after extraction
    error = _one_line_error(_invoke(["extract-features", root, "--out", cache, *EXTRACT]), 2, str(root), str(cache))
    assert "changed since" in error and "--overwrite" in error
    assert cache.stat().st_mtime_ns == before  # the old cache is neither reused nor touched
    assert _invoke(["extract-features", root, "--out", cache, *EXTRACT, "--overwrite"]).exit_code == 0
    with open_cache(str(cache)) as opened:
        labels = {key: int(label) for split in opened.splits
                  for key, label in zip(opened.split(split).keys, opened.split(split).labels)}
    assert labels[f"dogs/{moved.name}"] == opened.class_names.index("dogs")


def run_extract_key_sees_the_folder(tmp_path):
    from headstart.pipeline.config import RunConfig
    from headstart.pipeline.run.keys import extract_key

    root = make_class_folders(tmp_path / "images", per_class=6)
    config = RunConfig(source=str(root))
    keys = [extract_key(config)]
    assert extract_key(config) == keys[0]  # stable while nothing changes
    cats = sorted((root / "cats").iterdir())
    cats[0].rename(root / "dogs" / cats[0].name)  # moved to another class
    keys.append(extract_key(config))
    cats[1].unlink()  # removed
    keys.append(extract_key(config))
    cats[2].write_bytes(cats[2].read_bytes() + b"\0")  # rewritten
    keys.append(extract_key(config))
    assert len(set(keys)) == 4


def run_after_a_folder_edit(tmp_path):
    import json

    from test_runner import make_weights_file

    data = tmp_path / "images"
    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(data / split, per_class=n, seed=seed)
    weights = make_weights_file(tmp_path / "w.weights.h5")
    flags = ["--recipe", "guide", "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights",
             weights, "--extract-batch-size", "8", "--head-epochs", "2", "--head-batch-size", "8", "--epochs", "1",
             "--batch-size", "8"]
    run_dir = tmp_path / "run"
    assert _invoke(["run", data, "--out", run_dir, *flags]).exit_code == 0
    cat = sorted((data / "train" / "cats").iterdir())[0]
    cat.rename(data / "train" / "dogs" / cat.name)
    stale = _invoke(["run", data, "--out", run_dir, *flags])
    assert "reused" not in stale.output  # before: every stage "reused: same source and extraction options"
    _one_line_error(stale, 2, str(data), "changed since", "--overwrite")
    redone = _invoke(["run", data, "--out", run_dir, *flags, "--overwrite"])
    assert redone.exit_code == 0, redone.output
    statuses = {name: stage["status"] for name, stage in
                json.loads((run_dir / "summary.json").read_text())["stages"].items()}
    assert "reused" not in statuses.values(), statuses


# -- 3. concurrent sweeps on one storage ---------------------------------------------------------


def _sweep_config(tmp_path, **kw):
    from headstart.pipeline.config import SweepConfig

    cache = make_cache(tmp_path / "c.h5", counts={"train": 64, "validation": 16, "test": 16})
    return SweepConfig(caches=(str(cache),), out=str(tmp_path / "sw"), heartbeat=2, **kw)


def surplus_trial_in_a_race(tmp_path):
    """Another process asks between our count and our ask: our trial lies beyond --trials."""
    import optuna

    from headstart.pipeline.sweep import study as sweep_study
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.sweep.space import SearchSpace

    config = _sweep_config(tmp_path, trials=1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # the heartbeat, as the sweep uses it
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=2, grace_period=4)
    ours = optuna.create_study(storage=storage, study_name="race")
    theirs = optuna.load_study(storage=storage, study_name="race")
    ask = ours.ask

    def raced_ask(*args, **kwargs):
        theirs.ask()  # the other process wins the one trial left
        return ask(*args, **kwargs)

    ours.ask = raced_ask
    caches = {cache.name: cache for cache in load_caches(config.caches)}
    asked = sweep_study._ask_round(ours, storage, config, SearchSpace(parallel=1), caches)
    assert asked == []  # nothing to train here
    (trial,) = [t for t in ours.get_trials(deepcopy=False) if t.number == 1]
    assert trial.state.name == "FAIL" and trial.user_attrs["surplus"] is True


def storage_creation_race(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    from headstart.pipeline.sweep import study as sweep_study

    monkeypatch.setattr(sweep_study, "CREATION_PAUSE", 0.01)
    calls = []

    def create():
        calls.append(1)
        if len(calls) == 1:  # what the loser of two processes creating one fresh database saw
            raise IntegrityError("INSERT INTO alembic_version", {},
                                 Exception("UNIQUE constraint failed: alembic_version.version_num"))
        return "storage"

    assert sweep_study._created_once(create) == "storage" and len(calls) == 2

    def broken():  # anything else is said at once, not retried
        calls.append(1)
        raise IntegrityError("x", {}, Exception("NOT NULL constraint failed: trials.number"))

    calls.clear()
    with pytest.raises(IntegrityError):
        sweep_study._created_once(broken)
    assert len(calls) == 1


def two_sweeps_on_one_storage(tmp_path):
    import optuna

    cache = make_cache(tmp_path / "c.h5", counts={"train": 64, "validation": 16, "test": 16})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    toml = tmp_path / "sweep.toml"
    toml.write_text("[sweep]\nepochs = 2\npatience = 2\nparallel = 3\nbatch_size = [16]\nhidden_units = 16\n")
    code = ("import sys; from headstart.pipeline.cli import main; main(sys.argv[1:])")
    procs = [subprocess.Popen([sys.executable, "-c", code, "sweep", str(cache), "--out", str(tmp_path / f"sw{i}"),
                               "--trials", "6", "--storage", storage, "--config", str(toml)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=subprocess_env(tmp_path)) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("Traceback" in o for o in outputs), outputs
    trials = optuna.load_study(study_name="headstart-sweep", storage=storage).get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and states.count("COMPLETE") + states.count("PRUNED") == 6


def no_lock_file_left(tmp_path):
    from headstart.pipeline.sweep.space import SearchSpace
    from headstart.pipeline.sweep.study import run_sweep

    config = _sweep_config(tmp_path, trials=2)
    Path(config.out).mkdir()
    (Path(config.out) / ".study.lock").write_text("")  # left by an older headstart
    run_sweep(config, SearchSpace(epochs=2, patience=2, parallel=2, batch_size=(16,), hidden_units=(16,)))
    assert (Path(config.out) / "best" / "run.json").is_file()
    assert not (Path(config.out) / ".study.lock").exists()


# -- 4. diagnose --overwrite killed while it writes ----------------------------------------------


class _Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (not even ``except Exception``)."""


def diagnose_overwrite_killed_mid_write(tmp_path, monkeypatch):
    import json

    from test_diagnose import make_cache as diagnose_cache

    from headstart.pipeline.config import DiagnoseConfig
    from headstart.pipeline.diagnose.diagnosis import diagnose
    from headstart.pipeline.store import files

    made, out = diagnose_cache(tmp_path, plant=True), tmp_path / "report"
    assert _invoke(["diagnose", made["path"], "--out", out, "--folds", 3]).exit_code == 0
    write = files.write_text_atomic

    def killed_after_label_issues(path, text):
        write(path, text)
        if str(path).endswith("label_issues.csv"):
            raise _Killed

    monkeypatch.setattr(files, "write_text_atomic", killed_after_label_issues)
    with pytest.raises(_Killed):
        diagnose(DiagnoseConfig(features=str(made["path"]), out=str(out), folds=2, overwrite=True))
    monkeypatch.undo()
    assert json.loads((out / "report.json").read_text())["complete"] is False  # new CSV, no old report beside it
    # The old options no longer find "already done" with the old findings:
    again = _invoke(["diagnose", made["path"], "--out", out, "--folds", 3])
    assert "already done" not in again.output
    _one_line_error(again, 2, "--folds")
    # The interrupted options redo the diagnosis and mark it finished only at the end.
    redone = _invoke(["diagnose", made["path"], "--out", out, "--folds", 2])
    assert redone.exit_code == 0 and "already done" not in redone.output, redone.output
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["config"]["folds"] == 2
    assert "already done" in _invoke(["diagnose", made["path"], "--out", out, "--folds", 2]).output


# -- 11. sparse handwriting is not "the same picture" ---------------------------------------------


def _sparse_digits(root: Path) -> list[str]:
    """scikit-learn's 1,797 real 8×8 scans (no two alike) as MNIST draws them: white ink, 16×16,
    on a blank 28×28 canvas, so three quarters of every image is background."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root.mkdir(parents=True)
    keys = []
    for i, scan in enumerate(load_digits().images):
        ink = Image.fromarray((scan * 255 / 16).astype(np.uint8)).resize((16, 16), Image.Resampling.BILINEAR)
        canvas = np.zeros((28, 28), np.uint8)
        canvas[6:22, 6:22] = np.asarray(ink)
        Image.fromarray(canvas).save(root / f"{i:04d}.png")
        keys.append(f"{i:04d}.png")
    return keys


def sparse_handwriting_called_the_same_picture(tmp_path):
    import shutil

    from PIL import Image

    from headstart.pipeline.diagnose.pictures import read_pictures, same_picture_pairs

    root = tmp_path / "digits"
    keys = _sparse_digits(root)
    shutil.copyfile(root / keys[1], root / "copy.png")  # a byte copy and an upscaled copy stay found
    with Image.open(root / keys[2]) as img:
        img.resize((56, 56), Image.Resampling.NEAREST).save(root / "upscaled.png")
    keys += ["copy.png", "upscaled.png"]
    pairs = same_picture_pairs(read_pictures(str(root), keys, thumbnails=True), 10)
    found = {frozenset((keys[a], keys[b])) for a, b, _ in pairs}
    # Before: 99 pairs of different scans within 1.1-3.0 levels over the whole, mostly blank thumbnail.
    assert found == {frozenset((keys[1], "copy.png")), frozenset((keys[2], "upscaled.png"))}


# -- the table -----------------------------------------------------------------------------------

FAULTS = [
    pytest.param(crafted_saved_model, id="1-crafted_saved_model"),
    pytest.param(foreign_signatures, id="1-foreign_signatures"),
    pytest.param(genuine_export, id="1-genuine_export", marks=pytest.mark.slow),
    pytest.param(folder_edited_after_extraction, id="2-folder_edited_after_extraction", marks=pytest.mark.slow),
    pytest.param(run_extract_key_sees_the_folder, id="2-run_extract_key_sees_the_folder"),
    pytest.param(run_after_a_folder_edit, id="2-run_after_a_folder_edit", marks=pytest.mark.slow),
    pytest.param(surplus_trial_in_a_race, id="3-surplus_trial_in_a_race"),
    pytest.param(storage_creation_race, id="3-storage_creation_race"),
    pytest.param(two_sweeps_on_one_storage, id="3-two_sweeps_on_one_storage", marks=pytest.mark.slow),
    pytest.param(no_lock_file_left, id="3-no_lock_file_left"),
    pytest.param(diagnose_overwrite_killed_mid_write, id="4-diagnose_overwrite_killed_mid_write", marks=pytest.mark.slow),
    pytest.param(sparse_handwriting_called_the_same_picture, id="11-sparse_handwriting_called_the_same_picture"),
]


@pytest.mark.parametrize("fault", FAULTS)
def test_fault(fault, tmp_path, monkeypatch):
    """Each row reproduces one fault of issue 28 and asserts it is gone."""
    import inspect

    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in inspect.signature(fault).parameters else {}
    fault(tmp_path, **kwargs)
