"""The CLI's error boundary: domain exceptions, full disks and signals become one-line exits.

Library errors are domain exceptions (``HeadstartError``, ``FeaturesError``) with an ``exit_code``;
``library_call`` (wrapped around every command in ``cli.py``) turns them into click errors, the
only place that does.
"""

from __future__ import annotations

import errno
import functools
import signal
import sys
import threading

import click

from headstart.features.errors import FeaturesError
from headstart.pipeline.errors import HeadstartError


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# Failures of the machine, not of the command: read-only, full, forbidden, quota, I/O error.
_ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so every cleanup that serves Ctrl-C serves it too."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def library_call(fn):
    """Turns domain exceptions into one-line click errors; Ctrl-C and SIGTERM into a resume hint.

    SIGTERM is what Slurm, Kubernetes and systemd send before they kill a job; it gets Ctrl-C's
    handling (finally blocks commit what is done) and exits 143, the shell's code for it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
        try:
            return fn(*args, **kwargs)
        except (HeadstartError, FeaturesError) as exc:
            raise _CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            getattr(exc, "exit_code", 2)) from None
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            # A write the library does not route through its atomic writers (a converter's own
            # files, say): still one line naming the file, exit 1.
            where = f"{exc.filename}: " if exc.filename else ""
            raise _CliError(f"{where}{exc.strerror}", 1) from None
        except KeyboardInterrupt as exc:
            # Every command continues an interrupted run of the same options when started again.
            click.echo("\ninterrupted; run the same command again to resume", err=True)
            sys.exit(143 if isinstance(exc, _Terminated) else 130)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper


class OneLineErrors(click.Group):
    """A group whose usage errors (bad option value, unknown option or command) print one line.

    Click prints the usage block and a hint above the error; dropping the context keeps just
    "Error: …", exit code 2, like every other user-facing error here.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.ctx = None
            raise
