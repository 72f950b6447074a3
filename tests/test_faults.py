"""Faults as a user's machine meets them: disk full, bit rot, NaN, SIGTERM, symlink loops, EXIF.

Each test runs one row of issue 14 end to end (CliRunner or a subprocess) and checks what a user
sees: one line naming the file, exit 2 for input the user can fix or 1 for the environment, no
traceback, and nothing already finished damaged. Round two (issue 21: pipes, stalled sweeps, empty
classes, stale reuse, bombs sent to the SavedModel, forged lines, --storage, bad-input cost, the
umask) is in tests/test_faults_round2.py, whose docstring tables every fault with its outcome.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from headstart.features.errors import StoreError
from headstart.features.cache import open_cache
from headstart.pipeline.cli import main
from conftest import assert_one_line_error, assert_same_features, make_cache


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


_assert_one_line_error = assert_one_line_error


# -- bit rot --------------------------------------------------------------------------------------


def _rot(path: Path, dataset: str, nbytes: int = 4096) -> None:
    """Overwrites ``nbytes`` of the first chunk of ``dataset`` with 0xff, as a bad copy would."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * nbytes)


@pytest.mark.slow
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


@pytest.mark.slow
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
    from conftest import BACKBONE, make_splits, make_weights_file

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


@pytest.mark.slow
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
        for split in old.splits:  # resumed after SIGTERM or not, and batch size 4 or 8: the same features
            assert new.split(split).keys == old.split(split).keys
            assert_same_features(new.split(split).features[:], old.split(split).features[:], err_msg=split)


@pytest.mark.slow
def test_sigterm_during_train_head(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.training.head_data import FeatureRows

    out = tmp_path / "head"
    args = ["train-head", tiny["cache"], "--out", out, "--epochs", 50, "--batch-size", 4]
    with monkeypatch.context() as m:
        _sigterm_after(m, FeatureRows, "gather", 5)
        _assert_interrupted(_invoke(args))
    assert not (out / "run.json").exists()
    assert _invoke(args[:-4] + ["--epochs", 2]).exit_code == 0  # the same --out is usable again


@pytest.mark.slow
def test_sigterm_during_finetune(tiny, tmp_path, monkeypatch):
    """The hint says to run it again; resuming after an interrupt is tested in test_finetune.py."""
    import headstart.pipeline.data.file_list as file_list

    out = tmp_path / "tuned"
    args = ["finetune", tiny["data"], "--head", tiny["head"], "--out", out, "--epochs", 2,
            "--batch-size", 8, "--parity-samples", 4]
    with monkeypatch.context() as m:
        _sigterm_after(m, file_list, "load_or_reason", 3)
        _assert_interrupted(_invoke(args), "run the same command again to resume")
    assert not (out / "run.json").exists()


@pytest.mark.slow
def test_sigterm_during_run(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.report.progress import ProgressLine

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _sigterm_after(m, ProgressLine, "update", 1)
        result = _invoke(["run", tiny["data"], "--out", out, "--recipe", "guide", "--backbone", "mobilenet",
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


# -- EXIF orientation -----------------------------------------------------------------------------


def _quadrants(width=48, height=32):
    """An image whose four quadrants have four colours, so every rotation and flip differs."""
    pixels = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w], pixels[:h, w:] = (230, 30, 30), (30, 230, 30)
    pixels[h:, :w], pixels[h:, w:] = (30, 30, 230), (230, 230, 30)
    return pixels


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_at_decode(tmp_path, orientation):
    import tensorflow as tf
    from PIL import Image, ImageOps

    from headstart.pipeline.data.image import load_image
    from headstart.pipeline.data.image import load_image as load_for_predict

    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_quadrants()).save(path, exif=exif, quality=95)
    seen = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))  # as a person sees it
    expected = tf.image.resize(seen, (40, 40), method="bilinear").numpy()
    assert load_for_predict is load_image  # predict and evaluate decode the same way
    got = load_image(path, 40)
    assert np.abs(got - expected).max() < 12  # two JPEG decoders; a wrong turn differs by ~200


@pytest.mark.slow
def test_exif_orientation_is_part_of_the_cache_config(tiny):
    with open_cache(tiny["cache"]) as c:
        assert c.config["exif_orientation"] is True


# -- non-finite features --------------------------------------------------------------------------


