"""HDF5 feature cache: create, append/commit, resume after a kill, finalize atomically.

Layout (docs/architecture.md): file attrs ``format``, ``format_version``, ``complete``,
``config_json``, ``provenance_json``, ``feature_shape``, ``dtype``, ``views``, ``class_names_json``,
``splits_json``, ``task`` ("single_label", or "multi_label"; absent before multi-label caches
existed, read as single-label); one group per split with ``features`` (N, *feature_shape), ``labels``
(N,) int64 class indices (single-label) or (N, C) uint8 multi-hot rows (multi-label, C = len(class
names)),
``keys`` (N,) utf-8, optional ``views`` (N, K, *feature_shape), optional ``pixel_std`` (N,) float32
(the standard deviation of each decoded image's pixels, measured during extraction; caches written
before it existed simply lack it), optional ``activations`` (N, *tap_shape) and
``view_activations`` (N, K, *tap_shape) float16 (the backbone's activations at the cache's tap, the
input of its top layers; file attr ``tap_shape``, present only then), ``skipped_keys``/``skipped_reasons`` (M,) utf-8, and attrs ``committed``, ``skipped_committed``, ``consumed``, ``done``.

Crash safety: a run writes ``PATH.partial``. Each ``append`` writes rows past ``committed``,
flushes, then advances the counters and flushes again, so ``committed`` never covers rows that are
not on disk; rows past it are garbage from a killed run and are cut off on resume. ``finalize``
marks the file complete and ``os.replace``s it onto PATH, so PATH is never half-written and a
previous PATH is only replaced at the very end.

Locking: the writer holds ``flock`` on its own descriptor of the ``.partial`` and opens HDF5 with
its own locking off. HDF5 locks with ``flock`` too, so readers that open the file with HDF5's
default locking see "unable to lock file" (turned into StoreInUseError), and so does a second
writer, in this process or another. POSIX ``fcntl`` locks would not do: they vanish when *any*
descriptor of the file in the process is closed, and HDF5 opens and closes the file internally.

The reader half (``open_cache``, ``FeatureCache``, ``SplitData``, ``summarize_cache``) lives in
``features/cache.py``. h5py and numpy only; no TensorFlow.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from headstart.features._disk_space import batch_bytes, disk_full_error, reserve_space
from headstart.features._hdf5 import MULTI_LABEL, SINGLE_LABEL, canonical_json, hdf5_end, partial_path, strings_digest
from headstart.features._store_io import (as_labels, as_rows, check_finished, check_finite, chunk_rows, create_rows,
                                          expected_header, fsync_dir, put_rows)
from headstart.features._store_open import PartialFile
from headstart.features.errors import StoreError

__all__ = ["OPTIONAL_ROWS", "StoreWriter", "create_or_resume"]

# Per-row datasets a split may hold beside features, labels and keys (all or none of its rows).
OPTIONAL_ROWS = ("views", "pixel_std", "activations", "view_activations")


def create_or_resume(path: str | os.PathLike, *, config: dict, provenance: dict,
                     class_names: list[str], splits: list[str], feature_shape: tuple[int, ...],
                     dtype: str, views: int = 0, overwrite: bool = False,
                     multi_label: bool = False, tap_shape: tuple[int, ...] | None = None) -> "StoreWriter":
    """Opens a writer on ``f"{path}.partial"``: a fresh one, or the interrupted run to resume.

    ``overwrite`` is permission to discard what does *not* match this run (a foreign file, a cache
    or partial of another config); a partial or finished cache of the same config is still resumed
    or reported complete, so "run the same command again" resumes even with ``--overwrite``.

    Args:
        path: the finished cache file.
        config: content-defining settings (JSON-able); compared field by field on resume.
        provenance: versions, timings, …; stored, never compared.
        class_names: class index → name.
        splits: split names, in the order they will be written.
        feature_shape: shape of one feature row, e.g. (2048,) or (7, 7, 2048).
        dtype: "float16" or "float32".
        views: K augmented views stored per row on the splits that pass ``views`` to ``append``.
        overwrite: replace a mismatching or foreign file (PATH only at ``finalize``).
        multi_label: labels are (n, C) multi-hot rows (C = len(class_names)), not class indices;
            recorded as the file's ``task`` and compared on resume like the layout.
        tap_shape: shape of one row of backbone activations at a tap (e.g. (4, 4, 56)), stored as
            float16 ``activations`` beside the features (and ``view_activations`` beside views);
            None for a cache without them. Compared on resume like the layout.

    Returns:
        A StoreWriter; ``writer.complete`` is True when PATH already holds this exact cache.

    Raises:
        StoreConfigMismatch: PATH or the partial was written with another config (not overwrite).
        StoreExistsError: PATH exists and is not a finished headstart cache (not overwrite).
        StoreInUseError: another writer holds the partial. StoreError: damaged partial, locking
            unsupported. ValueError: bad arguments.
    """
    path = os.fspath(path)
    expected = expected_header(config, class_names, splits, feature_shape, dtype, views, multi_label, tap_shape)
    if os.path.isdir(path):
        raise StoreError(f"{path} is a directory, not a feature cache file")
    finished = check_finished(path, expected, overwrite)
    if finished is not None:
        return StoreWriter(path, expected, complete_progress=finished)
    writer = StoreWriter(path, expected)
    writer._open_partial(provenance, overwrite)
    return writer


class StoreWriter(PartialFile):
    """Appends committed batches to ``PATH.partial``; made by ``create_or_resume``.

    Attributes:
        path: the finished cache file (PATH).
        partial_path: the working file, ``PATH.partial``.
        complete: True when PATH already held this cache (nothing to write) or after finalize.
        resumed: True when an interrupted partial was picked up.
        class_names, splits, feature_shape, dtype, views: as passed to ``create_or_resume``.
        multi_label: whether labels are multi-hot rows (N, C).
    """

    def __init__(self, path: str, expected: dict,
                 complete_progress: dict[str, tuple[int, int]] | None = None) -> None:
        self.path = path
        self.partial_path = partial_path(path)
        self.config: dict = expected["config"]
        self.class_names: list[str] = expected["class_names"]
        self.splits: list[str] = expected["splits"]
        self.feature_shape: tuple[int, ...] = tuple(expected["feature_shape"])
        self.dtype: str = expected["dtype"]
        self.views: int = expected["views"]
        self.multi_label: bool = expected["task"] == MULTI_LABEL
        self.tap_shape: tuple[int, ...] | None = (tuple(expected["tap_shape"]) if expected["tap_shape"]
                                                  else None)
        self._config_json = canonical_json(self.config)
        self.complete = complete_progress is not None
        self.resumed = False
        self._file: h5py.File | None = None
        self._fd: int | None = None
        self._broken = False  # a write failed (see _write_failed)
        # split → {"committed", "skipped_committed", "consumed", "done"}, mirrored from the attrs
        self._state: dict[str, dict[str, Any]] = {
            s: {"consumed": c, "committed": r, "skipped_committed": 0, "done": True}
            for s, (c, r) in (complete_progress or {}).items()}

    # -- queries ---------------------------------------------------------------------------------

    def progress(self, split: str) -> tuple[int, int]:
        """(consumed source items, committed rows) of ``split``; (0, 0) before its first append."""
        state = self._split_state(split)
        return state["consumed"], state["committed"]

    def is_done(self, split: str) -> bool:
        """True once ``finish_split(split)`` was committed (or the whole cache is complete)."""
        return bool(self._split_state(split)["done"])

    def labels(self, split: str) -> np.ndarray:
        """The committed label rows of ``split``: int64 (N,), or (N, C) multi-hot."""
        return self._require_open()[split]["labels"][: self._split_state(split)["committed"]]

    # -- writing ---------------------------------------------------------------------------------

    def append(self, split: str, *, features: np.ndarray, labels: np.ndarray, keys: Sequence[str],
               views: np.ndarray | None = None, pixel_std: np.ndarray | None = None,
               activations: np.ndarray | None = None, view_activations: np.ndarray | None = None,
               skipped: Iterable[tuple[str, str]] = (), consumed: int) -> None:
        """Commits one batch: rows [committed, committed + n), skipped pairs, then the counters.

        Args:
            split: split name.
            features: (n, *feature_shape), cast to the cache dtype.
            labels: (n,) class indices in [0, len(class_names)), or for a multi-label cache (n, C)
                multi-hot rows of 0/1, C = len(class_names).
            keys: n source keys.
            views: (n, K, *feature_shape) augmented views, K == ``views``; give it for every batch
                of a split or for none.
            pixel_std: (n,) standard deviation of each row's decoded pixels (near-constant images
                score ~0); like ``views``, give it for every batch of a split or for none.
            activations: (n, *tap_shape) backbone activations at the cache's tap (stored float16);
                required on every batch of a cache created with ``tap_shape``, refused otherwise.
            view_activations: (n, K, *tap_shape), the views' activations; with ``views`` only.
            skipped: (key, reason) for source items of this batch that produced no row.
            consumed: source items processed in this split so far, this batch included.

        Raises:
            ValueError: shapes, labels or counts that do not fit; a finished split.
        """
        group, state = self._writable(split)
        n = len(keys)
        feats = as_rows(features, (n, *self.feature_shape), self.dtype, "features")
        check_finite(features, feats, keys, "features")
        labs = as_labels(labels, n, len(self.class_names), self.multi_label)
        skipped = [(str(k), str(r)) for k, r in skipped]
        if consumed < state["consumed"] + n + len(skipped):
            raise ValueError(f"consumed={consumed} is less than {state['consumed']} before this "
                             f"batch + {n} rows + {len(skipped)} skipped")
        optional = self._optional_rows(group, state, n, keys, views=views, pixel_std=pixel_std,
                                       activations=activations, view_activations=view_activations)

        c, sc = state["committed"], state["skipped_committed"]
        self._reserve(split, {name: (c, n) for name in ("features", "labels", *OPTIONAL_ROWS)},
                      [str(k) for k in keys] + [x for pair in skipped for x in pair])
        try:
            self._commit(group, c, sc, feats, labs, [str(k) for k in keys], optional, skipped, int(consumed))
        except OSError as exc:
            raise self._write_failed(exc) from exc
        state.update(committed=c + n, skipped_committed=sc + len(skipped), consumed=int(consumed))

    def _commit(self, group: h5py.Group, c: int, sc: int, feats: np.ndarray, labs: np.ndarray,
                keys: list[str], optional: dict[str, np.ndarray | None],
                skipped: list[tuple[str, str]], consumed: int) -> None:
        """Writes one batch at rows c… (skipped pairs at sc…), flushes, then the counters.

        ``optional`` maps the split's optional per-row datasets (``OPTIONAL_ROWS``) to their rows,
        None where the split does not store them.
        """
        n = len(keys)
        if n:
            put_rows(group["features"], c, feats)
            put_rows(group["labels"], c, labs)
            put_rows(group["keys"], c, np.array(keys, dtype=object))
            for name, rows in optional.items():
                if rows is not None:
                    put_rows(group[name], c, rows)
        if skipped:
            put_rows(group["skipped_keys"], sc, np.array([k for k, _ in skipped], dtype=object))
            put_rows(group["skipped_reasons"], sc, np.array([r for _, r in skipped], dtype=object))
        # Rows reach the file before the counters that cover them do.
        self._file.flush()
        group.attrs.modify("committed", c + n)
        group.attrs.modify("skipped_committed", sc + len(skipped))
        group.attrs.modify("consumed", consumed)
        self._file.flush()

    def _write_failed(self, exc: OSError) -> StoreError:
        """The error for a write HDF5 could not do; the writer is unusable afterwards.

        The counters on disk still describe the last good commit (they are written after the
        rows), so the partial resumes from there. HDF5 keeps the failed write in its caches and
        would try it again on the next flush, so ``close`` skips that flush.
        """
        self._broken = True
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space" in str(exc):
            return disk_full_error(self.partial_path, None, self._committed_text())
        return StoreError(f"{self.partial_path}: write failed ({' '.join(str(exc).split())[:200]})"
                          f"; run the same command again to resume")

    def finish_split(self, split: str) -> None:
        """Marks ``split`` as fully extracted (a resumed run then skips it)."""
        group, state = self._writable(split)
        group.attrs.modify("done", True)
        self._file.flush()
        state["done"] = True

    def finalize(self, provenance_update: dict | None = None) -> None:
        """Marks the cache complete, closes it and renames ``PATH.partial`` onto PATH.

        A no-op on a writer that was complete from the start.

        Raises:
            ValueError: a split has not been finished.
        """
        if self.complete:
            return
        f = self._require_open()
        unfinished = [s for s in self.splits if not self._state[s]["done"]]
        if unfinished:
            raise ValueError(f"cannot finalize {self.path}: split(s) {', '.join(unfinished)} "
                             f"not finished")
        provenance = json.loads(f.attrs["provenance_json"])
        provenance.update(provenance_update or {})
        provenance.setdefault("store", {})["resumes"] = int(f.attrs.get("resumes", 0))
        self._write_digests(f)
        f.attrs["provenance_json"] = canonical_json(provenance)
        f.attrs["complete"] = True
        f.flush()
        f.close()
        self._file = None
        end = hdf5_end(self._fd)
        if end is not None and os.fstat(self._fd).st_size > end:
            os.ftruncate(self._fd, end)  # the unused part of the last space reservation
        # Durable before it gets the final name: a power cut must not leave PATH half-written.
        os.fsync(self._fd)
        os.replace(self.partial_path, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._release()
        self.complete = True

    def close(self) -> None:
        """Closes without finishing; the ``.partial`` stays for a later resume. Idempotent."""
        if self._file is not None:
            try:
                if not self._broken:
                    self._file.flush()
            finally:
                self._file.close()
                self._file = None
        self._release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StoreWriter({self.path!r}, complete={self.complete}, resumed={self.resumed})"

    def _reserve(self, split: str, rows: dict[str, tuple[int, int]], strings: list[str]) -> None:
        """Takes the disk space of the next commit before HDF5 writes any of it (see
        ``reserve_space``: HDF5 crashes on a failed write)."""
        need = batch_bytes(self._file[split], rows, strings)
        reserve_space(self._fd, self._file.id.get_filesize(), need, self.partial_path,
                      self._committed_text())

    def _committed_text(self) -> str:
        """What a resume keeps, e.g. "train 40 of the images, validation 0"."""
        return ", ".join(f"{s} {st['consumed']} images" + (" (done)" if st["done"] else "")
                         for s, st in self._state.items())

    def _write_digests(self, f: h5py.File) -> None:
        """Stores a sha256 of each split's key strings (HDF5 cannot checksum them itself)."""
        for split in self.splits:
            g, state = f[split], self._state[split]
            for name, count in (("keys", "committed"), ("skipped_keys", "skipped_committed"),
                                ("skipped_reasons", "skipped_committed")):
                g.attrs[f"{name}_sha256"] = strings_digest(g[name].asstr()[:state[count]])

    # -- helpers ---------------------------------------------------------------------------------

    def _expected(self) -> dict:
        return {"config": self.config, "class_names": self.class_names, "splits": self.splits,
                "feature_shape": list(self.feature_shape), "dtype": self.dtype, "views": self.views,
                "task": MULTI_LABEL if self.multi_label else SINGLE_LABEL,
                "tap_shape": list(self.tap_shape) if self.tap_shape else None}

    def _split_state(self, split: str) -> dict[str, Any]:
        if split not in self._state:
            raise ValueError(f"{self.path} has no split '{split}'; it has {', '.join(self.splits)}")
        return self._state[split]

    def _require_open(self) -> h5py.File:
        if self._broken:
            raise StoreError(f"{self.partial_path}: a write failed earlier; run the same command "
                             f"again to resume")
        if self._file is None:
            raise ValueError(f"writer for {self.path} is "
                             f"{'complete' if self.complete else 'closed'}")
        return self._file

    def _writable(self, split: str) -> tuple[h5py.Group, dict[str, Any]]:
        f = self._require_open()
        state = self._split_state(split)
        if state["done"]:
            raise ValueError(f"split '{split}' of {self.path} is already finished")
        return f[split], state

    def _optional_rows(self, group: h5py.Group, state: dict, n: int, keys: Sequence[str],
                       **given: np.ndarray | None) -> dict[str, np.ndarray | None]:
        """Checks the batch's optional per-row arrays; returns them as stored, by dataset name."""
        if (given["views"] is not None) != (given["view_activations"] is not None) and self.tap_shape:
            raise ValueError("a cache with a tap stores the activations of every view: give views "
                             "and view_activations together")
        if self.tap_shape and given["activations"] is None:
            raise ValueError(f"{self.path} stores activations at a tap; this batch has none")
        if given["views"] is not None and not self.views:
            raise ValueError(f"{self.path} was created with views=0; got a views array")
        if given["activations"] is not None and not self.tap_shape:
            raise ValueError(f"{self.path} was created without a tap; got an activations array")
        tap = self.tap_shape or ()
        layouts = {"views": ((self.views, *self.feature_shape), self.dtype, "augmented views"),
                   "pixel_std": ((), "float32", None),
                   "activations": (tap, "float16", "activations"),
                   "view_activations": ((self.views, *tap), "float16", "views' activations")}
        rows = {}
        for name, (row_shape, dtype, what) in layouts.items():
            rows[name] = self._check_optional(group, state, name, given[name], n, row_shape, dtype)
            if rows[name] is not None and what:
                check_finite(given[name], rows[name], keys, what)
        return rows

    def _check_optional(self, group: h5py.Group, state: dict, name: str, array: np.ndarray | None,
                        n: int, row_shape: tuple[int, ...], dtype: str) -> np.ndarray | None:
        """Validates one optional array and creates its dataset on the split's first batch.

        Optional so that callers that have no pixels or views (tests, merges of old shards) still
        write; all-or-nothing per split so a reader never sees a column that covers only some rows.
        """
        split = group.name[1:]
        if array is None:
            if name in group:
                raise ValueError(f"split '{split}' stores {name}; this batch has none")
            return None
        rows = as_rows(array, (n, *row_shape), dtype, name)
        if name not in group:
            if state["committed"]:
                raise ValueError(f"split '{split}' has rows without {name}; it must come with every "
                                 f"batch of a split")
            # Scalars as before (4096 rows); arrays in chunks of about _CHUNK_BYTES, like features.
            chunk = chunk_rows(row_shape, dtype) if row_shape else 4096
            create_rows(group, name, row_shape, dtype, chunk)
        return rows
