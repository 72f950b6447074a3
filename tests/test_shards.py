"""`extract-features --shard I/N` and `merge-features`: 3 merged shards equal one single-process run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_same_features, make_class_folders
from headstart.features.store import StoreWriter
from headstart.features.cache import open_cache
from headstart.pipeline.cli import main

# MobileNetV2 at 32 px with random weights (as in test_extract.py), plus one augmented view so
# that views go through the merge too. One batch per split and two splits keep each extraction to
# a few traces (the features do not depend on how rows are batched).
SPLITS = ("train", "validation")
FAST = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
        "--batch-size", "64", "--augment-views", "1", "--splits", ",".join(SPLITS), "--quiet"]
PER_ROW = ("features", "labels", "keys", "skipped_keys", "skipped_reasons")


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process extraction and the three shards of the same command (module-wide)."""
    root = tmp_path_factory.mktemp("shards")
    folder = make_class_folders(root / "images", per_class=10)
    # Bad files, so skipped entries have to merge back in order too.
    (folder / "cats" / "empty.jpg").write_bytes(b"")
    (folder / "dogs" / "notes.jpg").write_text("not an image")
    (folder / "dogs" / "zz.png").write_text("not an image either")
    single = root / "single.h5"
    result = run_cli("extract-features", folder, "--out", single, *FAST)
    assert result.exit_code == 0, result.output
    shards = []
    for i in range(3):
        shards.append(root / f"features.shard-{i}-of-3.h5")
        result = run_cli("extract-features", folder, "--out", shards[-1], *FAST, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, folder=folder, single=single, shards=shards)


@pytest.mark.slow
def test_three_shards_merge_into_the_single_process_cache(runs, tmp_path):
    merged = tmp_path / "merged.h5"
    result = run_cli("merge-features", merged, *reversed(runs.shards))  # any order
    assert result.exit_code == 0, result.output
    assert "merged 3 shards" in result.output

    with h5py.File(runs.single, "r") as a, h5py.File(merged, "r") as b:
        # Same config, so rerunning the single-process command on OUT finds it complete.
        assert a.attrs["config_json"] == b.attrs["config_json"]
        assert "shard" not in json.loads(b.attrs["config_json"])
        assert a["train"].attrs["skipped_committed"] == 3
        for split in SPLITS:
            for name in PER_ROW:
                compare = assert_same_features if name in ("features", "views") else np.testing.assert_array_equal
                compare(b[split][name][:], a[split][name][:], err_msg=name)
            assert b[split].attrs["consumed"] == a[split].attrs["consumed"]
            assert not b[split]["features"].is_virtual  # a copy: the shards can be deleted
        assert b["train"]["views"].shape == a["train"]["views"].shape

    # Each shard holds a part of the training split, and views are copied with their rows.
    merged_views = dict(zip(_keys(merged, "train"), _read(merged, "train", "views")))
    for i, shard in enumerate(runs.shards):
        with h5py.File(shard, "r") as f:
            assert json.loads(f.attrs["config_json"])["shard"]["index"] == i
            assert json.loads(f.attrs["provenance_json"])["shard"]["count"] == 3
            assert 0 < len(f["train"]["keys"]) < 15
        for key, views in zip(_keys(shard, "train"), _read(shard, "train", "views")):
            np.testing.assert_array_equal(merged_views[key], views)  # copied, so bit for bit

    with open_cache(merged) as cache:
        noted = cache.provenance["merge"]["shards"]
        assert [s["shard"] for s in noted] == ["0/3", "1/3", "2/3"]
        assert [Path(s["path"]).name for s in noted] == [p.name for p in runs.shards]
        # finetune reads the source options of a cache from here, as from a single run's.
        command = cache.provenance["command_config"]
        assert command["shard"] is None and command["out"] == str(merged)
        assert command["validation_fraction"] == 0.1
    again = run_cli("merge-features", merged, *runs.shards)
    assert again.exit_code == 0 and "already complete" in again.output


