"""Faults and bad input, round two (issue 21): hangs, exit 0 with nothing usable, stale reuse, a
decompression bomb in the exported model, forged output lines, tracebacks, the cost of bad input.

Every fault tried, what it did before issue 21 and what it does now (tests/test_faults.py holds
round one, issue 14). Tests that start a process wait with a timeout, so a hang fails the test
instead of stalling it. Items 3 (locks on run directories) and 8's option bounds and damaged
run.json fields are issue 19's.

| # | fault | before | now | test |
|---|---|---|---|---|
| 1 | FIFO in a class folder | extract-features hung for ever; SIGTERM ignored | skipped unopened: "not a regular file (a named pipe)" | a_fifo_in_a_class_folder…, extract_features_with_a_fifo… |
| 1 | a read blocking in a tf.data worker | SIGTERM / Ctrl-C ignored until SIGKILL | exit 143 within a second, the usual last line | sigterm_ends_extract_features_within_a_second… |
| 1 | `predict MODEL pipe.jpg` | hung until a signal | a row "not a regular file (a named pipe)", exit 1 | predict_prints_every_row_then_exits_1… |
| 1 | FIFO or /dev/null in a label file | "missing file" | "not a regular file (a named pipe / a character device)" | a_label_file_names_pipes_and_devices… |
| 1 | FIFO as the label file | "no such label file" | "not a regular file (a named pipe)" | a_fifo_as_the_label_file… |
| 1 | class folder holding only a FIFO | a class whose one item hung extraction | "empty class folder" | a_class_folder_holding_only_a_fifo… |
| 2 | sweep killed between ask and heartbeat | rerun waited for ever | trial failed and requeued after the grace period | a_running_trial_without_heartbeat…, a_resumed_sweep_reruns… |
| 2 | `.best-PID/` of a killed retraining | left for ever, also by --overwrite | removed when its process is gone | dead_best_dirs_are_removed… |
| 4 | JSONL: one row `"split": "TRAIN"` | 1-class cache, exit 0 | refused before writing, naming the 11 "empty split" rows | a_jsonl_whose_one_split_value… |
| 4 | a single class folder | 1-class cache, exit 0 | refused before writing | a_single_class_folder… |
| 4 | a class only in test; a split of bad rows only | cache without them, exit 0 | refused before writing, naming class / split | a_class_without_training_rows… |
| 4 | a class folder of unreadable files | class with 0 training rows, exit 0 | refused before the cache is finished | a_class_of_unreadable_images… |
| 4 | predict with missing / unreadable inputs | exit 0 | every row printed, then exit 1 | predict_prints_every_row_then_exits_1… |
| 5 | head.keras (or features.h5) replaced in a run | "reused", then "File not found" | size + sha256 checked; the stage runs again, saying why | a_stage_is_reused_only…, run_redoes_the_stages… |
| 6 | 20000×20000 PNG (389 KB) to serve_bytes | decoded, +1.2 GB RSS | refused from the header in graph ops, < 100 MB | the_exported_serve_bytes_refuses_a_bomb… |
| 6 | GIF of 1×1 frames on a huge canvas | counted as one canvas | frames × canvas, as TensorFlow decodes | a_gif_of_tiny_frames… |
| 7 | `\r`, `\n`, NUL, ESC in labels and names | printed raw, forged lines | escaped in every printed line | printable_escapes…, inspect_never_prints…, predict_rows_and_error_lines… |
| 8 | sweep --storage: text file, missing folder, unknown scheme, no driver, in-memory, another program's database | tracebacks | one line, exit 2 | every_storage_problem_is_one_line |
| 8 | `--storage sqlite:////dev/null` | traceback, created /dev/null-journal | one line, nothing created | every_storage_problem_is_one_line |
| 8 | garbage DIR/study.db | traceback | one line naming it | a_damaged_study_db… |
| 9 | 100,000 rows naming missing files | 62 s, 100,004 stdout lines | 19 s; 10 lines + counts per reason; CACHE.skipped.csv | thousands_of_missing_rows… |
| 9 | a class of 3 images split 1/1/1 | silent | a warning naming the class and its shares | a_class_too_small… |
| 10 | umask 022 | run files 0600 | 0644 (0666 less the umask) | run_files_are_created_with_the_mode… |
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_cache, make_class_folders, subprocess_env, write_image
from headstart.pipeline.cli import main


def _invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error: ")]


def _one_line_error(result, code: int, *names: str) -> str:
    """The command failed with ``code``, one "Error: …" line naming ``names``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], result.output
    return errors[0]


EXTRACT = ["--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", "none",
           "--batch-size", "4"]


# -- 1. named pipes and devices: skipped unopened; signals acted on within a second ---------------


