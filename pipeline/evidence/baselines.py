"""Baselines on the cached features: a k-NN and an L2-regularised logistic probe.

They show what each stage bought: a trained head that does no better than a logistic regression on
the same features, or a fine-tune that does no better than either, is worth knowing about. Both
are scikit-learn's own (``KNeighborsClassifier`` on cosine distance, ``LogisticRegression`` on
standardised features), their one hyper-parameter (k, C) chosen on the validation split, and both
read the cache once into memory. Multi-label caches get the same two as one-vs-rest classifiers,
judged by mAP.

A spatial cache (``--pooling none``) is averaged over its spatial axes first, as the head's own
global pooling would. Large caches are subsampled (stratified by a seeded permutation) to
``max_train_rows`` training rows so the baselines stay a matter of seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

#: k of the nearest-neighbour baseline, chosen on validation.
KNN_KS = (1, 3, 5, 7, 9, 15, 25)
#: Inverse regularisation strengths of the logistic probe, chosen on validation.
LOGISTIC_CS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class BaselineScore:
    """One baseline's result.

    Attributes:
        name: "knn" or "logistic".
        label: how the tables print it, e.g. "k-NN (cosine, k=7)".
        params: the chosen hyper-parameter, e.g. ``{"k": 7}``.
        measure_name: what chose it: "accuracy" (single-label) or "map".
        validation: the headline measures on validation (``classification_metrics`` keys, or mAP).
        test: the same on test, or None without a test split.
        seconds: fitting and scoring, every candidate included.
    """

    name: str
    label: str
    params: dict
    measure_name: str
    validation: dict
    test: dict | None
    seconds: float = 0.0
    tried: dict = field(default_factory=dict)

    @property
    def validation_measure(self) -> float:
        return float(self.validation[self.measure_name])

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "params": self.params, "measure": self.measure_name,
                "validation": self.validation, "test": self.test, "seconds": self.seconds,
                "tried": self.tried}


@dataclass
class _Rows:
    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    class_names: list[str]
    multi_label: bool


def feature_baselines(cache_path: str, *, seed: int = 0, max_train_rows: int = 20000) -> list[BaselineScore]:
    """Fits the k-NN and logistic baselines on a cache's train split, chosen on validation, scored on test.

    Args:
        cache_path: a finished feature cache with train and validation splits.
        seed: seed of the subsample of a large train split (and of the solvers).
        max_train_rows: train rows used at most.

    Returns:
        [k-NN, logistic] as BaselineScore.

    Raises:
        headstart.pipeline.errors.DataError: no train or validation split.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    rows = _read_rows(cache_path, seed=seed, max_train_rows=max_train_rows)
    # One BLAS thread: these problems are small, and OpenBLAS threads that spin-wait for a core
    # another process holds made one logistic fit 17x slower here (10.2 s against 0.6 s).
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return [_fit_knn(rows), _fit_logistic(rows, seed)]


def _read_rows(cache_path: str, *, seed: int, max_train_rows: int) -> _Rows:
    from headstart.features.cache import open_cache
    from headstart.pipeline.errors import DataError

    features, labels = {}, {}
    with open_cache(cache_path) as cache:
        missing = [s for s in ("train", "validation") if s not in cache.splits]
        if missing:
            raise DataError(f"{cache_path}: the baselines need a {missing[0]} split")
        for split in ("train", "validation", "test"):
            if split not in cache.splits:
                continue
            data = cache.split(split)
            x = np.asarray(data.features[:], dtype=np.float32)
            features[split] = x.reshape(len(x), -1, x.shape[-1]).mean(axis=1) if x.ndim > 2 else x
            labels[split] = np.asarray(data.labels)
        class_names, multi_label = list(cache.class_names), cache.split("train").multi_label
    if len(features["train"]) > max_train_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(len(features["train"]))[:max_train_rows])
        features["train"], labels["train"] = features["train"][keep], labels["train"][keep]
    return _Rows(features, labels, class_names, multi_label)


