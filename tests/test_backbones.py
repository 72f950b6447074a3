"""features/backbones.py: registry, sizes, preprocessing numerics, weights, fingerprints, safe-mode reload.

Everything runs with random weights at tiny sizes; the real MobileNetV2 file from ../shared/assets
is used when present. Nothing touches the network: the ImageNet download is made to fail.
"""

from __future__ import annotations

import json
import os
import random
import re
import urllib.error

import h5py
import keras
import numpy as np
import pytest

from headstart.features.registry import BACKBONES, DEFAULT_BACKBONE, check_image_size, get_backbone_spec
from headstart.features.backbones import BackboneInfo, build_base, build_pooling, build_preprocessing, fingerprint_weights
from headstart.features.chain import build_extractor
from headstart.features.errors import FeaturesError, ImageSizeError, UnknownBackboneError, WeightsError

MNV2_035 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
MNV2_050 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"


def perturb(model: keras.Model, seed: int = 0) -> None:
    """Replaces every weight with other numbers of the same shape, in place."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])


def raw_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) float32 in 0–255, like the input path produces."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def small_mnv2():
    """MobileNetV2 alpha 0.35 at 32 px, random weights, average pooling (shared, do not mutate)."""
    return build_extractor("mobilenet_v2", weights="none", image_size=32, alpha=0.35)


# ── registry, sizes, options ─────────────────────────────────────────────────────────────────


def test_registry_holds_the_five_backbones():
    # The registry has grown (tests/test_backbone_families.py covers the rest); the first five stay.
    first = ["xception", "mobilenet", "mobilenet_v2", "resnet50", "efficientnetv2_b0"]
    assert all(name in BACKBONES for name in first)
    assert DEFAULT_BACKBONE == "xception"
    assert {n: s.preprocessing for n, s in BACKBONES.items() if n in first} == {
        "xception": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "resnet50": "caffe",
        "efficientnetv2_b0": "none"}
    assert {n for n, s in BACKBONES.items() if s.takes_alpha} == {"mobilenet", "mobilenet_v2", "mobilenet_v3_small",
                                                                   "mobilenet_v3_large"}
    for spec in BACKBONES.values():
        assert hasattr(keras.applications, spec.application)
    assert get_backbone_spec("xception").min_size == 71


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(UnknownBackboneError) as err:
        get_backbone_spec("vgg99")
    message = str(err.value)
    assert "vgg99" in message and "\n" not in message
    assert all(name in message for name in BACKBONES)
    with pytest.raises(UnknownBackboneError):
        build_extractor("vgg99", weights="none", image_size=64)


@pytest.mark.parametrize("name,too_small", [("xception", 70), ("mobilenet_v2", 31), ("resnet50", 16),
                                            ("efficientnetv2_b0", 31), ("mobilenet", 8)])
def test_too_small_image_size_is_refused(name, too_small):
    spec = get_backbone_spec(name)
    check_image_size(name, spec.min_size)
    with pytest.raises(ImageSizeError, match=rf"image_size={too_small} .*minimum {spec.min_size}"):
        check_image_size(name, too_small)
    with pytest.raises(ImageSizeError):
        build_extractor(name, weights="none", image_size=too_small)


def test_image_size_must_be_an_int():
    with pytest.raises(ImageSizeError):
        check_image_size("mobilenet_v2", 64.0)
    with pytest.raises(ImageSizeError):
        check_image_size("mobilenet_v2", True)


def test_alpha_options_are_checked():
    with pytest.raises(FeaturesError, match="alpha applies only to mobilenet, mobilenet_v2"):
        build_extractor("xception", weights="none", image_size=71, alpha=0.5)
    with pytest.raises(FeaturesError, match="alpha must be"):
        build_extractor("mobilenet_v2", weights="none", image_size=32, alpha=0)
    # No ImageNet file exists for this width: refused before any download is attempted.
    with pytest.raises(WeightsError, match=r"alpha=0\.4 .*0\.35, 0\.5"):
        build_extractor("mobilenet_v2", weights="imagenet", image_size=32, alpha=0.4)


def test_pooling_layers_and_unknown_pooling():
    assert isinstance(build_pooling("avg"), keras.layers.GlobalAveragePooling2D)
    assert isinstance(build_pooling("max"), keras.layers.GlobalMaxPooling2D)
    assert build_pooling("avg").name == "pooling"
    assert build_pooling("none") is None
    with pytest.raises(FeaturesError, match="pooling.*avg, max, none"):
        build_pooling("mean")


# ── extractor shapes ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("name,size,alpha,pooling,shape", [
    pytest.param("xception", 71, None, "avg", (2048,), marks=pytest.mark.slow),
    ("xception", 75, None, "none", (3, 3, 2048)),
    ("mobilenet_v2", 32, 0.35, "max", (1280,)),
    ("mobilenet", 32, 0.25, "none", (1, 1, 256)),
    pytest.param("resnet50", 32, None, "avg", (2048,), marks=pytest.mark.slow),
    pytest.param("efficientnetv2_b0", 32, None, "max", (1280,), marks=pytest.mark.slow),
])
def test_extractor_output_shapes(name, size, alpha, pooling, shape):
    model, info = build_extractor(name, weights="none", image_size=size, alpha=alpha, pooling=pooling)
    assert info.feature_shape == shape
    assert model.output.shape[1:] == shape
    assert np.asarray(model(raw_images(2, size), training=False)).shape == (2, *shape)


@pytest.mark.slow
def test_avg_and_max_pool_the_unpooled_feature_map():
    # "none" is the same init every build (checked by fingerprint): the poolings see one feature map.
    def build(pooling):
        return build_extractor("mobilenet_v2", weights="none", image_size=64, alpha=0.35, pooling=pooling)

    images = raw_images(2, 64)
    grid, info = build("none")
    assert info.feature_shape == (2, 2, 1280)
    maps = np.asarray(grid(images, training=False))
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        model, pooled_info = build(pooling)
        assert pooled_info.weights_fingerprint == info.weights_fingerprint
        np.testing.assert_allclose(np.asarray(model(images, training=False)), reduce(maps, axis=(1, 2)),
                                   rtol=1e-4, atol=1e-5)


def test_extractor_layout_and_info(small_mnv2):
    model, info = small_mnv2
    assert model.input.shape[1:] == (32, 32, 3)
    assert isinstance(model.get_layer("preprocessing"), keras.layers.Rescaling)
    assert isinstance(model.get_layer("backbone"), keras.Model)
    assert isinstance(model.get_layer("pooling"), keras.layers.GlobalAveragePooling2D)
    assert not model.get_layer("backbone").trainable and not model.trainable_weights
    assert info == BackboneInfo(
        backbone="mobilenet_v2", alpha=0.35, weights="none",
        weights_fingerprint=fingerprint_weights(model.get_layer("backbone")),
        image_size=32, pooling="avg", preprocessing="tf", feature_shape=(1280,))
    d = info.to_dict()
    assert d["feature_shape"] == [1280]
    assert json.loads(json.dumps(d)) == d


@pytest.mark.slow
def test_alpha_defaults_to_one_and_pooling_none_keeps_a_pooling_layer():
    model, info = build_extractor("mobilenet", weights="none", image_size=32, pooling="none")
    assert info.alpha == 1.0 and info.feature_shape == (1, 1, 1024)
    assert isinstance(model.get_layer("pooling"), keras.layers.Identity)
    assert build_extractor("resnet50", weights="none", image_size=32)[1].alpha is None


# ── preprocessing numerics ───────────────────────────────────────────────────────────────────


def test_tf_preprocessing_maps_0_255_to_minus_one_one():
    layer = build_preprocessing("xception")
    assert layer.name == "preprocessing"
    x = np.array([0.0, 127.5, 255.0], dtype="float32").reshape(1, 1, 1, 3)
    np.testing.assert_allclose(np.asarray(layer(x)).ravel(), [-1.0, 0.0, 1.0], atol=1e-6)
    images = raw_images(2, 8)
    np.testing.assert_allclose(
        np.asarray(layer(images)),
        keras.applications.xception.preprocess_input(images.copy()), atol=1e-5)


def test_caffe_preprocessing_matches_keras_resnet50():
    layer = build_preprocessing("resnet50")
    assert layer.name == "preprocessing" and not layer.trainable and not layer.trainable_weights
    images = raw_images(3, 16, seed=1)
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(np.asarray(layer(images)), expected, atol=1e-4)


def test_none_preprocessing_is_identity():
    layer = build_preprocessing("efficientnetv2_b0")
    images = raw_images(1, 8)
    np.testing.assert_array_equal(np.asarray(layer(images)), images)


# ── fingerprints and safe-mode reload ────────────────────────────────────────────────────────


@pytest.mark.slow
def test_fingerprint_same_weights_same_digest_different_weights_differ():
    a = build_base("mobilenet_v2", weights="none", image_size=32, alpha=0.35)
    fa = fingerprint_weights(a)
    assert len(fa) == 64 and int(fa, 16) >= 0
    # Another build (other auto-named layers), another input size: same numbers, same digest.
    b = build_base("mobilenet_v2", weights="none", image_size=48, alpha=0.35)
    assert fingerprint_weights(b) == fa
    perturb(b)
    assert fingerprint_weights(b) != fa
    assert fingerprint_weights(build_base("mobilenet_v2", weights="none", image_size=32, alpha=0.5)) != fa


@pytest.mark.slow
def test_none_weights_are_reproducible_and_leave_the_callers_random_state_alone():
    random.seed(7)
    expected = random.random()
    random.seed(7)
    keras.utils.set_random_seed(1)
    first = fingerprint_weights(build_base("mobilenet", weights="none", image_size=32, alpha=0.25))
    keras.utils.set_random_seed(2)
    second = fingerprint_weights(build_base("mobilenet", weights="none", image_size=32, alpha=0.25))
    assert first == second
    random.seed(7)
    build_base("mobilenet", weights="none", image_size=32, alpha=0.25)
    assert random.random() == expected


# One backbone per preprocessing kind: caffe (frozen Conv2D), tf (Rescaling), none (Identity; the
# application's own Rescaling + Normalization).
@pytest.mark.parametrize("name,size,alpha", [("resnet50", 32, None), ("mobilenet_v2", 32, 0.35),
                                             ("efficientnetv2_b0", 32, None)])
@pytest.mark.slow
def test_saved_extractor_reloads_in_safe_mode(tmp_path, name, size, alpha):
    model, _ = build_extractor(name, weights="none", image_size=size, alpha=alpha, pooling="avg")
    path = tmp_path / "extractor.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = raw_images(2, size)
    np.testing.assert_array_equal(np.asarray(loaded(images, training=False)),
                                  np.asarray(model(images, training=False)))
    assert not loaded.get_layer("preprocessing").trainable_weights
    assert not loaded.get_layer("backbone").trainable
    reloaded_fingerprint = fingerprint_weights(loaded.get_layer("backbone"))
    assert reloaded_fingerprint == fingerprint_weights(model.get_layer("backbone"))


# ── weights files ────────────────────────────────────────────────────────────────────────────


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(WeightsError, match=str(missing)):
        build_extractor("mobilenet_v2", weights=str(missing), image_size=32, alpha=0.35)
    with pytest.raises(WeightsError, match="not a file"):
        build_extractor("mobilenet_v2", weights=str(tmp_path), image_size=32, alpha=0.35)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"weights\.npz"):
        build_extractor("mobilenet_v2", weights=str(other), image_size=32, alpha=0.35)


@pytest.mark.parametrize("filename", ["garbage.h5", "garbage.weights.h5", "empty.h5"])
def test_unreadable_weights_file_is_named(tmp_path, filename):
    path = tmp_path / filename
    if filename == "empty.h5":
        h5py.File(path, "w").close()
    else:
        path.write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsError, match=re.escape(filename)) as err:
        build_base("mobilenet_v2", weights=str(path), image_size=32, alpha=0.35)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_weights_file_roundtrip_and_mismatch(tmp_path, monkeypatch):
    source = build_base("mobilenet_v2", weights="none", image_size=32, alpha=0.35)
    none_fingerprint = fingerprint_weights(source)
    perturb(source)
    source.save_weights(tmp_path / "mnv2.weights.h5")
    monkeypatch.chdir(tmp_path)
    # Relative path in, absolute path recorded; the same numbers at another input size.
    model, info = build_extractor("mobilenet_v2", weights="mnv2.weights.h5", image_size=48, alpha=0.35)
    assert info.weights == str(tmp_path / "mnv2.weights.h5")
    assert info.weights_fingerprint == fingerprint_weights(source) != none_fingerprint
    mismatch = r"mnv2\.weights\.h5 does not fit backbone mobilenet_v2 alpha 0\.5: "
    with pytest.raises(WeightsError, match=mismatch):
        build_base("mobilenet_v2", weights="mnv2.weights.h5", image_size=32, alpha=0.5)
    with pytest.raises(WeightsError, match=r"mnv2\.weights\.h5 does not fit backbone mobilenet "):
        build_base("mobilenet", weights="mnv2.weights.h5", image_size=32, alpha=0.25)


@pytest.mark.assets
@pytest.mark.slow
def test_shared_mobilenet_v2_weights_load_at_128(shared_assets, tmp_path):
    path = shared_assets / "weights" / MNV2_035
    model, info = build_extractor("mobilenet_v2", weights=str(path), image_size=128, alpha=0.35)
    assert info.weights == str(path) and info.feature_shape == (1280,)
    random_base = build_base("mobilenet_v2", weights="none", image_size=128, alpha=0.35)
    assert info.weights_fingerprint != fingerprint_weights(random_base)
    # The legacy .h5 fills every layer: reading it again gives the same fingerprint.
    assert build_extractor("mobilenet_v2", weights=str(path), image_size=96, alpha=0.35,
                           pooling="none")[1].weights_fingerprint == info.weights_fingerprint
    features = np.asarray(model(raw_images(2, 128), training=False))
    assert np.isfinite(features).all() and features.std() > 0
    # The alpha 0.5 file is a real, but mismatched, weights file.
    with pytest.raises(WeightsError, match=re.escape(MNV2_050) + r" does not fit .*alpha 0\.35"):
        build_base("mobilenet_v2", weights=str(shared_assets / "weights" / MNV2_050),
                   image_size=32, alpha=0.35)


def test_imagenet_download_failure_is_a_weights_error(tmp_path, monkeypatch):
    import keras.src.backend.config as keras_config
    import keras.src.utils.file_utils as file_utils

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    # An empty cache, so an already-downloaded file cannot hide the failure; then the real
    # get_file path, which wraps URLError into a bare Exception("URL fetch failure …").
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(WeightsError) as err:
        build_extractor("mobilenet_v2", weights="imagenet", image_size=32, alpha=0.35)
    message = str(err.value)
    assert "weights=PATH" in message and "URL fetch failure" in message and "\n" not in message
    assert os.path.join(".keras", "models") in message or "KERAS_HOME" in os.environ
