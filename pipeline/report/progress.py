"""Progress display: a live line with rate and ETA on a terminal, plain log lines otherwise.

``ProgressLine`` is the line; ``BatchProgress`` draws one from the prediction loop's batches (evaluate,
predict, the export checks). Commands take a ``reporter`` (``features/reporter.py``) whose ``progress(label)``
makes the line (``run``'s ``Console`` makes a ``ProgressLine``), so the library never decides where lines go.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterator, TextIO

from headstart.features.reporter import QuietReporter, Reporter


class ProgressLine:
    """Reports ``done``/``total`` items with rate and ETA.

    On a terminal the line is redrawn in place; elsewhere (CI logs, files) a plain line is printed at
    most every ``log_every`` seconds and once at the end, so logs stay readable.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, quiet: bool = False,
                 log_every: float = 10.0):
        self.label = label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.log_every = log_every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._open = False

    def update(self, done: int, total: int | None, rate: float, unit: str = "img") -> None:
        """Shows progress; ``rate`` is items per second."""
        if self.quiet:
            return
        now = time.monotonic()
        if not self.tty and now - self._last < self.log_every:
            return
        self._last = now
        if total:
            eta = (total - done) / rate if rate > 0 else float("inf")
            text = (f"{self.label}: {done}/{total} ({100 * done / total:.0f}%) "
                    f"{rate:.1f} {unit}/s ETA {_format_seconds(eta)}")
        else:
            text = f"{self.label}: {done} {rate:.1f} {unit}/s"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._open = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Ends the in-place line so later output starts on a fresh line."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _format_seconds(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BatchProgress:
    """An observer of the prediction loop (``predict_split``'s ``observe``) drawing a ``ProgressLine``:
    items seen of ``total``.

    Args:
        line: the line to draw (a ``ProgressLine``, or ``Console.progress``'s).
        total: items of the split (bad ones included), or None when unknown.
    """

    def __init__(self, line: ProgressLine, total: int | None):
        self.line, self.total, self._start = line, total, time.monotonic()

    def __call__(self, batch) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self.line.update(batch.seen, self.total, batch.seen / elapsed)


@contextlib.contextmanager
def observed(reporter: Reporter | None, label: str, total: int | None,
             *observers: Callable[[Any], None] | None) -> Iterator[Callable[[Any], None] | None]:
    """The ``observe`` hook of one pass of the prediction loop: ``observers`` (None ones left out) and,
    with a ``reporter``, a ``BatchProgress`` line labelled ``label``, closed when the block ends.

    Yields:
        One callable for ``predict_split``'s ``observe``, or None when there is nothing to call.
    """
    # a quiet reporter draws nothing: without other observers the loop then runs bare
    drawn = reporter is not None and not isinstance(reporter, QuietReporter)
    line = reporter.progress(label) if drawn else None
    hooks = [o for o in (*observers, BatchProgress(line, total) if line is not None else None) if o is not None]
    try:
        yield (lambda batch: [hook(batch) for hook in hooks]) if hooks else None
    finally:
        if line is not None:
            line.close()
