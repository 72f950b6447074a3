"""Progress lines for every long command (issue 22, item 3): the epoch callback finetune draws, and the
prediction loop's observer that evaluate, predict and the export checks draw."""

from __future__ import annotations

import io
from types import SimpleNamespace


class Line:
    """A progress line that records what it was asked to show."""

    def __init__(self, label: str):
        self.label, self.updates, self.closed = label, [], False

    def update(self, done, total, rate, unit="img"):
        self.updates.append((done, total))

    def close(self):
        self.closed = True


def test_the_epoch_callback_counts_images_and_closes_its_line():
    from headstart.pipeline.training.fit_progress import fit_progress_callback

    lines = []
    callback = fit_progress_callback(SimpleNamespace(progress=lambda label: lines.append(Line(label)) or lines[-1]), 20, 8,
                                     label="head epoch")
    for epoch in range(2):
        callback.on_epoch_begin(epoch)
        for batch in range(3):
            callback.on_train_batch_end(batch)
        callback.on_epoch_end(epoch)
    assert [line.label for line in lines] == ["head epoch 1", "head epoch 2"]
    # The first step (graph tracing) sets the clock; then 16 and 20 (not 24) of 20 images.
    assert lines[0].updates == [(16, 20), (20, 20)] and all(line.closed for line in lines)


def test_observed_draws_a_line_beside_the_other_observers_and_closes_it():
    from headstart.pipeline.report.progress import observed

    from headstart.features.reporter import QUIET

    for quiet in (None, QUIET):
        with observed(quiet, "evaluate test", 10) as hook:
            assert hook is None  # nothing to call: the loop runs bare
    seen, made = [], []
    reporter = SimpleNamespace(progress=lambda label: made.append(Line(label)) or made[-1])
    with observed(reporter, "evaluate test", 10, seen.append, None) as hook:
        hook(SimpleNamespace(seen=4))
        hook(SimpleNamespace(seen=10))
    assert [b.seen for b in seen] == [4, 10]
    assert made[0].label == "evaluate test" and made[0].updates == [(4, 10), (10, 10)] and made[0].closed


def test_in_a_log_the_first_update_is_printed_at_once_then_every_few_seconds():
    from headstart.pipeline.report.progress import ProgressLine

    stream = io.StringIO()
    line = ProgressLine("predict", stream=stream, log_every=10.0)
    line.update(1, 4, 2.0)
    line.update(2, 4, 2.0)  # within 10 s: not printed again
    assert stream.getvalue() == "predict: 1/4 (25%) 2.0 img/s ETA 0:01\n"
