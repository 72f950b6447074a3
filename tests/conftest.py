"""Shared fixtures: tiny generated images and the optional real assets in ../shared/assets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


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


MNV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture(scope="session")
def real_photo_cache(tmp_path_factory):
    """One cache of the 2,000 real photos, extracted once per test session and shared (read-only).

    MobileNetV2 alpha 0.35 with the shared ImageNet weights at 128 px, split 70/10/20 by number per
    class (``layout_cats_vs_dogs_2k``). Returns ``{"cache": Path, "images": Path, "weights": Path}``;
    skips when ../shared/assets is absent. Tests must not write into it: copy it first.
    """
    weights = ASSETS / "weights" / MNV2_035
    if not (ASSETS / "cats_vs_dogs_2k").is_dir() or not weights.is_file():
        pytest.skip("../shared/assets is absent")
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.stages.extraction import extract_features

    root = tmp_path_factory.mktemp("real_photos")
    images = layout_cats_vs_dogs_2k(ASSETS, root / "images")
    cache = root / "features.h5"
    extract_features(ExtractConfig(source=str(images), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(weights), image_size=128), log=lambda *_: None)
    return {"cache": cache, "images": images, "weights": weights}
