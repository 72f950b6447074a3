"""TensorBoard logs of the training stages, written by Keras' own ``keras.callbacks.TensorBoard``.

``train-head`` drives the callback's hooks from its epoch loop, ``finetune`` hands it to ``fit``, and
``headstart run`` replays a reused stage's ``history.csv`` through it, so every log has the layout
and names TensorBoard users know: ``LOG_DIR/train`` and ``LOG_DIR/validation`` with
``epoch_loss``, ``epoch_accuracy`` (and ``epoch_learning_rate`` on train) per epoch.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from headstart.pipeline.errors import OptionError


def check_log_dir(log_dir: str | os.PathLike | None, option: str = "--tensorboard") -> None:
    """Refuses a log directory that cannot be one (an existing file), before any work starts.

    Raises:
        OptionError: ``log_dir`` names an existing file.
    """
    if log_dir and Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise OptionError(f"{option} {log_dir}: is a file; give a directory for the TensorBoard logs")


def tensorboard_callback(log_dir: str | os.PathLike) -> Any:
    """A ``keras.callbacks.TensorBoard`` writing per-epoch scalars (and the model graph) to ``log_dir``."""
    import keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), update_freq="epoch")


def replay_history(history_csv: str | os.PathLike, log_dir: str | os.PathLike) -> bool:
    """Writes a finished stage's ``history.csv`` to ``log_dir`` through Keras' TensorBoard callback.

    For a stage that ``headstart run`` reused: its epochs ran before TensorBoard logging was asked
    for, and the history holds the same per-epoch numbers the callback would have logged live.

    Returns:
        False when there is no history to replay.
    """
    if not Path(history_csv).is_file():
        return False
    with open(history_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    _replay([(int(row.get("epoch") or step + 1) - 1,
              {k: float(v) for k, v in row.items() if k != "epoch" and v not in ("", None)})
             for step, row in enumerate(rows)], log_dir)
    return True


def write_history(history: dict[str, list[float]], log_dir: str | os.PathLike) -> None:
    """Writes a history (name → one value per epoch, as train-head's) to ``log_dir``, epoch by epoch.

    ``headstart sweep --tensorboard`` logs each trial this way once it stops: its epochs ran in a
    batched step, which no Keras callback watched.
    """
    epochs = max((len(values) for values in history.values()), default=0)
    _replay([(epoch, {k: float(v[epoch]) for k, v in history.items() if epoch < len(v)})
             for epoch in range(epochs)], log_dir)


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
