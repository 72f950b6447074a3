"""features/store.py: round trip, resume, config checks, overwrite, summaries, validation.

Refusals and locking are in tests/test_store_errors.py (both use the store helpers in conftest.py);
the SIGKILL crash tests are in tests/test_store_crash.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import STORE_CLASSES as CLASSES
from conftest import STORE_CONFIG as CONFIG
from conftest import STORE_FS as FS
from conftest import complete_store as _complete
from conftest import fill_store as _fill
from conftest import one_line as _one_line
from conftest import store_rows as _rows
from conftest import store_writer as _writer
from headstart.features.errors import StoreConfigMismatch, StoreError
from headstart.features.cache import FeatureCache, SplitData, open_cache, summarize_cache
from headstart.features.store import create_or_resume


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    path = tmp_path / "c.h5"
    _complete(path, dtype=dtype)
    assert not os.path.exists(f"{path}.partial")
    with open_cache(path) as cache:
        assert isinstance(cache, FeatureCache)
        assert cache.config == CONFIG and cache.class_names == CLASSES
        assert cache.splits == ["train", "test"] and cache.feature_shape == FS
        assert cache.dtype == dtype and cache.views == 2
        assert cache.provenance["tool"] == "test" and cache.provenance["seconds"] == 1.5
        train = cache.split("train")
        assert isinstance(train, SplitData) and isinstance(train.features, h5py.Dataset)
        want = {k: np.concatenate([_rows("train", 0, 4, 2)[k], _rows("train", 4, 4, 2)[k]])
                for k in ("features", "labels", "views")}
        assert len(train) == 8 and train.features.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(train.features[:], want["features"].astype(dtype))
        np.testing.assert_array_equal(train.views[:], want["views"].astype(dtype))
        assert train.labels.dtype == np.int64
        np.testing.assert_array_equal(train.labels, want["labels"])
        assert train.keys == [f"train/img_{i}.jpg" for i in range(8)]
        assert train.skipped == [("train/broken_0.jpg", "bad image 0"),
                                 ("train/broken_1.jpg", "bad image 1")]
        test = cache.split("test")
        assert test.views is None and len(test) == 4 and test.keys[0] == "test/img_1000.jpg"
        with pytest.raises(StoreError, match="has no split 'validation'; it has train, test"):
            cache.split("validation")


def test_fingerprint_depends_on_config_and_rows(tmp_path):
    _complete(tmp_path / "a.h5")
    _complete(tmp_path / "b.h5")
    _complete(tmp_path / "c.h5", config={**CONFIG, "image_size": 128})
    prints = [open_cache(tmp_path / n).fingerprint for n in ("a.h5", "b.h5", "c.h5")]
    assert prints[0] == prints[1] != prints[2] and len(prints[0]) == 64


def test_resume_continues_after_close(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 2, views=2)
    assert w.progress("train") == (10, 8) and not w.resumed
    w.close()
    w.close()  # idempotent
    assert not path.exists() and Path(f"{path}.partial").exists()

    w = _writer(path)
    assert w.resumed and not w.complete
    assert w.progress("train") == (10, 8) and w.progress("test") == (0, 0)
    assert not w.is_done("train")
    _fill(w, "train", 1, start=2, views=2)
    w.finish_split("train")
    _fill(w, "test", 1)
    w.finish_split("test")
    w.finalize()
    with open_cache(path) as cache:
        train = cache.split("train")
        assert train.keys == [f"train/img_{i}.jpg" for i in range(12)]
        assert len(train.skipped) == 3 and train.views.shape == (12, 2, *FS)
        assert cache.provenance["store"]["resumes"] == 1


def test_resume_cuts_rows_past_committed(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 1, views=2)
    w.close()
    # What a writer killed after writing rows but before advancing `committed` leaves behind.
    with h5py.File(f"{path}.partial", "r+") as f:
        for name in ("features", "labels", "keys", "views", "skipped_keys", "skipped_reasons"):
            f["train"][name].resize(len(f["train"][name]) + 3, axis=0)
    summary = summarize_cache(path)
    assert summary["splits"]["train"]["rows"] == 4
    assert sum(summary["splits"]["train"]["class_counts"].values()) == 4
    w = _writer(path)
    with h5py.File(f"{path}.partial", "r", locking=False) as f:
        assert {len(f["train"][n]) for n in ("features", "labels", "keys", "views")} == {4}
        assert len(f["train"]["skipped_keys"]) == 1
    _fill(w, "train", 1, start=1, views=2)
    w.close()
    with h5py.File(f"{path}.partial", "r") as f:
        keys = list(f["train"]["keys"].asstr()[:])
    assert keys == [f"train/img_{i}.jpg" for i in range(8)]


def test_resume_clears_stale_string_rows_past_the_extent(tmp_path):
    """A kill mid-flush can leave heap IDs of unwritten strings past the recorded extent."""
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 2, views=2, bad=False)
    w.close()
    with h5py.File(f"{path}.partial", "r+") as f:
        ds = f["train"]["keys"]
        assert len(ds) == 8
        raw = bytearray(ds.id.read_direct_chunk((0,))[1])
        for row in range(8, 12):  # element: u32 length, u64 heap collection address, u32 index
            raw[16 * row:16 * row + 16] = raw[:12] + (9000 + row).to_bytes(4, "little")
        ds.id.write_direct_chunk((0,), bytes(raw))
    w = _writer(path)
    _fill(w, "train", 1, start=2, views=2, bad=False)  # HDF5 would free the bogus objects here
    w.close()
    with h5py.File(f"{path}.partial", "r") as f:
        assert list(f["train"]["keys"].asstr()[:]) == [f"train/img_{i}.jpg" for i in range(12)]


def test_partial_config_mismatch_names_the_field(tmp_path):
    path = tmp_path / "c.h5"
    _writer(path).close()
    with pytest.raises(StoreConfigMismatch) as err:
        _writer(path, config={**CONFIG, "backbone": "xception"})
    msg = _one_line(err)
    assert f"{path}.partial" in msg
    assert "was written with backbone='mobilenet_v2'; this run has backbone='xception'" in msg
    assert "use overwrite to replace it" in msg
    with pytest.raises(StoreConfigMismatch, match=r"info\.weights='imagenet'; this run has "
                                                  r"info\.weights='none'"):
        _writer(path, config={**CONFIG, "info": {"weights": "none", "alpha": 1.0}})
    with pytest.raises(StoreConfigMismatch, match="dtype='float32'; this run has dtype='float16'"):
        _writer(path, dtype="float16")
    with pytest.raises(StoreConfigMismatch, match="views=2; this run has views=0"):
        _writer(path, views=0)


def test_overwrite_replaces_a_mismatching_partial(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 2, views=2)
    w.close()
    w = _writer(path, config={**CONFIG, "backbone": "xception"}, overwrite=True)
    assert not w.resumed and w.progress("train") == (0, 0)
    w.close()
    # Same config with --overwrite resumes: "run the same command again" never loses work.
    w = _writer(path, config={**CONFIG, "backbone": "xception"}, overwrite=True)
    assert w.resumed
    w.close()


def test_finished_cache_is_replaced_only_at_finalize(tmp_path):
    path = tmp_path / "c.h5"
    _complete(path)
    with pytest.raises(StoreConfigMismatch) as err:
        _writer(path, config={**CONFIG, "image_size": 224})
    assert "was written with image_size=96; this run has image_size=224" in _one_line(err)
    assert str(path) + " was" in str(err.value)

    w = _writer(path, config={**CONFIG, "image_size": 224}, overwrite=True)
    assert not w.complete
    _fill(w, "train", 1, views=2)
    with open_cache(path) as old:  # the old cache stays usable while the new one is written
        assert old.config["image_size"] == 96 and len(old.split("train")) == 8
    w.finish_split("train")
    w.finish_split("test")
    w.finalize()
    with open_cache(path) as new:
        assert new.config["image_size"] == 224 and len(new.split("train")) == 4


def test_complete_cache_with_same_config_is_a_no_op(tmp_path):
    path = tmp_path / "c.h5"
    _complete(path)
    before = path.stat().st_mtime_ns
    w = _writer(path)
    assert w.complete and not Path(f"{path}.partial").exists()
    assert w.progress("train") == (10, 8) and w.is_done("test")
    w.finalize()
    w.close()
    assert path.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="complete"):
        w.append("train", **_rows("train", 0, 1), consumed=99)


def test_summarize_complete_cache(tmp_path):
    path = tmp_path / "c.h5"
    _complete(path)
    s = summarize_cache(path)
    assert s["complete"] and s["fingerprint"] == open_cache(path).fingerprint
    assert s["file_size"] == path.stat().st_size and s["provenance"]["seconds"] == 1.5
    assert s["splits"]["test"]["rows"] == 4 and s["splits"]["test"]["views"] == 0
    assert s["splits"]["train"]["dtype"] == "float32" and s["progress"]["splits_done"] == 2


def test_partial_killed_after_complete_flag_is_finished_on_rerun(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path)
    _fill(w, "train", 1, views=2)
    w.finish_split("train")
    w.finish_split("test")
    w._file.attrs["complete"] = True  # finalize got this far, then the process died
    w.close()
    w = _writer(path)
    assert w.resumed and w.is_done("train") and w.is_done("test")
    w.finalize()
    assert len(open_cache(path).split("train")) == 4


def test_large_class_list_fits(tmp_path):
    names = [f"class_{i:05d}_{'x' * 40}" for i in range(3000)]  # > 64 KiB of JSON
    path = tmp_path / "c.h5"
    w = create_or_resume(path, config={}, provenance={}, class_names=names, splits=["train"],
                         feature_shape=(4,), dtype="float16")
    w.append("train", features=np.ones((2, 4)), labels=[0, 2999], keys=["a", "b"], consumed=2)
    w.finish_split("train")
    w.finalize()
    assert open_cache(path).class_names == names


def test_append_validates_its_input(tmp_path):
    with _writer(tmp_path / "c.h5") as w:
        with pytest.raises(ValueError, match="features must have shape"):
            w.append("train", features=np.ones((2, 6)), labels=[0, 1], keys=["a", "b"],
                     consumed=2)
        with pytest.raises(ValueError, match="labels must be in"):
            w.append("test", **{**_rows("test", 0, 2), "labels": [0, 3]}, consumed=2)
        with pytest.raises(ValueError, match="consumed=1"):
            w.append("test", **_rows("test", 0, 2), consumed=1)
        with pytest.raises(ValueError, match="views must have shape"):
            w.append("train", **_rows("train", 0, 2, views=3), consumed=2)
        with pytest.raises(ValueError, match="no split 'val'"):
            w.progress("val")
        w.append("test", **_rows("test", 0, 2), consumed=2)
        with pytest.raises(ValueError, match="split 'test' is not finished|test not finished"):
            w.finish_split("train")
            w.finalize()
        w.finish_split("test")
        with pytest.raises(ValueError, match="already finished"):
            w.append("test", **_rows("test", 2, 1), consumed=3)
    with pytest.raises(ValueError, match="dtype"):
        _writer(tmp_path / "d.h5", dtype="float64")


def test_pixel_std_round_trips_and_is_optional(tmp_path):
    # Stored per row when the extractor measured it; absent (None) for splits written without it,
    # which is how caches from before the column read.
    path = tmp_path / "c.h5"
    w = _writer(path, views=0)
    for b in range(2):
        w.append("train", **_rows("train", 4 * b, 4), pixel_std=np.arange(4) + 10.0 * b,
                 consumed=4 * (b + 1))
    w.finish_split("train")
    _fill(w, "test", 1, bad=False)
    w.finish_split("test")
    w.finalize()
    with open_cache(path) as cache:
        train = cache.split("train")
        assert train.pixel_std.dtype == np.float32
        np.testing.assert_array_equal(train.pixel_std, [0, 1, 2, 3, 10, 11, 12, 13])
        assert cache.split("test").pixel_std is None


def test_pixel_std_must_cover_every_row_of_a_split(tmp_path):
    w = _writer(tmp_path / "c.h5", views=0)
    w.append("train", **_rows("train", 0, 2), consumed=2)
    with pytest.raises(ValueError, match="rows without pixel_std"):
        w.append("train", **_rows("train", 2, 2), pixel_std=np.ones(2), consumed=4)
    w.append("test", **_rows("test", 0, 2), pixel_std=np.ones(2), consumed=2)
    with pytest.raises(ValueError, match="stores pixel_std"):
        w.append("test", **_rows("test", 2, 2), consumed=4)
    with pytest.raises(ValueError, match=r"pixel_std must have shape \(2,\)"):
        w.append("test", **_rows("test", 2, 2), pixel_std=np.ones(3), consumed=4)
    w.close()


def test_resume_cuts_pixel_std_back_to_committed(tmp_path):
    path = tmp_path / "c.h5"
    w = _writer(path, views=0)
    w.append("train", **_rows("train", 0, 4), pixel_std=np.full(4, 5.0), consumed=4)
    w.close()
    # A killed writer leaves rows past `committed`; simulate one in the pixel_std column.
    with h5py.File(f"{path}.partial", "r+") as f:
        f["train/pixel_std"].resize(6, axis=0)
    w = _writer(path, views=0)
    assert w.resumed and w.progress("train") == (4, 4)
    w.append("train", **_rows("train", 4, 2), pixel_std=np.full(2, 7.0), consumed=6)
    w.finish_split("train")
    w.append("test", **_rows("test", 0, 1), consumed=1)
    w.finish_split("test")
    w.finalize()
    with open_cache(path) as cache:
        np.testing.assert_array_equal(cache.split("train").pixel_std, [5, 5, 5, 5, 7, 7])