def _unblock(fifo: Path) -> None:
    """Opens and closes the write end, so a reader stuck in open() or read() sees end-of-file."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader: nothing is stuck


def _within(seconds: float, fn, fifo: Path):
    """``fn()`` in a thread; fails (after unblocking it through ``fifo``) when it takes longer."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _unblock(fifo)
        thread.join(10)
        pytest.fail(f"still waiting on {fifo.name} after {seconds} s")
    return out[0]


def test_a_fifo_in_a_class_folder_is_listed_with_its_reason_and_never_opened(tmp_path):
    from headstart.pipeline.data.splits import list_class_folders

    root = make_class_folders(tmp_path / "images", per_class=3)
    os.mkfifo(root / "cats" / "pipe.jpg")
    os.symlink("/dev/null", root / "dogs" / "device.jpg")
    listing = _within(10, lambda: list_class_folders(root, str(root), validation_fraction=0,
                                                     test_fraction=0), root / "cats" / "pipe.jpg")
    assert "cats/pipe.jpg" in [key for key, _ in listing.items["train"]]
    assert listing.not_regular == {
        "cats/pipe.jpg": "not a regular file (a named pipe); skipped without opening it",
        "dogs/device.jpg": "not a regular file (a character device); skipped without opening it"}


def test_a_class_folder_holding_only_a_fifo_is_refused(tmp_path):
    from headstart.pipeline.data.splits import list_class_folders
    from headstart.pipeline.errors import DataError

    root = make_class_folders(tmp_path / "images", per_class=3)
    (root / "birds").mkdir()
    os.mkfifo(root / "birds" / "pipe.jpg")
    with pytest.raises(DataError, match="birds: empty class folder"):
        list_class_folders(root, str(root), validation_fraction=0, test_fraction=0)


def test_the_image_reader_refuses_a_fifo_without_blocking(tmp_path):
    from headstart.pipeline.data.image import load_or_reason

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    image, reason = _within(10, lambda: load_or_reason(fifo, 32), fifo)
    assert reason == "not a regular file (a named pipe)" and not image.numpy().any()
    assert load_or_reason("/dev/zero", 32)[1] == "not a regular file (a character device)"


def test_a_label_file_names_pipes_and_devices_for_what_they_are(tmp_path):
    from headstart.pipeline.data.label_file import read_label_file

    root = make_class_folders(tmp_path / "images", per_class=2)
    os.mkfifo(tmp_path / "pipe.jpg")
    rows = [f"{p},{p.parent.name}" for p in sorted(root.rglob("*.jpg"))]
    (tmp_path / "labels.csv").write_text("\n".join(["path,label", *rows, f"{tmp_path / 'pipe.jpg'},cats",
                                                    "/dev/null,dogs", "gone.jpg,dogs"]) + "\n")
    table = _within(10, lambda: read_label_file(tmp_path / "labels.csv", spec="labels.csv"), tmp_path / "pipe.jpg")
    reasons = {bad.key: bad.reason for bad in table.bad}
    assert reasons == {"pipe.jpg": "not a regular file (a named pipe) (labels.csv row 6)",
                       "/dev/null": "not a regular file (a character device) (labels.csv row 7)",
                       "gone.jpg": "missing file (labels.csv row 8)"}


def test_a_fifo_as_the_label_file_is_named_not_waited_on(tmp_path):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    result = _within(20, lambda: _invoke(["extract-features", fifo, "--out", tmp_path / "f.h5", *EXTRACT]), fifo)
    _one_line_error(result, 2, str(fifo), "not a regular file (a named pipe)")


