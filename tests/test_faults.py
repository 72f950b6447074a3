"""Faults as a user's machine meets them: disk full, bit rot, NaN, SIGTERM, symlink loops, EXIF.

Each test runs one row of issue 14 end to end (CliRunner or a subprocess) and checks what a user
sees: one line naming the file, exit 2 for input the user can fix or 1 for the environment, no
traceback, and nothing already finished damaged.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from headstart.features.errors import StoreError
from headstart.features.store import open_cache
from headstart.pipeline.cli import main
from test_train_head import make_cache


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, code: int, *names: str) -> str:
    """The command failed with ``code``, one "Error: …" line naming ``names``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], result.output
    return errors[0]


# -- bit rot --------------------------------------------------------------------------------------


def _rot(path: Path, dataset: str, nbytes: int = 4096) -> None:
    """Overwrites ``nbytes`` of the first chunk of ``dataset`` with 0xff, as a bad copy would."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * nbytes)


def test_bit_rot_is_named_on_read_and_train_head_refuses(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    _rot(cache, "train/features")
    with open_cache(cache) as c, pytest.raises(StoreError) as err:
        c.split("train").features[:10]
    assert "corrupted" in str(err.value) and "train/features" in str(err.value)
    result = _invoke(["train-head", cache, "--out", tmp_path / "run", "--epochs", "2"])
    line = _assert_one_line_error(result, 2, str(cache), "corrupted", "checksum")
    assert "extract the features again" in line
    assert not (tmp_path / "run" / "head.keras").exists()


def test_rotted_keys_are_caught_by_their_digest(tmp_path):
    cache = make_cache(tmp_path / "f.h5")
    with h5py.File(cache, "r+") as f:  # a flipped byte in the string heap: same length, new text
        f["validation/keys"][0] = "validation/X"
    with open_cache(cache) as c, pytest.raises(StoreError, match="corrupted: validation/keys"):
        c.split("validation")


def test_cache_of_format_1_still_reads(tmp_path, monkeypatch):
    """A cache written before checksums existed: format_version 1, no filters, no digests."""
    import headstart.features._store_io as store_io
    from headstart.features.store import StoreWriter

    def create_rows_v1(group, name, row_shape, dtype, chunk):
        return group.create_dataset(name, shape=(0, *row_shape), dtype=dtype,
                                    maxshape=(None, *row_shape), chunks=(chunk, *row_shape))

    monkeypatch.setattr(store_io, "FORMAT_VERSION", 1)
    monkeypatch.setattr(store_io, "create_rows", create_rows_v1)
    monkeypatch.setattr(StoreWriter, "_write_digests", lambda self, f: None)
    cache = make_cache(tmp_path / "old.h5")
    monkeypatch.undo()
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["format_version"]) == 1 and not f["train/features"].fletcher32
    with open_cache(cache) as c:
        assert c.format_version == 1 and len(c.split("train").features[:]) == 160
    result = _invoke(["train-head", cache, "--out", tmp_path / "run", "--epochs", "1"])
    assert result.exit_code == 0, result.output


def test_new_caches_checksum_every_fixed_size_dataset(tmp_path):
    cache = make_cache(tmp_path / "f.h5", views=2)
    with h5py.File(cache, "r") as f:
        assert int(f.attrs["format_version"]) == 2
        for split in ("train", "validation", "test"):
            g = f[split]
            for name, ds in g.items():
                if h5py.check_string_dtype(ds.dtype) is None:
                    assert ds.fletcher32, f"{split}/{name}"
                else:
                    assert f"{name}_sha256" in g.attrs, f"{split}/{name}"
        assert "views" in f["train"]


# -- disk full ------------------------------------------------------------------------------------

EXTRACT_96 = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none",
              "--image-size", "96", "--pooling", "none", "--dtype", "float32", "--batch-size", "8"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs at tmp_path/disk; skips when mounting is not allowed (not root, a container)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_disk_full_during_extract_features_on_a_real_tmpfs(tmp_path, small_tmpfs):
    import subprocess

    from conftest import make_class_folders

    images = make_class_folders(tmp_path / "images", per_class=14)
    out = small_tmpfs / "f.h5"
    args = ["extract-features", images, "--out", out, *EXTRACT_96]
    full = _invoke(args)  # 46 KB a row: the 1 MB disk holds one 11-row chunk
    line = _assert_one_line_error(full, 1, f"{out}.partial", "no space left on device")
    assert "committed so far: train " in line and "run the same command again" in line
    assert not out.exists()
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    resumed = _invoke(args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming split 'train' after" in resumed.output
    with open_cache(out) as c:
        keys = [k for s in c.splits for k in c.split(s).keys]
        assert sorted(keys) == sorted(str(p.relative_to(images)) for p in images.rglob("*.jpg"))
        assert c.provenance["store"]["resumes"] == 1


def test_disk_full_injected_into_the_writers_flush(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: ENOSPC from HDF5's flush, on the third commit."""
    import errno

    from headstart.features.errors import DiskFullError
    from headstart.features.store import create_or_resume

    def writer():
        return create_or_resume(tmp_path / "f.h5", config={"c": 1}, provenance={},
                                class_names=["a", "b"], splits=["train"], feature_shape=(4,),
                                dtype="float32")

    def batch(w, i):
        w.append("train", features=np.full((2, 4), i, np.float32), labels=[0, 1],
                 keys=[f"k{2 * i}", f"k{2 * i + 1}"], consumed=2 * i + 2)

    real_flush, calls = h5py.File.flush, []

    def flush(self):
        calls.append(1)
        if len(calls) == 5:  # two flushes per commit: the third commit's first
            raise OSError(errno.ENOSPC, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(h5py.File, "flush", flush)
    w = writer()
    with pytest.raises(DiskFullError) as err:
        for i in range(5):
            batch(w, i)
    w.close()
    monkeypatch.undo()
    msg = str(err.value)
    assert "no space left on device" in msg and "f.h5.partial" in msg
    assert "committed so far: train 4 images" in msg and err.value.exit_code == 1
    w = writer()
    assert w.resumed and w.progress("train") == (4, 4)
    for i in range(2, 5):
        batch(w, i)
    w.finish_split("train")
    w.finalize()
    with open_cache(tmp_path / "f.h5") as c:
        assert c.split("train").keys == [f"k{i}" for i in range(10)]
        np.testing.assert_array_equal(c.split("train").features[:, 0], np.repeat(np.arange(5), 2))


# -- SIGTERM --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Images, weights, a cache and a trained head for the end-to-end commands (MobileNet 0.25, 32 px)."""
    from test_finetune import BACKBONE, make_splits, make_weights_file

    root = tmp_path_factory.mktemp("tiny")
    data = make_splits(root / "images")
    weights = make_weights_file(root / "w.weights.h5")
    backbone = ["--backbone", BACKBONE["backbone"], "--alpha", BACKBONE["alpha"],
                "--image-size", BACKBONE["image_size"], "--weights", weights]
    cache, head = root / "f.h5", root / "head"
    assert _invoke(["extract-features", data, "--out", cache, *backbone, "--batch-size", 8,
                    "--quiet"]).exit_code == 0
    assert _invoke(["train-head", cache, "--out", head, "--epochs", 3, "--batch-size", 8,
                    "--quiet"]).exit_code == 0
    return {"root": root, "data": data, "weights": weights, "backbone": backbone, "cache": cache,
            "head": head}


def _sigterm_after(monkeypatch, target, name: str, calls: int) -> None:
    """Patches ``target.name`` to send this process SIGTERM on its ``calls``-th call.

    A real signal, from whatever thread makes the call; Python runs the handler in the main thread.
    """
    import os
    import signal

    real, count = getattr(target, name), []

    def wrapped(*args, **kwargs):
        count.append(1)
        if len(count) == calls:
            # Without a handler the default action would end pytest itself, silently (exit 143).
            assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM is not handled"
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


def _assert_interrupted(result, hint="run the same command again to resume"):
    assert result.exit_code == 143, result.output
    assert "Traceback" not in result.output
    assert f"interrupted; {hint}" in result.output.strip().splitlines()[-1]


def test_sigterm_during_extract_features_commits_and_resumes(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.report.progress import ProgressLine

    out = tmp_path / "f.h5"
    args = ["extract-features", tiny["data"], "--out", out, *tiny["backbone"], "--batch-size", 4]
    with monkeypatch.context() as m:
        _sigterm_after(m, ProgressLine, "update", 2)  # after the second committed batch
        _assert_interrupted(_invoke(args))
    assert not out.exists() and Path(f"{out}.partial").exists()
    resumed = _invoke(args)
    assert resumed.exit_code == 0 and "resuming split 'train' after 8 images" in resumed.output
    with open_cache(out) as new, open_cache(tiny["cache"]) as old:
        for split in old.splits:
            assert new.split(split).keys == old.split(split).keys


def test_sigterm_during_train_head(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.stages.head_data import FeatureRows

    out = tmp_path / "head"
    args = ["train-head", tiny["cache"], "--out", out, "--epochs", 50, "--batch-size", 4]
    with monkeypatch.context() as m:
        _sigterm_after(m, FeatureRows, "gather", 5)
        _assert_interrupted(_invoke(args))
    assert not (out / "run.json").exists()
    assert _invoke(args[:-4] + ["--epochs", 2]).exit_code == 0  # the same --out is usable again


def test_sigterm_during_finetune(tiny, tmp_path, monkeypatch):
    """The hint names --resume; resuming after an interrupt is tested in test_finetune.py."""
    import headstart.pipeline.data.sources as sources

    out = tmp_path / "tuned"
    args = ["finetune", tiny["data"], "--head", tiny["head"], "--out", out, "--epochs", 2,
            "--batch-size", 8, "--parity-samples", 4]
    with monkeypatch.context() as m:
        _sigterm_after(m, sources, "load_or_reason", 3)
        _assert_interrupted(_invoke(args), "run the same command again with --resume to resume")
    assert not (out / "run.json").exists()


def test_sigterm_during_run(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.report.progress import ProgressLine

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _sigterm_after(m, ProgressLine, "update", 1)
        result = _invoke(["run", tiny["data"], "--out", out, "--backbone", "mobilenet",
                          "--alpha", 0.25, "--image-size", 32, "--weights", tiny["weights"]])
    _assert_interrupted(result)


# -- directory symlink loops ----------------------------------------------------------------------


def test_directory_symlink_loops_are_entered_once_and_reported(tmp_path):
    import os

    from conftest import make_class_folders
    from headstart.pipeline.data.sources import resolve_source

    root = make_class_folders(tmp_path / "images", per_class=4)
    (root / "dogs" / "dogs_003.jpg").unlink()  # 7 images
    os.symlink("..", root / "cats" / "up")  # a loop back to the root
    os.symlink("../cats", root / "dogs" / "cats_again")  # a second way into a listed folder
    (root / "cats" / "linked").mkdir()
    os.symlink("../cats_000.jpg", root / "cats" / "linked" / "file_link.jpg")  # followed
    source = resolve_source(str(root), split_specs=None, validation_fraction=0.0, test_fraction=0.0)
    keys = source.keys("train")
    assert len(keys) == 7 + 1 + 2 and "cats/linked/file_link.jpg" in keys
    dataset = source.dataset("train", 32)
    reasons = {e["key"].numpy().decode(): e["error"].numpy().decode() for e in dataset}
    loops = {k: r for k, r in reasons.items() if r}
    assert sorted(loops) == ["cats/up", "dogs/cats_again"]
    assert "directory loop" in loops["cats/up"] and "cats/" in loops["dogs/cats_again"]
