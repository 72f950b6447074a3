"""TensorBoard logs of the training stages, written by Keras' own ``keras.callbacks.TensorBoard``.

``train-head`` calls the callback's epoch hooks with each epoch's row from the head trainer, ``finetune`` hands it to ``fit``, and
``headstart run`` replays a reused stage's history through it, so every log has the layout
and names TensorBoard users know: ``LOG_DIR/train`` and ``LOG_DIR/validation`` with
``epoch_loss``, ``epoch_accuracy`` (and ``epoch_learning_rate`` on train) per epoch.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from headstart.pipeline.errors import OptionError, OutputError


def check_log_dir(log_dir: str | os.PathLike | None, option: str = "--tensorboard") -> None:
    """Refuses a log directory that cannot be one (an existing file) or cannot be written, before
    any work starts (TensorFlow's writer failed at the first epoch with a PermissionDeniedError
    traceback).

    Raises:
        OptionError: ``log_dir`` names an existing file.
        OutputError: its nearest existing folder cannot be written (read-only, forbidden, full).
    """
    if not log_dir:
        return
    if Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise OptionError(f"{option} {log_dir}: is a file; give a directory for the TensorBoard logs")
    existing = Path(os.path.abspath(log_dir))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:  # a real write tells read-only mounts and missing permissions apart, as root too
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise OutputError(f"{option} {log_dir}: cannot write there ({exc.strerror})") from None


def tensorboard_callback(log_dir: str | os.PathLike) -> Any:
    """A ``keras.callbacks.TensorBoard`` writing per-epoch scalars (and the model graph) to ``log_dir``."""
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), update_freq="epoch")


def write_history(history: dict[str, list[float]], log_dir: str | os.PathLike) -> bool:
    """Writes a history (name → one value per epoch, as train-head's) to ``log_dir``, epoch by epoch,
    through Keras' TensorBoard callback; NaN (a cell history.csv left empty) is left out.

    ``headstart run`` replays a reused stage's history (``RunDir.history()``) this way: its epochs ran
    before TensorBoard logging was asked for. ``headstart sweep --tensorboard`` logs each trial this way
    once it stops: its epochs ran in a batched step, which no Keras callback watched.

    Returns:
        False when there is no epoch to write (nothing is created).
    """
    epochs = max((len(values) for values in history.values()), default=0)
    if not epochs:
        return False
    _replay([(epoch, {k: float(v[epoch]) for k, v in history.items() if epoch < len(v) and not math.isnan(v[epoch])})
             for epoch in range(epochs)], log_dir)
    return True


def _replay(epochs: list[tuple[int, dict[str, float]]], log_dir: str | os.PathLike) -> None:
    import keras

    callback = keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False)
    model = keras.Sequential()
    model.optimizer = None  # no optimizer: the callback logs only the recorded numbers
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, logs in epochs:
        callback.on_epoch_end(epoch, logs)
    callback.on_train_end()
