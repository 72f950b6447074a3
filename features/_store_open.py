"""Opening the writer's ``PATH.partial``: lock it, then resume it (cut back to what was committed)
or build it afresh — the half of ``StoreWriter`` that runs before the first append.

A mixin of ``features.store.StoreWriter``: its methods work on the writer's ``partial_path``,
``_fd`` (the locked descriptor), ``_file`` (h5py), ``_state`` (per-split counters) and layout.
"""

from __future__ import annotations

import fcntl
import os

from headstart.features._disk_space import reserve_space
from headstart.features._hdf5 import open_h5, read_header
from headstart.features._store_io import (START_OVER, header_difference, open_locked, remove_quietly,
                                          truncate_rows, with_hint, write_skeleton)
from headstart.features.errors import Arg, StoreConfigMismatch, StoreError, parts_of

#: An empty cache of a few splits is ~30 KB; HDF5 must not hit ENOSPC while building it.
SKELETON_BYTES = 256 << 10


class PartialFile:
    """The locked ``PATH.partial`` of a writer: resumed or created (see ``create_or_resume``)."""

    def _open_partial(self, provenance: dict, overwrite: bool) -> None:
        """Locks the partial, then resumes it or starts it fresh (see create_or_resume)."""
        ppath = self.partial_path
        os.makedirs(os.path.dirname(os.path.abspath(ppath)), exist_ok=True)
        self._fd = open_locked(ppath)
        try:
            if os.fstat(self._fd).st_size > 0 and self._try_resume(overwrite):
                return
            self._create(provenance)
        except BaseException:
            self._close_file()
            remove_quietly(f"{ppath}.new")
            if os.fstat(self._fd).st_size == 0:
                remove_quietly(ppath)  # the empty file open_locked created; nothing of value
            self._release()
            raise

    def _try_resume(self, overwrite: bool) -> bool:
        """Resumes a matching partial; False when it is to be replaced (overwrite).

        On an exception ``_open_partial`` closes whatever this left open.
        """
        ppath = self.partial_path
        try:
            self._file = open_h5(ppath, "r+", locking=False, damaged_hint=START_OVER)
            header = read_header(self._file, ppath)
            diff = header_difference(header, self._expected())
            if diff is None:
                self._truncate_to_committed()
        except StoreError as exc:  # damaged, foreign, unknown version
            if overwrite:
                self._close_file()
                return False
            raise type(exc)(*with_hint(parts_of(exc))) from exc
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            if overwrite:
                self._close_file()
                return False
            raise StoreError(f"{ppath} is damaged ({' '.join(str(exc).split())[:200]})",
                             *START_OVER) from exc
        if diff is not None:
            self._close_file()
            if overwrite:
                return False
            name, old, new = diff
            raise StoreConfigMismatch(
                f"{ppath} (an interrupted run) was written with {name}={old}; this run has "
                f"{name}={new}; use ", Arg("overwrite"), " to replace it", field=name, partial=True)
        # A plain int, changed in place: rewriting a string attribute here would free and
        # reallocate global-heap objects in the middle of a run (provenance is merged at finalize).
        self._file.attrs.modify("resumes", int(self._file.attrs.get("resumes", 0)) + 1)
        self._file.flush()
        self.resumed = True
        return True

    def _truncate_to_committed(self) -> None:
        """Cuts every dataset back to its committed count; rows past it are from a killed run."""
        f, ppath = self._file, self.partial_path
        for split in self.splits:
            if split not in f:
                raise StoreError(f"{ppath} is damaged: split '{split}' is missing")
            g = f[split]
            state = {k: int(g.attrs[k]) for k in ("committed", "skipped_committed", "consumed")}
            state["done"] = bool(g.attrs["done"])
            for name in ("features", "labels", "keys", "views", "pixel_std", "activations",
                         "view_activations", "skipped_keys", "skipped_reasons"):
                if name not in g:
                    continue
                n = state["skipped_committed" if name.startswith("skipped") else "committed"]
                if len(g[name]) < n:
                    raise StoreError(f"{ppath} is damaged: {split}/{name} has {len(g[name])} "
                                     f"rows, fewer than the {n} committed")
                truncate_rows(g[name], n)
            self._state[split] = state
        f.flush()

    def _create(self, provenance: dict) -> None:
        """Builds an empty cache in ``PATH.partial.new`` and renames it onto the locked partial.

        Building it in place would leave a torn, unreadable partial if the process died before
        the first flush; this way the partial is always empty (a fresh start next time) or whole.
        The new file is locked before the rename, so the lock never lapses.
        """
        tmp = f"{self.partial_path}.new"
        fd = open_locked(tmp)  # only the holder of the partial's lock ever gets here
        try:
            reserve_space(fd, 0, SKELETON_BYTES, self.partial_path, "nothing yet")
            with open_h5(tmp, "w", locking=False) as f:
                self._state = write_skeleton(f, provenance, self._config_json, self._expected())
            os.fsync(fd)
            os.replace(tmp, self.partial_path)
        except BaseException:
            os.close(fd)
            raise
        self._release()
        self._fd = fd
        self._file = open_h5(self.partial_path, "r+", locking=False)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
