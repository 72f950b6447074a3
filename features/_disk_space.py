"""The disk space a cache commit needs, taken before HDF5 writes anything, and the one full-disk error.

HDF5 does not survive a failed write (after ENOSPC the next flush or close segfaults), so the
writer reserves each commit's bytes first (``reserve_space``) and a full disk is one clear error
that leaves the partial file resumable.
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

import h5py
import numpy as np

from headstart.features.errors import DiskFullError, StoreError

_METADATA_BYTES = 64 << 10  # B-tree nodes, heap blocks and attributes one commit may add
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def batch_bytes(group: h5py.Group, rows: dict[str, tuple[int, int]],
                strings: Sequence[str]) -> int:
    """Upper bound of the bytes one commit adds to the file.

    Args:
        group: the split's group.
        rows: dataset name → (first row, number of rows) this commit writes.
        strings: every string this commit stores (keys, skipped keys and reasons).
    """
    total = _METADATA_BYTES + sum(len(s.encode("utf-8")) + 32 for s in strings)
    for name, (start, n) in rows.items():
        ds = group[name] if name in group else None
        if not n or ds is None or h5py.check_string_dtype(ds.dtype) is not None:
            continue
        chunk = ds.chunks[0]
        # New chunks are allocated whole; the chunk holding row ``start`` exists unless it starts
        # there (fletcher32 keeps a chunk's size, so HDF5 rewrites it in place).
        chunks = (start + n - 1) // chunk - (start + chunk - 1) // chunk + 1
        total += chunks * (int(np.prod(ds.chunks, dtype=np.int64)) * ds.dtype.itemsize + 4)
    return int(total)


def reserve_space(fd: int, offset: int, nbytes: int, path: str, committed: str) -> None:
    """Allocates disk blocks for the next ``nbytes`` written past ``offset``, or refuses cleanly.

    HDF5 does not survive a failed write: after ENOSPC the next flush or close segfaults, so the
    room a commit needs is taken before HDF5 writes anything. A refused reservation leaves the
    file exactly as the last commit left it (resumable).

    Raises:
        DiskFullError: no room (ENOSPC, or the quota); names the file and what is committed.
    """
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise disk_full_error(path, nbytes, committed) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise StoreError(f"{path}: cannot write ({exc.strerror})") from exc
        # A filesystem that cannot preallocate: compare with the free space instead.
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
        if vfs.f_bavail * vfs.f_frsize < nbytes:
            raise disk_full_error(path, nbytes, committed) from exc


def disk_full_error(path: str, nbytes: int | None, committed: str) -> DiskFullError:
    """The one wording of a full disk (see docs/troubleshooting.md, "Disk full")."""
    try:
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
        free = f"{vfs.f_bavail * vfs.f_frsize / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    need = f"the next batch needs up to {nbytes / 1e6:.1f} MB, " if nbytes else ""
    return DiskFullError(f"no space left on device for {path} ({need}{free}); committed so far: "
                         f"{committed}; free some space and run the same command again to resume")
