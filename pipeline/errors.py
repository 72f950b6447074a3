"""Domain exceptions of the pipeline package; only ``cli.py`` turns them into click errors.

``exit_code`` 2 marks input the user can fix (a path, an option, a config file); 1 marks a failure
at run time (a parity check) or of the machine (disk full, read-only, forbidden: ``environment_reason``);
75 a directory or cache another process is writing (try again later). docs/troubleshooting.md
("Exit codes") states the rule and tests/test_faults_round3_io.py holds every command to it.
Every error carries its facts (``field``, ``value``, ``rule``) and names a setting by its field, never
by a flag: ``OptionError.invalid("epochs", 0, "must be at least 1")``.
"""

import errno
import os

from headstart.features.errors import Fault


class HeadstartError(Fault):
    """Base class of every error the pipeline raises on purpose.

    A ``Fault``: its message names settings by field (``Arg("epochs")``), and each audience renders
    them (the CLI as flags, the Python API as arguments; ``features/errors.py``).
    """

    exit_code = 2


class OptionError(HeadstartError):
    """An option value or combination of options that cannot work."""


class DataError(HeadstartError):
    """A source, split spec or image that cannot be read."""


class NetworkError(DataError):
    """Data that must be downloaded while the network cannot reach it: the machine, not the input."""

    exit_code = 1


class RunDirError(HeadstartError):
    """A run directory that is missing, foreign, incomplete or would be overwritten."""


class RunDirBusyError(RunDirError):
    """Another process is writing the directory (it holds the directory's lock).

    Exit code 75 (EX_TEMPFAIL of sysexits.h): nothing is wrong with the command; run it again once
    the other process has finished.
    """

    exit_code = 75


class ParityError(HeadstartError):
    """The assembled model disagrees with the head on cached features."""

    exit_code = 1


class OutputError(HeadstartError):
    """An output that cannot be written: a read-only, full or forbidden file or directory."""

    exit_code = 1


class NonFiniteLossError(HeadstartError):
    """A training or validation loss became NaN or infinite; the run stops and keeps nothing."""

    exit_code = 1


#: Failures of the machine, not of the command: read-only, full, forbidden, quota, I/O error.
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO})

# How the same failures read when a library reports them in words: TensorFlow's file system
# (ResourceExhaustedError "…; No space left on device [Op:SaveV2]"), SQLite ("database or disk is full").
_ENVIRONMENT_WORDS = ("No space left on device", "database or disk is full", "Read-only file system",
                      "attempt to write a readonly database", "Disk quota exceeded", "Permission denied",
                      "disk I/O error")


def environment_reason(exc: BaseException) -> str | None:
    """What went wrong with the machine (disk full, read-only, forbidden), if that is what ``exc``
    or an exception it was raised from says; None for anything else.

    The one test behind exit code 1 for an environment failure: an ``OSError`` with one of
    ``ENVIRONMENT_ERRNOS``, or an error of TensorFlow, SQLAlchemy or Optuna whose text (or whose
    cause's) carries the system's words for one.

    Returns:
        e.g. "No space left on device", "database or disk is full".
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return exc.strerror or os.strerror(exc.errno)
        if not isinstance(exc, (HeadstartError, KeyboardInterrupt)):
            text = str(exc)
            found = next((words for words in _ENVIRONMENT_WORDS if words in text), None)
            if found:
                return found
        exc = exc.__cause__ or exc.__context__
    return None