def test_non_finite_features_are_refused_at_write_with_the_key(tmp_path):
    from headstart.features.errors import NonFiniteFeaturesError
    from headstart.features.store import create_or_resume

    def writer(dtype):
        return create_or_resume(tmp_path / f"{dtype}.h5", config={"d": dtype}, provenance={},
                                class_names=["a", "b"], splits=["train"], feature_shape=(3,),
                                dtype=dtype)

    w = writer("float16")
    w.append("train", features=np.ones((2, 3)), labels=[0, 1], keys=["a.jpg", "b.jpg"], consumed=2)
    w.append("train", features=np.zeros((0, 3)), labels=np.zeros(0, np.int64), keys=[],
             skipped=[("bad.jpg", "truncated image")], consumed=3)  # a batch of only bad images
    big = np.ones((2, 3)) * [[1], [1e6]]  # a large activation: fine in float32, inf in float16
    with pytest.raises(NonFiniteFeaturesError, match=r"^d\.jpg: its features overflow float16.*"
                                                     r"dtype='float32' overwrite"):
        w.append("train", features=big, labels=[0, 1], keys=["c.jpg", "d.jpg"], consumed=5)
    assert w.progress("train") == (3, 2)  # the earlier commit stands, nothing of the batch went in
    w.close()
    w = writer("float32")
    nan = np.ones((2, 3)) * [[np.nan], [1]]
    with pytest.raises(NonFiniteFeaturesError, match=r"^e\.jpg: the backbone's features .* not finite"):
        w.append("train", features=nan, labels=[0, 1], keys=["e.jpg", "f.jpg"], consumed=2)
    w.close()


# -- read-only and full output directories --------------------------------------------------------


@pytest.fixture
def bad_disks(tmp_path):
    """``{"ro": DIR, "full": DIR}``: an empty folder on a read-only tmpfs and one on a full tmpfs.

    Root ignores permission bits, so only a read-only mount refuses root's writes. Skips where
    mounting is not allowed.
    """
    import subprocess

    def sh(*cmd):
        return subprocess.run(list(cmd), capture_output=True, text=True)

    mounts, out = [], {}
    try:
        for name, size in (("ro", "64k"), ("full", "128k")):
            disk = tmp_path / f"{name}_disk"
            disk.mkdir()
            if sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)).returncode:
                pytest.skip("cannot mount a tmpfs here")
            mounts.append(disk)
            (disk / "out").mkdir()
            out[name] = disk / "out"
        with open(mounts[1] / "filler", "wb", buffering=0) as f:  # fill it to the last block
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        assert sh("mount", "-o", "remount,ro", str(mounts[0])).returncode == 0
        yield out
    finally:
        for disk in mounts:
            sh("umount", str(disk))


def _nothing_left(folder: Path) -> None:
    """No temporaries and no run.json: a half-done run is marked unfinished, nothing torn."""
    names = [p.name for p in folder.rglob("*")]
    assert "run.json" not in names and not [n for n in names if ".tmp" in n], names


@pytest.mark.slow
def test_train_head_into_read_only_and_full_directories(tiny, bad_disks):
    for kind, word in (("ro", "cannot write there (Read-only file system)"),
                       ("full", "No space left on device")):
        out = bad_disks[kind]
        result = _invoke(["train-head", tiny["cache"], "--out", out, "--epochs", 1])
        _assert_one_line_error(result, 1, str(out), word)
        _nothing_left(out)


@pytest.mark.slow
def test_finetune_and_run_into_a_read_only_directory(tiny, bad_disks):
    out = bad_disks["ro"]
    result = _invoke(["finetune", tiny["data"], "--head", tiny["head"], "--out", out, "--epochs", 1])
    _assert_one_line_error(result, 1, str(out), "Read-only file system")
    result = _invoke(["run", tiny["data"], "--out", out, "--recipe", "guide", "--backbone", "mobilenet",
                      "--alpha", 0.25, "--image-size", 32, "--weights", tiny["weights"]])
    _assert_one_line_error(result, 1, str(out), "Read-only file system")


@pytest.mark.slow
def test_finetune_into_a_full_directory(tiny, bad_disks):
    out = bad_disks["full"]
    result = _invoke(["finetune", tiny["data"], "--head", tiny["head"], "--out", out, "--epochs", 1])
    _assert_one_line_error(result, 1, str(out), "No space left on device")
    _nothing_left(out)


# -- the extras: vanished, replaced, empty and broken files ---------------------------------------


@pytest.mark.slow
def test_cache_deleted_while_train_head_streams_it(tiny, tmp_path, monkeypatch):
    """POSIX keeps an open file readable after unlink: the run finishes on what it opened."""
    import shutil

    from headstart.pipeline.training.head_data import FeatureRows

    cache = tmp_path / "f.h5"
    shutil.copy(tiny["cache"], cache)
    real, calls = FeatureRows.gather, []

    def gather(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            cache.unlink()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FeatureRows, "gather", gather)
    result = _invoke(["train-head", cache, "--out", tmp_path / "head", "--epochs", 2,
                      "--batch-size", 4, "--memory-limit-mb", 0])
    assert result.exit_code == 0 and "stream" in result.output, result.output
    assert not cache.exists() and (tmp_path / "head" / "run.json").is_file()


