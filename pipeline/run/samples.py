"""The test images summary.png shows: evenly spread over the split, the last few of them mistakes.

``SampleImages`` watches the prediction loop (an ``observe`` observer of
``headstart.pipeline.training.predictions.predict_split``) and ``write_samples`` keeps what it saw in
``samples.npz`` (images, labels, predicted classes and their probabilities) for the summary plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from headstart.pipeline.commands.evaluation import WrongImages
    from headstart.pipeline.training.predictions import PredictedBatch

#: Test images kept for summary.png: evenly spread over the split, the last few of them mistakes.
SAMPLE_IMAGES, WRONG_SAMPLES = 12, 4


class SampleImages:
    """Keeps ``SAMPLE_IMAGES`` evenly spread images of a split and the first ``WRONG_SAMPLES`` mistakes.

    Args:
        total: items in the split (good and bad), or None when unknown (then the first ones are kept).
        num_classes: K.
        thresholds: a multi-label model's thresholds (labels are then (C,) multi-hot), else None.
    """

    def __init__(self, total: int | None, num_classes: int, thresholds: np.ndarray | None = None):
        self.total, self.num_classes, self.thresholds = total, num_classes, thresholds
        self.wanted = (set(np.linspace(0, total - 1, min(SAMPLE_IMAGES, total)).round().astype(int).tolist())
                       if total else set())
        self.kept: list[tuple[np.ndarray, Any, np.ndarray]] = []   # (uint8 (S, S, 3), label, logits)
        self.wrong: list[tuple[np.ndarray, Any, np.ndarray]] = []

    def __call__(self, batch: PredictedBatch) -> None:
        from headstart.pipeline.model.head import predict_classes

        predicted = predict_classes(batch.logits, self.num_classes, self.thresholds is not None, self.thresholds)
        for j in range(len(batch.keys)):
            item = (np.clip(batch.images[j], 0, 255).astype(np.uint8), batch.labels[j], batch.logits[j])
            if int(batch.positions[j]) in self.wanted or (not self.total and len(self.kept) < SAMPLE_IMAGES):
                self.kept.append(item)
            elif np.any(predicted[j] != batch.labels[j]) and len(self.wrong) < WRONG_SAMPLES:
                self.wrong.append(item)


def write_samples(path: Path, samples: SampleImages, class_names: Sequence[str], *, size: int, width: int) -> None:
    """``samples.npz`` for summary.png: images, labels, predicted classes and their probabilities."""
    from headstart.pipeline.model.head import logits_to_probabilities, predict_classes
    from headstart.pipeline.store.files import atomic_write

    kept, k, multi = samples.kept, samples.num_classes, samples.thresholds is not None
    if samples.wrong and kept:  # mistakes are worth seeing: they replace some of the evenly spread images
        spread = np.linspace(0, len(kept) - 1, max(1, SAMPLE_IMAGES - len(samples.wrong))).round().astype(int)
        kept = [kept[i] for i in sorted(set(spread.tolist()))] + samples.wrong
    logits = np.stack([o for _, _, o in kept]) if kept else np.zeros((0, width), np.float32)
    probs = logits_to_probabilities(logits, k, multi) if kept else np.zeros((0, k), np.float32)
    empty = (0, k) if multi else (0,)
    # Multi-label: labels and predicted are (N, C) multi-hot, probability (N, C) per class.
    arrays = {"images": np.stack([im for im, _, _ in kept]) if kept else np.zeros((0, size, size, 3), np.uint8),
              "labels": np.array([t for _, t, _ in kept], np.int64).reshape(-1, *empty[1:]),
              "predicted": predict_classes(logits, k, multi, samples.thresholds).astype(np.int64) if kept
              else np.zeros(empty, np.int64),
              "probability": (probs if multi else probs.max(axis=1)) if kept else np.zeros(empty, np.float32),
              "class_names": np.array(class_names, dtype=str)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write, suffix=".npz")


#: report.html: thumbnails kept per off-diagonal confusion cell, their side in pixels, and the most
#: confident mistakes shown at full model size.
CELL_IMAGES, THUMBNAIL, CONFIDENT_MISTAKES = 4, 64, 8


class CellImages:
    """The first ``CELL_IMAGES`` images of every off-diagonal confusion cell (true, predicted) of a
    single-label split, as uint8 (THUMBNAIL, THUMBNAIL, 3) thumbnails with their keys (an ``observe``
    observer of ``predict_split``)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.cells: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = {}

    def __call__(self, batch: PredictedBatch) -> None:
        import tensorflow as tf

        from headstart.pipeline.model.head import predict_classes

        predicted = predict_classes(batch.logits, self.num_classes)
        for j in np.flatnonzero(predicted != batch.labels):
            cell = self.cells.setdefault((int(batch.labels[j]), int(predicted[j])), [])
            if len(cell) < CELL_IMAGES:
                small = tf.image.resize(batch.images[j][None], (THUMBNAIL, THUMBNAIL), antialias=True)[0].numpy()
                cell.append((str(batch.keys[j]), np.clip(small, 0, 255).astype(np.uint8)))


def write_mistakes(path: Path, cells: CellImages, wrong: WrongImages) -> None:
    """``mistakes.npz`` for report.html: the confusion cells' thumbnails and the most confident mistakes.

    Arrays: ``cell_true``, ``cell_predicted``, ``cell_keys`` (M,) and ``cell_images`` (M, 64, 64, 3);
    ``wrong_probability``, ``wrong_true``, ``wrong_predicted``, ``wrong_keys`` (W,) and ``wrong_images``
    (W, S, S, 3) from ``commands.evaluation.WrongImages``, most confident first.
    """
    from headstart.pipeline.store.files import atomic_write

    flat = [(t, p, key, im) for (t, p), items in sorted(cells.cells.items()) for key, im in items]
    worst = wrong.wrong
    arrays = {"cell_true": np.array([f[0] for f in flat], np.int64),
              "cell_predicted": np.array([f[1] for f in flat], np.int64),
              "cell_keys": np.array([f[2] for f in flat], dtype=str),
              "cell_images": (np.stack([f[3] for f in flat]) if flat
                              else np.zeros((0, THUMBNAIL, THUMBNAIL, 3), np.uint8)),
              "wrong_probability": np.array([w[0] for w in worst], np.float64),
              "wrong_keys": np.array([w[1] for w in worst], dtype=str),
              "wrong_true": np.array([w[2] for w in worst], np.int64),
              "wrong_predicted": np.array([w[3] for w in worst], np.int64),
              "wrong_images": np.stack([w[4] for w in worst]) if worst else np.zeros((0, 1, 1, 3), np.uint8)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write, suffix=".npz")
