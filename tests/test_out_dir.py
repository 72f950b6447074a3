"""One ``--out`` policy and one lock for every command that writes a directory (issue 19, issue 21
item 3, issue 22 item 9).

The lock tests start real processes: a second writer is refused in one line naming the first (its
PID and command, exit code 75), and a writer killed with SIGKILL blocks no one afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_cache, make_class_folders, subprocess_env
from headstart.pipeline.cli import main
from headstart.pipeline.errors import RunDirBusyError, RunDirError
from headstart.pipeline.store.out_dir import FRESH, LOCK_FILE, REPLACE, RESUME, REUSE, OutDir, settle

HOLD = r"""
import sys, time
from headstart.pipeline.store.out_dir import OutDir
with OutDir(sys.argv[1], sys.argv[2]).locked():
    print("HELD", flush=True)
    time.sleep(600)
"""


def _hold(tmp_path: Path, out: Path, command: str = "train-head") -> subprocess.Popen:
    """A process that holds ``out``'s lock until it is killed; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), command], env=subprocess_env(tmp_path / "tmp"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "HELD", proc.stderr.read()
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_settle_decides_from_what_the_directory_recorded(tmp_path):
    out = tmp_path / "out"
    assert settle(out, what="train-head run", wanted={"epochs": 3}, recorded=None, finished=False,
                  overwrite=False) == FRESH
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # a lock file alone leaves a directory empty
    assert settle(out, what="x", wanted={}, recorded=None, finished=False, overwrite=False) == FRESH
    (out / "head.keras").write_text("x")
    same = dict(wanted={"epochs": 3, "splits": ("a", "b")}, overwrite=False)
    assert settle(out, what="x", recorded={"epochs": 3, "splits": ["a", "b"]}, finished=True, **same) == REUSE
    assert settle(out, what="x", recorded={"epochs": 3, "splits": ["a", "b"]}, finished=False, **same) == RESUME
    assert settle(out, what="x", recorded={"epochs": 9}, finished=True, wanted={"epochs": 3}, overwrite=True) == REPLACE
    with pytest.raises(RunDirError, match=r"holds a train-head run with another configuration "
                                          r"\(--epochs 2 there, 3 now\); pass --overwrite"):
        settle(out, what="train-head run", wanted={"epochs": 3}, recorded={"epochs": 2}, finished=True,
               overwrite=False, label=lambda k: f"--{k}")
    with pytest.raises(RunDirError, match="is not empty and holds no train-head run"):
        settle(out, what="train-head run", wanted={}, recorded=None, finished=False, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        settle(tmp_path / "file", what="x", wanted={}, recorded=None, finished=False, overwrite=True)


def test_a_directory_holding_only_its_record_computed_nothing_and_is_a_fresh_start(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.toml").write_text("x")
    other = dict(what="run", wanted={"epochs": 3}, recorded={"epochs": 2}, finished=False, overwrite=False)
    assert settle(out, record_files=("config.toml",), **other) == FRESH
    with pytest.raises(RunDirError, match="another configuration"):  # without the hint, the record is a run
        settle(out, **other)
    with pytest.raises(RunDirError, match="holds no run"):  # a record that does not read back is protected
        settle(out, what="run", wanted={}, recorded=None, finished=False, overwrite=False,
               record_files=("config.toml",))
    (out / "features.h5.partial").write_text("x")  # something computed: protected again
    with pytest.raises(RunDirError, match=r"\(--epochs 2 there, 3 now\)"):
        settle(out, record_files=("config.toml",), label=lambda k: f"--{k}", **other)


def test_a_run_refusal_names_the_differing_options_in_words():
    from headstart.pipeline.run.toml_config import describe_differences

    there = {"source": "/d", "recipe": "auto", "budget": None, "set explicitly": ["extract.image_size", "finetune.epochs"],
             "[extract] image_size =": 224, "[extract] weights =": "imagenet", "[finetune] epochs =": 2}
    now = {**there, "set explicitly": ["extract.weights", "finetune.epochs"], "[extract] image_size =": 150,
           "[extract] weights =": "/w.h5", "[finetune] epochs =": 3}
    assert describe_differences(there, now) == ("--image-size 224 there, auto now; --weights auto there, /w.h5 now; "
                                                "--epochs 2 there, 3 now")
    assert describe_differences(there, dict(there)) is None
    assert describe_differences(there, {**there, "recipe": "guide"}) == "--recipe auto there, guide now"
    guide = {"source": "/d", "recipe": "guide", "[head] weight_decay =": 0.0}
    assert describe_differences(guide, {**guide, "[head] weight_decay =": 0.1}) == "[head] weight_decay 0.0 there, 0.1 now"


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_blocks_no_one(tmp_path):
    out = tmp_path / "run"
    holder = _hold(tmp_path, out)
    try:
        with pytest.raises(RunDirBusyError) as err:
            with OutDir(out, "finetune").locked():
                pass
        message = str(err.value)
        assert f"PID {holder.pid} (headstart train-head" in message and "\n" not in message
        assert err.value.exit_code == 75
        with pytest.raises(RunDirBusyError):  # shared (a second sweep) is kept out by an exclusive holder too
            with OutDir(out, "sweep").locked(shared=True):
                pass
    finally:
        _kill(holder)
    assert holder.returncode == -signal.SIGKILL and (out / LOCK_FILE).exists()  # a stale lock file stays...
    with OutDir(out, "train-head").locked():  # ...and blocks nobody: the OS released the lock
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()  # released: removed again


def test_sweeps_share_a_directory_an_exclusive_writer_does_not(tmp_path):
    out = tmp_path / "sweep"
    with OutDir(out, "sweep").locked(shared=True):
        with OutDir(out, "sweep").locked(shared=True):  # a second sweep process on the same study
            pass
        with pytest.raises(RunDirBusyError):
            with OutDir(out, "train-head").locked():
                pass


def test_a_refused_claim_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RunDirError):
        with OutDir(out, "train-head").locked():
            raise RunDirError("refused")
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["run", "{images}", "--out", "{out}"],
    ["finetune", "{images}", "--out", "{out}"],
    ["diagnose", "{cache}", "--out", "{out}"],
    ["sweep", "{cache}", "--out", "{out}", "--trials", "1"],
    ["train-head", "{cache}", "--out", "{out}"],
])
def test_every_command_that_writes_a_directory_takes_its_lock(tmp_path, argv):
    make_class_folders(tmp_path / "images", per_class=3)
    make_cache(tmp_path / "f.h5")
    out = tmp_path / "out"
    holder = _hold(tmp_path, out, "run")
    try:
        args = [a.format(images=tmp_path / "images", cache=tmp_path / "f.h5", out=out) for a in argv]
        result = CliRunner().invoke(main, args)
    finally:
        _kill(holder)
    assert result.exit_code == 75, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"is in use by PID {holder.pid} (headstart run" in lines[0], result.output
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing of the refused command


