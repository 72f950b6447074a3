"""The one prediction loop: a model over one split of a source, logits kept with labels and keys.

``evaluate``, finetune's metrics and stage gate, ``headstart run``'s evaluate stage, ``predict`` on
loose files and the export checks all run ``predict_split``; what each needs beyond the logits
(the most confidently wrong images, sample images for summary.png, the exports' own logits on the
same images, a progress line) it takes from the ``observe`` hook, which sees every batch's good
rows. Images come through ``Source.dataset`` (the one input path) and every forward pass runs in
inference mode, so augmentation layers stay idle. Whole batches go through the model (a bad file
is a zero image whose row is dropped after): every batch has one shape, nothing is traced again,
and the same batches give the same logits to the last bit — which is why ``evaluate`` on a saved
model reproduces the numbers finetune reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class SplitPredictions:
    """Logits of one split, in source order, good images only.

    Attributes:
        logits: float32 (N, 1) or (N, K).
        labels: int64 (N,), or (N, C) multi-hot for a multi-label source.
        keys: N source keys.
        skipped: (key, reason) of every image that could not be decoded.
    """

    logits: np.ndarray
    labels: np.ndarray
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PredictedBatch:
    """One batch's good rows as the loop saw them, for ``observe``'s observers.

    Attributes:
        images: float32 (b, S, S, 3) raw 0–255.
        labels: int64 (b,) or (b, C).
        logits: float32 (b, L).
        keys: b source keys.
        positions: int (b,), each row's place in the split (bad items counted).
        seen: items of the split processed so far, bad ones included.
    """

    images: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    keys: list[str]
    positions: np.ndarray
    seen: int


@dataclass
class KerasLogits:
    """A Keras model (raw images (B, S, S, 3) → logits) in the form the loop takes.

    Any object with ``image_size``, ``width`` and ``logits(images)`` serves the loop the same way
    (``headstart.pipeline.commands.predictor.Predictor`` reads every exported format so).
    """

    model: Any

    @property
    def image_size(self) -> int:
        return int(self.model.input_shape[1])

    @property
    def width(self) -> int:
        return int(self.model.output_shape[-1])

    def logits(self, images: Any) -> np.ndarray:
        """float32 (B, S, S, 3) → float32 (B, width), inference mode, under any tf.distribute strategy."""
        from headstart.pipeline.distribute.loop import predict_logits

        return np.asarray(predict_logits(self.model, images), dtype=np.float32)


def num_classes_of(model: Any) -> int:
    """Classes a single-label logits model separates: one logit means two classes."""
    units = int(model.output_shape[-1])
    return 2 if units == 1 else units


def predict_split(model: Any, source: Any, split: str, *, batch_size: int = 32, multi_label: bool = False,
                  observe: Callable[[PredictedBatch], None] | None = None) -> SplitPredictions:
    """Runs ``model`` (inference mode) over one split of ``source``.

    Args:
        model: a Keras model (raw images (B, S, S, 3) → logits), or anything with ``image_size``,
            ``width`` and ``logits(images)`` (an exported model's ``Predictor``).
        source: a ``headstart.pipeline.data.sources.Source``.
        split: split name.
        batch_size: images per forward pass.
        multi_label: labels are multi-hot (N, C).
        observe: called after every batch with its good rows (``PredictedBatch``): the callers'
            observers and progress line, joined by ``report.progress.observed``.

    Returns:
        SplitPredictions of the good images, in source order.
    """
    import tensorflow as tf

    predictor = model if hasattr(model, "logits") else KerasLogits(model)
    logits, labels, keys, skipped, seen = [], [], [], [], 0
    for batch in source.dataset(split, predictor.image_size).batch(batch_size).prefetch(tf.data.AUTOTUNE):
        errors = [e.decode() for e in batch["error"].numpy()]
        names = [key.decode() for key in batch["key"].numpy()]
        good = np.array([not e for e in errors])
        skipped.extend((n, e) for n, e in zip(names, errors) if e)
        images = batch["image"].numpy()
        out = predictor.logits(images)[good] if good.any() else np.zeros((0, predictor.width), np.float32)
        part = PredictedBatch(images=images[good], labels=batch["label"].numpy()[good].astype(np.int64),
                              logits=out, keys=[n for n, g in zip(names, good) if g],
                              positions=seen + np.flatnonzero(good), seen=seen + len(names))
        seen = part.seen
        logits.append(part.logits)
        labels.append(part.labels)
        keys.extend(part.keys)
        if observe is not None:
            observe(part)
    empty_labels = np.zeros((0, predictor.width) if multi_label else (0,), np.int64)
    return SplitPredictions(logits=np.concatenate(logits) if logits else np.zeros((0, predictor.width), np.float32),
                            labels=np.concatenate(labels) if labels else empty_labels, keys=keys, skipped=skipped)


def split_metrics(predictions: SplitPredictions, class_names: Sequence[str], *, multi_label: bool = False,
                  thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Loss (the training loss, mean over images) and the task's measures
    (``headstart.pipeline.report.split_measures.measure_split``): accuracy, per-class metrics and
    confusion matrix, or for multi-label mAP, F1s and per-class AP at ``thresholds``; plus the
    skipped images."""
    from headstart.pipeline.report.split_measures import measure_split

    metrics = measure_split(predictions.labels, predictions.logits, class_names, multi_label=multi_label,
                            thresholds=thresholds)
    metrics["skipped"] = [list(s) for s in predictions.skipped]
    return metrics