def _headstart(args: list, tmp: Path, *, code: str | None = None) -> subprocess.Popen:
    """``headstart ARGS`` in a fresh interpreter (``code`` runs first, to patch something)."""
    script = (code or "") + "\nimport sys\nfrom headstart.pipeline.cli import main\nsys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", script, *[str(a) for a in args]], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env(tmp / "tmp"))


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s:\n{err[-2000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
def test_extract_features_with_a_fifo_in_a_class_folder_finishes(tmp_path):
    root = make_class_folders(tmp_path / "images", per_class=4)
    fifo = root / "cats" / "pipe.jpg"
    os.mkfifo(fifo)
    proc = _headstart(["extract-features", root, "--out", tmp_path / "f.h5", *EXTRACT], tmp_path)
    try:
        code, out, err = _finish(proc, 120)
    finally:
        _unblock(fifo)
    assert code == 0, err
    assert "skipped [train] cats/pipe.jpg: not a regular file (a named pipe); skipped without opening it" in out


@pytest.mark.slow
def test_sigterm_ends_extract_features_within_a_second_while_a_read_blocks(tmp_path):
    """A read that never returns (the old FIFO open; a stalled network share) inside a tf.data worker.

    The main thread waits in native code and cannot run Python's handler; the signal watch ends
    the process within the grace period with the usual line and 143.
    """
    root = make_class_folders(tmp_path / "images", per_class=4)
    fifo = root / "cats" / "cats_001.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    # The reader as it was before issue 21: a plain blocking open() of whatever the folder holds.
    patch = ("import headstart.pipeline.data.image as image, headstart.pipeline.data.splits as splits\n"
             "image._read_file = lambda path: open(path, 'rb').read()\n"
             "splits.not_regular_reason = lambda path: None\n")
    proc = _headstart(["extract-features", root, "--out", tmp_path / "f.h5", *EXTRACT], tmp_path, code=patch)
    writer = None
    try:
        deadline = time.monotonic() + 120
        while writer is None:  # the write end opens once the reader is in open(): then it blocks in read()
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)  # well inside the read
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM was not acted on within 5 s while a tf.data read blocked")
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        if writer is not None:
            os.close(writer)
        err = proc.communicate()[1]
    assert proc.returncode == 143, err[-2000:]
    assert elapsed < 1.0, elapsed
    assert err.strip().splitlines()[-1] == "interrupted; run the same command again to resume"


# -- 2. a sweep killed between ask and heartbeat; a killed final retraining ----------------------


def _silent_trial(storage_url: str) -> int:
    """Adds a RUNNING trial with no heartbeat row, as a process killed right after ``ask`` leaves."""
    import optuna

    from headstart.pipeline.sweep.study import STUDY_NAME

    storage = optuna.storages.RDBStorage(storage_url)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    trial_id = storage.create_new_trial(study._study_id)
    return storage.get_trial_number_from_id(trial_id)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.filterwarnings("ignore")  # Optuna marks heartbeats experimental
def test_a_running_trial_without_heartbeat_is_failed_and_queued_after_the_grace_period(tmp_path):
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials

    from headstart.pipeline.sweep.orphans import adopt_silent_trials

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=1,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    study = optuna.create_study(storage=storage, study_name="headstart-sweep")
    live = study.ask()
    storage.record_heartbeat(live._trial_id)
    silent = _silent_trial(url)
    assert adopt_silent_trials(study, storage) == [silent]
    assert adopt_silent_trials(study, storage) == []  # adopted once
    time.sleep(2.2)  # SQLite's clock has whole seconds: past the 1 s grace period whatever the rounding
    storage.record_heartbeat(live._trial_id)  # its owner is alive
    fail_stale_trials(study)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[live.number] == "RUNNING" and states[silent] == "FAIL"
    requeued = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == silent]
    assert [t.state.name for t in requeued] == ["WAITING"]


def test_dead_best_dirs_are_removed_and_live_ones_kept(tmp_path):
    from headstart.pipeline.sweep.orphans import remove_dead_best_dirs

    dead, live = tmp_path / f".best-{_dead_pid()}", tmp_path / f".best-{os.getppid()}"
    for d in (dead, live):
        d.mkdir()
        (d / "head.keras").write_bytes(b"half")
    (tmp_path / ".best-notes").mkdir()
    assert remove_dead_best_dirs(tmp_path) == [dead.name]
    assert not dead.exists() and live.is_dir() and (tmp_path / ".best-notes").is_dir()


def test_dead_trial_weight_writes_are_removed_and_live_ones_kept(tmp_path):
    from headstart.pipeline.sweep.orphans import remove_dead_best_dirs

    trials = tmp_path / "trials"
    trials.mkdir()
    dead, live = trials / f".trial_0003-{_dead_pid()}.npz", trials / f".trial_0004-{os.getppid()}.npz"
    kept = trials / "trial_0003.npz"
    for f in (dead, live, kept):
        f.write_bytes(b"half")
    assert remove_dead_best_dirs(tmp_path) == [f"trials/{dead.name}"]
    assert not dead.exists() and live.is_file() and kept.is_file()


@pytest.mark.slow
def test_a_resumed_sweep_reruns_a_trial_killed_before_its_first_heartbeat(tmp_path):
    import optuna

    from headstart.pipeline.config import SweepConfig
    from headstart.pipeline.sweep.space import SearchSpace
    from headstart.pipeline.sweep.study import STUDY_NAME, run_sweep

    cache, out = make_cache(tmp_path / "c.h5"), tmp_path / "sw"
    space = dict(epochs=2, patience=5, parallel=2, batch_size=(32,), hidden_units=(16,), pruner="none")
    run_sweep(SweepConfig(caches=(str(cache),), out=str(out), trials=2, heartbeat=1), SearchSpace(**space))
    silent = _silent_trial(f"sqlite:///{out / 'study.db'}")
    orphan = out / f".best-{_dead_pid()}"  # a final retraining killed half-way
    orphan.mkdir()
    code = ("from headstart.features.reporter import LineReporter\n"
            "from headstart.pipeline.config import SweepConfig\n"
            "from headstart.pipeline.sweep.space import SearchSpace\n"
            "from headstart.pipeline.sweep.study import run_sweep\n"
            f"r = run_sweep(SweepConfig(caches=({str(cache)!r},), out={str(out)!r}, trials=3, heartbeat=1), "
            f"SearchSpace(**{space!r}), reporter=LineReporter(print))\nprint('finished', r.finished)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=subprocess_env(tmp_path / "tmp"))
    returncode, output, _ = _finish(proc, 120)  # before issue 21 it slept in its wait loop for ever
    assert returncode == 0 and "finished 3" in output, output
    trials = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}").get_trials()
    assert trials[silent].state.name == "FAIL"
    assert [t.state.name for t in trials if t.system_attrs.get("failed_trial") == silent] == ["COMPLETE"]
    assert not orphan.exists()


