"""Out-of-fold predicted probabilities from K heads trained with the train-head recipe.

cleanlab needs, for every labelled image, class probabilities from a model that never saw that
image's label. K stratified folds over the rows given: fold j's head trains on the other K - 1
folds (``headstart.pipeline.training.head_fit.fit_head``, the same builder and trainer as
``train-head``) and predicts fold j. Rows held out of every fold (the test split) get the
mean of the K heads' probabilities, which is just as out-of-sample.

The fold heads watch their own training loss for early stopping rather than the held-out fold,
so no held-out label ever influences the head that scores it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import HeadConfig
from headstart.pipeline.errors import DataError


@dataclass
class OutOfFold:
    """Attributes: probs (N, C) out-of-fold; fold (N,) int; extra_probs (M, C) or None; seconds."""

    probs: np.ndarray
    fold: np.ndarray
    extra_probs: np.ndarray | None
    seconds: float


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold of each row: within each class a seeded permutation dealt round-robin.

    Returns:
        int64 (N,) fold indices in [0, folds).
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 13])
    fold = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        # Offsetting each class's deal keeps fold sizes even when classes are small.
        fold[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold


def out_of_fold_probabilities(x: np.ndarray, labels: np.ndarray, num_classes: int, config: HeadConfig, *,
                              folds: int = 5, extra: np.ndarray | None = None,
                              reporter: Reporter = QUIET) -> OutOfFold:
    """Trains ``folds`` heads and returns every row's probabilities from the head that left it out.

    Args:
        x: float32 (N, *feature_shape) features in memory.
        labels: int64 (N,) given labels.
        num_classes: number of classes.
        config: the train-head recipe (epochs, lr, batch size, dropout, patience, seed).
        folds: K, at least 2.
        extra: (M, *feature_shape) rows outside the folds (the test split), or None.
        reporter: one line per fold.

    Returns:
        OutOfFold; ``probs`` rows sum to 1.

    Raises:
        DataError: fewer rows than folds.
    """
    from headstart.pipeline.model.head import logits_to_probabilities
    from headstart.pipeline.training.head_data import FeatureRows
    from headstart.pipeline.training.head_fit import fit_head
    from headstart.pipeline.training.head_build import build_compiled_head

    if len(x) < 2 * folds:
        raise DataError(f"{len(x)} labelled rows are too few for {folds} folds (need {2 * folds} or more)")
    start = time.perf_counter()
    fold = assign_folds(labels, folds, config.seed)
    probs = np.zeros((len(x), num_classes), dtype=np.float64)
    extra_sum = None if extra is None else np.zeros((len(extra), num_classes), dtype=np.float64)
    shape = tuple(x.shape[1:])
    # One model for all folds (tracing its predict step costs more than a fold's training on a
    # small cache): each fold's trainer draws its own initial weights (seed + j) and puts the kept
    # ones into it, so nothing of the previous fold carries over.
    model = build_compiled_head(config, shape, num_classes)
    for j in range(folds):
        held, train = np.flatnonzero(fold == j), np.flatnonzero(fold != j)
        fit = fit_head(model, FeatureRows(_ArraySplit(x[train]), in_memory=True), labels[train], None,
                       config=config, num_classes=num_classes, initial_seed=config.seed + j)
        history, best = fit.history, fit.best_epoch
        probs[held] = logits_to_probabilities(_logits(model, x[held]), num_classes)
        if extra_sum is not None and len(extra):
            extra_sum += logits_to_probabilities(_logits(model, extra), num_classes)
        reporter.line(f"fold {j + 1}/{folds}: {len(train)} rows, {best} epochs, loss {history['loss'][best - 1]:.4f}")
    extra_probs = None if extra_sum is None else extra_sum / folds
    return OutOfFold(probs, fold, extra_probs, time.perf_counter() - start)


class _ArraySplit:
    """The face of a cache split that FeatureRows reads, over an in-memory array (no views)."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        self.views = None

    def __len__(self) -> int:
        return len(self.features)


def _logits(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    chunks = [np.asarray(model.predict_on_batch(x[i:i + batch].astype(np.float32)))
              for i in range(0, len(x), batch)]
    return np.concatenate(chunks) if chunks else np.zeros((0, model.output_shape[-1]), np.float32)
