"""A trial's views cache copies its originals from the head's cache instead of computing them again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recipe_images import SHIPPED, write_set


def _configs(tmp_path, **extra):
    from headstart.pipeline.config import ExtractConfig

    root = write_set(tmp_path / "images", ("a", "b"), counts=(("train", 12), ("validation", 4)))
    base = ExtractConfig(source=str(root), out=str(tmp_path / "base.h5"), backbone="mobilenet_v2", alpha=0.35,
                         weights=str(SHIPPED), image_size=64, splits=("train", "validation"), batch_size=8,
                         tap="top:30", **extra)
    views = dataclasses.replace(base, splits=("train",), augment_views=2, augment="flip")
    return base, views


@pytest.mark.slow
def test_copied_originals_equal_computed_ones_and_the_views_are_the_same(tmp_path):
    from headstart.features.cache import open_cache
    from headstart.pipeline.commands.extraction import extract_features

    base, views = _configs(tmp_path)
    extract_features(base)
    computed = dataclasses.replace(views, out=str(tmp_path / "computed.h5"))
    copied = dataclasses.replace(views, out=str(tmp_path / "copied.h5"))
    extract_features(computed)
    extract_features(copied, originals_from=base.out)
    with open_cache(base.out) as b, open_cache(computed.out) as c, open_cache(copied.out) as k:
        bt, ct, kt = b.split("train"), c.split("train"), k.split("train")
        assert kt.keys == ct.keys == bt.keys
        # the originals are the head cache's rows, bit for bit (and what a second pass computes)
        np.testing.assert_array_equal(kt.features[:], bt.features[:])
        np.testing.assert_array_equal(kt.activations[:], bt.activations[:])
        np.testing.assert_allclose(kt.features[:], ct.features[:], atol=1e-5)
        # the views are drawn and computed exactly as without copying
        np.testing.assert_array_equal(kt.views[:], ct.views[:])
        np.testing.assert_array_equal(kt.view_activations[:], ct.view_activations[:])


@pytest.mark.slow
def test_originals_from_another_image_size_are_refused(tmp_path):
    from headstart.features.errors import StoreError
    from headstart.pipeline.commands.extraction import extract_features

    base, views = _configs(tmp_path)
    extract_features(base)
    other = dataclasses.replace(views, out=str(tmp_path / "other.h5"), image_size=96)
    with pytest.raises(StoreError, match=r"base.h5: its .* is not the views' cache's"):
        extract_features(other, originals_from=base.out)
