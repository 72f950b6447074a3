"""Whether a path is a regular file, asked before it is opened. No TensorFlow.

Opening a named pipe (FIFO) blocks until something writes to it — inside a ``tf.data`` worker
thread that hung ``extract-features`` for ever, deaf to Ctrl-C and SIGTERM — and opening a device
can do anything. Neither is ever an image or a table, so every reader of files the user names
(class folders, label-file rows, ``predict``'s paths, the image reader itself) asks
``not_regular_reason`` first and skips such a path with that reason, without opening it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


class NotRegularFile(OSError):
    """A path that is not a regular file; ``strerror`` is the reason ("not a regular file (…)")."""


def not_regular_reason(path_or_mode: str | os.PathLike | int) -> str | None:
    """Why a path (links followed) is not a regular file, or None when it is one.

    Args:
        path_or_mode: a path, or an ``st_mode`` already at hand.

    Returns:
        e.g. "not a regular file (a named pipe)"; None for a regular file, and for a path that
        cannot be examined at all (missing, forbidden: the open that follows says why).
    """
    if isinstance(path_or_mode, int):
        mode = path_or_mode
    else:
        try:
            mode = os.stat(path_or_mode).st_mode
        except (OSError, ValueError):
            return None
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    return f"not a regular file ({kind})"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Opens a regular file for reading in binary mode, never blocking on a pipe.

    The open itself is non-blocking and its result is checked again, so a pipe put in place after
    the first check is closed unread instead of waited on.

    Raises:
        NotRegularFile: anything but a regular file (never opened, or closed at once).
        OSError: a missing or unreadable file.
    """
    reason = not_regular_reason(path)
    if reason:
        raise NotRegularFile(errno.EINVAL, reason, os.fspath(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    reason = not_regular_reason(os.fstat(fd).st_mode)
    if reason:
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, reason, os.fspath(path))
    return os.fdopen(fd, "rb")
