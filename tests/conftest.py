"""Shared fixtures: tiny generated images and the optional real assets in ../shared/assets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


def write_image(path: Path, rng: np.random.Generator, *, size=(40, 32), colour=None, fmt=None, mode="RGB"):
    """Writes one small image whose colour marks its class; returns the path.

    Args:
        path: where to write; the suffix picks the format unless ``fmt`` is given.
        rng: source of noise, so images of one class differ.
        size: (width, height) in pixels.
        colour: base RGB colour; random when None.
        fmt: PIL format name, e.g. "JPEG", "PNG", "GIF", "BMP", "WEBP".
        mode: PIL mode to save in ("RGB", "L", "RGBA", "CMYK").
    """
    from PIL import Image

    w, h = size
    base = np.array(colour if colour is not None else rng.integers(0, 256, 3), dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_class_folders(root: Path, *, classes=("cats", "dogs"), per_class=6, seed=0, sizes=None, suffix=".jpg"):
    """Writes ``root/<class>/<class>_<i><suffix>`` images, one distinct colour per class.

    Returns the root. ``sizes`` is a list of (w, h) cycled through, for mixed-size datasets.
    """
    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40), (200, 40, 200)]
    sizes = sizes or [(40, 32), (32, 48), (64, 64)]
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{name}_{i:03d}{suffix}", rng, size=sizes[i % len(sizes)],
                        colour=palette[c % len(palette)])
    return root


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of six small JPEGs of mixed sizes: ``tmp_path/images/{cats,dogs}/``."""
    return make_class_folders(tmp_path / "images")


@pytest.fixture
def shared_assets():
    """The real assets directory; skips the test when ../shared/assets is absent."""
    if not (ASSETS / "cats_vs_dogs_2k").is_dir():
        pytest.skip("../shared/assets is absent")
    return ASSETS


def layout_cats_vs_dogs_2k(assets: Path, dest: Path) -> Path:
    """Lays out cats_vs_dogs_2k as explicit split folders by number per class: 70/10/20.

    Uses symlinks, so nothing is copied. Returns ``dest`` holding ``{train,validation,test}/{cats,dogs}``.
    """
    import re

    for cls in ("cats", "dogs"):
        files = sorted((assets / "cats_vs_dogs_2k" / cls).glob("*.jpg"),
                       key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
        n = len(files)
        cut1, cut2 = int(n * 0.7), int(n * 0.8)
        for split, part in (("train", files[:cut1]), ("validation", files[cut1:cut2]), ("test", files[cut2:])):
            d = dest / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in part:
                (d / f.name).symlink_to(f)
    return dest


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory):
    """scikit-learn's 1,797 real 8×8 digit scans as PNG split folders (read-only; data of another nature)."""
    from headstart.pipeline.data.bundled import write_digits_folders

    return write_digits_folders(tmp_path_factory.mktemp("digits") / "images")


