"""``--class-weight none|balanced|FILE``: one weight per class, applied to the training loss.

Each training row's loss is multiplied by its class's weight (a per-sample weight, as Keras's
``class_weight`` turns into), and a batch's loss stays the mean over its rows: Σ w_i · l_i / B.
Validation and test losses are never weighted, so early stopping and reports compare on one scale;
the training accuracy stays unweighted too (it is a compiled metric, not a weighted one).

* ``balanced``: w_c = n / (k · n_c) with n training rows, k classes and n_c rows of class c (the
  inverse class frequency of the training split, scikit-learn's ``class_weight="balanced"``): every
  class then carries the same total weight, and the weights average 1 over the rows. A class with
  no training rows gets weight 0 (it weighs no row).
* FILE: a TOML or JSON table mapping every class name to a positive number, e.g.
  ``cats = 1.0`` / ``dogs = 10.0``. An unknown or missing class, or a weight that is not a positive
  finite number, is a one-line error naming the file (exit 2).

NumPy only, so the option is checked before TensorFlow starts.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from headstart.features.reporter import Reporter
from headstart.pipeline.config import CLASS_WEIGHT_MODES, read_settings_file
from headstart.pipeline.errors import OptionError

OPTION = "--class-weight"


@dataclass(frozen=True)
class ClassWeights:
    """The weights a run trains with.

    Attributes:
        mode: "balanced" or "file".
        weights: float64 (K,), one per class index.
        class_names: name of each class index.
        counts: training rows per class the weights were computed on (balanced) or apply to; None
            when they were not counted (a FILE where counting would cost a pass over the images).
        file: the FILE, for mode "file".
    """

    mode: str
    weights: np.ndarray
    class_names: list[str]
    counts: list[int] | None
    file: str | None = None

    def per_sample(self, labels: np.ndarray) -> np.ndarray:
        """float32 (N,): each row's weight, from its int class index (N,)."""
        return self.weights[np.asarray(labels, dtype=np.int64).reshape(-1)].astype(np.float32)

    def record(self) -> dict[str, Any]:
        """run.json's "class_weight": mode, file, formula, weight and training rows per class."""
        return {"mode": self.mode, "file": self.file,
                "formula": "n / (k * n_c) over the training split" if self.mode == "balanced" else None,
                "weights": {name: float(w) for name, w in zip(self.class_names, self.weights)},
                "train_counts": None if self.counts is None else dict(zip(self.class_names, self.counts))}


def check_class_weight_option(value: str) -> None:
    """Refuses a value that is neither a mode nor an existing file, before any work.

    Raises:
        OptionError: naming the option and the value.
    """
    if value in CLASS_WEIGHT_MODES:
        return
    if not value or not os.path.isfile(value):
        raise OptionError(f"{OPTION} {value}: neither {' nor '.join(CLASS_WEIGHT_MODES)} nor an existing "
                          f"TOML/JSON file of class weights")


def resolve_class_weights(value: str, class_names: Sequence[str], train_labels: np.ndarray | None, *,
                          multi_label: bool = False) -> ClassWeights | None:
    """The weights ``--class-weight VALUE`` asks for on a training split; None for "none".

    Args:
        value: "none", "balanced" or a TOML/JSON file.
        class_names: name of each class index, (K,).
        train_labels: int class indices of the training rows, (N,); None (not counted) only with a FILE.
        multi_label: the task is multi-label, where a row has no one class to weigh it by: refused.

    Raises:
        OptionError: a bad FILE (see the module docstring), naming it.
    """
    check_class_weight_option(value)
    if value == "none":
        return None
    if multi_label:
        raise OptionError(f"{OPTION} {value}: class weights apply to single-label tasks (a multi-label row has "
                          f"no one class to weigh it by); leave it at none")
    counts = None
    if train_labels is not None:
        labels = np.asarray(train_labels, dtype=np.int64).reshape(-1)
        counts = np.bincount(labels, minlength=len(class_names))[:len(class_names)].tolist()
    if value == "balanced":
        return ClassWeights("balanced", balanced_weights(counts), list(class_names), counts)
    return ClassWeights("file", read_class_weight_file(value, class_names), list(class_names), counts,
                        file=os.path.abspath(value))


