"""Writer-side building blocks of the feature cache: argument checks, locks, row I/O, skeleton.

Split out of features/store.py (which holds the StoreWriter that uses them) to keep files short.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any, Sequence

import h5py
import numpy as np
import numpy.typing as npt

from headstart.features.registry import DTYPES
from headstart.features._hdf5 import (FORMAT, FORMAT_VERSION, MULTI_LABEL, SINGLE_LABEL,
                                      STR_DTYPE, canonical_json, first_difference, lock_error,
                                      open_h5, read_header)
from headstart.features.errors import (Arg, NonFiniteFeaturesError, Part, StoreConfigMismatch, parts_of,
                                       StoreError, StoreExistsError, StoreInUseError)

#: The hint of a refusal that ``overwrite`` lifts (parts of a message: ``Fault(..., *START_OVER)``).
START_OVER: tuple[Part, ...] = ("; use ", Arg("overwrite"), " to start again")
_CHUNK_BYTES = 1 << 19  # h5py's default chunk cache is 1 MiB per dataset; keep a chunk well under


def expected_header(config: dict, class_names: list[str], splits: list[str],
                    feature_shape: tuple[int, ...], dtype: str, views: int,
                    multi_label: bool = False, tap_shape: tuple[int, ...] | None = None) -> dict:
    """Validates the arguments of create_or_resume; returns them in their stored (JSON) form."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not feature_shape or any(int(d) < 1 for d in feature_shape):
        raise ValueError(f"feature_shape must be non-empty and positive, got {feature_shape}")
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be non-empty and distinct, got {splits}")
    for s in splits:
        if not s or "/" in s or s in (".", ".."):
            raise ValueError(f"split name {s!r} cannot be an HDF5 group name")
    if int(views) < 0:
        raise ValueError(f"views must be >= 0, got {views}")
    if tap_shape is not None and (not tap_shape or any(int(d) < 1 for d in tap_shape)):
        raise ValueError(f"tap_shape must be non-empty and positive, got {tap_shape}")
    if multi_label and not class_names:
        raise ValueError("a multi-label cache needs its class names (one label column each)")
    return {"config": json.loads(canonical_json(config)),
            "class_names": [str(c) for c in class_names],
            "splits": list(splits), "feature_shape": [int(d) for d in feature_shape],
            "dtype": dtype, "views": int(views),
            "task": MULTI_LABEL if multi_label else SINGLE_LABEL,
            "tap_shape": [int(d) for d in tap_shape] if tap_shape else None}


def check_finished(path: str, expected: dict, overwrite: bool) -> dict | None:
    """Looks at an existing PATH; returns per-split (consumed, rows) when it already is this cache.

    Returns None when there is nothing there, or (overwrite) when it will be replaced at finalize.
    """
    if not os.path.exists(path):
        return None
    hint = ("; use ", Arg("overwrite"), " to replace it or choose another output path")
    try:
        with open_h5(path, "r") as f:
            header = read_header(f, path)
            if not header["complete"]:
                raise StoreExistsError(f"{path} exists but is not a complete feature cache")
            diff = header_difference(header, expected)
            progress = {s: (int(f[s].attrs["consumed"]), int(f[s].attrs["committed"]))
                        for s in header["splits"] if s in f}
    except StoreInUseError:
        raise
    except StoreError as exc:
        if overwrite:
            return None  # replaced by os.replace at finalize, not before
        raise StoreExistsError(*parts_of(exc), *hint) from exc
    except (KeyError, OSError, ValueError) as exc:
        if overwrite:
            return None
        raise StoreExistsError(f"{path} exists and is a damaged feature cache", *hint) from exc
    if diff is None:
        return progress
    if overwrite:
        return None
    name, old, new = diff
    raise StoreConfigMismatch(f"{path} was written with {name}={old}; this run has {name}={new}; "
                              "use ", Arg("overwrite"), " to replace it", field=name)


def header_difference(header: dict, expected: dict) -> tuple[str, str, str] | None:
    """First differing field: the config first, then the layout (class names, shape, dtype, …)."""
    diff = first_difference(header["config"], expected["config"])
    if diff:
        return diff
    stored = {k: header[k] for k in ("class_names", "splits", "dtype", "views", "task")}
    stored["feature_shape"] = list(header["feature_shape"])
    stored["tap_shape"] = list(header["tap_shape"]) if header["tap_shape"] else None
    return first_difference(stored, {k: v for k, v in expected.items() if k != "config"})


