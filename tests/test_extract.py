"""`headstart extract-features` end to end: generated images, bad files, refusals, kill and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_class_folders
from headstart.pipeline.cli import main

# MobileNetV2 at 32 px with random weights: real convolutions and BatchNorm, a fraction of a second.
FAST = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
        "--batch-size", "4"]


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def read_split(path, split):
    with h5py.File(path, "r") as f:
        g = f[split]
        return (g["features"][:], g["labels"][:],
                [k.decode() if isinstance(k, bytes) else k for k in g["keys"][:]])


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def folder(tmp_path):
    return make_class_folders(tmp_path / "images", per_class=10)


@pytest.mark.slow
def test_extracts_every_split_with_provenance(folder, tmp_path):
    out = tmp_path / "f.h5"
    result = run_cli("extract-features", folder, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        config = json.loads(f.attrs["config_json"])
        assert config["backbone"] == "mobilenet_v2" and config["image_size"] == 32
        assert config["class_names"] == ["cats", "dogs"]
        assert len(config["weights_fingerprint"]) == 64
        total = sum(f[s]["features"].shape[0] for s in ("train", "validation", "test") if s in f)
        assert total == 20
        assert f["train"]["features"].shape[1:] == (1280,)
    feats, labels, keys = read_split(out, "train")
    assert len(set(keys)) == len(keys)
    for key, label in zip(keys, labels):
        assert key.startswith(("cats/", "dogs/"))
        assert label == (0 if key.startswith("cats/") else 1)
    assert np.isfinite(feats).all()

    again = run_cli("extract-features", folder, "--out", out, *FAST)
    assert again.exit_code == 0 and "already complete" in again.output

    shown = run_cli("inspect", out)
    assert shown.exit_code == 0, shown.output
    assert "mobilenet_v2" in shown.output and "cats" in shown.output
    as_json = json.loads(run_cli("inspect", out, "--json").output)
    assert sum(s["rows"] for s in as_json["splits"].values()) == 20


@pytest.mark.slow
def test_bad_files_are_skipped_one_at_a_time(folder, tmp_path):
    cats = folder / "cats"
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("this is not an image")
    good = (cats / "cats_000.jpg").read_bytes()
    (cats / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (cats / "scan.tiff").write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "f.h5"
    result = run_cli("extract-features", folder, "--out", out, *FAST, "--validation-fraction", "0",
                     "--test-fraction", "0")
    assert result.exit_code == 0, result.output
    _, _, keys = read_split(out, "train")
    assert len(keys) == 20  # every good image, none lost with its batch
    for name in ("empty.jpg", "notes.jpg", "truncated.jpg", "scan.tiff"):
        assert result.output.count(f"cats/{name}") == 1, result.output
    info = json.loads(run_cli("inspect", out, "--json").output)
    assert len(info["splits"]["train"]["skipped"]) == 4


@pytest.mark.slow
def test_strict_fails_before_writing_and_max_bad_counts(folder, tmp_path):
    (folder / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "f.h5"
    strict = run_cli("extract-features", folder, "--out", out, *FAST, "--strict")
    assert strict.exit_code == 1
    assert "broken.png" in strict.output
    assert not out.exists() and not Path(f"{out}.partial").exists()

    (folder / "dogs" / "broken2.png").write_bytes(b"")
    limited = run_cli("extract-features", folder, "--out", out, *FAST, "--max-bad", "1",
                      "--validation-fraction", "0", "--test-fraction", "0")
    assert limited.exit_code == 1
    assert "--max-bad" in limited.output


@pytest.mark.slow
def test_refusals_are_one_line_and_lose_nothing(folder, tmp_path):
    out = tmp_path / "f.h5"
    assert run_cli("extract-features", folder, "--out", out, *FAST).exit_code == 0
    before = file_digest(out)

    cases = [
        (["extract-features", folder, "--out", out, *FAST[:-2], "--image-size", "48"], "image_size"),
        (["extract-features", folder, "--out", tmp_path / "g.h5", "--backbone", "vgg99"], "xception"),
        (["extract-features", folder, "--out", tmp_path / "g.h5", "--image-size", "40"], "71"),
        (["extract-features", tmp_path / "missing", "--out", tmp_path / "g.h5"], "missing"),
        (["extract-features", folder, "--out", tmp_path / "g.h5", *FAST, "--weights",
          tmp_path / "nope.h5"], "nope.h5"),
        (["inspect", tmp_path / "nothing.h5"], "nothing.h5"),
    ]
    for args, needle in cases:
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        message = result.output.strip().splitlines()
        assert len(message) == 1 and needle in message[0], (args, result.output)
    assert file_digest(out) == before

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    for path in (foreign, tmp_path / "text.h5"):
        if not path.exists():
            path.write_text("hello")
        result = run_cli("inspect", path)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output

    replaced = run_cli("extract-features", folder, "--out", out, *FAST[:-2], "--image-size", "48",
                       "--batch-size", "4", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config_json"])["image_size"] == 48


@pytest.mark.slow
def test_tfds_source_uses_the_guide_splits(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "f.h5"
    with tfds.testing.mock_data(num_examples=20):
        result = run_cli("extract-features", "tfds:cats_vs_dogs", "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        config = json.loads(f.attrs["config_json"])
        assert config["source"]["splits"] == {"train": "train[:40%]", "validation": "train[40%:50%]",
                                             "test": "train[50%:60%]"}
        assert config["class_names"] == ["cat", "dog"]
        assert f["train"]["features"].shape[0] > 0


KILL_SCRIPT = """
import sys
from headstart.pipeline.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path):
    folder = make_class_folders(tmp_path / "images", per_class=24)
    args = ["extract-features", str(folder), "--out", None, "--backbone", "xception", "--weights", "none",
            "--image-size", "71", "--batch-size", "2", "--validation-fraction", "0.2",
            "--test-fraction", "0", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

    def launch(out):
        a = list(args)
        a[3] = str(out)
        return subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *a], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1])

    # Only the killed runs need their own processes; the uninterrupted reference and the final resume
    # run in this one (two TensorFlow starts less).
    def in_process(out):
        a = list(args)
        a[3] = str(out)
        return run_cli(*a)

    reference = tmp_path / "ref.h5"
    done = in_process(reference)
    assert done.exit_code == 0, done.output

    resumed = tmp_path / "resumed.h5"
    partial = Path(f"{resumed}.partial")
    kills = 0
    for delay in (0.0, 0.7, 1.5, 2.5):
        proc = launch(resumed)
        deadline = time.monotonic() + 120
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        assert not resumed.exists() or proc.returncode == 0  # never a half-written final file
    assert kills >= 2
    done = in_process(resumed)
    assert done.exit_code == 0, done.output
    assert not partial.exists()
    for split in ("train", "validation"):
        ref_f, ref_l, ref_k = read_split(reference, split)
        got_f, got_l, got_k = read_split(resumed, split)
        assert got_k == ref_k
        np.testing.assert_array_equal(got_l, ref_l)
        np.testing.assert_array_equal(got_f, ref_f)


