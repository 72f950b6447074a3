"""The feature cache survives SIGKILL: a real writer process, killed mid-run, then resumed.

A small writer script appends deterministic batches (values derived from the row index, every
seventh source item "bad"), printing a line after each commit. It is SIGKILLed after 0, 1, 3 and 5
commits of successive runs, then run to the end; the result must equal an uninterrupted run row for
row — no duplicates, no gaps. With ``sleep=0`` the kill lands in the middle of appends and flushes.

Kept small for CI. A soak of this script (1,300 kills at random times, file creation and resume
included; no damaged file, every finished cache equal to the reference) is what found the traps
features/store.py avoids: rewriting a string attribute mid-run, stale string heap IDs past the
extent (see ``truncate_rows`` in features/_store_io.py), and a torn partial from a kill during
creation (the skeleton is built aside and renamed in).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from headstart.features.cache import open_cache, summarize_cache

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r'''
import os, sys, time
import numpy as np
from headstart.features.store import create_or_resume

out, sleep, train_rows = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
SIZES = {"train": train_rows, "validation": 10}
BATCH, FS, VIEWS = 4, (3, 2), 2

def features(split, i):
    base = 100000 if split == "validation" else 0
    return (base + i) + np.arange(6, dtype=np.float64).reshape(FS) / 8

w = create_or_resume(out, config={"backbone": "toy", "sizes": SIZES}, provenance={"pid": 0},
                     class_names=["a", "b", "c"], splits=list(SIZES), feature_shape=FS,
                     dtype="float32", views=VIEWS)
print("opened", int(w.resumed), int(w.complete), flush=True)
for split, total in SIZES.items():
    if w.complete or w.is_done(split):
        continue
    consumed, _ = w.progress(split)
    assert consumed % BATCH == 0 or consumed == total, consumed  # resumes on a batch boundary
    for start in range(consumed, total, BATCH):
        idx = range(start, min(start + BATCH, total))
        good = [i for i in idx if i % 7 != 3]
        feats = np.array([features(split, i) for i in good]).reshape(len(good), *FS)
        item = dict(features=feats, labels=np.array([i % 3 for i in good], dtype=np.int64),
                    keys=[f"{split}/{i}.jpg" for i in good],
                    skipped=[(f"{split}/{i}.jpg", f"bad {i}") for i in idx if i % 7 == 3],
                    consumed=idx[-1] + 1)
        if split == "train":
            item["views"] = feats[:, None] + np.arange(1, VIEWS + 1)[None, :, None, None]
        w.append(split, **item)
        print("committed", split, idx[-1] + 1, flush=True)
        time.sleep(sleep)
    w.finish_split(split)
w.finalize()
print("finished", flush=True)
'''


class _Writer:
    """The writer script as a child process whose stdout lines can be awaited with a timeout."""

    def __init__(self, script: Path, out: Path, sleep: float, train_rows: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, str(script), str(out), str(sleep),
                                      str(train_rows)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, bufsize=0)
        self._buffer = b""

    def line(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.proc.kill()
                _, err = self.proc.communicate()
                pytest.fail(f"writer gave no line (rc={self.proc.returncode}): {err.decode()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def kill_after_commits(self, n: int) -> None:
        assert self.line().startswith("opened")
        for _ in range(n):
            assert self.line().startswith("committed")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)
        assert self.proc.returncode == -signal.SIGKILL

    def run_to_end(self) -> None:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()
        assert out.decode().rstrip().endswith("finished")


def _contents(path: Path) -> dict:
    """Every committed value of every split, for exact comparison."""
    result = {}
    with open_cache(path) as cache:
        for name in cache.splits:
            s = cache.split(name)
            result[name] = {"features": s.features[:], "labels": s.labels, "keys": s.keys,
                            "views": None if s.views is None else s.views[:],
                            "skipped": s.skipped, "consumed": s.consumed}
    return result


@pytest.mark.parametrize("sleep,train_rows", [(0.02, 60), (0.0, 800)], ids=["between", "mid"])
@pytest.mark.slow
def test_sigkilled_writer_resumes_to_the_same_cache(tmp_path, sleep, train_rows):
    script = tmp_path / "writer.py"
    script.write_text(_SCRIPT)
    reference = tmp_path / "reference.h5"
    _Writer(script, reference, 0.0, train_rows).run_to_end()

    out = tmp_path / "killed.h5"
    partial = Path(f"{out}.partial")
    seen_rows = 0
    for commits in (0, 1, 3, 5):
        _Writer(script, out, sleep, train_rows).kill_after_commits(commits)
        assert partial.exists() and not out.exists()
        summary = summarize_cache(out)  # readable after every kill, progress only grows
        rows = summary["splits"]["train"]["rows"]
        assert not summary["complete"] and rows >= seen_rows
        seen_rows = rows
        with h5py.File(partial, "r") as f:  # the garbage past `committed` is what resume cuts
            assert len(f["train"]["keys"]) >= f["train"].attrs["committed"]
    assert seen_rows > 0
    _Writer(script, out, 0.0, train_rows).run_to_end()
    assert not partial.exists()

    got, want = _contents(out), _contents(reference)
    assert list(got) == ["train", "validation"]
    for split in want:
        assert got[split]["keys"] == want[split]["keys"]
        assert len(set(got[split]["keys"])) == len(got[split]["keys"])  # no duplicates
        np.testing.assert_array_equal(got[split]["features"], want[split]["features"])
        np.testing.assert_array_equal(got[split]["labels"], want[split]["labels"])
        if want[split]["views"] is not None:
            np.testing.assert_array_equal(got[split]["views"], want[split]["views"])
        assert got[split]["skipped"] == want[split]["skipped"]
        assert got[split]["consumed"] == want[split]["consumed"]
    total = {"train": train_rows, "validation": 10}
    for split, n in total.items():  # no gaps: every source item is a row or a skipped entry
        expect = [f"{split}/{i}.jpg" for i in range(n) if i % 7 != 3]
        assert got[split]["keys"] == expect
        assert [k for k, _ in got[split]["skipped"]] == [f"{split}/{i}.jpg" for i in range(n)
                                                          if i % 7 == 3]
    assert open_cache(out).provenance["store"]["resumes"] == 4