@pytest.mark.slow
def test_merge_keeps_the_per_row_pixel_std(runs, tmp_path):
    merged = tmp_path / "merged.h5"
    assert run_cli("merge-features", merged, *runs.shards).exit_code == 0
    with h5py.File(runs.single, "r") as a, h5py.File(merged, "r") as b:
        for split in SPLITS:
            assert len(a[split]["pixel_std"]) == len(a[split]["keys"])
            np.testing.assert_array_equal(b[split]["pixel_std"][:], a[split]["pixel_std"][:])


@pytest.mark.slow
def test_merge_refuses_sets_that_do_not_fit(runs, tmp_path):
    s0, s1, s2 = runs.shards
    out = tmp_path / "out.h5"
    one_line_error(run_cli("merge-features", out, s0, s2), "missing shard 1/3")
    one_line_error(run_cli("merge-features", out, s0, s1, s1, s2), "given twice")
    one_line_error(run_cli("merge-features", out, s0, s1, runs.single), "not a shard")
    one_line_error(run_cli("merge-features", s0, s0, s1, s2), "one of the shards")

    other_size = _edited_copy(s2, tmp_path / "size.h5", lambda c: c.update(image_size=48))
    one_line_error(run_cli("merge-features", out, s0, s1, other_size), "image_size=48")
    other_weights = _edited_copy(s2, tmp_path / "w.h5",
                                 lambda c: c.update(weights_fingerprint="0" * 64))
    one_line_error(run_cli("merge-features", out, s0, s1, other_weights), "weights_fingerprint")
    other_n = _edited_copy(s2, tmp_path / "n.h5", lambda c: c["shard"].update(count=4))
    one_line_error(run_cli("merge-features", out, s0, s1, other_n), "same N")

    incomplete = tmp_path / "incomplete.h5"
    shutil.copy(s2, f"{incomplete}.partial")
    one_line_error(run_cli("merge-features", out, s0, s1, incomplete), "incomplete")
    gap = tmp_path / "gap.h5"
    shutil.copy(s2, gap)
    with h5py.File(gap, "r+") as f:
        f["train"]["source_index"][...] += 1000
    one_line_error(run_cli("merge-features", out, s0, s1, gap), "overlap or leave gaps")
    assert not out.exists() and not Path(f"{out}.partial").exists()


@pytest.mark.parametrize("spec", ["0/0", "3/2", "abc", "1/2/3", "-1/2", ""])
@pytest.mark.slow
def test_bad_shard_syntax_is_a_usage_error(runs, tmp_path, spec):
    result = run_cli("extract-features", runs.folder, "--out", tmp_path / "x.h5", *FAST, "--shard", spec)
    one_line_error(result, "--shard")


@pytest.mark.slow
def test_killed_merge_resumes_to_the_same_file(runs, tmp_path, monkeypatch):
    import headstart.features.merge

    monkeypatch.setattr(headstart.features.merge, "_COMMIT_BYTES", 1)  # one row per commit
    calls = {"n": 0}
    real_append = StoreWriter.append

    def append_then_die(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "append", append_then_die)
    out = tmp_path / "out.h5"
    assert run_cli("merge-features", out, *runs.shards).exit_code == 130
    assert Path(f"{out}.partial").exists() and not out.exists()
    monkeypatch.setattr(StoreWriter, "append", real_append)
    resumed = run_cli("merge-features", out, *runs.shards)
    assert resumed.exit_code == 0, resumed.output
    for split in SPLITS:
        for name in PER_ROW:
            compare = assert_same_features if name in ("features", "views") else np.testing.assert_array_equal
            compare(_read(out, split, name), _read(runs.single, split, name), err_msg=name)


@pytest.mark.slow
def test_shard_killed_while_indexing_resumes(runs, tmp_path, monkeypatch):
    import headstart.features.merge

    real_index = headstart.features.merge.write_source_index

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "shard1.h5"
    command = ["extract-features", runs.folder, "--out", out, *FAST, "--shard", "1/3"]
    monkeypatch.setattr(headstart.features.merge, "write_source_index", die)
    assert run_cli(*command).exit_code == 130
    assert Path(f"{out}.partial").exists() and not out.exists()
    monkeypatch.setattr(headstart.features.merge, "write_source_index", real_index)
    assert run_cli(*command).exit_code == 0
    for split in SPLITS:
        for name in (*PER_ROW, "views", "source_index", "skipped_source_index"):
            if name != "views" or split == "train":
                np.testing.assert_array_equal(_read(out, split, name),
                                              _read(runs.shards[1], split, name))


