"""Augmentation judged by training on cached views: the paired statistics, and the flip on generated shapes."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_images import SHIPPED, write_set


def test_the_paired_difference_on_fixed_numbers():
    from headstart.pipeline.recipe.view_trials import NOISE_Z, paired_difference

    # Two seeds, four rows. Differences per seed: (+1, 0, 0, 0)/4 = 0.25 and (+1, +1, 0, -1)/4 = 0.25.
    without = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], float)
    with_ = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], float)
    diff = paired_difference(with_, without)
    assert diff.mean == pytest.approx(0.25) and (diff.seeds, diff.rows) == (2, 4)
    assert diff.se_seeds == 0.0  # both seeds moved the same way
    # Per row, averaged over seeds: (1, 0.5, 0, -0.5); std (ddof 1) = sqrt(0.625 - ...) computed by hand:
    per_row = np.array([1.0, 0.5, 0.0, -0.5])
    assert diff.se_rows == pytest.approx(per_row.std(ddof=1) / 2) == pytest.approx(0.3227486, rel=1e-6)
    assert diff.se == diff.se_rows and not diff.hurts  # +0.25 is within the noise of four rows
    # A clear loss on many rows hurts; the same loss on four rows does not.
    many_without, many_with = np.ones((3, 400)), np.ones((3, 400))
    many_with[:, :60] = 0  # every seed loses the same 60 rows of 400: −0.15
    hurt = paired_difference(many_with, many_without)
    assert hurt.mean == pytest.approx(-0.15) and hurt.hurts
    assert hurt.mean + NOISE_Z * hurt.se < 0
    with pytest.raises(ValueError):
        paired_difference(np.ones((2, 3)), np.ones((3, 2)))


def test_one_seed_has_no_seed_spread_and_a_tie_is_kept():
    from headstart.pipeline.recipe.view_trials import paired_difference

    same = paired_difference(np.ones((1, 10)), np.ones((1, 10)))
    assert same.mean == 0.0 and same.se == 0.0 and not same.hurts  # neutral: kept


def _trials(tmp_path, classes):
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.recipe.view_trials import run_view_trials
    from headstart.pipeline.report.rundir import RunDir
    from headstart.pipeline.stages.extraction import extract_features
    from headstart.pipeline.stages.head_training import train_head

    root = write_set(tmp_path / "images", classes, counts=(("train", 32), ("validation", 24)))
    base = ExtractConfig(source=str(root), out=str(tmp_path / "features.h5"), backbone="mobilenet_v2", alpha=0.35,
                         weights=str(SHIPPED), image_size=96, splits=("train", "validation"))
    extract_features(base, log=lambda *_: None)
    train_head(HeadConfig(features=base.out, out=str(tmp_path / "head"), epochs=40, patience=5, lr=3e-3),
               log=lambda *_: None)
    head = RunDir.open(tmp_path / "head", kind="head", recipe=True)
    progress, saves = {}, []
    result = run_view_trials(head, base, tmp_path / "trials", candidates=("flip",), progress=progress,
                             save=lambda: saves.append(dict(progress["candidates"])), log=lambda *_: None)
    return result, progress, saves


@pytest.mark.slow
def test_the_flip_is_dropped_when_training_with_it_confuses_mirror_image_classes(tmp_path):
    result, progress, saves = _trials(tmp_path, ("left", "right"))
    (flip,) = result.trials
    assert flip.judged_by == "views" and flip.seeds == 3 and result.rows == {"train": 64, "validation": 48}
    assert flip.without_measure >= 0.75  # the arrows are learnable from the cache ...
    assert flip.difference < 0 and flip.difference + 2 * flip.se < 0  # ... and a mirrored left arrow is "right"
    assert not flip.kept and result.augment == "none"
    assert saves and "flip" in progress["candidates"]  # recorded before it returned
    assert not list((tmp_path / "trials").glob("*.h5"))  # the item's cache is gone once recorded


@pytest.mark.slow
def test_the_flip_is_kept_when_the_classes_are_mirror_symmetric(tmp_path):
    result, _, _ = _trials(tmp_path, ("circle", "square"))
    (flip,) = result.trials
    assert flip.without_measure >= 0.9
    assert flip.kept and flip.difference + 2 * flip.se >= 0 and result.augment == "flip"
