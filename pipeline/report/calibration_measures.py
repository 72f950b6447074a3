"""How far a model's probabilities are from what they claim: expected calibration error (15 equal-width
bins), negative log-likelihood, and the reliability diagram's bins, before and after temperature scaling.

Single-label: each row's top probability against whether that class is right (Guo et al. 2017).
Multi-label: every (row, class) probability against whether the row holds the class, so one number
covers the C sigmoids the thresholds are chosen on. numpy only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Bins of the expected calibration error and of the reliability diagram.
ECE_BINS = 15


def confidence_and_outcome(labels: np.ndarray, logits: np.ndarray, num_classes: int,
                           multi_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome), float64 (M,) each: what each probability claims and what happened (0/1).

    Args:
        labels: int (N,) class indices, or (N, C) multi-hot rows when ``multi_label``.
        logits: (N, 1) or (N, K) logits.
        num_classes: K.
        multi_label: M = N·C (row, class) pairs instead of N rows.
    """
    from headstart.pipeline.model.head import logits_to_probabilities

    p = logits_to_probabilities(logits, num_classes, multi_label)
    if multi_label:
        return p.reshape(-1), np.asarray(labels, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def reliability_bins(confidence: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """One entry per non-empty bin of [0, 1]: {"lower", "upper", "count", "confidence", "accuracy"}
    (mean claimed probability and observed frequency of the bin's rows)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(mask.sum()),
                        "confidence": float(confidence[mask].mean()), "accuracy": float(outcome[mask].mean())})
    return out


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float | None:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over ``reliability_bins``; None for no rows."""
    total = sum(b["count"] for b in bins)
    if not total:
        return None
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def calibration_measures(labels: np.ndarray, logits: np.ndarray, num_classes: int,
                         multi_label: bool = False) -> dict[str, Any]:
    """{"nll", "ece", "bins"} of one split's logits (see ``reliability_bins``); None values for no rows."""
    from headstart.pipeline.model.calibration import nll

    if not len(np.asarray(logits)):
        return {"nll": None, "ece": None, "bins": []}
    bins = reliability_bins(*confidence_and_outcome(labels, logits, num_classes, multi_label))
    return {"nll": nll(labels, logits, num_classes, multi_label), "ece": expected_calibration_error(bins),
            "bins": bins}


def before_after(labels: np.ndarray, calibrated_logits: np.ndarray, temperature: Sequence[float] | None,
                 num_classes: int, multi_label: bool = False) -> dict[str, Any]:
    """A split's measures with the temperature undone ("before") and as the model gives them ("after").

    Args:
        labels: as ``calibration_measures`` takes them.
        calibrated_logits: (N, 1) or (N, K) logits of the calibrated model (raw logits / T).
        temperature: the model's [T] or per-class [T_c]; None for an uncalibrated model (both sides equal).
        num_classes, multi_label: the task.

    Returns:
        {"temperature", "before": {"nll", "ece", "bins"}, "after": {…}}.
    """
    z = np.asarray(calibrated_logits, dtype=np.float64)
    t = np.asarray(temperature if temperature is not None else [1.0], dtype=np.float64)
    raw = z * (t if len(t) > 1 else t[0])
    return {"temperature": None if temperature is None else [float(v) for v in t],
            "before": calibration_measures(labels, raw, num_classes, multi_label),
            "after": calibration_measures(labels, z, num_classes, multi_label)}


def headline(record: dict[str, Any] | None) -> dict[str, float | None]:
    """The four numbers of a ``before_after`` record: ece_before, ece_after, nll_before, nll_after."""
    record = record or {}
    return {f"{m}_{side}": (record.get(side) or {}).get(m) for m in ("ece", "nll") for side in ("before", "after")}


def describe_calibration(record: dict | None) -> str:
    """One line: "temperature T (test ECE a → b, NLL c → d)", or why there is none (finetune's table, inspect)."""
    if not record or record.get("method") != "temperature":
        return f"none ({(record or {}).get('reason', 'not recorded')})"
    t = record["temperature"]
    shown = f"temperature {t[0]:.3f}" if len(t) == 1 else f"per-class temperatures {min(t):.3f}–{max(t):.3f}"
    split = "test" if record.get("test") else "validation"
    if not record.get(split):  # run.json holds only the temperature
        return shown
    before, after = record[split]["before"], record[split]["after"]
    return (f"{shown} ({split} ECE {_num(before['ece'])} → {_num(after['ece'])}, "
            f"NLL {_num(before['nll'])} → {_num(after['nll'])})")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
