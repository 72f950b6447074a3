"""What every trial of a sweep shares beyond its parameters: the caches, the objective, the class weights.

``prepare_sweep`` reads the caches (``sweep.caches``), turns ``--monitor`` into the sweep's
``Objective`` for their task (single- or multi-label) and ``--class-weight`` into the weights
train-head would use (``training.class_weights``: balanced counts the training split; multi-label
refuses them), all before the sweep directory is claimed, so a bad option writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from headstart.features.reporter import Reporter
from headstart.pipeline.config import SweepConfig
from headstart.pipeline.report.tensorboard_logs import check_log_dir
from headstart.pipeline.training.head_params import SweepCache
from headstart.pipeline.training.objective import Objective


@dataclass(frozen=True)
class SweepSetup:
    """The sweep's inputs, checked.

    Attributes:
        caches: name → SweepCache, in command-line order (all of one task, same images).
        objective: what ranks, prunes and early-stops the trials.
        class_weights: a ``training.class_weights.ClassWeights``, or None (``--class-weight none``).
        class_weight: the option as best/ records it (a FILE made absolute).
    """

    caches: dict[str, SweepCache]
    objective: Objective
    class_weights: Any = None
    class_weight: str = "none"

    @property
    def multi_label(self) -> bool:
        return next(iter(self.caches.values())).multi_label

    def sample_weights(self, name: str) -> np.ndarray | None:
        """float32 (N,): the loss weight of each training row of cache ``name``; None without weights."""
        if self.class_weights is None:
            return None
        return self.class_weights.per_sample(self.caches[name].labels["train"])

    def settings(self) -> dict[str, Any]:
        """What a study records of the objective and the weights (nothing at the defaults, so studies
        started before these options resume as they were)."""
        out: dict[str, Any] = {}
        if self.objective.monitor != "val_loss":
            out["monitor"] = self.objective.monitor
        if self.class_weights is not None:
            record = self.class_weights.record()
            out["class_weight"] = {"mode": record["mode"], "weights": record["weights"]}
        return out


def prepare_sweep(config: SweepConfig, reporter: Reporter) -> SweepSetup:
    """Loads and checks the caches, the monitor and the class weights of ``config``.

    Raises:
        OptionError: a monitor the caches' task does not allow, a bad ``--class-weight`` FILE, or
            class weights on a multi-label cache. DataError / StoreError: see ``caches.load_caches``.
    """
    from headstart.pipeline.sweep.caches import load_caches
    from headstart.pipeline.training.objective import sweep_objective
    from headstart.pipeline.training.class_weights import check_class_weight_option, training_class_weights

    check_class_weight_option(config.class_weight)
    check_log_dir(config.tensorboard)  # before any trial: a read-only folder is one line, not a traceback
    caches = {c.name: c for c in load_caches(config.caches)}
    first = next(iter(caches.values()))
    objective = sweep_objective(config.monitor, first.multi_label)
    weights = training_class_weights(config.class_weight, first.class_names, first.labels["train"], reporter,
                                     multi_label=first.multi_label)
    option = os.path.abspath(config.class_weight) if weights is not None and weights.mode == "file" \
        else config.class_weight
    return SweepSetup(caches=caches, objective=objective, class_weights=weights, class_weight=option)


__all__ = ["SweepSetup", "prepare_sweep"]
