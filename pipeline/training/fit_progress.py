"""A live progress line per training epoch: images done of the epoch, rate and ETA.

``fit`` itself prints nothing (every stage runs it with ``verbose=0`` and logs one line per epoch);
this callback draws the line in between — a bar on a terminal, a line every few seconds in a log
(``report.progress.ProgressLine``). ``finetune`` adds one per stage on its reporter's progress lines;
``headstart run`` passes its own (``run.console.fit_progress``).
"""

from __future__ import annotations

import time
from typing import Any

from headstart.features.reporter import Reporter


def fit_progress_callback(reporter: Reporter, images: int | None, batch_size: int, *,
                          label: str = "finetune epoch") -> Any:
    """A Keras callback that draws ``reporter.progress(f"{label} N")`` through every epoch.

    Args:
        reporter: whose progress lines it draws (``Console``; ``QUIET`` draws none).
        images: training images per epoch, or None when unknown (no total, no ETA).
        batch_size: images per step.
        label: the line's label before the epoch number.
    """
    import keras

    class FitProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._line, self._t0, self._done0 = None, 0.0, 0

        def on_epoch_begin(self, epoch, logs=None):
            self._line = reporter.progress(f"{label} {epoch + 1}")

        def on_train_batch_end(self, batch, logs=None):
            done = (batch + 1) * batch_size
            done = min(images, done) if images else done
            if batch == 0:  # the first step includes tracing the graph: rates count from its end
                self._t0, self._done0 = time.perf_counter(), done
                return
            elapsed = time.perf_counter() - self._t0
            self._line.update(done, images or None, (done - self._done0) / elapsed if elapsed > 0 else 0.0)

        def on_epoch_end(self, epoch, logs=None):
            if self._line is not None:
                self._line.close()  # the epoch's own line follows on a fresh line

    return FitProgress()
