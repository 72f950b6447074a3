"""The invariance audit: which augmentations keep what the images mean, judged by a trained head.

A transform that preserves labels leaves a good head's validation predictions almost unchanged; one
that changes meaning (a mirrored digit or letter, an arrow turned the other way) does not. Each
candidate augmentation item is applied at the edge of its range (half the images at one end, half
at the other, with the same Keras layers the augmentation trains with), the head scores the
transformed validation images, and the item is kept when the measure drops by no more than a
tolerance. Cost: one forward pass over validation per candidate, plus one for the reference.

What the audit cannot tell apart: a transform that changes meaning, and one the frozen features are
simply not yet invariant to (a digit turned 18° is still that digit, but ImageNet features of an
upscaled 8×8 scan move a lot). It drops both; for a short fine-tune at a low learning rate that is
the safe side, and the choice is recorded with its figures so a user can override it.

The tolerance is noise-aware: a drop counts only when it is at least ``min_drop`` (2 points) and
larger than ``z`` standard errors of a paired difference, estimated from the rows whose
correctness changed (McNemar's view: with b rows turned wrong and c turned right out of n, the
drop (b − c)/n has a standard error of about √(b + c)/n).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: The items auto audits, as ``--augment`` spells them; the kept ones become the augmentation.
AUDIT_CANDIDATES = ("flip", "flip=vertical", "rotate=0.05", "zoom=0.1", "translate=0.1", "brightness=0.2",
                    "contrast=0.2")
#: The smallest drop of the validation measure that removes a candidate.
MIN_DROP = 0.02
#: Standard errors a drop must exceed to remove a candidate.
NOISE_Z = 2.0


@dataclass
class TransformScore:
    """How the head fared on validation images under one candidate item.

    Attributes:
        item: the item as ``--augment`` spells it, e.g. "rotate=0.05".
        measure: the validation measure under the transform (accuracy, or mAP for multi-label).
        agreement: share of rows (row × class for multi-label) predicted as without the transform.
        drop: reference measure minus ``measure``.
        tolerance: the largest drop that keeps the item (see the module docstring).
        kept: whether the item stays in the augmentation.
    """

    item: str
    measure: float
    agreement: float
    drop: float
    tolerance: float
    kept: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class AuditResult:
    """The audit's verdict, as run.json and the decisions table record it.

    Attributes:
        augment: the kept items as one ``--augment`` spec ("none" when none is kept).
        measure_name: "accuracy" or "map".
        reference: the measure on the untransformed images.
        rows: validation images scored.
        scores: one per candidate, in the order audited.
        seconds: wall time of the audit.
    """

    augment: str
    measure_name: str
    reference: float
    rows: int
    scores: list[TransformScore] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"augment": self.augment, "measure": self.measure_name, "reference": self.reference,
                "rows": self.rows, "seconds": self.seconds, "candidates": [s.to_dict() for s in self.scores],
                "rule": f"drop an item when the validation {self.measure_name} falls by more than "
                        f"max({MIN_DROP:g}, {NOISE_Z:g} standard errors)"}


def audit_invariance(predict: Callable[[Any], Any], batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
                     num_classes: int, multi_label: bool = False, thresholds: Sequence[float] | None = None,
                     candidates: Sequence[str] = AUDIT_CANDIDATES) -> AuditResult:
    """Scores a model on validation images under each candidate item; keeps the items it is invariant to.

    Args:
        predict: images (B, S, S, 3) raw 0–255 float32 → logits (B, 1) or (B, K), in inference mode.
        batches: (images (B, S, S, 3) float32, labels (B,) int64 or (B, C) multi-hot) over the
            validation split, bad images already left out.
        num_classes: classes of the head.
        multi_label: sigmoid head; the measure is mAP and agreement counts each row × class.
        thresholds: per-class cuts of a multi-label head (0.5 each when None).
        candidates: items as ``--augment`` spells them, each parsed by ``parse_augment_spec``.

    Returns:
        An AuditResult; ``augment`` joins the kept items.

    Raises:
        headstart.pipeline.errors.OptionError: a candidate that is not a valid item.
        headstart.pipeline.errors.DataError: no validation image to audit on.
    """
    from headstart.pipeline.data.augment import build_fixed_transform, parse_augment_spec
    from headstart.pipeline.errors import DataError

    start = time.perf_counter()
    parsed = [(text, *parse_augment_spec(text)[0]) for text in candidates]
    transforms = [(text, build_fixed_transform(name, value, +1), build_fixed_transform(name, value, -1))
                  for text, name, value in parsed]
    labels, reference, transformed = [], [], {text: [] for text in candidates}
    for images, y in batches:
        images = np.asarray(images, dtype=np.float32)
        labels.append(np.asarray(y))
        reference.append(np.asarray(predict(images)))
        for text, plus, minus in transforms:
            transformed[text].append(np.asarray(predict(_both_ends(images, plus, minus))))
    if not labels:
        raise DataError("the invariance audit needs validation images, and the validation split has none")
    y = np.concatenate(labels)
    judge = _Judge(y, np.concatenate(reference), num_classes, multi_label, thresholds)
    scores = [judge.score(text, np.concatenate(transformed[text])) for text in candidates]
    return AuditResult(augment=combine_items([s.item for s in scores if s.kept]),
                       measure_name="map" if multi_label else "accuracy", reference=judge.reference,
                       rows=len(y), scores=scores, seconds=time.perf_counter() - start)


def combine_items(items: Sequence[str]) -> str:
    """Joins kept items into one ``--augment`` spec; both flips become ``flip=horizontal_and_vertical``."""
    items = list(items)
    if "flip" in items and "flip=vertical" in items:
        items = ["flip=horizontal_and_vertical" if i == "flip" else i for i in items if i != "flip=vertical"]
    return ",".join(items) if items else "none"


def _both_ends(images: np.ndarray, plus: Callable, minus: Callable) -> np.ndarray:
    # Even rows at one end of the range, odd rows at the other: one forward pass per candidate.
    out = np.array(plus(images), dtype=np.float32)
    if len(images) > 1:
        out[1::2] = np.asarray(minus(images[1::2]), dtype=np.float32)
    return out


class _Judge:
    """The reference predictions and the rule that keeps or drops a candidate."""

    def __init__(self, labels: np.ndarray, logits: np.ndarray, num_classes: int, multi_label: bool,
                 thresholds: Sequence[float] | None):
        self.labels, self.num_classes, self.multi_label, self.thresholds = labels, num_classes, multi_label, thresholds
        self.predicted = self._predict(logits)
        self.correct = self._correct(self.predicted)
        self.reference = self._measure(logits, self.predicted)

    def score(self, item: str, logits: np.ndarray) -> TransformScore:
        predicted = self._predict(logits)
        measure = self._measure(logits, predicted)
        correct = self._correct(predicted)
        changed = int(np.sum(correct != self.correct))
        tolerance = max(MIN_DROP, NOISE_Z * np.sqrt(changed) / correct.size)
        drop = self.reference - measure
        return TransformScore(item=item, measure=measure, agreement=float(np.mean(predicted == self.predicted)),
                              drop=float(drop), tolerance=float(tolerance), kept=bool(drop <= tolerance))

    def _predict(self, logits: np.ndarray) -> np.ndarray:
        from headstart.pipeline.model.head import predict_classes

        return predict_classes(logits, self.num_classes, self.multi_label, self.thresholds)

    def _correct(self, predicted: np.ndarray) -> np.ndarray:
        return predicted == self.labels

    def _measure(self, logits: np.ndarray, predicted: np.ndarray) -> float:
        if not self.multi_label:
            return float(np.mean(predicted == self.labels))
        from headstart.pipeline.model.head import logits_to_probabilities
        from headstart.pipeline.report.multilabel_metrics import mean_average_precision

        value = mean_average_precision(self.labels, logits_to_probabilities(logits, self.num_classes, True))
        return float(value) if value is not None else 0.0


def audit_head_run(head: Any, source: Any, *, split: str = "validation", batch_size: int = 32,
                   max_rows: int = 2000, weights: str | None = None,
                   candidates: Sequence[str] = AUDIT_CANDIDATES) -> AuditResult:
    """Runs the audit with a ``train-head`` run's head on one split of a source.

    The model is the head run's chain rebuilt on raw images (``rebuild_head_chain`` from its
    ``ChainConfig``: backbone, weights, image size and pooling, the trained head on top), so the
    images go through the same input path as extraction.

    Args:
        head: a ``headstart.pipeline.store.rundir.RunDir`` of a train-head (or sweep best) run,
            opened with its recipe checked.
        source: a ``headstart.pipeline.data.source.Source`` (the head's cache's source).
        split: the split to audit on.
        batch_size: images per forward pass.
        max_rows: at most this many images, taken evenly over the split's order (a large
            validation split need not be scored whole to see a drop of 2 points).
        weights: backbone weights file to use instead of the recorded path (same fingerprint).
        candidates: the items to audit.

    Returns:
        An AuditResult.
    """
    from headstart.pipeline.model.head_run import rebuild_head_chain

    chain = head.chain if weights is None else head.chain.replace(weights=weights)
    rebuilt = rebuild_head_chain(chain, head.model_path)
    total = source.count(split) or 0
    stride = max(1, -(-total // max_rows)) if total else 1
    # predict_on_batch runs the compiled inference function (training=False): an eager call per batch
    # is several times slower on CPU.
    return audit_invariance(rebuilt.model.predict_on_batch,
                            _image_batches(source, split, chain.image_size, batch_size, stride),
                            num_classes=chain.num_classes, multi_label=chain.multi_label,
                            thresholds=None if chain.thresholds is None else np.array(chain.thresholds),
                            candidates=candidates)


def _image_batches(source: Any, split: str, image_size: int, batch_size: int, stride: int):
    """(images, labels) batches of a split's good images, every ``stride``-th one."""
    images, labels = [], []
    for i, item in enumerate(source.dataset(split, image_size)):
        if i % stride or item["error"].numpy():
            continue
        images.append(item["image"].numpy())
        labels.append(item["label"].numpy())
        if len(images) == batch_size:
            yield np.stack(images), np.stack(labels)
            images, labels = [], []
    if images:
        yield np.stack(images), np.stack(labels)
