"""Reading the HDF5 feature cache: ``open_cache`` (finished files only) and ``summarize_cache``.

The layout is described in docs/architecture.md ("features/store.py"); the writer is
``features/store.py``. Imports h5py and numpy only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from headstart.features._hdf5 import (
    FORMAT_VERSION,
    MULTI_LABEL,
    PARTIAL_SUFFIX,
    canonical_json,
    corruption_error,
    is_checksum_failure,
    open_h5,
    partial_path,
    read_header,
    strings_digest,
)
from headstart.features.errors import Arg, StoreError, StoreInUseError

__all__ = ["FORMAT_VERSION", "FeatureCache", "SplitData", "open_cache", "summarize_cache"]

_INCOMPLETE = ("is incomplete (an interrupted extract-features? run the same command again to "
               "resume)")


class SplitData:
    """One split of a cache: features stay on disk, everything else is in memory.

    Attributes:
        name: split name, e.g. "train".
        features: lazy h5py dataset (N, *feature_shape) in the cache dtype; slice it to read.
        labels: (N,) int64 class indices, or (N, C) int64 multi-hot rows of a multi-label cache.
        multi_label: whether ``labels`` are multi-hot rows (the cache's task is "multi_label").
        keys: N source keys (file paths or TFDS ids), aligned with the rows.
        views: lazy h5py dataset (N, K, *feature_shape) of augmented views, or None.
        activations: lazy h5py dataset (N, *tap_shape) float16, the backbone's activations at the
            cache's tap (the input of its top layers), or None for a cache without a tap.
        view_activations: lazy (N, K, *tap_shape) float16, the views' activations, or None.
        pixel_std: (N,) float32 standard deviation of each decoded image's pixels (0–255 scale,
            measured during extraction), or None for caches written before it was recorded.
        skipped: (key, reason) for every source item that could not be used.
        consumed: source items processed (rows + skipped).
    """

    def __init__(self, name: str, group: h5py.Group, path: str, *, num_classes: int | None = None,
                 multi_label: bool = False) -> None:
        self.multi_label = bool(multi_label)
        try:
            committed = int(group.attrs["committed"])
            skipped_committed = int(group.attrs["skipped_committed"])
            self.consumed = int(group.attrs["consumed"])
            self.features: h5py.Dataset = CheckedDataset(group["features"], path)
            optional = {name: CheckedDataset(group[name], path) if name in group else None
                        for name in ("views", "activations", "view_activations")}
            self.views: h5py.Dataset | None = optional["views"]
            self.activations: h5py.Dataset | None = optional["activations"]
            self.view_activations: h5py.Dataset | None = optional["view_activations"]
            lengths = {"features": len(self.features), "labels": len(group["labels"]),
                       "keys": len(group["keys"])}
            lengths.update({name: len(ds) for name, ds in optional.items() if ds is not None})
            if "pixel_std" in group:
                lengths["pixel_std"] = len(group["pixel_std"])
            bad = {k: n for k, n in lengths.items() if n != committed}
            if bad or len(group["skipped_keys"]) < skipped_committed:
                raise StoreError(f"{path} is damaged: split '{name}' has {committed} committed "
                                 f"rows but dataset lengths {lengths}")
            self.labels: np.ndarray = np.asarray(group["labels"][:], dtype=np.int64)
            _check_label_shape(self.labels, self.multi_label, num_classes, path, name)
            self.keys: list[str] = list(group["keys"].asstr()[:])
            self.pixel_std: np.ndarray | None = (
                np.asarray(group["pixel_std"][:], dtype=np.float32) if "pixel_std" in group
                else None)
            self.skipped: list[tuple[str, str]] = _read_skipped(group, skipped_committed)
            _check_digest(group, "keys", self.keys, path)
            _check_digest(group, "skipped_keys", [k for k, _ in self.skipped], path)
            _check_digest(group, "skipped_reasons", [r for _, r in self.skipped], path)
        except StoreError:
            raise
        except OSError as exc:
            if is_checksum_failure(exc):
                raise corruption_error(path, f"split '{name}'") from exc
            raise StoreError(f"{path} is damaged: cannot read split '{name}' "
                             f"({' '.join(str(exc).split())[:200]})") from exc
        except (KeyError, ValueError, RuntimeError) as exc:
            raise StoreError(f"{path} is damaged: cannot read split '{name}' "
                             f"({' '.join(str(exc).split())[:200]})") from exc
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        views = f", views={self.views.shape[1]}" if self.views is not None else ""
        return f"SplitData({self.name!r}, rows={len(self)}, skipped={len(self.skipped)}{views})"


class CheckedDataset(h5py.Dataset):
    """An h5py dataset whose reads turn a failed chunk checksum into a one-line StoreError.

    h5py checks fletcher32 on every read but raises a bare OSError ("filter returned failure
    during read") that names neither the file nor the rows; every reader of the cache reads rows
    through this class, so each gets the same message.
    """

    def __init__(self, dataset: h5py.Dataset, path: str) -> None:
        super().__init__(dataset.id)
        self._cache_path = path

    def __getitem__(self, args: Any, new_dtype: npt.DTypeLike | None = None) -> np.ndarray:
        try:
            return super().__getitem__(args, new_dtype=new_dtype)
        except OSError as exc:
            raise self._translate(exc) from exc

    def read_direct(self, dest: np.ndarray, source_sel: Any = None, dest_sel: Any = None) -> None:
        try:
            super().read_direct(dest, source_sel, dest_sel)
        except OSError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: OSError) -> StoreError:
        where = self.name.lstrip("/")
        if is_checksum_failure(exc):
            return corruption_error(self._cache_path, where)
        return StoreError(f"{self._cache_path}: cannot read {where} "
                          f"({' '.join(str(exc).split())[:200]})")


class FeatureCache:
    """A finished feature cache opened read-only; use as a context manager or call ``close()``.

    Attributes:
        path: the file.
        config: the content-defining config the cache was written with.
        provenance: versions, timings and other facts that never decide a resume.
        class_names: class index → name.
        splits: split names in the order they were written.
        feature_shape: shape of one row, e.g. (2048,) or (7, 7, 2048).
        dtype: "float16" or "float32".
        views: augmented views per training row (0 when none).
        tap_shape: shape of one row of stored activations (``extract-features --tap``), or None.
        tap: what the tap is (``{"spec": "top:N", "layer": name, "top_layers": N}``), or None.
        fingerprint: sha256 hex of config_json and the per-split row counts; names the cache in
            the reports of heads trained on it.
        multi_label: labels are multi-hot rows (N, C) (task "multi_label"); False for caches
            written before the task was recorded.
        task: "single_label" or "multi_label".
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open_h5(path, "r", damaged_hint="; extract the features again")
        try:
            header = read_header(self._file, path)
            if not header["complete"]:
                raise StoreError(f"{path} {_INCOMPLETE}")
            self.config: dict = header["config"]
            self.provenance: dict = header["provenance"]
            self.class_names: list[str] = header["class_names"]
            self.splits: list[str] = header["splits"]
            self.feature_shape: tuple[int, ...] = header["feature_shape"]
            self.dtype: str = header["dtype"]
            self.views: int = header["views"]
            self.tap_shape: tuple[int, ...] | None = header["tap_shape"]
            self.tap: dict | None = self.config.get("tap")
            self.format_version: int = header["format_version"]
            self.task: str = header["task"]
            self.multi_label: bool = self.task == MULTI_LABEL
            self._split_data: dict[str, SplitData] = {}
            rows = {}
            for name in self.splits:
                if name not in self._file:
                    raise StoreError(f"{path} is damaged: split '{name}' is missing")
                rows[name] = int(self._file[name].attrs["committed"])
            self.fingerprint: str = _fingerprint(header["config_json"], rows)
        except BaseException:
            self._file.close()
            raise

    def split(self, name: str) -> SplitData:
        """The rows of one split.

        Raises:
            StoreError: the cache has no such split (the message lists the ones it has).
        """
        if name not in self.splits:
            raise StoreError(f"{self.path} has no split '{name}'; it has "
                             f"{', '.join(self.splits) or 'none'}")
        if name not in self._split_data:
            self._split_data[name] = SplitData(name, self._file[name], self.path,
                                               num_classes=len(self.class_names),
                                               multi_label=self.multi_label)
        return self._split_data[name]

    def close(self) -> None:
        """Closes the file; lazy datasets of its splits stop working."""
        self._file.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FeatureCache({self.path!r}, splits={self.splits}, "
                f"feature_shape={self.feature_shape}, dtype={self.dtype!r})")


def open_cache(path: str | os.PathLike) -> FeatureCache:
    """Opens a finished feature cache for reading.

    Raises:
        StoreError: the file is missing, not HDF5, truncated, not a headstart cache, of an unknown
            format_version, or incomplete (a ``.partial`` file, or a finished name whose
            ``.partial`` is all there is); StoreInUseError: another process holds it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        if not path.endswith(PARTIAL_SUFFIX) and os.path.exists(partial_path(path)):
            if _locked(partial_path(path)):
                raise StoreInUseError(f"{path} is still being written by another process (to "
                                      f"{partial_path(path)}); wait for it to finish")
            raise StoreError(f"{path} {_INCOMPLETE}")
        # train-head, sweep and diagnose read a cache that only extract-features writes: say so.
        raise StoreError(f"{path}: no such file; write the cache first with "
                         "`headstart extract-features SOURCE ", Arg("out", path), "`")
    return FeatureCache(path)


def summarize_cache(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``headstart inspect`` shows, read-only; works on interrupted ``.partial`` files.

    When ``path`` is missing but ``path.partial`` exists, that is summarized instead. Rows past a
    split's ``committed`` count (left by a killed writer) are ignored. A file that a running writer
    holds is read without locking and marked ``in_use``.

    Returns:
        dict with path, file_size (bytes), format_version, complete, in_use, provenance, config,
        class_names, feature_shape, dtype, views, task, multi_label, fingerprint (None while
        incomplete), progress {"splits_done", "splits_total"}, and splits {name: {rows, consumed,
        done, class_counts {class name: rows carrying it}, skipped [(key, reason)], views,
        feature_shape, dtype}}. In a multi-label cache a row counts once for each of its labels,
        so the class counts may add up to more than the rows.

    Raises:
        StoreError: missing, not HDF5, damaged, not a headstart cache, or unknown format_version.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(partial_path(path)):
        path = partial_path(path)
    header, splits, in_use = _read_summary(path)
    rows = {name: split["rows"] for name, split in splits.items()}
    complete = header["complete"]
    return {
        "path": path,
        "file_size": os.path.getsize(path),
        "format_version": header["format_version"],
        "complete": complete,
        "in_use": in_use,
        "provenance": header["provenance"],
        "config": header["config"],
        "class_names": header["class_names"],
        "feature_shape": list(header["feature_shape"]),
        "dtype": header["dtype"],
        "views": header["views"],
        "tap_shape": list(header["tap_shape"]) if header["tap_shape"] else None,
        "task": header["task"],
        "multi_label": header["task"] == MULTI_LABEL,
        "fingerprint": _fingerprint(header["config_json"], rows) if complete else None,
        "progress": {"splits_done": sum(s["done"] for s in splits.values()),
                     "splits_total": len(header["splits"])},
        "splits": splits,
    }


def _read_summary(path: str) -> tuple[dict, dict[str, Any], bool]:
    """(the header, each split's summary, whether a writer holds the file) of a cache or partial."""
    in_use = False
    try:
        f = open_h5(path, "r")
    except StoreInUseError:
        # A writer holds it: its committed rows are flushed, so a lock-free read shows progress.
        in_use = True
        f = open_h5(path, "r", locking=False)
    try:
        header = read_header(f, path)
        splits: dict[str, Any] = {}
        for name in header["splits"]:
            if name not in f:
                continue  # never written (cannot happen with this writer; be lenient in inspect)
            splits[name] = _summarize_split(f[name], header["class_names"], header["task"] == MULTI_LABEL)
    except StoreError:
        raise
    except (KeyError, OSError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{path} is damaged ({' '.join(str(exc).split())[:200]})") from exc
    finally:
        f.close()
    return header, splits, in_use


def _summarize_split(group: h5py.Group, class_names: list[str],
                     multi_label: bool = False) -> dict[str, Any]:
    committed = int(group.attrs["committed"])
    labels = np.asarray(group["labels"][:committed], dtype=np.int64)
    counts: dict[str, int] = {name: 0 for name in class_names}
    if multi_label:
        if labels.ndim != 2 or labels.shape[1] != len(class_names):
            raise StoreError(f"split '{group.name.lstrip('/')}' has labels of shape "
                             f"{labels.shape}, not (N, {len(class_names)}) multi-hot rows")
        counts = {name: int(n) for name, n in zip(class_names, labels.sum(axis=0))}
        labels = np.zeros(0, np.int64)
    for label, n in zip(*np.unique(labels, return_counts=True)):
        name = class_names[label] if 0 <= label < len(class_names) else f"<label {label}>"
        counts[name] = int(n)
    features = group["features"]
    return {
        "rows": committed,
        "consumed": int(group.attrs["consumed"]),
        "done": bool(group.attrs["done"]),
        "class_counts": counts,
        "skipped": _read_skipped(group, int(group.attrs["skipped_committed"])),
        "views": int(group["views"].shape[1]) if "views" in group else 0,
        "feature_shape": list(features.shape[1:]),
        "dtype": str(features.dtype),
    }


def _check_label_shape(labels: np.ndarray, multi_label: bool, num_classes: int | None, path: str,
                       split: str) -> None:
    """Refuses labels whose shape does not fit the recorded task (a damaged or foreign file)."""
    if multi_label:
        ok = labels.ndim == 2 and (num_classes is None or labels.shape[1] == num_classes)
        want = f"(N, {num_classes}) multi-hot rows"
    else:
        ok, want = labels.ndim == 1, "(N,) class indices"
    if not ok:
        raise StoreError(f"{path} is damaged: split '{split}' has labels of shape {labels.shape}, "
                         f"not {want}")


def _read_skipped(group: h5py.Group, n: int) -> list[tuple[str, str]]:
    keys = group["skipped_keys"].asstr()[:n]
    reasons = group["skipped_reasons"].asstr()[:n]
    return [(str(k), str(r)) for k, r in zip(keys, reasons)]


def _check_digest(group: h5py.Group, name: str, values: list[str], path: str) -> None:
    """Compares strings with the sha256 the writer stored (format 2); format 1 has none."""
    stored = group.attrs.get(f"{name}_sha256")
    if stored is None:
        return
    stored = stored.decode() if isinstance(stored, bytes) else str(stored)
    if stored != strings_digest(values):
        raise corruption_error(path, f"{group.name.lstrip('/')}/{name}")


def _locked(path: str) -> bool:
    """True when a writer holds its flock on ``path`` (see features/store.py)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    finally:
        os.close(fd)  # a flock belongs to this descriptor alone, so closing drops only ours
    return False


def _fingerprint(config_json: str, rows: dict[str, int]) -> str:
    """sha256 hex over the stored config JSON and the per-split row counts."""
    text = config_json + "\n" + canonical_json(rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
