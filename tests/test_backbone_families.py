"""The keras.applications families in the registry: preprocessing, sizes, alphas, and a build of
each family's smallest member with random weights (nothing is downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from headstart.features.backbones import build_preprocessing
from headstart.features.chain import build_extractor
from headstart.features.errors import ImageSizeError, WeightsError
from headstart.features.registry import BACKBONES, PREPROCESSINGS

FAMILIES = sorted({s.family for s in BACKBONES.values()})
#: The smallest member of each family (fewest parameters): what the build test builds.
SMALLEST = [min((s for s in BACKBONES.values() if s.family == f), key=lambda s: s.params).name for f in FAMILIES]
#: One member per preprocess_input module (vgg16 and vgg19 have one each).
PER_MODULE = sorted({s.module: s.name for s in BACKBONES.values()}.values())


def test_registry_covers_the_families_the_issue_names():
    names = set(BACKBONES)
    assert {f"convnext_{v}" for v in ("tiny", "small", "base", "large", "xlarge")} <= names
    assert {f"efficientnet_b{i}" for i in range(8)} <= names
    assert {f"efficientnetv2_{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l")} <= names
    assert {"resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2"} <= names
    assert {"densenet121", "densenet169", "densenet201", "inception_v3", "inception_resnet_v2",
            "mobilenet_v3_small", "mobilenet_v3_large", "nasnet_mobile", "nasnet_large", "vgg16", "vgg19"} <= names
    for spec in BACKBONES.values():
        assert hasattr(keras.applications, spec.application), spec.name
        assert hasattr(getattr(keras.applications, spec.module), "preprocess_input"), spec.name
        assert spec.preprocessing in PREPROCESSINGS and spec.min_size >= 32 and spec.params > 0


@pytest.mark.parametrize("name", PER_MODULE)
def test_preprocessing_layer_matches_keras_applications_preprocess_input(name):
    spec = BACKBONES[name]
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 9, 7, 3)).astype("float32")
    ours = np.asarray(build_preprocessing(name)(images))
    # The application's own function; "none" families document it as a pass-through.
    reference = np.asarray(getattr(keras.applications, spec.module).preprocess_input(images.copy()))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)
    if spec.preprocessing == "none":
        np.testing.assert_array_equal(ours, images)  # normalising is the application model's job


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALLEST)
def test_smallest_member_of_each_family_builds_and_matches_the_registry(name, tmp_path):
    spec = BACKBONES[name]
    size = max(spec.min_size, 32)
    extractor, info = build_extractor(name, weights="none", image_size=size)
    base = extractor.get_layer("backbone")
    assert info.feature_shape == (spec.features,) and int(base.count_params()) == spec.params
    assert info.preprocessing == spec.preprocessing
    images = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype("float32")
    features = np.asarray(extractor(images, training=False))
    assert features.shape == (2, spec.features) and np.isfinite(features).all()
    # Safe-mode reload for the two new kinds of preprocessing: the frozen affine Conv2D of "torch",
    # and an application normalising its own input ("none" via include_preprocessing); the others'
    # layers are the kinds test_backbones.py already reloads, and writing them costs seconds each.
    if name in ("densenet121", "mobilenet_v3_small"):
        extractor.save(tmp_path / "extractor.keras")
        loaded = keras.saving.load_model(tmp_path / "extractor.keras", safe_mode=True)
        np.testing.assert_allclose(np.asarray(loaded(images, training=False)), features, rtol=1e-5, atol=1e-5)


def test_sizes_and_alphas_are_checked_before_anything_is_built():
    with pytest.raises(ImageSizeError, match="minimum 75"):
        build_extractor("inception_resnet_v2", weights="none", image_size=74)
    with pytest.raises(WeightsError, match=r"available: 0\.75, 1\)"):
        build_extractor("mobilenet_v3_large", weights="imagenet", image_size=32, alpha=0.5)


@pytest.mark.slow
def test_mobilenet_v3_alpha_narrows_the_network():
    wide, _ = build_extractor("mobilenet_v3_small", weights="none", image_size=32)
    narrow, info = build_extractor("mobilenet_v3_small", weights="none", image_size=32, alpha=0.75)
    assert info.alpha == 0.75
    assert narrow.get_layer("backbone").count_params() < wide.get_layer("backbone").count_params()


def test_backbones_command_lists_the_registry_without_tensorflow():
    code = ("import sys, json\nfrom click.testing import CliRunner\nfrom headstart.pipeline.cli import main\n"
            "r = CliRunner().invoke(main, ['backbones', '--json'])\nassert r.exit_code == 0, r.output\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\nprint(r.output)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == list(BACKBONES)
    convnext = next(r for r in rows if r["name"] == "convnext_tiny")
    assert convnext["features"] == 768 and convnext["min_size"] == 32 and convnext["params"] == 27_820_128
    text = subprocess.run([sys.executable, "-m", "headstart.pipeline.cli", "backbones"], capture_output=True,
                          text=True, timeout=60).stdout
    assert all(name in text for name in BACKBONES) and "hub:PRESET" in text
