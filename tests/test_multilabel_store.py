"""Multi-hot labels in the feature cache: writer, reader, integrity checks, summary and merge."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import STORE_CLASSES, STORE_FS, make_multilabel_cache, one_line, store_writer


def _rows(split: str, start: int, n: int) -> dict:
    idx = np.arange(start, start + n)
    labels = np.stack([(idx >> b) & 1 for b in range(len(STORE_CLASSES))], axis=1)
    return {"features": idx[:, None, None] + np.arange(6).reshape(STORE_FS) / 8, "labels": labels,
            "keys": [f"{split}/img_{i}.jpg" for i in idx]}


def _multi_store(path, **kw):
    w = store_writer(path, views=0, multi_label=True, **kw)
    for split in ("train", "test"):
        for b in range(2):
            w.append(split, **_rows(split, 4 * b, 4), consumed=4 * (b + 1))
        w.finish_split(split)
    w.finalize()
    return path


def test_multi_hot_rows_round_trip_with_the_task_recorded(tmp_path):
    from headstart.features.cache import open_cache, summarize_cache

    path = _multi_store(tmp_path / "m.h5")
    with open_cache(path) as cache:
        assert cache.multi_label and cache.task == "multi_label"
        train = cache.split("train")
        assert train.multi_label
        assert train.labels.shape == (8, 3) and train.labels.dtype == np.int64
        np.testing.assert_array_equal(train.labels, _rows("train", 0, 8)["labels"])
    with h5py.File(path, "r") as f:
        assert f.attrs["task"] == "multi_label"
        labels = f["train/labels"]
        assert labels.dtype == np.uint8 and labels.shape == (8, 3)
        assert labels.fletcher32  # the integrity check covers the new shape
    summary = summarize_cache(path)
    assert summary["multi_label"] and summary["task"] == "multi_label"
    # Rows 0..7: bit 0 set in 4 rows, bit 1 in 4, bit 2 in 4 — 12 labels on 8 rows.
    assert summary["splits"]["train"]["class_counts"] == {"cat": 4, "dog": 4, "élan": 4}


def test_single_label_caches_and_old_files_read_as_single_label(tmp_path):
    from conftest import complete_store
    from headstart.features.cache import open_cache, summarize_cache

    path = tmp_path / "s.h5"
    complete_store(path)
    with h5py.File(path, "r+") as f:  # a cache written before the attribute existed
        del f.attrs["task"]
    with open_cache(path) as cache:
        assert not cache.multi_label and cache.task == "single_label"
        assert cache.split("train").labels.shape == (8,) and not cache.split("train").multi_label
    assert summarize_cache(path)["task"] == "single_label"


@pytest.mark.parametrize("labels, needle", [
    (np.ones((4, 2), np.int64), "2 columns but the cache has 3 class names"),
    (np.full((4, 3), 2), "only 0 and 1"),
    (np.zeros(4, np.int64), "multi-hot rows"),
    (np.full((4, 3), 0.5), "0/1 integers"),
])
def test_labels_that_do_not_fit_are_refused_before_anything_is_written(tmp_path, labels, needle):
    w = store_writer(tmp_path / "m.h5", views=0, multi_label=True)
    item = _rows("train", 0, 4)
    with pytest.raises(ValueError) as info:
        w.append("train", features=item["features"], labels=labels, keys=item["keys"], consumed=4)
    assert needle in one_line(info)
    assert w.progress("train") == (0, 0)
    w.close()


def test_a_multi_hot_batch_in_a_single_label_cache_is_refused(tmp_path):
    w = store_writer(tmp_path / "s.h5", views=0)
    item = _rows("train", 0, 4)
    with pytest.raises(ValueError, match=r"labels must be \(4,\) integers"):
        w.append("train", **item, consumed=4)
    w.close()


def test_the_task_is_part_of_the_layout_on_resume_and_rerun(tmp_path):
    from headstart.features.errors import StoreConfigMismatch

    path = tmp_path / "m.h5"
    w = store_writer(path, views=0, multi_label=True)
    w.append("train", **_rows("train", 0, 4), consumed=4)
    w.close()
    with pytest.raises(StoreConfigMismatch, match="task='multi_label'; this run has task='single_label'"):
        store_writer(path, views=0)
    resumed = store_writer(path, views=0, multi_label=True)
    assert resumed.resumed and resumed.progress("train") == (4, 4)
    resumed.close()


def test_a_damaged_label_shape_is_a_store_error(tmp_path):
    from headstart.features.errors import StoreError
    from headstart.features.cache import open_cache

    path = _multi_store(tmp_path / "m.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["task"] = "single_label"
    with open_cache(path) as cache, pytest.raises(StoreError, match=r"not \(N,\) class indices"):
        cache.split("train")


def test_multi_label_shards_merge_into_one_multi_label_cache(tmp_path):
    from headstart.features.merge import merge_shards, write_source_index
    from headstart.features.store import create_or_resume
    from headstart.features.cache import open_cache

    keys = [f"train/{i}" for i in range(10)]
    labels = np.array([[i & 1, (i >> 1) & 1] for i in range(10)])
    paths = []
    for index in range(2):
        path = str(tmp_path / f"shard{index}.h5")
        mine = [i for i in range(10) if i % 2 == index]
        args = dict(config={"x": 1, "shard": {"index": index, "count": 2, "hash": "test"}},
                    provenance={}, class_names=["a", "b"], splits=["train"], feature_shape=(2,),
                    dtype="float32", multi_label=True)
        w = create_or_resume(path, **args)
        w.append("train", features=np.array([[i, i] for i in mine], np.float32), labels=labels[mine],
                 keys=[keys[i] for i in mine], consumed=len(mine))
        w.finish_split("train")
        w.close()
        write_source_index(w.partial_path, ["train"], lambda split: keys)
        create_or_resume(path, **args).finalize()
        paths.append(path)
    out = tmp_path / "merged.h5"
    merge_shards(out, paths)
    with open_cache(out) as cache:
        assert cache.multi_label
        train = cache.split("train")
        assert train.keys == keys
        np.testing.assert_array_equal(train.labels, labels)


def test_make_multilabel_cache_helper_holds_several_labels_per_row(tmp_path):
    from headstart.features.cache import open_cache

    with open_cache(make_multilabel_cache(tmp_path / "ml.h5")) as cache:
        labels = cache.split("train").labels
        assert labels.shape == (160, 3) and (labels.sum(axis=1) >= 2).any() and (labels.sum(axis=1) == 0).any()