def balanced_weights(counts: Sequence[int]) -> np.ndarray:
    """n / (k · n_c) per class (0 for a class with no rows).

    Args:
        counts: rows per class, (K,).

    Returns:
        float64 (K,).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n, k = counts.sum(), counts.size
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, n / (k * np.maximum(counts, 1)), 0.0)


def read_class_weight_file(path: str | os.PathLike, class_names: Sequence[str]) -> np.ndarray:
    """Reads a TOML/JSON table of class name → weight into float64 (K,) in class-index order.

    Raises:
        OptionError: unreadable file, bad syntax, an unknown or missing class, a weight that is not a
            positive finite number; the message names the file.
    """
    table = read_settings_file(path, option=OPTION)
    where = f"{OPTION} {path}"
    unknown = sorted(set(table) - set(class_names))
    if unknown:
        raise OptionError(f"{where}: unknown class {unknown[0]!r} (classes: {', '.join(class_names)})")
    missing = [name for name in class_names if name not in table]
    if missing:
        raise OptionError(f"{where}: no weight for class {missing[0]!r} (give every class one)")
    weights = []
    for name in class_names:
        w = table[name]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise OptionError(f"{where}: the weight of class {name!r} must be a positive number, got {w!r}")
        weights.append(float(w))
    return np.asarray(weights, dtype=np.float64)


def training_class_weights(value: str, class_names: Sequence[str], train_labels: np.ndarray | None,
                           reporter: Reporter, *, warn: bool = True, multi_label: bool = False) -> ClassWeights | None:
    """``resolve_class_weights`` for a training stage, with its reported lines: the imbalance warning
    (without class weights, when ``warn``) or the weights in use.

    Args:
        value: ``--class-weight``.
        class_names: (K,). train_labels: int class indices of the training rows, (N,).
        reporter: gets the imbalance warning and the weights line.
        warn: print the imbalance warning (train-head does; finetune leaves it to train-head and inspect).
        multi_label: a multi-label task: no warning, and class weights are refused.
    """
    from headstart.pipeline.report.imbalance import class_counts, imbalance_warning

    if warn and train_labels is not None and not multi_label:
        warning = imbalance_warning(class_counts(train_labels, len(class_names)), class_names, class_weight=value)
        if warning:
            reporter.warning(warning)
    weights = resolve_class_weights(value, class_names, train_labels, multi_label=multi_label)
    if weights is not None:
        reporter.line(f"{OPTION} {value}: " + ", ".join(f"{n} {w:.4g}" for n, w in zip(class_names, weights.weights))
                      + (" (n / (k * n_c) over the training split)" if weights.mode == "balanced" else ""))
    return weights


def class_weight_record(weights: ClassWeights | None) -> dict[str, Any]:
    """run.json's "class_weight" section ({"mode": "none"} without weights)."""
    return weights.record() if weights is not None else {"mode": "none", "weights": None}


def finetune_train_labels(cache_path: str | None, source: Any) -> tuple[np.ndarray, str]:
    """The training labels finetune's ``balanced`` weights count, read the cheap way when it can.

    With a head run whose cache is still there: the cache's training labels (an HDF5 read of a
    few KB), kept for the rows whose keys the source's training split still has (so ``--exclude``
    counts as it trains). Otherwise one pass over the source's training split at 32 px (the images
    are decoded once more; labels of images that fail to decode are not counted, as they are not
    trained on).

    Args:
        cache_path: the head run's cache (``RunDir.cache["path"]``), or None.
        source: the resolved source, ``--exclude`` applied.

    Returns:
        (int64 (N,) labels, where they came from: "cache PATH" or "source").
    """
    path = cache_path
    if path and os.path.isfile(path):
        from headstart.features.cache import open_cache

        with open_cache(path) as cache:
            split = cache.split("train")
            keep = set(source.keys("train"))
            labels = np.asarray(split.labels, dtype=np.int64)
            mask = np.fromiter((k in keep for k in split.keys), dtype=bool, count=len(split.keys))
        return labels[mask], f"cache {path}"
    import tensorflow as tf

    ds = source.dataset("train", 32).filter(lambda e: tf.equal(tf.strings.length(e["error"]), 0))
    labels = [int(v) for v in ds.map(lambda e: e["label"]).as_numpy_iterator()]
    return np.asarray(labels, dtype=np.int64), "source"


def finetune_class_weights(value: str, cache_path: str | None, source: Any, class_names: Sequence[str],
                           reporter: Reporter, *, multi_label: bool = False) -> ClassWeights | None:
    """finetune's ``--class-weight``, for its head stage and its fine-tuning alike.

    ``balanced`` counts the training labels with ``finetune_train_labels`` (the head's cache when
    there is one); a FILE counts them only when that is cheap (from the cache), for run.json.
    """
    if value == "none":
        return None
    if multi_label:
        return resolve_class_weights(value, class_names, None, multi_label=True)  # refused in one line
    labels = None
    if value == "balanced" or (cache_path and os.path.isfile(cache_path)):
        labels, origin = finetune_train_labels(cache_path, source)
        reporter.line(f"{OPTION} {value}: {len(labels)} training labels counted from the {origin}")
    return training_class_weights(value, class_names, labels, reporter, warn=False)
