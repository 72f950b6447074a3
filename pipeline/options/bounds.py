"""The range of a number option (``Bounds``), and the ranges several options share.

``headstart.pipeline.options.facts`` gives each option its range; ``check_value`` there refuses a
value outside it. No TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    """The range of a number option: ``low`` ≤ value ≤ ``high`` (``*_open``: the bound itself is out).

    Attributes:
        expected: how a refusal says the range; by default from the bound that was crossed
            ("at least 1", "0 or more", "a positive number", "at most 2048").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    expected: str | None = None

    def problem(self, value: object) -> str | None:
        """What the value should be, when it is out of range (or not finite); else None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # types are the config reader's business
        low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if not (low or high or not math.isfinite(value)):
            return None
        if self.expected:
            return self.expected
        if high:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        if self.low == 0:
            return "a positive number" if self.low_open else "0 or more"
        return f"{'above' if self.low_open else 'at least'} {self.low:g}"


def at_least(n: int) -> Bounds:
    return Bounds(low=n)


POSITIVE = Bounds(low=0, low_open=True)
SHARE = Bounds(0, 1, high_open=True, expected="in [0, 1)")
#: Seeds feed NumPy and Keras, which take unsigned 32-bit seeds.
SEED = Bounds(0, 2**32 - 1, expected=f"in [0, {2**32 - 1}] (a 32-bit seed)")
#: Square input sizes: each backbone has its own minimum (features.registry); beyond this, memory.
IMAGE_SIZE = Bounds(1, 2048)
#: Images or rows per step: 0 or less is no batch (TensorFlow's InvalidArgumentError traceback);
#: beyond 2**16 one batch is a memory error, not a setting.
BATCH_SIZE = Bounds(1, 2**16)
#: Width of a hidden head layer; a wider one is a memory error minutes later, not a head.
HIDDEN_UNITS = Bounds(1, 65536)
