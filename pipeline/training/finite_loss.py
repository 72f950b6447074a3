"""The stop on a loss that is no longer finite, shared by train-head's loop and ``fit_stage``.

A NaN or infinite loss means the weights are already ruined (too high a learning rate, extreme
feature values, a bad batch); training on would only save garbage as the run's result, and early
stopping alone would keep it when no epoch was ever finite. So the epoch that goes non-finite ends
the run with one line, before anything of it is committed or kept as "best".
"""

from __future__ import annotations

import math
from typing import Mapping

from headstart.features.errors import Arg
from headstart.pipeline.errors import NonFiniteLossError

#: The losses checked after every epoch, with the words the message uses for them.
LOSSES = {"loss": "training loss", "val_loss": "validation loss"}


def check_finite_losses(stage: str, epoch: int, logs: Mapping[str, float]) -> None:
    """Raises when the training or validation loss of ``epoch`` is NaN or infinite.

    Args:
        stage: what is training, for the message ("train-head", "finetune").
        epoch: 1-based epoch that just ended.
        logs: that epoch's metrics; the keys of ``LOSSES`` that are present are checked.

    Raises:
        NonFiniteLossError: naming the epoch and which loss.
    """
    for key, words in LOSSES.items():
        value = logs.get(key)
        if value is not None and not math.isfinite(float(value)):
            raise NonFiniteLossError(
                f"{stage}: the {words} ({key}) is {float(value)} at epoch {epoch}; training stopped "
                "and nothing of this run was kept (try a lower ", Arg("lr"), ", or look for extreme values "
                "in the input)", field=key, value=float(value))
