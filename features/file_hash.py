"""The one hash of a file's bytes: SHA-256, read in blocks (weights files, models, CSVs of any size).

Shipped weights are checked with it, ``headstart run`` keys its stages by it (the head and model
files, ``--exclude`` and ``--class-weight`` files), and ``diagnose`` finds byte copies with it.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes.

    Raises:
        OSError: the file cannot be read (``NotRegularFile``: a pipe or device, never opened).
    """
    from headstart.features.regular_file import open_regular

    with open_regular(path) as f:  # a named pipe would be waited on for ever
        return hashlib.file_digest(f, "sha256").hexdigest()
