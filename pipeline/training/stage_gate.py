"""finetune's stage gate: keep the seeded model when fine-tuning made the monitored measure worse.

Before fine-tuning, the seeded model (the head on the frozen backbone) is scored on the validation
split once (``seeded_validation``; kept in progress.json across a resume); after it, the fine-tuned
model is scored the same way and, when it is worse, the seeded weights come back (``apply_stage_gate``).
The measure is validation accuracy under ``--monitor val_loss`` (the gate always compared
accuracy), else the monitored measure itself (balanced accuracy, macro-F1, mAP): higher is better.
Multi-label tasks gate on validation mAP (threshold-free, so the gate does not depend on the
thresholds chosen afterwards on the kept model's validation predictions, which the gate returns).
"""

from __future__ import annotations

from typing import Any, Callable

#: split → its split_metrics dict (loss, accuracy, balanced_accuracy, map, ...).
Evaluate = Callable[[str], dict]
#: split → (its predictions, split_metrics dict), for the gate, whose caller keeps the predictions.
Predict = Callable[[str], tuple[Any, dict]]


def seeded_validation(evaluate: Evaluate, val_split: str | None, progress: dict, measure: str,
                      save_progress: Callable[[], None]) -> dict | None:
    """The seeded model's validation loss, accuracy and gate measure (recorded once, kept across a resume).

    Args:
        evaluate: scores the model as it is now on a split.
        val_split: the validation split, or None.
        progress: the run's progress record; gets "seeded".
        measure: the gate's measure (``monitor.gate_measure``).
        save_progress: writes ``progress`` (the backup's progress.json).
    """
    if val_split and "seeded" not in progress:
        seeded = evaluate(val_split)
        progress["seeded"] = {k: seeded.get(k) for k in dict.fromkeys(("loss", "accuracy", measure))}
        save_progress()
    return progress.get("seeded")


def apply_stage_gate(predict: Predict, model: Any, *, val_split: str | None, seeded_val: dict | None,
                     seeded_weights: list, measure: str, log: Callable[[str], None]) -> tuple[dict, Any]:
    """Keeps the seeded weights in ``model`` when fine-tuning lowered the validation ``measure``.

    Returns:
        (metrics.json's "stage_gate", the kept model's validation predictions or None). The gate
        holds "kept", "seeded_val_<measure>" and "finetuned_val_<measure>", and "measure" unless
        the measure is accuracy (the record single-label runs always had).
    """
    seeded_key, finetuned_key = f"seeded_val_{measure}", f"finetuned_val_{measure}"
    gate = {"kept": "finetuned", seeded_key: (seeded_val or {}).get(measure), finetuned_key: None,
            **({"measure": measure} if measure != "accuracy" else {})}
    if not val_split:
        gate["reason"] = "no validation split"
        return gate, None
    final, metrics = predict(val_split)
    gate[finetuned_key] = metrics.get(measure)
    seeded, finetuned = gate[seeded_key], gate[finetuned_key]
    if finetuned is None or seeded is None:
        gate["reason"] = "no readable validation image"
    elif finetuned < seeded:
        gate["kept"] = "seeded"
        model.set_weights(seeded_weights)
        final, _ = predict(val_split)
        log(f"stage gate: fine-tuned validation {measure.replace('_', ' ')} {finetuned:.4f} is below the seeded "
            f"model's {seeded:.4f}; keeping the seeded model")
    return gate, final
