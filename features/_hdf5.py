"""Helpers shared by the feature-cache writer (store.py) and reader (cache.py).

Everything that turns h5py/HDF5 failures into one-line ``StoreError`` messages lives here, so the
writer and the reader word the same failure the same way. Imports h5py and numpy only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from typing import Any

import h5py
import numpy as np

from headstart.features.errors import Part, StoreError, StoreInUseError
from headstart.features.bounded_parse import loads_json
from headstart.features.regular_file import not_regular_reason

FORMAT = "headstart-features"
# Version 2 adds per-chunk fletcher32 checksums to every fixed-size dataset (HDF5 refuses filters
# on variable-length strings, so each split's keys carry a sha256 attribute instead). Version 1
# files, written before, still read: they simply have nothing to check.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PARTIAL_SUFFIX = ".partial"
# v108 as the lowest format lets attributes exceed 64 KiB (dense attribute storage), which a
# class_names_json of a few thousand classes needs, while chunked datasets keep the v1 B-tree
# index that the crash tests in DESIGN.md measured.
LIBVER = ("v108", "latest")
STR_DTYPE = h5py.string_dtype("utf-8")
#: The two tasks a cache can hold, recorded in the file attribute ``task``. A single-label cache
#: stores ``labels`` (N,) int64 class indices; a multi-label one (N, C) uint8 multi-hot rows, C the
#: number of class names. Caches written before the attribute existed are single-label.
SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
TASKS = (SINGLE_LABEL, MULTI_LABEL)

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_LOCK_ERRNOS_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}
_LOCKING_HINT = ("file locking may be unsupported on this filesystem (e.g. a network filesystem); "
                 "set HDF5_USE_FILE_LOCKING=FALSE if no other process uses the file")


def partial_path(path: str) -> str:
    """The working name a run writes to before it is complete: ``f"{path}.partial"``."""
    return f"{path}{PARTIAL_SUFFIX}"


def has_hdf5_signature(path: str) -> bool:
    """True when the HDF5 signature sits at offset 0, 512, 1024, 2048, … of the file.

    Pure Python on purpose: ``h5py.is_hdf5`` opens the file through HDF5, which takes (and on close
    drops) locks, and says True for truncated files anyway.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            offset = 0
            while offset + len(_SIGNATURE) <= size:
                fh.seek(offset)
                if fh.read(len(_SIGNATURE)) == _SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


def hdf5_end(fd: int) -> int | None:
    """Where HDF5's data ends (the superblock's end-of-file address), or None if unknown.

    The writer reserves disk space past the end before each commit (see
    ``_store_io.reserve_space``); the finished file is cut back to this. Reads superblock
    version 2/3 (what ``LIBVER`` writes): signature, version, sizes, flags, then base address,
    extension address and end-of-file address, 8 bytes each.
    """
    head = os.pread(fd, 44, 0)
    if len(head) < 44 or head[:8] != _SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    base, _, end, _ = struct.unpack("<QQQQ", head[12:44])
    return base + end


def lock_error(path: str, err_no: int | None, detail: str) -> StoreError:
    """The StoreError for a failed lock: in use (EAGAIN) or locking unsupported (anything else)."""
    if err_no in _LOCK_ERRNOS_BUSY or err_no is None:
        return StoreInUseError(f"{path} is in use by another process (another extract-features "
                               f"writing it?); wait for it to finish or stop it")
    return StoreError(f"{path} cannot be locked ({detail}); {_LOCKING_HINT}")


def translate_open_error(path: str, exc: BaseException, *, damaged_hint: str | tuple[Part, ...] = "") -> StoreError:
    """Turns an exception from ``h5py.File(path, …)`` into a one-line StoreError naming the file.

    Args:
        path: the file that was being opened.
        exc: what h5py raised.
        damaged_hint: appended to the message for truncated/damaged files, e.g. how to recover (words,
            or parts naming a setting: ``_store_io.START_OVER``).
    """
    hint = (damaged_hint,) if isinstance(damaged_hint, str) else damaged_hint
    msg = " ".join(str(exc).split())
    if "unable to lock file" in msg or "file locking flag values don't match" in msg:
        err_no = getattr(exc, "errno", None)
        if "errno = " in msg:
            try:
                err_no = int(msg.split("errno = ")[1].split(",")[0])
            except ValueError:
                pass
        if "flag values don't match" in msg:
            err_no = errno.EAGAIN  # already open in this process with other locking flags
        return lock_error(path, err_no, msg)
    if isinstance(exc, PermissionError) or "Permission denied" in msg:
        return StoreError(f"{path}: permission denied")
    if not has_hdf5_signature(path):
        return StoreError(f"{path} is not an HDF5 file")
    if "truncated file" in msg:
        return StoreError(f"{path} is truncated ({_paren(msg)})", *hint)
    return StoreError(f"{path} is damaged and cannot be read as HDF5 ({_paren(msg)})", *hint)


