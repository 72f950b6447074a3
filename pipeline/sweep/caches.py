"""The caches a sweep searches on: read once into memory, checked to describe the same images.

Several caches make a backbone shoot-out (one cache per backbone, image size or pooling), which is
only fair when every cache holds the same images in the same splits with the same classes; the
first difference found is named in the refusal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from headstart.pipeline.errors import DataError, OptionError
from headstart.pipeline.training.head_params import SweepCache


def cache_names(paths: Sequence[str]) -> list[str]:
    """Leaderboard names: file stems, or the full path where two stems coincide."""
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else str(p) for stem, p in zip(stems, paths)]


def load_caches(paths: Sequence[str]) -> list[SweepCache]:
    """Opens every cache, checks they match, and reads them into memory.

    Raises:
        OptionError: no cache, or the same file twice. DataError: a cache unfit for a head (no
            train or validation split, fewer than 2 classes) or caches that differ in source, splits,
            images or classes (the message names the first difference).
        headstart.features.errors.StoreError: a missing, foreign or incomplete cache.
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.training.head_data import FeatureRows

    if not paths:
        raise OptionError("give at least one CACHE")
    resolved = [os.path.abspath(p) for p in paths]
    if len(set(resolved)) != len(resolved):
        raise OptionError(f"CACHE {next(p for p in paths if resolved.count(os.path.abspath(p)) > 1)} is given twice")
    loaded, first = [], None
    for path, name in zip(paths, cache_names(paths)):
        with open_cache(path) as cache:
            signature = _signature(cache, path)
            if first is None:
                first = (path, signature)
            else:
                _check_same(first, (path, signature))
            splits = {s: cache.split(s) for s in ("train", "validation", "test") if s in cache.splits}
            rows = {s: FeatureRows(split, in_memory=True) for s, split in splits.items()}
            if cache.views:
                rows["train_views"] = FeatureRows(splits["train"], in_memory=True, with_views=True)
            loaded.append(SweepCache(
                name=name, path=os.path.abspath(path), rows=rows,
                labels={s: np.asarray(split.labels, dtype=np.int64) for s, split in splits.items()},
                class_names=list(cache.class_names), feature_shape=tuple(int(d) for d in cache.feature_shape),
                views=int(cache.views), multi_label=bool(cache.multi_label),
                info={"path": os.path.abspath(path), "fingerprint": cache.fingerprint, "config": cache.config,
                      "provenance": cache.provenance, "splits": {s: len(v) for s, v in splits.items()},
                      "views": int(cache.views), "dtype": cache.dtype}))
    return loaded


def _signature(cache: Any, path: str) -> dict[str, Any]:
    # What must agree between caches, in the order a refusal reports it.
    for needed in ("train", "validation"):
        if needed not in cache.splits or len(cache.split(needed)) == 0:
            raise DataError(f"{path}: a sweep needs a non-empty '{needed}' split (the cache has: "
                            f"{', '.join(cache.splits) or 'none'}); trials are selected on validation")
    if len(cache.class_names) < 2:
        raise DataError(f"{path}: the cache has {len(cache.class_names)} class(es); a classifier needs 2 or more")
    if cache.multi_label and not np.asarray(cache.split("validation").labels).any():
        raise DataError(f"{path}: no validation row holds any label; a multi-label sweep selects on validation mAP")
    config = cache.config
    signature: dict[str, Any] = {
        "task": "multi-label" if cache.multi_label else "single-label",
        "source": config.get("source"),
        "classes": list(cache.class_names),
        "splits": list(cache.splits),
    }
    for name in cache.splits:
        split = cache.split(name)
        signature[f"images of split '{name}'"] = dict(zip(split.keys, split.labels.tolist()))
    return signature


def _check_same(first: tuple[str, dict], other: tuple[str, dict]) -> None:
    (path0, sig0), (path1, sig1) = first, other
    for what, value in sig0.items():
        theirs = sig1.get(what)
        if value == theirs:
            continue
        if isinstance(value, dict) and isinstance(theirs, dict):
            only0 = sorted(set(value) - set(theirs))
            only1 = sorted(set(theirs) - set(value))
            relabelled = sorted(k for k in set(value) & set(theirs) if value[k] != theirs[k])
            detail = (f"{only0[0]} is only in {path0}" if only0 else f"{only1[0]} is only in {path1}" if only1
                      else f"{relabelled[0]} has another label")
        else:
            detail = f"{value!r} in {path0}, {theirs!r} in {path1}"
        raise DataError(f"caches differ in {what}: {detail}; a sweep compares caches of the same images")
    for what in sig1:
        if what not in sig0:
            raise DataError(f"caches differ in splits: {path1} has {what}, {path0} has not")