@pytest.mark.slow
def test_two_train_heads_into_one_directory_one_is_refused(tmp_path):
    """The issue's case: two real train-head processes on one --out; one trains, the other is refused."""
    cache = make_cache(tmp_path / "f.h5")
    out = tmp_path / "head"
    env = subprocess_env(tmp_path / "tmp")
    first = subprocess.Popen([sys.executable, "-m", "headstart.pipeline.cli", "train-head", str(cache), "--out",
                              str(out), "--epochs", "400", "--patience", "400", "--seed", "1"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).is_file() or not (out / LOCK_FILE).read_text():
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", "train-head", str(cache), "--out",
                                 str(out), "--epochs", "2", "--seed", "2"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert first.poll() is None, "the first train-head ended before the second asked"
    finally:
        _kill(first)
    assert second.returncode == 75, second.stderr
    assert second.stderr.strip().splitlines() == [
        f"Error: --out {out} is in use by PID {first.pid} (headstart train-head, since "
        + second.stderr.split("since ", 1)[1].strip()]


@pytest.mark.slow
def test_train_head_the_same_options_are_already_done_other_options_are_named(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    out = tmp_path / "head"
    args = ["train-head", str(cache), "--out", str(out), "--epochs", "2", "--seed", "3"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    made = (out / "head.keras").stat().st_mtime_ns
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already done" in again.output and "best epoch" in again.output
    assert (out / "head.keras").stat().st_mtime_ns == made  # not trained again
    other = CliRunner().invoke(main, [*args[:-2], "--seed", "4"])
    assert other.exit_code == 2 and "(--seed 3 there, 4 now)" in other.output, other.output
    replaced = CliRunner().invoke(main, [*args[:-2], "--seed", "4", "--overwrite"])
    assert replaced.exit_code == 0 and (out / "head.keras").stat().st_mtime_ns != made
    (tmp_path / "f.h5").unlink()
    make_cache(tmp_path / "f.h5", seed=9)  # the same path, other features: not the same run
    changed = CliRunner().invoke(main, [*args[:-2], "--seed", "4"])
    assert changed.exit_code == 2 and "FEATURES (fingerprint)" in changed.output, changed.output
