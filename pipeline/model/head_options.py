"""The head's option ranges, checked without TensorFlow so a bad value fails before it starts.

``headstart.pipeline.model.head`` builds the head; this module only refuses what it could not build.
"""

from __future__ import annotations

import math

from headstart.pipeline.config import HEAD_KINDS, NORMALIZATIONS
from headstart.pipeline.errors import OptionError


def check_head_options(*, dropout: float = 0.2, kind: str = "linear", hidden_units: int = 256,
                       normalize: str = "none", weight_decay: float = 0.0,
                       label_smoothing: float = 0.0) -> None:
    """Refuses head options out of range, naming the option (as train-head spells it).

    Raises:
        OptionError: the first bad option.
    """
    checks = [
        ("--dropout", 0.0 <= dropout < 1.0, "in [0, 1)", dropout),
        ("--head-kind", kind in HEAD_KINDS, f"one of {', '.join(HEAD_KINDS)}", kind),
        ("--hidden-units", isinstance(hidden_units, int) and hidden_units >= 1, "at least 1", hidden_units),
        ("--normalize", normalize in NORMALIZATIONS, f"one of {', '.join(NORMALIZATIONS)}", normalize),
        ("--weight-decay", 0.0 <= weight_decay < math.inf, "0 or more", weight_decay),
        ("--label-smoothing", 0.0 <= label_smoothing < 1.0, "in [0, 1)", label_smoothing),
    ]
    for option, ok, expected, value in checks:
        if not ok:
            raise OptionError(f"{option} must be {expected}, got {value}")
