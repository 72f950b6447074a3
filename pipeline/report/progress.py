"""Progress display: a live line with rate and ETA on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


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
