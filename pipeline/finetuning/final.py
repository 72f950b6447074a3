"""``finetune``'s final model: its calibration and its measures.

Calibration: once the stage gate has chosen the final model, a temperature is
fitted on its validation logits (``headstart.pipeline.model.calibration``) and becomes the model's
last layer, so model.keras, its exports, ``predict`` and the multi-label thresholds chosen after it
all see calibrated logits. ``--calibrate none`` skips it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TYPE_CHECKING

from headstart.features.reporter import Reporter
from headstart.pipeline.config import FinetuneConfig

if TYPE_CHECKING:
    import keras

    from headstart.pipeline.finetuning.plan import FinetunePlan
    from headstart.pipeline.training.predictions import SplitPredictions


def calibrate(config: FinetuneConfig, model: keras.Model, val_predictions: SplitPredictions | None, *, class_names: list[str],
              multi_label: bool, reporter: Reporter) -> tuple[Any, Any, dict]:
    """Fits and attaches the temperature.

    Args:
        config: finetune's options (``calibrate``).
        model: the kept chain (augmentation → … → head), uncalibrated.
        val_predictions: its validation ``SplitPredictions`` (logits (N, 1) or (N, K)), or None
            without a validation split.
        class_names: the K classes.
        multi_label: one temperature per class.
        reporter: where the one line about it goes.

    Returns:
        (model, val_predictions, record): the calibrated model and its validation predictions (the raw
        logits divided by T: exactly what the model now outputs, so no second pass is needed), and
        metrics.json's "calibration" ({"method", "temperature", "validation": before_after} or
        {"method": "none", "reason"}).
    """
    from headstart.pipeline.model.calibration import fit_temperature, with_temperature
    from headstart.pipeline.report.calibration_measures import before_after

    if config.calibrate == "none":
        return model, val_predictions, {"method": "none", "reason": "--calibrate none"}
    if val_predictions is None or not len(val_predictions.labels):
        reporter.line("calibration: skipped (no validation images)")
        return model, val_predictions, {"method": "none", "reason": "no validation images"}
    import numpy as np

    k = len(class_names)
    fitted = fit_temperature(val_predictions.labels, val_predictions.logits, k, multi_label)
    if all(t is None for t in fitted):
        reporter.line("calibration: skipped (validation does not determine a temperature: every image right with a margin)")
        return model, val_predictions, {"method": "none", "reason": "validation does not determine a temperature"}
    temperature = [1.0 if t is None else t for t in fitted]  # a class validation cannot calibrate stays as trained
    t = np.asarray(temperature, dtype=np.float32)
    scaled = dataclasses.replace(val_predictions, logits=(val_predictions.logits / (t if len(t) > 1 else t[0]))
                                 .astype(np.float32))
    record = {"method": "temperature", "temperature": temperature,
              "validation": before_after(val_predictions.labels, scaled.logits, temperature, k, multi_label),
              **({"left_at_1": [class_names[c] for c, t in enumerate(fitted) if t is None]}
                 if None in fitted else {})}
    val = record["validation"]
    shown = f"{temperature[0]:.3f}" if len(temperature) == 1 else \
        f"{min(temperature):.3f}–{max(temperature):.3f} (per class)"
    reporter.line(f"calibration: temperature {shown}; validation NLL {val['before']['nll']:.4f} → {val['after']['nll']:.4f}, "
        f"ECE {val['before']['ece']:.4f} → {val['after']['ece']:.4f}")
    return with_temperature(model, temperature), scaled, record


def final_metrics(config: FinetuneConfig, plan: FinetunePlan, model: keras.Model,
                  val_predictions: SplitPredictions | None,
                  calibration: dict) -> tuple[dict, dict]:
    """metrics.json's "validation" and "test" (the kept, calibrated model), and for multi-label its thresholds.

    Multi-label thresholds are chosen on the kept model's calibrated validation predictions and applied
    to both splits (``headstart.pipeline.report.split_measures.measure_splits``); ``calibration`` gains
    the test split's NLL and ECE before → after.
    """
    from headstart.pipeline.report.calibration_measures import before_after
    from headstart.pipeline.report.split_measures import measure_splits
    from headstart.pipeline.training.predictions import predict_split

    found = {"validation": val_predictions} if val_predictions is not None else {}
    if "test" in plan.source.split_names:
        found["test"] = predict_split(model, plan.source, "test", batch_size=config.batch_size,
                                      multi_label=plan.multi_label)
    sections, thresholds = measure_splits({n: p.labels for n, p in found.items()},
                                          {n: p.logits for n, p in found.items()}, plan.class_names,
                                          multi_label=plan.multi_label)
    for name, predictions in found.items():
        sections[name]["skipped"] = [list(s) for s in predictions.skipped]
    if "test" in found and calibration.get("temperature"):
        calibration["test"] = before_after(found["test"].labels, found["test"].logits, calibration["temperature"],
                                           len(plan.class_names), plan.multi_label)
    return sections, ({"thresholds": thresholds} if thresholds else {})
