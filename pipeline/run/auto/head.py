"""What the head stage is under ``--recipe auto``: the sweep's space with the user's settings fixed.

The sweep searches every ``[head]`` option the user left open; one they set is a single value of the
space. Trials end by early stopping alone (``epochs = 0``: no maximum, only a safety cap of
``training.early_stopping.UNLIMITED_EPOCHS``), so no head is cut short while still improving; the
same holds for train-head when it is the head stage. The sweep ranks, prunes and stops on the
``--monitor`` measure and trains with the run's class weights, multi-label caches included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from headstart.pipeline.config import HeadConfig, RunConfig

#: HeadConfig fields the sweep searches: a range (lo == hi fixes it) or choices (one fixes it).
HEAD_RANGES = ("lr", "dropout", "weight_decay", "label_smoothing")
HEAD_CHOICES = ("batch_size", "head_kind", "hidden_units", "normalize", "views")
#: Epochs of auto's heads: 0, until early stopping (a head still improving goes on).
TRIAL_EPOCHS = 0


def search_space(config: RunConfig) -> Any:
    """The sweep's space with what the user set fixed: a given ``[head]`` option is one value, a
    given ``[sweep]`` key as written; the rest the sweep's defaults, trials ended by early stopping."""
    from headstart.pipeline.sweep.space import space_from_dict

    values: dict[str, Any] = {"epochs": TRIAL_EPOCHS}
    head = config.head
    for name in HEAD_RANGES:
        if config.is_explicit("head", name):
            values[name] = getattr(head, name)
    for name in HEAD_CHOICES:
        if config.is_explicit("head", name):
            values[name] = [getattr(head, name)]
    if config.is_explicit("head", "patience"):
        values["patience"] = head.patience
    if config.is_explicit("head", "epochs"):
        values["epochs"] = head.epochs
    values.update({k: v for k, v in config.sweep.items() if k != "trials"})
    return space_from_dict(values, origin="[sweep]")


def head_searchable(config: RunConfig) -> bool:
    """Whether the sweep has anything to search: some head option was left open."""
    return any(not config.is_explicit("head", n) for n in (*HEAD_RANGES, *HEAD_CHOICES))


def auto_head_config(config: RunConfig) -> HeadConfig:
    """train-head's options when it is the head stage under auto: until early stopping unless given."""
    if config.is_explicit("head", "epochs"):
        return config.head
    return dataclasses.replace(config.head, epochs=TRIAL_EPOCHS)


def monitor_measure(config: Any, multi_label: bool = False) -> str:
    """The validation measure auto compares heads and image sizes on: the ``--monitor`` one (mAP for
    a multi-label task under the default), as a split's measures name it."""
    from headstart.pipeline.training.monitor import gate_measure

    return gate_measure(config.head.monitor, multi_label)