MNV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture(scope="session")
def real_photo_cache(tmp_path_factory):
    """One cache of the 2,000 real photos, extracted once per test session and shared (read-only).

    MobileNetV2 alpha 0.35 with the shared ImageNet weights at 128 px (batch 64, the default), split
    70/10/20 by number per class (``layout_cats_vs_dogs_2k``), by the ``extract-features`` command
    (in-process), so that the tests of that command on real photos need no extraction of their own.
    Returns ``{"cache": Path, "images": Path, "weights": Path}``; skips when ../shared/assets is
    absent. Tests must not write into it: copy it first.
    """
    weights = ASSETS / "weights" / MNV2_035
    if not (ASSETS / "cats_vs_dogs_2k").is_dir() or not weights.is_file():
        pytest.skip("../shared/assets is absent")
    from click.testing import CliRunner

    from headstart.pipeline.cli import main

    root = tmp_path_factory.mktemp("real_photos")
    images = layout_cats_vs_dogs_2k(ASSETS, root / "images")
    cache = root / "features.h5"
    args = ["extract-features", images, "--out", cache, "--backbone", "mobilenet_v2", "--alpha", "0.35",
            "--weights", weights, "--image-size", "128", "--batch-size", "64", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return {"cache": cache, "images": images, "weights": weights}


# --------------------------------------------------------------------------------------------
# Helpers shared by several test modules (imported as ``from conftest import …``).

# Synthetic feature caches (no backbone runs).


def make_cache(path: Path, *, classes: int = 2, shape=(16,), counts=None, views: int = 0,
               dtype: str = "float32", seed: int = 0, flip_validation: float = 0.0,
               spread: float = 1.0, finalize: bool = True) -> Path:
    """Writes a cache of Gaussian blobs, one centre per class, appended in batches of 32.

    Args:
        counts: split → rows; defaults to train 160, validation 48, test 48.
        views: augmented views per training row: the original plus small noise.
        flip_validation: share of validation labels replaced by a wrong class, so validation loss
            rises once the head grows confident.
        spread: noise scale; centres sit 3 apart per axis.
        finalize: False leaves an interrupted ``.partial`` file.
    """
    from headstart.features.store import create_or_resume

    counts = counts or {"train": 160, "validation": 48, "test": 48}
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, size=(classes, shape[-1]))
    writer = create_or_resume(
        str(path), config={"synthetic": True, "seed": seed, "classes": classes},
        provenance={"made_by": "tests/test_train_head.py"},
        class_names=[f"class{i}" for i in range(classes)], splits=list(counts),
        feature_shape=tuple(shape), dtype=dtype, views=views)
    for split, n in counts.items():
        labels = np.arange(n) % classes
        feats = centres[labels].reshape((n,) + (1,) * (len(shape) - 1) + (shape[-1],))
        feats = feats + spread * rng.normal(size=(n, *shape))
        extra = feats[:, None] + 0.3 * rng.normal(size=(n, views, *shape)) if views and split == "train" else None
        if split == "validation" and flip_validation:
            flip = rng.random(n) < flip_validation
            labels = np.where(flip, (labels + 1) % classes, labels)
        for start in range(0, n, 32):
            part = slice(start, start + 32)
            writer.append(split, features=feats[part].astype(dtype), labels=labels[part],
                          keys=[f"{split}/{i}" for i in range(n)][part],
                          views=None if extra is None else extra[part].astype(dtype),
                          consumed=min(start + 32, n))
        writer.finish_split(split)
        if not finalize:
            break
    if finalize:
        writer.finalize()
    else:
        writer.close()
    return path


def make_multilabel_cache(path: Path, *, classes: int = 3, shape=(16,), counts=None, seed: int = 0,
                          spread: float = 0.7, frequency: float = 0.4, dtype: str = "float32") -> Path:
    """Writes a multi-label cache: each row holds each class with probability ``frequency``.

    A row's features are the sum of its classes' centres plus noise (a row without labels is
    noise alone), so a linear head with one sigmoid per class can learn every class. Class names
    are ``shape0``, ``shape1``…; rows are appended in batches of 32.
    """
    from headstart.features.store import create_or_resume

    counts = counts or {"train": 160, "validation": 64, "test": 64}
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, size=(classes, shape[-1]))
    writer = create_or_resume(
        str(path), config={"synthetic": "multi-label", "seed": seed, "classes": classes},
        provenance={"made_by": "tests/conftest.py make_multilabel_cache"},
        class_names=[f"shape{i}" for i in range(classes)], splits=list(counts),
        feature_shape=tuple(shape), dtype=dtype, multi_label=True)
    for split, n in counts.items():
        labels = (rng.random((n, classes)) < frequency).astype(np.int64)
        feats = (labels @ centres).reshape((n,) + (1,) * (len(shape) - 1) + (shape[-1],))
        feats = feats + spread * rng.normal(size=(n, *shape))
        keys = [f"{split}/{i}" for i in range(n)]
        for start in range(0, n, 32):
            part = slice(start, start + 32)
            writer.append(split, features=feats[part].astype(dtype), labels=labels[part],
                          keys=keys[part], consumed=min(start + 32, n))
        writer.finish_split(split)
    writer.finalize()
    return path


def head_weights(run_dir) -> list[np.ndarray]:
    """The weights of a train-head run directory's head.keras."""
    import keras

    return keras.saving.load_model(Path(run_dir) / "head.keras", safe_mode=True, compile=False).get_weights()


# A tiny real backbone and split folders for the fine-tuning tests.

#: The smallest real backbone of the registry: MobileNet (v1) alpha 0.25 at 32 px.
BACKBONE = {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32}


def make_weights_file(path: Path, seed: int = 0) -> Path:
    """Saves MobileNet 0.25 / 32 px weights with BatchNorm statistics calibrated on noise."""
    import keras

    from headstart.features.backbones import build_base

    base = build_base(BACKBONE["backbone"], weights="none", image_size=32, alpha=BACKBONE["alpha"])
    rng = np.random.default_rng(seed)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # one training-mode pass sets moving stats to the batch's
    base(rng.uniform(-1, 1, (32, 32, 32, 3)).astype("float32"), training=True)
    base.save_weights(path)
    return path


