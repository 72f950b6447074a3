"""What ``headstart run`` shows while it works: status lines, and live progress lines beside them.

``Console`` keeps one live progress line at a time (``report.progress.ProgressLine``: a bar on a
terminal, a line every few seconds in a log) and closes it before a status line, so the two never
write over each other; ``FitProgress`` is the fine-tuning epoch's line.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from headstart.pipeline.report.progress import ProgressLine


class Console:
    """Status lines and live progress lines that do not write over each other.

    Args:
        log: where status lines go (default: stderr).
        quiet: print nothing (the caller prints the final table).
        verbose: also print ``debug`` lines.
    """

    def __init__(self, log: Callable[[str], None] | None = None, *, quiet: bool = False, verbose: bool = False):
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.quiet, self.verbose = quiet, verbose
        self._lines: list[ProgressLine] = []

    def log(self, message: str) -> None:
        if not self.quiet:
            self.close()
            self._log(message)

    def debug(self, message: str) -> None:
        if self.verbose:
            self.log(message)

    def progress(self, label: str) -> ProgressLine:
        self.close()  # one live line at a time; the finished ones stay on screen
        line = ProgressLine(label, quiet=self.quiet)
        self._lines.append(line)
        return line

    def close(self) -> None:
        for line in self._lines:
            line.close()


def fit_progress(console: Console, images: int, batch_size: int) -> Any:
    """A Keras callback drawing a progress line per fine-tuning epoch: images done, rate and ETA.

    Args:
        console: where the line goes.
        images: training images per epoch (the good ones).
        batch_size: images per step.
    """
    import keras

    class FitProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._line, self._t0, self._done0 = None, 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self._line = console.progress(f"  finetune epoch {epoch + 1}")

        def on_train_batch_end(self, batch, logs=None):
            done = (batch + 1) * batch_size
            done = min(images, done) if images else done
            if batch == 0:  # the first step includes tracing the graph: rates count from its end
                self._t0, self._done0 = time.perf_counter(), done
                return
            elapsed = time.perf_counter() - self._t0
            self._line.update(done, images or None, (done - self._done0) / elapsed if elapsed > 0 else 0.0)

    return FitProgress()
