"""What the batched head trainer (``training.head_group``) trains: each trial's parameters, and the cache in memory.

``TrialParams`` is one head's recipe as the sweep draws it (``sweep.space.suggest_params``) and as
``HeadConfig`` spells it for train-head (``head_config`` / ``from_head_config``); ``SweepCache`` is
one feature cache read into memory, as the sweep loads it (``sweep.caches.load_caches``) and as the
view trials assemble it from two caches (``evidence.view_trials``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from headstart.pipeline.config import HeadConfig


@dataclass(frozen=True)
class TrialParams:
    """One trial's head configuration: what it trains on and how."""

    cache: str
    lr: float
    dropout: float
    weight_decay: float
    label_smoothing: float
    batch_size: int
    head_kind: str
    hidden_units: int | None   # None for the linear head
    normalize: str
    views: bool

    def head_config(self, **fields: Any) -> HeadConfig:
        """The HeadConfig that trains this trial with ``train-head`` (``fields`` add e.g. paths)."""
        from headstart.pipeline.config import HeadConfig

        return HeadConfig(lr=self.lr, dropout=self.dropout, weight_decay=self.weight_decay,
                          label_smoothing=self.label_smoothing, batch_size=self.batch_size,
                          head_kind=self.head_kind, hidden_units=self.hidden_units or HeadConfig().hidden_units,
                          normalize=self.normalize, views=self.views, **fields)

    @classmethod
    def from_head_config(cls, config: HeadConfig, cache: str, views: bool) -> "TrialParams":
        """The trial that trains as ``config`` (a HeadConfig) does on ``cache`` (``head_config``'s inverse)."""
        return cls(cache=cache, lr=config.lr, dropout=config.dropout, weight_decay=config.weight_decay,
                   label_smoothing=config.label_smoothing, batch_size=config.batch_size, head_kind=config.head_kind,
                   hidden_units=config.hidden_units if config.head_kind == "hidden" else None,
                   normalize=config.normalize, views=views)


@dataclass
class SweepCache:
    """One cache, in memory.

    Attributes:
        name: short name for the leaderboard (the file's stem, made unique).
        path: absolute path of the cache.
        rows: split → FeatureRows (in memory) of the original rows; "train_views" adds the train
            split with its augmented views when the cache has them.
        labels: split → int64 (N,) class indices, or (N, C) multi-hot rows for a multi-label cache.
        class_names, feature_shape, views, multi_label: as the cache says.
        info: run.json's "cache" record, as train-head writes it.
    """

    name: str
    path: str
    rows: dict[str, Any]
    labels: dict[str, np.ndarray]
    class_names: list[str]
    feature_shape: tuple[int, ...]
    views: int
    info: dict = field(default_factory=dict)
    multi_label: bool = False

    def train_rows(self, views: bool) -> Any:
        """The training split's FeatureRows, with or without the augmented views."""
        return self.rows["train_views"] if views and self.views else self.rows["train"]
