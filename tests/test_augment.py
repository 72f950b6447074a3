"""Augmentation specs: parsing without TensorFlow, the layers built, and training-only behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from headstart.pipeline.data.augment import build_augmentation, parse_augment_spec
from headstart.pipeline.errors import OptionError


def test_parse_default_and_every_item():
    assert parse_augment_spec("flip,rotate=0.1") == [("flip", None), ("rotate", "0.1")]
    assert parse_augment_spec(" flip=vertical , zoom=0.2,contrast=0.3, translate=0.1 ") == [
        ("flip", "vertical"), ("zoom", "0.2"), ("contrast", "0.3"), ("translate", "0.1")]
    assert parse_augment_spec("flip=horizontal_and_vertical") == [("flip", "horizontal_and_vertical")]
    assert parse_augment_spec("none") == parse_augment_spec("") == parse_augment_spec("  None ") == []


@pytest.mark.parametrize("spec, fragment", [
    ("flip,blur=2", "unknown item 'blur'"),
    ("flip,,rotate=0.1", "empty item"),
    ("rotate", "'rotate' needs a value"),
    ("rotate=", "'rotate' needs a value"),
    ("zoom=big", "zoom='big' is not a number"),
    ("contrast=1.5", "contrast=1.5 must be in (0, 1]"),
    ("rotate=-0.1", "rotate=-0.1 must be in"),
    ("flip=diagonal", "flip='diagonal' must be one of"),
    ("flip,flip=vertical", "item 'flip' is given twice"),
])
def test_parse_rejects_bad_specs_naming_the_item(spec, fragment):
    with pytest.raises(OptionError) as err:
        parse_augment_spec(spec)
    assert fragment in str(err.value) and str(err.value).startswith("augment")


def test_parsing_does_not_import_tensorflow():
    # The CLI validates --augment before paying for the TensorFlow import.
    code = ("import sys; from headstart.pipeline.data.augment import parse_augment_spec; parse_augment_spec('flip,zoom=0.1'); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")


def test_default_is_the_guides_flip_and_rotation_active_only_in_training():
    import keras

    model = build_augmentation(seed=3)
    assert isinstance(model, keras.Sequential) and model.name == "augmentation"
    assert [type(layer).__name__ for layer in model.layers] == ["RandomFlip", "RandomRotation"]
    assert model.layers[0].mode == "horizontal"
    x = _images()
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), x)
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)  # predict/evaluate pass training=False
    # Keras 3 random layers default to training=True when called directly without the argument.
    assert not np.allclose(np.asarray(model(x)), x)
    out = np.asarray(model(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)


def test_every_item_builds_and_keeps_shapes_and_range():
    model = build_augmentation("flip=vertical,rotate=0.2,zoom=0.2,contrast=0.5,translate=0.1", seed=0)
    assert [type(layer).__name__ for layer in model.layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomTranslation"]
    x = _images()
    out = np.asarray(model(x, training=True))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 255.0  # raw 0–255 stays so
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), x)


def test_none_is_an_identity_model():
    model = build_augmentation("none")
    assert model.name == "augmentation"
    x = _images()
    for training in (True, False):
        np.testing.assert_array_equal(np.asarray(model(x, training=training)), x)


def test_same_seed_draws_the_same_augmentation():
    x = _images()
    first = np.asarray(build_augmentation("flip,rotate=0.3", seed=7)(x, training=True))
    second = np.asarray(build_augmentation("flip,rotate=0.3", seed=7)(x, training=True))
    np.testing.assert_allclose(first, second)


def test_build_rejects_a_bad_spec():
    with pytest.raises(OptionError, match="unknown item 'sharpen'"):
        build_augmentation("sharpen=1")


def test_brightness_item_shifts_within_the_raw_range():
    from headstart.pipeline.data.augment import parse_augment_spec

    assert parse_augment_spec("brightness=0.2") == [("brightness", "0.2")]
    model = build_augmentation("brightness=0.5", seed=0)
    assert [type(layer).__name__ for layer in model.layers] == ["RandomBrightness"]
    x = _images()
    out = np.asarray(model(x, training=True))
    assert out.min() >= 0.0 and out.max() <= 255.0 and not np.allclose(out, x)


@pytest.mark.parametrize("item,value", [("flip", None), ("flip", "vertical"), ("rotate", "0.05"), ("zoom", "0.1"),
                                        ("translate", "0.1"), ("brightness", "0.2"), ("contrast", "0.2")])
def test_a_fixed_transform_is_the_same_for_every_image_and_each_end_differs(item, value):
    from headstart.pipeline.data.augment import build_fixed_transform

    x = np.repeat(_images()[:1], 3, axis=0)  # three copies of one image
    plus = np.asarray(build_fixed_transform(item, value, +1)(x))
    minus = np.asarray(build_fixed_transform(item, value, -1)(x))
    assert plus.shape == x.shape and not np.allclose(plus, x)
    np.testing.assert_allclose(plus[0], plus[2], atol=1e-4)  # pinned, not drawn at random
    np.testing.assert_allclose(np.asarray(build_fixed_transform(item, value, +1)(x)), plus, atol=1e-4)
    if item != "flip":
        assert not np.allclose(plus, minus)


def test_fixed_flips_mirror_exactly():
    from headstart.pipeline.data.augment import build_fixed_transform

    x = _images()
    np.testing.assert_array_equal(np.asarray(build_fixed_transform("flip", None)(x)), x[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(build_fixed_transform("flip", "vertical")(x)), x[:, ::-1])