@pytest.mark.slow
def test_augmented_views_are_stored_for_train_only(folder, tmp_path):
    out = tmp_path / "f.h5"
    result = run_cli("extract-features", folder, "--out", out, *FAST, "--augment-views", "2")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as f:
        views = f["train"]["views"][:]
        feats = f["train"]["features"][:]
        assert views.shape == (feats.shape[0], 2, feats.shape[1])
        # Random-init features are tiny (~1e-11), so compare relatively.
        assert not np.allclose(views[:, 0], feats, rtol=1e-3, atol=0)  # flips/rotations change them
        for split in ("validation", "test"):
            if split in f:
                assert "views" not in f[split]


@pytest.mark.slow
def test_real_cats_dogs_features_separate_the_classes(real_photo_cache):
    # The session's cache is this command's output: extract-features on the 2,000 photos with the
    # shared MobileNetV2 0.35 weights at 128 px, batch 64 (conftest.real_photo_cache checks its exit code).
    out = real_photo_cache["cache"]
    x_train, y_train, _ = read_split(out, "train")
    x_test, y_test, _ = read_split(out, "test")
    assert len(y_train) == 1400 and len(y_test) == 400
    accuracy = _logistic_regression_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy >= 0.85, accuracy


def _logistic_regression_accuracy(x_train, y_train, x_test, y_test, steps=500, lr=0.5):
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    w, bias = np.zeros(a.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a @ w + bias)))
        grad = p - y_train
        w -= lr * (a.T @ grad / len(a) + 1e-2 * w)
        bias -= lr * grad.mean()
    return float((((b @ w + bias) > 0).astype(int) == y_test).mean())


@pytest.mark.slow
def test_pixel_std_is_measured_per_row_and_flags_blank_images(folder, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 32), (255, 255, 255)).save(folder / "cats" / "blank.jpg")
    Image.new("RGB", (40, 32), (0, 0, 0)).save(folder / "dogs" / "black.png")
    out = tmp_path / "f.h5"
    result = run_cli("extract-features", folder, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    from headstart.features.cache import open_cache

    std = {}
    with open_cache(out) as cache:
        for split in cache.splits:
            rows = cache.split(split)
            std.update(zip(rows.keys, rows.pixel_std))
    assert len(std) == 22
    assert std["cats/blank.jpg"] < 1 and std["dogs/black.png"] < 1
    # The generated images are a colour plus N(0, 20) noise, resized: clearly not flat.
    others = [v for k, v in std.items() if k not in ("cats/blank.jpg", "dogs/black.png")]
    assert min(others) > 5