def _fit_knn(rows: _Rows) -> BaselineScore:
    from sklearn.neighbors import KNeighborsClassifier

    start = time.perf_counter()
    # Centred, unit-length features: cosine distance on what the features share least.
    centre = rows.features["train"].mean(axis=0)
    unit = {s: _unit(x - centre) for s, x in rows.features.items()}
    ks = [k for k in KNN_KS if k <= len(unit["train"])]
    fitted = {k: KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
              .fit(unit["train"], rows.labels["train"]) for k in ks}
    return _choose("knn", lambda k: f"k-NN (cosine, k={k})", "k", fitted, unit, rows, start)


def _fit_logistic(rows: _Rows, seed: int) -> BaselineScore:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    start = time.perf_counter()
    mean, std = rows.features["train"].mean(axis=0), rows.features["train"].std(axis=0) + 1e-6
    scaled = {s: (x - mean) / std for s, x in rows.features.items()}
    fitted = {}
    for c in LOGISTIC_CS:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        fitted[c] = (OneVsRestClassifier(model) if rows.multi_label else model).fit(scaled["train"],
                                                                                    rows.labels["train"])
    return _choose("logistic", lambda c: f"logistic probe (L2, C={c:g})", "C", fitted, scaled, rows, start)


def logistic_head_weights(cache_path: str, c: float, *, seed: int = 0,
                          max_train_rows: int = 20000) -> list[np.ndarray]:
    """The logistic probe at ``c``, refitted as ``_fit_logistic`` fits it, as a linear head's Dense weights.

    The probe standardises the (spatially averaged) features; the standardisation folds into the
    weights, so the head takes the cache's features as they are: z = ((x - m) / s) W + b =
    x (W / s) + (b - (m / s) W). A two-class probe's one logit is the head's one logit.

    Args:
        cache_path: the cache the baselines ran on (single-label).
        c: the chosen inverse regularisation strength (``BaselineScore.params["C"]``).

    Returns:
        [kernel (D, logits) float32, bias (logits,) float32].
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rows = _read_rows(cache_path, seed=seed, max_train_rows=max_train_rows)
    x, y = rows.features["train"], rows.labels["train"]
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mean) / std, y)
    coef = model.coef_.T / std[:, None]  # (D, 1) for two classes, else (D, C)
    bias = model.intercept_ - (mean / std) @ model.coef_.T
    return [coef.astype(np.float32), np.asarray(bias, dtype=np.float32).reshape(-1)]


def _choose(name: str, label: Any, param: str, fitted: dict, features: dict, rows: _Rows, start: float) -> BaselineScore:
    """Scores every fitted candidate on validation, keeps the best (the smallest value on ties)."""
    measure_name = "map" if rows.multi_label else "accuracy"
    scored = {value: _measures(model, features["validation"], rows.labels["validation"], rows)
              for value, model in fitted.items()}
    best = max(scored, key=lambda v: (scored[v][measure_name] if scored[v][measure_name] is not None else -1.0))
    test = _measures(fitted[best], features["test"], rows.labels["test"], rows) if "test" in features else None
    return BaselineScore(name=name, label=label(best), params={param: best}, measure_name=measure_name,
                         validation=scored[best], test=test, seconds=time.perf_counter() - start,
                         tried={str(v): s[measure_name] for v, s in scored.items()})


def _measures(model: Any, x: np.ndarray, y: np.ndarray, rows: _Rows) -> dict:
    from headstart.pipeline.report.metrics import HEADLINE, classification_metrics

    if rows.multi_label:
        from headstart.pipeline.report.multilabel_metrics import mean_average_precision

        probabilities = _positive_probabilities(model.predict_proba(x))
        return {"rows": int(len(y)), "map": mean_average_precision(y, probabilities)}
    metrics = classification_metrics(y, model.predict(x), rows.class_names)
    return {"rows": metrics["rows"], **{k: metrics[k] for k in HEADLINE}}


def _positive_probabilities(probabilities: Any) -> np.ndarray:
    # One-vs-rest gives (N, C) already; a multi-output k-NN gives one (N, 2) array per class.
    if isinstance(probabilities, list):
        return np.stack([p[:, -1] if p.shape[1] > 1 else np.zeros(len(p)) for p in probabilities], axis=1)
    return np.asarray(probabilities)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def best_baseline(scores: Sequence[BaselineScore]) -> BaselineScore | None:
    """The baseline with the highest validation measure, or None when there is none."""
    return max(scores, key=lambda s: s.validation_measure, default=None)