# -- 8. sweep --storage: one line for every problem, nothing created beside a device --------------


@pytest.mark.parametrize("storage, expected", [
    ("TEXT", "not an SQLite database (damaged, or another kind of file); move it away, or give another --storage"),
    ("sqlite:///{tmp}/missing/dir/study.db", "folder {tmp}/missing/dir does not exist"),
    ("foo://bar", "unknown database 'foo'"),
    ("not a url", "not a database URL"),
    ("sqlite:////dev/null", "/dev/null is not a regular file (a character device); give a database file"),
    ("sqlite://", "a study in memory cannot be resumed or shared"),
    ("postgresql://nobody@127.0.0.1:1/x", "its driver is not installed"),
    ("OTHER", "cannot open the study ("),
])
def test_every_storage_problem_is_one_line(tmp_path, storage, expected):
    import sqlite3

    journal_before = os.path.exists("/dev/null-journal")
    cache = make_cache(tmp_path / "c.h5")
    if storage == "TEXT":
        (tmp_path / "notes.db").write_text("not a database\n")
        storage = f"sqlite:///{tmp_path / 'notes.db'}"
    elif storage == "OTHER":  # another program's SQLite database
        with sqlite3.connect(tmp_path / "other.db") as db:
            db.execute("create table alembic_version (version_num text)")
            db.execute("insert into alembic_version values ('not-optuna')")
        storage = f"sqlite:///{tmp_path / 'other.db'}"
    else:
        storage = storage.format(tmp=tmp_path)
    if storage.startswith("postgresql"):
        import importlib.util

        if importlib.util.find_spec("psycopg"):
            pytest.skip("a PostgreSQL driver is installed here")
    result = _invoke(["sweep", cache, "--out", tmp_path / "sw", "--trials", 1, "--storage", storage])
    line = _one_line_error(result, 2, f"--storage {storage}")
    assert expected.format(tmp=tmp_path) in line
    assert journal_before or not os.path.exists("/dev/null-journal")


def test_a_damaged_study_db_in_the_sweep_directory_is_named(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "study.db").write_bytes(np.random.default_rng(0).bytes(4096))
    result = _invoke(["sweep", cache, "--out", tmp_path / "sw", "--trials", 1])
    line = _one_line_error(result, 2, str(tmp_path / "sw" / "study.db"), "not an SQLite database")
    assert "pass --overwrite to start a new study" in line


# -- 4. exit 0 with nothing usable -----------------------------------------------------------------


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_a_jsonl_whose_one_split_value_empties_the_rest_is_refused_before_writing(tmp_path):
    import json

    root = make_class_folders(tmp_path / "images", per_class=4)
    rows = [{"path": str(p), "label": p.parent.name} for p in sorted(root.rglob("*.jpg"))]
    rows[0]["split"] = "TRAIN"  # one row names a split: the column exists, every other row's is empty
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "f.h5"
    result = _invoke(["extract-features", tmp_path / "labels.jsonl", "--out", out, *EXTRACT])
    line = _one_line_error(result, 2, "labels.jsonl", "1 class ('cats')", "a classifier needs 2 or more")
    assert "(7 unusable: 7 empty split)" in line
    _assert_nothing_written(out)


def test_a_single_class_folder_is_refused_before_writing(tmp_path):
    root = make_class_folders(tmp_path / "images", classes=("cats",), per_class=6)
    out = tmp_path / "f.h5"
    result = _invoke(["extract-features", root, "--out", out, *EXTRACT])
    # Refused from the folder listing, before TensorFlow starts (issue 27).
    _one_line_error(result, 2, str(root), "1 class folder ('cats'); a classifier needs 2 or more")
    _assert_nothing_written(out)