def make_splits(root: Path, per_class=(8, 4, 4)) -> Path:
    """``root/{train,validation,test}/<class>/`` of generated JPEGs, per_class images each."""
    for split, n, seed in zip(("train", "validation", "test"), per_class, (0, 1, 2)):
        make_class_folders(root / split, per_class=n, seed=seed)
    return root


# Subprocesses: local tf.distribute workers and other fresh interpreters.


def subprocess_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment of a test subprocess: this checkout on PYTHONPATH, its own TMPDIR, no cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HEADSTART_LOGICAL_CPUS")}
    # TMPDIR per process, so the test can see that non-chief workers leave no scratch directory.
    tmp.mkdir(parents=True, exist_ok=True)
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp), **extra}


def finish_processes(procs: list[subprocess.Popen], timeout: float = 150) -> list[list[dict]]:
    """Waits for every process; returns each one's RESULT records."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            results.append([json.loads(l[len("RESULT "):]) for l in out.splitlines() if l.startswith("RESULT ")])
    finally:
        for proc in procs:  # a worker left waiting for its peer must not outlive the test
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def free_ports(n: int) -> list[int]:
    """n free TCP ports on 127.0.0.1 (for local tf.distribute workers)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# The feature store's own tests (test_store.py, test_store_errors.py).

STORE_CLASSES = ["cat", "dog", "élan"]
STORE_CONFIG = {"backbone": "mobilenet_v2", "image_size": 96,
          "info": {"weights": "imagenet", "alpha": 1.0}}
STORE_FS = (2, 3)


def store_writer(path, *, config=STORE_CONFIG, dtype="float32", views=2, overwrite=False, **kw) -> StoreWriter:
    from headstart.features.store import create_or_resume

    args = dict(config=config, provenance={"tool": "test"}, class_names=STORE_CLASSES,
                splits=["train", "test"], feature_shape=STORE_FS, dtype=dtype, views=views,
                overwrite=overwrite)
    args.update(kw)
    return create_or_resume(path, **args)


def store_rows(split: str, start: int, n: int, views: int = 0) -> dict:
    """Batch of n rows whose values encode (split, row index), so any mix-up shows."""
    base = 1000 if split == "test" else 0
    idx = np.arange(start, start + n) + base
    item = {"features": idx[:, None, None] + np.arange(6).reshape(STORE_FS) / 8,
            "labels": idx % len(STORE_CLASSES), "keys": [f"{split}/img_{i}.jpg" for i in idx]}
    if views:
        item["views"] = item["features"][:, None] + np.arange(1, views + 1)[None, :, None, None]
    return item


def fill_store(w: StoreWriter, split: str, batches: int, *, size=4, start=0, views=0, bad=True) -> None:
    for b in range(start, start + batches):
        item = store_rows(split, b * size, size, views)
        skipped = [(f"{split}/broken_{b}.jpg", f"bad image {b}")] if bad else []
        w.append(split, **item, skipped=skipped, consumed=(b + 1) * (size + len(skipped)))


def complete_store(path, **kw) -> None:
    w = store_writer(path, **kw)
    fill_store(w, "train", 2, views=kw.get("views", 2))
    w.finish_split("train")
    fill_store(w, "test", 1)
    w.finish_split("test")
    w.finalize({"seconds": 1.5})


def one_line(exc_info) -> str:
    """The message of a ``pytest.raises`` result, checked to be one line without a traceback."""
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def assert_same_features(got, want, err_msg: str = "") -> None:
    """Features of the same images from two extractions whose batches differ (another batch size,
    shards): equal up to float32 rounding of the convolutions, not bit for bit.

    oneDNN picks its convolution kernels by batch shape, so the sum order of a feature can change
    with the batch an image came in: measured 3.6e-5 on features up to 6 (TF 2.21, Keras 3.15.1),
    and 1.2e-17 on random-weight features of 1e-11. The tolerance scales with the array's largest
    magnitude, so tiny features are still compared at their own scale.
    """
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (err_msg, got.shape, want.shape)
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * scale, err_msg=err_msg)


def assert_one_line_error(result, code: int, *names: str) -> str:
    """A CliRunner result failed with ``code``: one "Error: …" line naming each of ``names``, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    for name in names:
        assert name in errors[0], result.output
    return errors[0]