def flock_exclusive(fd: int, path: str) -> None:
    """Exclusive, non-blocking flock on the partial (why flock: see features/store.py).

    Raises:
        StoreInUseError: another descriptor holds it. StoreError: locking unsupported here, unless
            HDF5_USE_FILE_LOCKING=FALSE says to go on without a lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        busy = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        opted_out = os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in ("FALSE", "0", "NO")
        if not busy and opted_out:
            return  # the user switched locking off (e.g. on a network filesystem without it)
        raise lock_error(path, exc.errno, exc.strerror or str(exc)) from exc


def open_locked(path: str) -> int:
    """Opens (creating if absent) and flocks ``path``; returns the descriptor that holds the lock.

    The lock is only good if ``path`` still names the locked file afterwards: a writer that was
    finishing may have renamed it away between our open and our lock, so that is checked.

    Raises:
        StoreInUseError: another process holds it. StoreError: cannot open or lock it.
    """
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"{path}: cannot open for writing ({exc.strerror})") from exc
        try:
            flock_exclusive(fd, path)
            held, now = os.fstat(fd), os.stat(path)
            if (held.st_ino, held.st_dev) == (now.st_ino, now.st_dev):
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise lock_error(path, errno.EAGAIN, "replaced while locking")


def remove_quietly(path: str) -> None:
    """Deletes ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def as_rows(array: npt.ArrayLike, shape: tuple[int, ...], dtype: str, what: str) -> np.ndarray:
    """``array`` as ``dtype`` after checking it has exactly ``shape``; ValueError otherwise."""
    rows = np.asarray(array)
    if rows.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {rows.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by check_finite
        return rows.astype(dtype, copy=False)


def check_finite(given: npt.ArrayLike, stored: np.ndarray, keys: Sequence[str], what: str) -> None:
    """Refuses rows holding inf or NaN, naming the first image's key; nothing is written.

    Refused rather than stored: a non-finite feature makes every head trained on the cache NaN,
    and float32 instead of float16 changes the cache's dtype, which is the user's choice to make.

    Args:
        given: the rows as the caller passed them (to tell overflow from a non-finite backbone).
        stored: the same rows cast to the cache dtype, (n, ...).
        keys: n keys.
        what: "features" or "augmented views", for the message.

    Raises:
        NonFiniteFeaturesError: naming the key of the first row with a non-finite value.
    """
    if not len(stored):  # a batch of nothing but skipped images
        return
    bad = ~np.isfinite(stored.reshape(len(stored), -1)).all(axis=1)
    if not bad.any():
        return
    row = int(np.argmax(bad))
    key = keys[row]
    if np.isfinite(np.asarray(given)[row]).all():
        raise NonFiniteFeaturesError(
            f"{key}: its {what} overflow {stored.dtype} (largest magnitude "
            f"{float(np.abs(np.asarray(given)[row]).max()):.3g}); use ", Arg("dtype", "float32"), " ",
            Arg("overwrite"), field="dtype", value=str(stored.dtype))
    raise NonFiniteFeaturesError(f"{key}: the backbone's {what} for this image are not finite "
                                 f"(inf or NaN); nothing of its batch was stored")


def put_rows(ds: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Grows ``ds`` to start + len(rows) and writes the rows there."""
    ds.resize(start + len(rows), axis=0)
    ds[start:start + len(rows)] = rows


def truncate_rows(ds: h5py.Dataset, n: int) -> None:
    """Cuts ``ds`` back to ``n`` rows and clears whatever a killed writer left past them.

    A kill while HDF5 flushes can leave chunks on disk that hold rows past the dataset's recorded
    extent (raw chunks are written before the metadata that sizes the dataset). For variable-length
    strings those rows are heap IDs of objects that may not exist, and HDF5 frees the old heap
    object of every element it overwrites — so appending over them later fails ("bad heap index")
    or, worse, frees a live object whose index was reused. Growing the extent over every chunk in
    the index and shrinking it back makes HDF5 drop the chunks past ``n`` and fill the rest of
    the edge chunk with the fill value, without reading the stale IDs as strings.
    """
    end = len(ds)
    if h5py.check_vlen_dtype(ds.dtype) is None and h5py.check_string_dtype(ds.dtype) is None:
        if end > n:  # fixed-size rows past n are overwritten in place later; nothing to free
            ds.resize(n, axis=0)
        return
    chunk = ds.chunks[0]

    def _visit(info) -> None:
        nonlocal end
        end = max(end, int(info.chunk_offset[0]) + chunk)

    ds.id.chunk_iter(_visit)
    if end > n:
        ds.resize(end, axis=0)
        ds.resize(n, axis=0)


def chunk_rows(feature_shape: Sequence[int], dtype: str) -> int:
    """Rows per chunk: about _CHUNK_BYTES, at least 1, at most 1024."""
    row_bytes = int(np.prod(feature_shape)) * np.dtype(dtype).itemsize
    return int(min(1024, max(1, _CHUNK_BYTES // max(row_bytes, 1))))


def with_hint(message: tuple[Part, ...]) -> tuple[Part, ...]:
    """Appends the ``START_OVER`` hint unless the message already names ``overwrite``."""
    return message if Arg("overwrite") in message else (*message, *START_OVER)


def fsync_dir(directory: str) -> None:
    """Makes a rename durable; best effort (some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_rows(group: h5py.Group, name: str, row_shape: Sequence[int], dtype: npt.DTypeLike,
                chunk: int) -> h5py.Dataset:
    """An empty resizable dataset of rows (0, *row_shape), chunked ``chunk`` rows at a time.

    Every fixed-size dataset gets HDF5's fletcher32 filter: a checksum per chunk that HDF5 checks
    on every read, so bit rot surfaces as an error instead of as NaN features. HDF5 refuses filters
    on variable-length strings; those are covered by ``strings_digest`` at finalize instead.
    """
    row_shape = tuple(int(d) for d in row_shape)
    is_string = h5py.check_string_dtype(np.dtype(dtype)) is not None
    return group.create_dataset(name, shape=(0, *row_shape), dtype=dtype,
                                maxshape=(None, *row_shape), chunks=(chunk, *row_shape),
                                fletcher32=not is_string)


def write_skeleton(f: h5py.File, provenance: dict, config_json: str,
                   layout: dict) -> dict[str, dict[str, Any]]:
    """Writes the file attributes and, per split, empty chunked datasets and zeroed counters.

    Args:
        f: a new, empty HDF5 file open for writing.
        provenance: stored as provenance_json, with library versions added under "store".
        config_json: the canonical config JSON (compared on resume).
        layout: class_names, splits, feature_shape, dtype, views, task, tap_shape (see
            ``expected_header``).

    Returns:
        split → {"committed", "skipped_committed", "consumed", "done"}, all zero/False.
    """
    shape, dtype = tuple(layout["feature_shape"]), layout["dtype"]
    provenance = dict(provenance)
    provenance["store"] = {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
                           "numpy": np.__version__, "resumes": 0}
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["complete"] = False
    f.attrs["config_json"] = config_json
    f.attrs["provenance_json"] = canonical_json(provenance)
    f.attrs["feature_shape"] = np.asarray(shape, dtype=np.int64)
    f.attrs["dtype"] = dtype
    f.attrs["views"] = layout["views"]
    f.attrs["class_names_json"] = json.dumps(layout["class_names"], ensure_ascii=False)
    f.attrs["splits_json"] = json.dumps(layout["splits"], ensure_ascii=False)
    f.attrs["task"] = layout["task"]
    if layout.get("tap_shape"):  # only caches with a tap carry it; every other file is unchanged
        f.attrs["tap_shape"] = np.asarray(layout["tap_shape"], dtype=np.int64)
    f.attrs["resumes"] = np.int64(0)
    label_row = label_row_shape(layout["task"], len(layout["class_names"]))
    rows = chunk_rows(shape, dtype)
    state = {}
    for split in layout["splits"]:
        g = f.create_group(split)
        create_rows(g, "features", shape, dtype, rows)
        # Multi-hot rows as uint8: 1/8 of int64, and still under fletcher32 like every fixed row.
        if label_row:
            create_rows(g, "labels", label_row, np.uint8, max(1, 4096 // label_row[0]))
        else:
            create_rows(g, "labels", (), np.int64, 4096)
        for name, chunk in (("keys", 1024), ("skipped_keys", 256), ("skipped_reasons", 256)):
            create_rows(g, name, (), STR_DTYPE, chunk)
        for attr in ("committed", "skipped_committed", "consumed"):
            g.attrs[attr] = np.int64(0)
        g.attrs["done"] = False
        state[split] = {"committed": 0, "skipped_committed": 0, "consumed": 0, "done": False}
    return state


def label_row_shape(task: str, num_classes: int) -> tuple[int, ...]:
    """Shape of one stored label: () for a class index, (C,) for a multi-hot row."""
    return (int(num_classes),) if task == MULTI_LABEL else ()


def as_labels(labels: npt.ArrayLike, n: int, num_classes: int, multi_label: bool) -> np.ndarray:
    """Checks one batch of labels; returns them as stored (int64 (n,) or uint8 (n, C)).

    Raises:
        ValueError: a shape, dtype or value that does not fit; for multi-hot rows a width that is
            not the number of class names, or an entry other than 0 and 1.
    """
    labs = np.asarray(labels)
    if not multi_label:
        if labs.shape != (n,) or (n and not np.issubdtype(labs.dtype, np.integer)):
            raise ValueError(f"labels must be ({n},) integers, got {labs.shape} {labs.dtype}")
        labs = labs.astype(np.int64)
        if n and (labs.min() < 0 or labs.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got "
                             f"[{labs.min()}, {labs.max()}]")
        return labs
    if labs.ndim != 2 or labs.shape[0] != n:
        raise ValueError(f"multi-label labels must be ({n}, {num_classes}) multi-hot rows, got "
                         f"{labs.shape}")
    if labs.shape[1] != num_classes:
        raise ValueError(f"multi-label labels have {labs.shape[1]} columns but the cache has "
                         f"{num_classes} class names")
    if n and not (np.issubdtype(labs.dtype, np.integer) or labs.dtype == np.bool_):
        raise ValueError(f"multi-label labels must be 0/1 integers, got {labs.dtype}")
    if n and not np.isin(labs, (0, 1)).all():
        raise ValueError("multi-label labels must hold only 0 and 1")
    return labs.astype(np.uint8)