def test_a_class_without_training_rows_and_an_empty_split_are_refused_before_writing(tmp_path):
    root = make_class_folders(tmp_path / "images", classes=("cats", "dogs", "birds"), per_class=3)
    lines = ["path,label,split"]
    for p in sorted(root.rglob("*.jpg")):
        split = "test" if p.parent.name == "birds" else "train"  # birds only in test
        lines.append(f"{p},{p.parent.name},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "f.h5"
    result = _invoke(["extract-features", tmp_path / "labels.csv", "--out", out, *EXTRACT])
    _one_line_error(result, 2, "labels.csv", "class 'birds' has no usable training image")
    _assert_nothing_written(out)
    lines[1:] = [line for line in lines[1:] if "birds" not in line]
    lines.append(f"{tmp_path / 'gone.jpg'},cats,validation")  # validation: one row, its file missing
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    result = _invoke(["extract-features", tmp_path / "labels.csv", "--out", out, *EXTRACT])
    _one_line_error(result, 2, "split 'validation' has no usable image (1 unusable: 1 missing file)")
    _assert_nothing_written(out)


@pytest.mark.slow
def test_a_class_of_unreadable_images_is_refused_before_the_cache_is_finished(tmp_path):
    from headstart.features.cache import open_cache

    root = make_class_folders(tmp_path / "images", per_class=4)
    (root / "birds").mkdir()
    for i in range(4):
        (root / "birds" / f"b{i}.jpg").write_bytes(b"not an image")
    out = tmp_path / "f.h5"
    args = ["extract-features", root, "--out", out, *EXTRACT, "--validation-fraction", 0, "--test-fraction", 0]
    result = _invoke(args)
    line = _one_line_error(result, 2, str(root), "class 'birds' has no usable training image",
                           "(4 unusable in train: 4 not an image)")
    assert "no cache written: fix the images and run the same command again" in line
    _assert_nothing_written(out)
    for i in range(2):
        write_image(root / "birds" / f"b{i}.jpg", np.random.default_rng(i))
    fixed = _invoke([*args, "--quiet"])
    assert fixed.exit_code == 0, fixed.output
    with open_cache(out) as cache:
        assert cache.class_names == ["birds", "cats", "dogs"] and len(cache.split("train")) == 10


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A model.keras (MobileNet 0.25, 32 px, random weights) with a run.json naming its classes."""
    import keras

    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.store.files import save_model_atomic, write_json_atomic

    run = tmp_path_factory.mktemp("tiny_model")
    keras.utils.set_random_seed(0)
    base, pre, pool, _ = build_backbone_parts("mobilenet", weights="none", image_size=32, alpha=0.25)
    save_model_atomic(build_chain(base, pre, pool, head=build_head((256,), 2)), run / "model.keras")
    write_json_atomic(run / "run.json", {"kind": "finetune", "class_names": ["cats", "dogs"]})
    return run / "model.keras"


def test_predict_prints_every_row_then_exits_1_when_an_input_failed(tiny_model, tmp_path):
    good = write_image(tmp_path / "good.jpg", np.random.default_rng(0))
    os.mkfifo(tmp_path / "pipe.jpg")
    result = _within(60, lambda: _invoke(["predict", tiny_model, good, tmp_path / "pipe.jpg", tmp_path / "gone.jpg",
                                          "--csv", tmp_path / "p.csv"]), tmp_path / "pipe.jpg")
    assert result.exit_code == 1, result.output
    rows = [line.split("\t") for line in result.output.splitlines() if "\t" in line]
    assert [r[0] for r in rows] == [str(good), str(tmp_path / "pipe.jpg"), str(tmp_path / "gone.jpg")]
    assert rows[0][1] in ("cats", "dogs")
    assert rows[1][1] == f"error: {tmp_path / 'pipe.jpg'}: not a regular file (a named pipe)"
    assert "No such file" in rows[2][1]
    assert _error_lines(result.output) == ["Error: 2 of 3 input(s) could not be read (their lines say why)"]
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4  # the CSV is written all the same
    assert _invoke(["predict", tiny_model, good]).exit_code == 0


# -- 6. decompression bombs in the exported SavedModel ---------------------------------------------


def png_bomb(side: int = 20000) -> bytes:
    """A grey PNG of side × side zero pixels, compressed to ~389 KB for 20000 (400 MB raw)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (side + 1)  # a filter byte, then the row
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encoded(image, fmt: str, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _header_samples() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    frames = [Image.fromarray(np.full((30, 70, 3), 40 * i, np.uint8)) for i in range(4)]
    return {
        "png": _encoded(rgb, "PNG"), "jpeg": _encoded(rgb, "JPEG"),
        "progressive jpeg": _encoded(rgb, "JPEG", progressive=True),
        "gif": _encoded(rgb, "GIF"), "animated gif": _encoded(frames[0], "GIF", save_all=True,
                                                              append_images=frames[1:]),
        "bmp": _encoded(rgb, "BMP"), "palette bmp": _encoded(rgb.convert("P"), "BMP"),
        "lossy webp": _encoded(rgb, "WEBP", quality=80), "lossless webp": _encoded(rgb, "WEBP", lossless=True),
        "webp with alpha": _encoded(rgb.convert("RGBA"), "WEBP", quality=80),
        "png bomb": png_bomb(3000),
    }


def test_the_graph_reads_the_dimensions_the_python_probe_reads():
    import tensorflow as tf

    from headstart.pipeline.data.graph_header import image_dimensions
    from headstart.pipeline.data.image_header import probe_image

    dimensions = tf.function(image_dimensions)  # traced once, as in the SavedModel
    for name, data in _header_samples().items():
        info = probe_image(data)
        width, height, frames = (int(v) for v in dimensions(tf.constant(data)))
        assert (width, height) == (info.width, info.height), name
        assert width * height * frames == info.pixels, name
    assert [int(v) for v in dimensions(tf.constant(b"not an image"))] == [0, 0, 0]


def test_a_gif_of_tiny_frames_on_a_huge_canvas_counts_every_frame_on_the_whole_canvas():
    """TensorFlow decodes each GIF frame onto the full canvas: 6 frames of 1x1 on 4000x4000 hold 96 M."""
    import struct

    import tensorflow as tf

    from headstart.pipeline.data.graph_header import check_pixels
    from headstart.pipeline.data.image import decode_or_reason

    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # one pixel, LZW
    gif = b"GIF89a" + struct.pack("<HHBBB", 4000, 4000, 0x80, 0, 0) + b"\x00" * 6 + frame * 6 + b"\x3b"
    reason = decode_or_reason(gif, 32)[1]
    assert reason == ("image too large: 4000x4000 (6 frames, 96000000 pixels in all) exceeds the limit of "
                      "50000000 pixels")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"4000x4000 \(6 frames, 96000000 pixels in all\)"):
        check_pixels(tf.constant(gif), 50_000_000)


@pytest.mark.slow
def test_the_exported_serve_bytes_refuses_a_bomb_before_decoding_it(tiny_model, tmp_path):
    import keras
    import psutil
    import tensorflow as tf

    from headstart.pipeline.data.image import MAX_IMAGE_PIXELS, load_image
    from headstart.pipeline.commands.export import export_model

    model = keras.saving.load_model(tiny_model, compile=False)
    export_model(model, tmp_path, ("saved_model",), class_names=["cats", "dogs"])
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    assert int(loaded.signatures["max_image_pixels"]()["max_image_pixels"]) == MAX_IMAGE_PIXELS
    serve = loaded.signatures["serve_bytes"]
    samples = {k: v for k, v in _header_samples().items() if k not in ("palette bmp", "png bomb")}
    for name, data in samples.items():  # the check lets every ordinary image through, unchanged
        (tmp_path / "x").write_bytes(data)
        expected = model.predict(load_image(tmp_path / "x", 32)[None], verbose=0)
        np.testing.assert_allclose(serve(image_bytes=tf.constant([data]))["logits"].numpy(), expected,
                                   rtol=1e-5, atol=1e-4, err_msg=name)
    bomb = png_bomb()
    assert len(bomb) < 400_000  # 389 KB on the wire, 1.2 GB decoded (as RGB)
    process = psutil.Process()
    before = process.memory_info().rss
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image too large: 20000x20000 exceeds the limit of 50000000 pixels"):
        serve(image_bytes=tf.constant([samples["png"], bomb, bomb, bomb, bomb]))
    grown = process.memory_info().rss - before
    assert grown < 100 * 2**20, f"serving a refused bomb grew RSS by {grown / 2**20:.0f} MB"


# -- 7. control characters in labels and names are printed escaped ----------------------------------

FORGED = "cats\r\nsplit train: 999 rows (FORGED)"


def test_printable_escapes_what_could_forge_or_hide_a_line():
    from headstart.pipeline.report.printable import printable, printable_lines

    assert printable("cats") == "cats"
    assert printable(FORGED) == "cats\\r\\nsplit train: 999 rows (FORGED)"
    assert printable("a\x00b\x1b[2Jc\u202edcba\u2028\x7f") == "a\\x00b\\x1b[2Jc\\u202edcba\\u2028\\x7f"
    assert printable("path\twith a tab, é, 猫") == "path\twith a tab, é, 猫"
    assert printable_lines("one\rtwo\nthree") == "one\\rtwo\nthree"


def test_inspect_never_prints_a_forged_label_as_a_line_of_its_own(tmp_path):
    from headstart.features.store import create_or_resume

    writer = create_or_resume(str(tmp_path / "f.h5"), config={"synthetic": True}, provenance={},
                              class_names=[FORGED, "dogs\x1b[2J"], splits=["train"], feature_shape=(4,),
                              dtype="float32")
    writer.append("train", features=np.zeros((2, 4), np.float32), labels=np.array([0, 1]),
                  keys=["a\nb.jpg", "c.jpg"], skipped=[("bad\r.jpg", "not an image")], consumed=3)
    writer.finish_split("train")
    writer.finalize()
    result = _invoke(["inspect", tmp_path / "f.h5"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not any(line.startswith("split train: 999") for line in lines), result.output
    assert not any(c in result.output for c in "\r\x1b")
    assert "  classes: cats\\r\\nsplit train: 999 rows (FORGED), dogs\\x1b[2J" in lines
    assert "    skipped bad\\r.jpg: not an image" in lines


def test_predict_rows_and_error_lines_escape_names(tmp_path):
    from headstart.pipeline.commands.prediction import PredictionRow, format_prediction

    assert format_prediction(PredictionRow("x\n.jpg", FORGED, 0.5)) == (
        "x\\n.jpg\tcats\\r\\nsplit train: 999 rows (FORGED)\t0.5000")
    root = make_class_folders(tmp_path / "images", per_class=3)
    (root / "evil\rError: all fine").mkdir()
    result = _invoke(["extract-features", root, "--out", tmp_path / "f.h5", *EXTRACT])
    line = _one_line_error(result, 2, "evil\\rError: all fine: empty class folder")
    assert "\r" not in result.output and line.startswith("Error: ")


# -- 10. output files honour the umask --------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask 022", "umask 077", "umask 002"])
def test_run_files_are_created_with_the_mode_the_umask_gives(tmp_path, umask, mode):
    import keras

    from headstart.pipeline.store.curves import plot_curves
    from headstart.pipeline.store.files import (save_model_atomic, write_history_csv, write_json_atomic,
                                                 write_text_atomic)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "metrics.json", {"accuracy": 1.0})
        write_text_atomic(tmp_path / "config.toml", "seed = 0\n")
        write_history_csv({"loss": [1.0, 0.5]}, tmp_path / "history.csv")
        plot_curves({"loss": [1.0, 0.5], "accuracy": [0.5, 1.0]}, tmp_path / "curves.png")
        save_model_atomic(model, tmp_path / "model.keras")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["metrics.json", "config.toml", "history.csv", "curves.png", "model.keras"], mode)


# -- 9. the cost of bad input ----------------------------------------------------------------------


def test_the_terminal_names_a_few_skipped_items_and_counts_the_rest(tmp_path):
    from headstart.pipeline.report.skipped import skipped_csv_path, skipped_lines

    skipped = [("train", f"gone/{i}.jpg", f"missing file (labels.csv row {i + 2})") for i in range(25)]
    skipped += [("test", "x\n.jpg", "not an image")]
    lines = skipped_lines(skipped, "f.skipped.csv", shown=3)
    assert lines == ["skipped [train] gone/0.jpg: missing file (labels.csv row 2)",
                     "skipped [train] gone/1.jpg: missing file (labels.csv row 3)",
                     "skipped [train] gone/2.jpg: missing file (labels.csv row 4)",
                     "skipped 26 in all: 25 missing file, 1 not an image; every one in f.skipped.csv"]
    assert skipped_lines(skipped[-1:], None, shown=3) == ["skipped [test] x\\n.jpg: not an image"]
    assert skipped_lines(skipped, None, shown=0) == ["skipped 26 in all: 25 missing file, 1 not an image"]
    assert skipped_csv_path(tmp_path / "features.h5") == tmp_path / "features.skipped.csv"
    assert skipped_csv_path(tmp_path / "cache") == tmp_path / "cache.skipped.csv"


@pytest.mark.slow
def test_thousands_of_missing_rows_are_never_decoded_nor_run_through_the_backbone(tmp_path, monkeypatch):
    import csv

    import headstart.features.extract as extract
    import headstart.pipeline.data.file_list as sources
    from headstart.pipeline.report.skipped import SHOWN

    root = make_class_folders(tmp_path / "images", per_class=6)
    good = sorted(root.rglob("*.jpg"))
    lines = ["path,label", *(f"gone/{i}.jpg,{'cats' if i % 2 else 'dogs'}" for i in range(5000)),
             *(f"{p},{p.parent.name}" for p in good)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    decoded, forwards = [], []
    real_load, real_forward = sources.load_or_reason, extract._traced_forward
    monkeypatch.setattr(sources, "load_or_reason",
                        lambda path, *a, **k: decoded.append(path) or real_load(path, *a, **k))

    def counted_forward(*args):
        forward = real_forward(*args)
        return lambda x: forwards.append(len(x)) or forward(x)

    monkeypatch.setattr(extract, "_traced_forward", counted_forward)
    out = tmp_path / "f.h5"
    args = ["extract-features", tmp_path / "labels.csv", "--out", out, *EXTRACT, "--batch-size", 64]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert sorted(decoded) == sorted(str(p) for p in good)  # a stat per row, no decode of a missing file
    assert len(forwards) <= 3 + 1  # only batches holding a good image (at most one per split, + validation's)
    printed = [line for line in result.output.splitlines() if line.startswith("skipped [")]
    assert len(printed) == SHOWN
    summary = f"skipped 5000 in all: 5000 missing file; every one in {tmp_path / 'f.skipped.csv'}"
    assert summary in result.output.splitlines()
    with open(tmp_path / "f.skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5000 and rows[0]["reason"].startswith("missing file (labels.csv row ")
    quiet = _invoke([*args, "--out", tmp_path / "g.h5", "--quiet"])
    assert quiet.exit_code == 0 and not any(line.startswith("skipped [") for line in quiet.output.splitlines())
    assert any(line.startswith("skipped 5000 in all: 5000 missing file") for line in quiet.output.splitlines())


def test_a_class_too_small_for_the_fractions_gets_a_warning(tmp_path):
    from headstart.pipeline.data.splits import list_class_folders

    root = make_class_folders(tmp_path / "images", classes=("cats", "dogs", "newts"), per_class=20)
    for extra in sorted((root / "newts").iterdir())[3:]:
        extra.unlink()  # 3 newts: 1/1/1, a third each, asked 0.8/0.1/0.1
    listing = list_class_folders(root, "images", validation_fraction=0.1, test_fraction=0.1)
    assert listing.notes == ["warning: images: too few images for the requested shares in 1 class(es), split "
                             "train/validation/test as 'newts' 1/1/1 instead of 0.8/0.1/0.1; add images, or give "
                             "split folders or a split column"]
    assert list_class_folders(root, "images", validation_fraction=0.1, test_fraction=0.0).notes[0].count("'newts'") == 1
    for extra in range(3, 10):
        write_image(root / "newts" / f"n{extra}.jpg", np.random.default_rng(extra))
    assert list_class_folders(root, "images", validation_fraction=0.1, test_fraction=0.1).notes == []


# -- 5. run reuses a stage only while its recorded outputs are intact -------------------------------


def test_a_stage_is_reused_only_while_its_recorded_outputs_are_intact(tmp_path):
    from headstart.pipeline.run.stages import _reuse, output_digests

    head, run_json = tmp_path / "head.keras", tmp_path / "run.json"
    head.write_bytes(b"weights" * 100)
    run_json.write_text("{}")
    lines: list[str] = []
    console = type("Console", (), {"line": staticmethod(lines.append)})
    record = {"key": "k", "done": True, "status": "ran", "outputs": output_digests(run_json, head)}
    assert _reuse(record, "k", run_json, head, console=console)["status"] == "reused"
    # run.json is needed but not digested: `finetune --export` and the recipe add to it.
    run_json.write_text('{"exports": {}}')
    assert _reuse(record, "k", run_json, head, console=console)["status"] == "reused"
    run_json.unlink()
    assert _reuse(record, "k", run_json, head, console=console) is None
    run_json.write_text("{}")
    head.write_bytes(b"garbage")  # another size
    assert _reuse(record, "k", run_json, head, console=console) is None
    assert lines[-1] == f"  {head} changed since it was written (7 bytes, recorded 700): running the stage again"
    head.write_bytes(b"Weights" * 100)  # the same size, other bytes
    assert _reuse(record, "k", run_json, head, console=console) is None
    assert "its sha256 differs from the recorded one" in lines[-1]
    # A record from before "outputs": its head_sha256 still tells; the rest is trusted, then recorded.
    old = {k: v for k, v in record.items() if k != "outputs"}
    assert _reuse({**old, "head_sha256": "0" * 64}, "k", run_json, head) is None
    assert _reuse(old, "k", run_json, head)["outputs"] == output_digests(run_json, head)


@pytest.mark.slow
def test_run_redoes_the_stages_whose_files_were_damaged(tmp_path):
    import json

    import keras

    from conftest import make_splits, make_weights_file

    data = make_splits(tmp_path / "images", per_class=(6, 3, 3))
    weights = make_weights_file(tmp_path / "w.weights.h5")
    # The guide's recipe: under auto the head is copied again from the intact sweep, byte for byte, so
    # fine-tuning is rightly reused and the test would not see the chain of reruns it is about.
    args = ["run", data, "--out", tmp_path / "r", "--recipe", "guide", "--backbone", "mobilenet", "--alpha", 0.25,
            "--image-size", 32,
            "--weights", weights, "--head-epochs", 2, "--epochs", 1, "--batch-size", 4]
    assert _invoke(args).exit_code == 0
    (tmp_path / "r" / "head" / "head.keras").write_bytes(b"garbage")  # what the probe did
    (tmp_path / "r" / "features.h5").write_bytes(b"garbage too")
    again = _invoke(args)
    assert again.exit_code == 0, again.output
    assert f"{tmp_path / 'r' / 'features.h5'} changed since it was written" in again.output
    assert f"{tmp_path / 'r' / 'head' / 'head.keras'} changed since it was written" in again.output
    stages = json.loads((tmp_path / "r" / "stages.json").read_text())
    assert {name: stages[name]["status"] for name in stages} == {
        "extract": "ran", "head": "ran", "finetune": "ran", "evaluate": "ran"}
    keras.saving.load_model(tmp_path / "r" / "head" / "head.keras", compile=False)  # a real model again
    third = _invoke(args)
    stages = json.loads((tmp_path / "r" / "stages.json").read_text())
    assert third.exit_code == 0 and {s["status"] for s in stages.values()} == {"reused"}
