"""What ``headstart run`` shows while it works: status lines, and live progress lines beside them.

``Console`` is the console ``Reporter`` (``features/reporter.py``): what the commands print. It keeps one
live progress line at a time (``report.progress.ProgressLine``: a bar on a terminal, a line every few
seconds in a log) and closes it before a status line, so the two never write over each other;
``fit_progress`` is the fine-tuning epoch's line.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from headstart.pipeline.report.progress import ProgressLine


class Console:
    """The console reporter: status lines and live progress lines that do not write over each other.

    Args:
        write: where status lines go (default: stderr).
        quiet: print nothing (the caller prints the final table).
        verbose: also print ``debug`` lines.
    """

    def __init__(self, write: Callable[[str], None] | None = None, *, quiet: bool = False, verbose: bool = False):
        self._write = write or (lambda m: print(m, file=sys.stderr, flush=True))
        self.quiet, self.verbose = quiet, verbose
        self._lines: list[ProgressLine] = []

    def line(self, message: str) -> None:
        if not self.quiet:
            self.close()
            self._write(message)

    def warning(self, message: str) -> None:
        # printed as the old log lines were (their text says "warning"), so transcripts stay the same
        self.line(message)

    def stage(self, name: str, *, end: bool = False) -> None:
        # the commands print their own headers ("[extract] …"); the event is for reporters that time steps
        pass

    def debug(self, message: str) -> None:
        if self.verbose:
            self.line(message)

    def progress(self, label: str) -> ProgressLine:
        self.close()  # one live line at a time; the finished ones stay on screen
        line = ProgressLine(label, quiet=self.quiet)
        self._lines.append(line)
        return line

    def close(self) -> None:
        for line in self._lines:
            line.close()


def fit_progress(console: Console, images: int, batch_size: int) -> Any:
    """A Keras callback drawing a progress line per fine-tuning epoch: images done, rate and ETA
    (``training.fit_progress``, on the console's lines).

    Args:
        console: where the line goes.
        images: training images per epoch (the good ones).
        batch_size: images per step.
    """
    from headstart.pipeline.training.fit_progress import fit_progress_callback

    return fit_progress_callback(console, images, batch_size, label="  finetune epoch")