@pytest.mark.slow
def test_dir_shards_partition_each_split_before_decoding(runs, monkeypatch):
    import headstart.pipeline.data.file_list
    from headstart.pipeline.data.splits import hash_fraction, shard_of
    from headstart.pipeline.data.sources import resolve_source

    source = resolve_source(str(runs.folder))
    decoded = []
    real_load = headstart.pipeline.data.file_list.load_or_reason
    monkeypatch.setattr(headstart.pipeline.data.file_list, "load_or_reason",
                        lambda path, *a, **k: decoded.append(path) or real_load(path, *a, **k))
    for split in source.split_names:
        everything = source.keys(split)
        parts = []
        for i in range(3):
            decoded.clear()
            keys = [e["key"].decode() for e in source.dataset(split, 32, shard=(i, 3)).as_numpy_iterator()]
            assert len(decoded) == len(keys) == source.count(split, shard=(i, 3))
            assert keys == [k for k in everything if shard_of(k, 3) == i]  # source order kept
            parts.append(keys)
        assert sorted(sum(parts, [])) == sorted(everything)
    # Independent of the split hash: a split's keys spread over all shards.
    train = source.keys("train")
    assert {shard_of(k, 3) for k in train} == {0, 1, 2}
    # The split hash is stratified per class (issue 11): within a class, train holds the highest
    # hashes (the older threshold rule put exactly the keys with hash_fraction >= 0.2 there).
    held_out = [k for s in ("validation", "test") for k in source.keys(s)]
    for cls in ("cats", "dogs"):
        lowest_train = min(hash_fraction(k) for k in train if k.startswith(cls + "/"))
        assert all(hash_fraction(k) < lowest_train for k in held_out if k.startswith(cls + "/"))


@pytest.mark.slow
def test_tfds_shards_filter_on_ids_before_decoding(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    import headstart.pipeline.data.sources
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.data.splits import shard_of

    decoded = []
    real_decode = headstart.pipeline.data.sources.decode_or_reason
    monkeypatch.setattr(headstart.pipeline.data.sources, "decode_or_reason",
                        lambda data, *a, **k: decoded.append(1) or real_decode(data, *a, **k))
    with tfds.testing.mock_data(num_examples=12):
        source = resolve_source("tfds:cats_vs_dogs")
        everything = source.keys("train")
        assert len(everything) == 12 and not decoded  # keys() decodes nothing
        got = []
        for i in range(2):
            keys = [e["key"].decode() for e in source.dataset("train", 32, shard=(i, 2)).as_numpy_iterator()]
            assert keys == [k for k in everything if shard_of(k, 2) == i]
            got += keys
        assert len(decoded) == len(got) == 12


def _edited_copy(path: Path, dest: Path, edit) -> Path:
    shutil.copy(path, dest)
    with h5py.File(dest, "r+") as f:
        config = json.loads(f.attrs["config_json"])
        edit(config)
        f.attrs["config_json"] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return dest


def _read(path, split, name):
    with h5py.File(path, "r") as f:
        return f[split][name][:]


def _keys(path, split):
    return [k.decode() for k in _read(path, split, "keys")]


def test_shards_whose_copies_of_a_folder_differ_only_in_modification_times_still_merge():
    """Workers extract their own copies of the data (no shared filesystem): each records its copy's
    listing digest, which holds modification times (issue 28); only the other fields must agree."""
    from headstart.features.errors import ShardError
    from headstart.features.merge import _check_one_configuration

    def shard(path, **source):
        config = {"backbone": "mobilenet", "source": {"kind": "dir", "root": "/data", **source}}
        return SimpleNamespace(path=path, config=config, cache=SimpleNamespace(task="single_label"), scheme={"n": 2})

    _check_one_configuration([shard("a.h5", listing_sha256="aaa"), shard("b.h5", listing_sha256="bbb")])
    with pytest.raises(ShardError, match="source.root"):
        _check_one_configuration([shard("a.h5", listing_sha256="aaa"), shard("b.h5", root="/other")])
