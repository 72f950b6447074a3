"""Paired comparisons of two models on the same validation images, with their noise.

Two models scored on the same images differ only where one is right and the other wrong; the
standard error of the accuracy difference comes from those disagreements alone (McNemar's view,
as the invariance audit's tolerance: ``audit.NOISE_Z`` standard errors of sqrt(changed) / n). A
challenger *beats* the incumbent only when its accuracy is higher by more than that noise; a tie
goes to the incumbent, which the callers make the cheaper or simpler choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    """The challenger against the incumbent on the same n images.

    Attributes:
        incumbent: its accuracy. challenger: its accuracy.
        difference: challenger − incumbent.
        se: standard error of ``difference`` (sqrt(disagreements) / n).
        rows: n. changed: images one gets right and the other wrong.
        beats: ``difference`` > ``audit.NOISE_Z`` × ``se`` (and > 0).
    """

    incumbent: float
    challenger: float
    difference: float
    se: float
    rows: int
    changed: int
    beats: bool

    def to_dict(self) -> dict:
        return {"incumbent": self.incumbent, "challenger": self.challenger, "difference": self.difference,
                "se": self.se, "rows": self.rows, "changed": self.changed, "beats": self.beats}

    @classmethod
    def from_dict(cls, record: dict) -> "Paired":
        return cls(**{k: record[k] for k in ("incumbent", "challenger", "difference", "se", "rows", "changed",
                                             "beats")})

    def describe(self) -> str:
        """E.g. "0.9611 vs 0.9333 (+0.0278 ± 0.0098, 360 images)"."""
        return (f"{self.challenger:.4f} vs {self.incumbent:.4f} ({self.difference:+.4f} ± {self.se:.4f}, "
                f"{self.rows} images)")


def compare_paired(incumbent_correct: np.ndarray, challenger_correct: np.ndarray) -> Paired:
    """Compares two models' per-image correctness on the same images.

    Args:
        incumbent_correct: (N,) bool, whether the incumbent classified each image right.
        challenger_correct: (N,) bool, the same images in the same order, for the challenger.

    Returns:
        The Paired comparison.

    Raises:
        ValueError: the two arrays differ in length, or are empty.
    """
    from headstart.pipeline.evidence.audit import NOISE_Z

    a = np.asarray(incumbent_correct, dtype=bool).ravel()
    b = np.asarray(challenger_correct, dtype=bool).ravel()
    if a.size != b.size or a.size == 0:
        raise ValueError(f"paired comparison needs the same non-empty images, got {a.size} and {b.size}")
    n, changed = a.size, int(np.sum(a != b))
    difference = float(b.mean() - a.mean())
    se = float(np.sqrt(changed) / n)
    return Paired(incumbent=float(a.mean()), challenger=float(b.mean()), difference=difference, se=se, rows=n,
                  changed=changed, beats=bool(difference > 0 and difference > NOISE_Z * se))
