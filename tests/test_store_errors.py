"""features/store.py refusals: foreign, damaged, truncated, incomplete and locked files.

Every refusal is a StoreError whose message is one line naming the file. Shared helpers come from
tests/test_store.py; the SIGKILL tests are in tests/test_store_crash.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from headstart.features.errors import StoreError, StoreExistsError, StoreInUseError
from headstart.features.cache import FORMAT_VERSION, open_cache, summarize_cache
from conftest import REPO
from conftest import STORE_CONFIG as CONFIG
from conftest import STORE_FS as FS
from conftest import complete_store as _complete
from conftest import fill_store as _fill
from conftest import one_line as _one_line
from conftest import store_writer as _writer


def test_fresh_start_over_leftovers_of_a_kill_during_creation(tmp_path):
    path = tmp_path / "c.h5"
    Path(f"{path}.partial").touch()  # killed right after creating the lock file
    Path(f"{path}.partial.new").write_bytes(b"\x89HDF\r\n\x1a\n")  # ... or while building it
    w = _writer(path)
    assert not w.resumed and w.progress("train") == (0, 0)
    assert not Path(f"{path}.partial.new").exists()
    w.close()
    with _writer(path) as again:
        assert again.resumed


@pytest.mark.parametrize("kind", ["text", "foreign_hdf5"])
def test_existing_foreign_file_is_not_touched(tmp_path, kind):
    path = tmp_path / "c.h5"
    if kind == "text":
        path.write_text("my notes\n")
    else:
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(3)
    before = path.read_bytes()
    with pytest.raises(StoreExistsError) as err:
        _writer(path)
    msg = _one_line(err)
    assert str(path) in msg and "use overwrite to replace it" in msg
    assert ("is not an HDF5 file" if kind == "text" else "is not a headstart feature cache") in msg
    assert path.read_bytes() == before and not Path(f"{path}.partial").exists()
    _complete(path, overwrite=True)
    assert open_cache(path).config == CONFIG


def test_open_cache_refusals(tmp_path):
    with pytest.raises(StoreError, match="no such file") as err:
        open_cache(tmp_path / "missing.h5")
    assert str(tmp_path / "missing.h5") in _one_line(err)

    text = tmp_path / "notes.h5"
    text.write_text("hello\n" * 100)
    with pytest.raises(StoreError, match="is not an HDF5 file") as err:
        open_cache(text)
    _one_line(err)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="is not a headstart feature cache") as err:
        open_cache(foreign)
    _one_line(err)

    with pytest.raises(StoreError, match="is a directory"):
        open_cache(tmp_path)


def test_open_cache_truncated_file(tmp_path):
    good = tmp_path / "good.h5"
    _complete(good)
    data = good.read_bytes()
    for n in (100, len(data) // 2, len(data) - 10):
        cut = tmp_path / f"cut_{n}.h5"
        cut.write_bytes(data[:n])
        with pytest.raises(StoreError) as err:
            open_cache(cut)
        msg = _one_line(err)
        assert str(cut) in msg and ("truncated" in msg or "damaged" in msg)
        with pytest.raises(StoreError):
            summarize_cache(cut)


def test_open_cache_unknown_version(tmp_path):
    path = tmp_path / "c.h5"
    _complete(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError) as err:
        open_cache(path)
    assert f"format_version {FORMAT_VERSION + 1}" in _one_line(err)
    with pytest.raises(StoreExistsError):
        _writer(path)


def test_incomplete_cache_is_refused_but_summarized(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 2, views=2)
    w.close()
    for target in (path, Path(f"{path}.partial")):
        with pytest.raises(StoreError, match=r"is incomplete \(an interrupted extract-features\? "
                                             r"run the same command again to resume\)"):
            open_cache(target)
    summary = summarize_cache(path)  # falls back to the .partial
    assert summary["path"].endswith(".partial") and not summary["complete"]
    assert summary["fingerprint"] is None and not summary["in_use"]
    assert summary["progress"] == {"splits_done": 0, "splits_total": 2}
    train = summary["splits"]["train"]
    assert train["rows"] == 8 and train["consumed"] == 10 and not train["done"]
    assert train["class_counts"] == {"cat": 3, "dog": 3, "élan": 2}
    assert train["skipped"][1] == ("train/broken_1.jpg", "bad image 1")
    assert train["views"] == 2 and train["feature_shape"] == list(FS)
    json.dumps(summary)  # `headstart inspect --json` can print it as is

    shutil.copy(f"{path}.partial", tmp_path / "copy.h5")  # complete=False under a final name
    with pytest.raises(StoreError, match="is incomplete"):
        open_cache(tmp_path / "copy.h5")


def test_damaged_partial_needs_overwrite(tmp_path):
    path = tmp_path / "c.h5"
    Path(f"{path}.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(StoreError, match="overwrite to start again") as err:
        _writer(path)
    _one_line(err)
    _complete(path, overwrite=True)
    assert open_cache(path).config == CONFIG


def test_second_writer_in_this_process_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    with _writer(path) as w:
        _fill(w, "train", 1, views=2)
        with pytest.raises(StoreInUseError) as err:
            _writer(path)
        assert "is in use by another process" in _one_line(err)
        with pytest.raises(StoreInUseError, match="still being written"):
            open_cache(path)
        summary = summarize_cache(path)
        assert summary["in_use"] and summary["splits"]["train"]["rows"] == 4
        _fill(w, "train", 1, start=1, views=2)  # the reader above did not disturb the writer
    with _writer(path) as w:
        assert w.progress("train") == (10, 8)


_OTHER_WRITER = """
import sys
from headstart.features.store import create_or_resume
try:
    create_or_resume(sys.argv[1], config={}, provenance={}, class_names=["a"], splits=["train"],
                     feature_shape=(1,), dtype="float32", overwrite=True).close()
    print("OPENED")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_second_writer_in_another_process_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def other() -> str:
        return subprocess.run([sys.executable, "-c", _OTHER_WRITER, str(path)], env=env,
                              capture_output=True, text=True, timeout=60).stdout.strip()

    with _writer(path) as w:
        _fill(w, "train", 1, views=2)
        out = other()  # even --overwrite must not take a partial that a live writer holds
        assert out.startswith("StoreInUseError") and "is in use by another process" in out
        assert str(path) in out
    assert other() == "OPENED"


def test_hdf5_lock_errors_are_translated(tmp_path):
    from headstart.features._hdf5 import translate_open_error

    path = str(tmp_path / "c.h5")
    busy = BlockingIOError(11, "Unable to synchronously open file (unable to lock file, errno = 11,"
                               " error message = 'Resource temporarily unavailable')")
    err = translate_open_error(path, busy)
    assert isinstance(err, StoreInUseError) and "is in use by another process" in str(err)
    nfs = OSError("Unable to synchronously open file (unable to lock file, errno = 38, error "
                  "message = 'Function not implemented')")
    err = translate_open_error(path, nfs)
    assert not isinstance(err, StoreInUseError) and path in str(err)
    assert "network filesystem" in str(err) and "HDF5_USE_FILE_LOCKING=FALSE" in str(err)