def open_h5(path: str, mode: str = "r", *, locking: bool | None = None,
            damaged_hint: str | tuple[Part, ...] = "") -> h5py.File:
    """``h5py.File`` with every failure turned into a StoreError (see ``translate_open_error``).

    Args:
        path: file to open.
        mode: h5py mode ("r", "r+", "w").
        locking: HDF5 file locking; None leaves h5py's default (which honours
            HDF5_USE_FILE_LOCKING).
        damaged_hint: appended to messages about truncated/damaged files.
    """
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory, not a feature cache file")
    if mode == "r" and not os.path.exists(path):
        raise StoreError(f"{path}: no such file")
    reason = not_regular_reason(path)  # reading a named pipe's signature would wait for ever
    if reason:
        raise StoreError(f"{path}: {reason}; give a feature cache file")
    if mode == "r" and not has_hdf5_signature(path):
        raise StoreError(f"{path} is not an HDF5 file")
    kwargs: dict[str, Any] = {}
    if locking is not None:
        kwargs["locking"] = locking
    if mode != "r":
        kwargs["libver"] = LIBVER
    try:
        return h5py.File(path, mode, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise translate_open_error(path, exc, damaged_hint=damaged_hint) from exc


def read_header(f: h5py.File, path: str) -> dict:
    """Validates and decodes the file attributes of a headstart cache.

    Returns:
        dict with format_version, complete, config, config_json, provenance, class_names, splits,
        feature_shape (tuple), dtype, views, task (``SINGLE_LABEL`` when the file has none),
        tap_shape (tuple, or None for a cache without activations).

    Raises:
        StoreError: not a headstart cache, unknown format_version, or attributes missing/damaged.
    """
    try:
        attrs = f.attrs
        if _as_str(attrs.get("format")) != FORMAT:
            raise StoreError(f"{path} is not a headstart feature cache (no format={FORMAT!r} "
                             f"attribute)")
        version = int(attrs.get("format_version", -1))
        if version not in READABLE_VERSIONS:
            raise StoreError(f"{path} has feature-cache format_version {version}; this headstart "
                             f"reads versions {READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]} "
                             f"(a newer or older headstart wrote it)")
        config_json = _as_str(attrs["config_json"])
        task = _as_str(attrs.get("task")) or SINGLE_LABEL
        if task not in TASKS:
            raise StoreError(f"{path} records an unknown task {task!r} (this headstart knows "
                             f"{', '.join(TASKS)})")
        return {
            "format_version": version,
            "complete": bool(attrs["complete"]),
            "config_json": config_json,
            "config": loads_json(config_json),  # a crafted attribute: bounded, no RecursionError
            "provenance": loads_json(_as_str(attrs["provenance_json"])),
            "class_names": loads_json(_as_str(attrs["class_names_json"])),
            "splits": loads_json(_as_str(attrs["splits_json"])),
            "feature_shape": tuple(int(d) for d in np.asarray(attrs["feature_shape"]).ravel()),
            "dtype": _as_str(attrs["dtype"]),
            "views": int(attrs["views"]),
            "task": task,
            "tap_shape": (tuple(int(d) for d in np.asarray(attrs["tap_shape"]).ravel())
                          if "tap_shape" in attrs else None),
        }
    except StoreError:
        raise
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
        raise StoreError(f"{path} is a damaged headstart feature cache "
                         f"({_paren(str(exc))})") from exc


def corruption_error(path: str, where: str) -> StoreError:
    """The one wording for data that fails its checksum (bit rot, a bad copy, a bad disk)."""
    return StoreError(f"{path} is corrupted: {where} fails its checksum (damaged after it was "
                      f"written: a bad copy or disk); extract the features again")


def is_checksum_failure(exc: BaseException) -> bool:
    """True for the OSError h5py raises when a chunk fails its fletcher32 check."""
    msg = str(exc)
    return "filter returned failure" in msg or "checksum" in msg.lower()


def strings_digest(values: list[str]) -> str:
    """sha256 hex of a list of strings (JSON, so no separator can be ambiguous)."""
    return hashlib.sha256(canonical_json(list(values)).encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """Stable JSON text (sorted keys, no spaces): what is stored and compared on resume."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """The first field where two JSON-like values differ, as (dotted name, old repr, new repr).

    Dict keys are visited in sorted order, so the answer is stable; a key absent on one side shows
    as ``<absent>``. Returns None when the values are equal.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                return name, "<absent>", _short(new[key])
            if key not in new:
                return name, _short(old[key]), "<absent>"
            found = first_difference(old[key], new[key], name)
            if found:
                return found
        return None
    if old != new:
        return prefix or "config", _short(old), _short(new)
    return None


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_str(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _paren(msg: str) -> str:
    """One line, without h5py's "Unable to synchronously open file (…)" wrapper, and short."""
    msg = " ".join(msg.split())
    if "(" in msg and msg.endswith(")"):
        msg = msg[msg.index("(") + 1 : -1]
    return msg[:200]
