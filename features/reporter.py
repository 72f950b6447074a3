"""One way for the library to tell the caller how work is going: a ``Reporter`` passed down.

Four events: ``stage`` (a named step starts or ends), ``progress`` (a live line a loop updates with
done/total), ``line`` (an informational message) and ``warning``. The library never decides where
they go: the CLI passes its console (``pipeline/run/console.py`` ``Console``, what the commands print),
the Python API and tests default to ``QUIET``. This module lives in features/ so that the cache's
code (extraction, merging) takes the same object without importing pipeline/.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable


@runtime_checkable
class ProgressHandle(Protocol):
    """A live progress line (``pipeline.report.progress.ProgressLine`` is one)."""

    def update(self, done: int, total: int | None, rate: float, unit: str = "img") -> None:
        """Shows ``done`` of ``total`` items (None: unknown) at ``rate`` items per second."""

    def close(self) -> None:
        """Ends the line; later output starts on a fresh line."""


@runtime_checkable
class Reporter(Protocol):
    """Where progress and messages go (see the module docstring)."""

    def line(self, message: str) -> None:
        """An informational message (one line, no trailing newline)."""

    def warning(self, message: str) -> None:
        """Something the user should know about that did not stop the work."""

    def stage(self, name: str, *, end: bool = False) -> None:
        """The named step starts (``end=False``) or has ended (``end=True``)."""

    def progress(self, label: str) -> ProgressHandle:
        """A new live line labelled ``label``; the caller updates it and closes it."""


class _NoLine:
    """A progress line that draws nothing."""

    def update(self, done: int, total: int | None, rate: float, unit: str = "img") -> None:
        pass

    def close(self) -> None:
        pass


class QuietReporter:
    """Reports nothing: the Python API's and the tests' default."""

    def line(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def stage(self, name: str, *, end: bool = False) -> None:
        pass

    def progress(self, label: str) -> ProgressHandle:
        return _NoLine()


#: The shared quiet reporter (it holds no state).
QUIET = QuietReporter()


class LineReporter(QuietReporter):
    """Lines and warnings to a ``str -> None`` function, no progress lines: the adapter for the
    Python API's documented ``log=`` argument (``log=print``).

    Args:
        write: receives each line and warning, as the old ``log`` callables did.
    """

    def __init__(self, write: Callable[[str], None]):
        self._write = write

    def line(self, message: str) -> None:
        self._write(message)

    def warning(self, message: str) -> None:
        self._write(message)


class Indented:
    """``reporter`` with every line, warning and progress label prefixed by ``prefix``: a step
    nested inside another (``headstart run``'s stages print their commands' lines two spaces in).

    Args:
        reporter: where the events go.
        prefix: prepended to every message and label.
    """

    def __init__(self, reporter: Reporter, prefix: str = "  "):
        self.reporter, self.prefix = reporter, prefix

    def line(self, message: str) -> None:
        self.reporter.line(self.prefix + message)

    def warning(self, message: str) -> None:
        self.reporter.warning(self.prefix + message)

    def stage(self, name: str, *, end: bool = False) -> None:
        self.reporter.stage(name, end=end)

    def progress(self, label: str) -> ProgressHandle:
        return self.reporter.progress(self.prefix + label)


def as_reporter(reporter: Reporter | None = None, write: Callable[[str], None] | None = None) -> Reporter:
    """The reporter a public function uses: ``reporter``, else ``write`` adapted (``LineReporter``),
    else ``QUIET``. The Python API's one adapter of its documented ``log=`` (``pipeline/api.py``).

    Args:
        reporter: the caller's reporter, or None.
        write: the Python API's ``log=`` function (``log=print``), or None.
    """
    if reporter is not None:
        return reporter
    return LineReporter(write) if write is not None else QUIET


class ProgressOnly:
    """``reporter``'s progress lines and stages, none of its lines or warnings: a command that prints
    its result itself (``headstart evaluate``'s table starts with the headline the library reports).
    Not a ``QuietReporter``: the library skips drawing for those.

    Args:
        reporter: where progress lines and stages go.
    """

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def line(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def stage(self, name: str, *, end: bool = False) -> None:
        self.reporter.stage(name, end=end)

    def progress(self, label: str) -> ProgressHandle:
        return self.reporter.progress(label)