@pytest.mark.slow
def test_class_folder_vanishing_and_image_replaced_by_a_directory(tiny, tmp_path, monkeypatch):
    import shutil

    data = tmp_path / "images"
    shutil.copytree(tiny["data"], data)
    from headstart.pipeline.data import sources

    opener = "open_source" if hasattr(sources, "open_source") else "resolve_source"
    real = getattr(sources, opener)

    def listed_then_changed(*args, **kwargs):
        source = real(*args, **kwargs)
        shutil.rmtree(data / "test" / "dogs")  # vanishes after listing, before decoding
        victim = data / "validation" / "cats" / "cats_000.jpg"
        victim.unlink()
        victim.mkdir()  # an image replaced by a directory of the same name
        return source

    out = tmp_path / "f.h5"
    with monkeypatch.context() as m:
        m.setattr(sources, opener, listed_then_changed)
        result = _invoke(["extract-features", data, "--out", out, *tiny["backbone"],
                          "--batch-size", 8, "--max-bad", 2])
    line = _assert_one_line_error(result, 1, "--max-bad 2")
    assert "test/dogs/" in line and "No such file or directory" in line
    assert not out.exists()  # a refused run leaves only its resumable partial
    from headstart.features.cache import summarize_cache

    skipped = summarize_cache(out)["splits"]["validation"]["skipped"]
    assert skipped == [("validation/cats/cats_000.jpg", "not a regular file (a directory)")]  # never opened


@pytest.mark.slow
def test_empty_head_keras_and_run_json_that_is_not_json(tiny, tmp_path):
    import shutil

    head = tmp_path / "head"
    shutil.copytree(tiny["head"], head)
    (head / "head.keras").write_bytes(b"")
    result = _invoke(["finetune", tiny["data"], "--head", head, "--out", tmp_path / "t1"])
    _assert_one_line_error(result, 2, str(head / "head.keras"))
    assert not (tmp_path / "t1" / "run.json").exists()
    shutil.copy(tiny["head"] / "head.keras", head / "head.keras")
    (head / "run.json").write_text("{not json")
    result = _invoke(["finetune", tiny["data"], "--head", head, "--out", tmp_path / "t2"])
    _assert_one_line_error(result, 2, str(head), "run.json is damaged: not readable JSON")


# -- determinism ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_and_deterministic_give_bit_identical_finetuned_weights(tiny, tmp_path):
    """Two finetune runs with --seed and --deterministic on CPU end with the same bits.

    Heads: test_train_head.py::test_memory_and_stream_are_bit_identical_and_deterministic.
    Caches: test_sigterm_during_extract_features_commits_and_resumes compares a resumed
    extraction bit for bit with an uninterrupted one.
    """
    import keras

    tuned = []
    for run in ("a", "b"):
        out = tmp_path / f"tuned_{run}"
        result = _invoke(["finetune", tiny["data"], "--head", tiny["head"], "--out", out,
                          "--epochs", 1, "--batch-size", 8, "--parity-samples", 0, "--seed", 5,
                          "--deterministic", "--quiet"])
        assert result.exit_code == 0, result.output
        tuned.append(keras.saving.load_model(out / "model.keras", compile=False).get_weights())
    assert len(tuned[0]) == len(tuned[1])
    for x, y in zip(*tuned):
        np.testing.assert_array_equal(x, y)


# -- NaN / inf loss -------------------------------------------------------------------------------


@pytest.mark.slow
def test_train_head_stops_at_the_epoch_whose_loss_is_not_finite(tiny, tmp_path, monkeypatch):
    from headstart.pipeline.training.head_data import FeatureRows

    real, epochs = FeatureRows.plan, []

    def plan(self, seed, epoch):
        epochs.append(epoch)
        return real(self, seed, epoch)

    real_gather = FeatureRows.gather

    def gather(self, rows, choice=None):
        x = real_gather(self, rows, choice)
        return np.full_like(x, np.inf) if len(epochs) >= 2 else x  # epoch 2 blows up

    monkeypatch.setattr(FeatureRows, "plan", plan)
    monkeypatch.setattr(FeatureRows, "gather", gather)
    out = tmp_path / "head"
    result = _invoke(["train-head", tiny["cache"], "--out", out, "--epochs", 5, "--batch-size", 8])
    line = _assert_one_line_error(result, 1, "train-head", "at epoch 2", "training loss (loss) is nan")
    assert "epoch 3/5" not in result.output  # stopped at that epoch
    assert not (out / "head.keras").exists() and not (out / "run.json").exists()


def test_finetune_stops_at_the_epoch_whose_loss_is_not_finite(tmp_path):
    """finetune's every fit runs through RunBackup: a non-finite epoch raises before its commit."""
    import json

    import keras

    from headstart.pipeline.errors import NonFiniteLossError
    from headstart.pipeline.training.stage_fit import RunBackup
    from headstart.features.reporter import QUIET

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = RunBackup(tmp_path / "backup", epochs=5, patience=3, monitor="val_loss",
                       stage="finetune", reporter=QUIET)
    backup.set_model(model)
    backup.on_epoch_begin(0)
    backup.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.4})
    backup.on_epoch_begin(1)
    with pytest.raises(NonFiniteLossError, match=r"^finetune: the validation loss \(val_loss\) is "
                                                 r"inf at epoch 2"):
        backup.on_epoch_end(1, {"loss": 0.3, "val_loss": float("inf")})
    state = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert state["epoch"] == 1 and state["best"]["epoch"] == 1  # epoch 2 never committed
