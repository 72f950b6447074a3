"""The invariance audit keeps the augmentations a trained head is invariant to, and drops the rest."""

from __future__ import annotations

import numpy as np
import pytest

from recipe_images import SHIPPED, write_set


def _audit(tmp_path, classes):
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.evidence.audit import audit_head_run
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    root = write_set(tmp_path / "images", classes, counts=(("train", 40), ("validation", 16)))
    cache = tmp_path / "features.h5"
    extract_features(ExtractConfig(source=str(root), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(SHIPPED), image_size=96))
    train_head(HeadConfig(features=str(cache), out=str(tmp_path / "head"), epochs=60, patience=10, lr=3e-3))
    head = RunDir.open(tmp_path / "head", kind="head", recipe=True)
    return audit_head_run(head, open_source(SourceSpec(source=str(root))))


@pytest.mark.slow
def test_the_flip_is_dropped_when_the_classes_are_mirror_images(tmp_path):
    result = _audit(tmp_path, ("left", "right"))
    flip = next(s for s in result.scores if s.item == "flip")
    assert result.reference >= 0.75  # the head learned the arrows ...
    assert flip.measure <= 0.35 and not flip.kept  # ... and a mirrored left arrow reads as right
    assert "flip" not in result.augment.split(",")
    assert result.rows == 32 and [s.item for s in result.scores][0] == "flip"


@pytest.mark.slow
def test_every_candidate_is_kept_when_the_classes_are_symmetric(tmp_path):
    result = _audit(tmp_path, ("circle", "square"))
    assert result.reference == 1.0
    assert {s.item: s.kept for s in result.scores}["flip"]
    assert result.augment.startswith("flip=horizontal_and_vertical,")  # both flips kept → one item


def test_the_rule_is_noise_aware_and_combines_items():
    from headstart.pipeline.evidence.audit import MIN_DROP, audit_invariance, combine_items

    labels = np.arange(200) % 2
    # The model reads the first pixel: the reference is right on every row; "flip" mirrors the image
    # so the last pixel is read instead, which is wrong on 30 rows of 200 (a drop of 0.15).
    images = np.zeros((200, 4, 4, 3), np.float32)
    images[:, 0, 0, 0] = np.where(labels == 1, 1.0, -1.0)
    images[:, 0, -1, 0] = images[:, 0, 0, 0]
    images[:30, 0, -1, 0] *= -1

    def predict(x):
        return np.asarray(x)[:, 0, :1, 0] * 10.0  # one logit: class 1 when positive

    batches = [(images[i:i + 50], labels[i:i + 50]) for i in range(0, 200, 50)]
    result = audit_invariance(predict, batches, num_classes=2,
                              candidates=("flip", "brightness=0.2", "contrast=0.2"))
    flip, brightness, contrast = result.scores
    assert result.reference == 1.0 and result.rows == 200
    assert flip.drop == pytest.approx(0.15) and not flip.kept
    assert flip.tolerance == pytest.approx(max(MIN_DROP, 2 * np.sqrt(30) / 200))
    # ±51 grey levels (clipped to 0–255): even rows (label 0) all read positive, odd rows (label 1) all 0.
    assert brightness.measure == 0.0 and not brightness.kept
    assert contrast.drop == 0.0 and contrast.agreement == 1.0 and contrast.kept
    assert result.augment == "contrast=0.2"
    assert combine_items(["flip", "zoom=0.1", "flip=vertical"]) == "flip=horizontal_and_vertical,zoom=0.1"
    assert combine_items([]) == "none"
