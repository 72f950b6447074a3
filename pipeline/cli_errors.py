"""The CLI's error boundary: domain exceptions, full disks and signals become one-line exits.

Library errors are domain exceptions (``HeadstartError``, ``FeaturesError``) with an ``exit_code``;
``library_call`` (wrapped around every command in ``cli.py``) turns them into click errors, the
only place that does, naming each setting by its flag (``options.naming.CLI_NAMES``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading

import click

from headstart.features.errors import FeaturesError
from headstart.pipeline.errors import HeadstartError, environment_reason
from headstart.pipeline.options.naming import CLI_NAMES
from headstart.pipeline.report.printable import printable


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so every cleanup that serves Ctrl-C serves it too."""


#: What an interrupted command prints: every command continues an interrupted run of the same options.
INTERRUPTED = "interrupted; run the same command again to resume"

#: Seconds the main thread has to act on Ctrl-C or SIGTERM before the process ends without it.
SIGNAL_GRACE = 0.5


class _SignalWatch:
    """Ends the process when the main thread cannot act on Ctrl-C or SIGTERM within a second.

    Python runs signal handlers in the main thread between bytecodes; a main thread waiting inside
    native code (a ``tf.data`` iterator whose worker blocks on a read: a stalled network share, a
    named pipe) never gets there, and the signal was ignored until SIGKILL. Python's C handler also
    writes the signal number to a wakeup pipe; a thread reading it waits ``SIGNAL_GRACE`` seconds
    for the handler to run, and if it has not, prints the usual interrupted line and exits at once
    with 130 / 143, as a kill would: every store and backup commits atomically, so nothing already
    committed is lost. When the handler runs in time, the normal clean-up proceeds, however long.
    """

    def __init__(self, hint: str):
        self.hint, self.acted = hint, threading.Event()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._handler(_Terminated))}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started ignoring it
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handler(KeyboardInterrupt))
        self._thread = threading.Thread(target=self._watch, name="signal-watch", daemon=True)
        self._thread.start()

    def _handler(self, make: type[KeyboardInterrupt]):
        def handle(signum, frame) -> None:
            self.acted.set()
            raise make()
        return handle

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read, 64)
            except OSError:
                return
            if not data:
                return
            wanted = [n for n in data if n in (signal.SIGINT, signal.SIGTERM)]
            if wanted and not self.acted.wait(SIGNAL_GRACE):
                os.write(2, f"\n{self.hint}\n".encode())
                os._exit(143 if wanted[0] == signal.SIGTERM else 130)

    def close(self) -> None:
        """Puts the previous handlers and wakeup fd back and stops the watching thread."""
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # the watching thread reads end-of-file and returns
        self._thread.join()
        os.close(self._read)


def library_call(fn):
    """Turns domain exceptions into one-line click errors; Ctrl-C and SIGTERM into a resume hint.

    SIGTERM is what Slurm, Kubernetes and systemd send before they kill a job; it gets Ctrl-C's
    handling (finally blocks commit what is done) and exits 143, the shell's code for it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        in_main = threading.current_thread() is threading.main_thread()
        watch = _SignalWatch(INTERRUPTED) if in_main else None  # handlers only work there
        try:
            return fn(*args, **kwargs)
        except (HeadstartError, FeaturesError) as exc:
            # One line (a domain error is one line; a wrapped library's text, the first of its lines),
            # and one that a label or file name in it cannot break or overwrite; settings named by flag.
            text = exc.render(CLI_NAMES).strip()
            raise _CliError(printable(text.split("\n")[0]) if text else type(exc).__name__,
                            exit_code(exc)) from None
        except Exception as exc:
            reason = environment_reason(exc)
            if reason is None:
                raise
            # A write the library does not route through its atomic writers (a converter's own
            # files, a library's database): still one line, naming the file when it is known, exit 1.
            where = f"{exc.filename}: " if isinstance(exc, OSError) and exc.filename else ""
            raise _CliError(printable(f"{where}{reason}"), 1) from None
        except KeyboardInterrupt as exc:
            click.echo(f"\n{INTERRUPTED}", err=True)
            sys.exit(143 if isinstance(exc, _Terminated) else 130)
        finally:
            if watch is not None:
                watch.close()

    return wrapper


def exit_code(exc: BaseException) -> int:
    """The one exit-code rule (docs/troubleshooting.md, "Exit codes"): 2 input the user can fix,
    1 a failure of the machine (disk full, read-only, forbidden, network) or at run time, 75 busy.

    A domain error keeps its own code, except that "bad input" (2) raised while handling a failure
    of the machine (an ``OSError`` it was raised from, say a folder on a read-only disk) is 1: the
    input was fine, the machine was not.
    """
    code = getattr(exc, "exit_code", 2)
    if code == 2 and environment_reason(exc.__cause__ or exc.__context__):
        return 1
    return code


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
