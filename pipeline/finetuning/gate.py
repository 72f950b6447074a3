"""finetune's stage gate: keep the seeded model when fine-tuning made the monitored measure worse.

Before fine-tuning, the seeded model (the head on the frozen backbone) is scored on the validation
split once (``seeded_validation``; kept in progress.json across a resume); after it, the fine-tuned
model is scored the same way and, when it is worse, the seeded weights come back (``apply_stage_gate``).

One measure decides: the gate compares what ``--monitor`` watches, the measure early stopping kept
the fine-tuned epoch by — the validation loss under ``val_loss`` (lower is better), else the
measure itself (balanced accuracy, macro-F1, mAP; higher is better). (Until issue 20 the gate
compared validation accuracy while the epoch was kept by validation loss, so a fine-tune that lowered
the loss could be refused and a later, better epoch judged on an earlier one.) Multi-label tasks
gate on validation mAP (threshold-free, so the gate does not depend on the thresholds chosen
afterwards on the kept model's validation predictions, which the gate returns).
"""

from __future__ import annotations

from typing import Any, Callable

from headstart.features.reporter import Reporter

#: split → its split_metrics dict (loss, accuracy, balanced_accuracy, map, ...).
Evaluate = Callable[[str], dict]
#: split → (its predictions, split_metrics dict), for the gate, whose caller keeps the predictions.
Predict = Callable[[str], tuple[Any, dict]]


def seeded_validation(evaluate: Evaluate, val_split: str | None, resume_record: dict, measure: str,
                      save_record: Callable[[], None]) -> dict | None:
    """The seeded model's validation loss, accuracy and gate measure (recorded once, kept across a resume).

    Args:
        evaluate: scores the model as it is now on a split.
        val_split: the validation split, or None.
        resume_record: the run's resume record; gets "seeded".
        measure: the gate's measure (``monitor.gate_measure``).
        save_record: writes ``resume_record`` (the backup's progress.json).
    """
    if val_split and "seeded" not in resume_record:
        seeded = evaluate(val_split)
        resume_record["seeded"] = {k: seeded.get(k) for k in dict.fromkeys(("loss", "accuracy", measure))}
        save_record()
    return resume_record.get("seeded")


def apply_stage_gate(predict: Predict, model: Any, *, val_split: str | None, seeded_val: dict | None,
                     seeded_weights: list, measure: str, reporter: Reporter) -> tuple[dict, Any]:
    """Keeps the seeded weights in ``model`` when fine-tuning lowered the validation ``measure``.

    Returns:
        (metrics.json's "stage_gate", the kept model's validation predictions or None). The gate
        holds "kept", "measure", "seeded_val_<measure>" and "finetuned_val_<measure>".
    """
    seeded_key, finetuned_key = f"seeded_val_{measure}", f"finetuned_val_{measure}"
    gate = {"kept": "finetuned", "measure": measure, seeded_key: (seeded_val or {}).get(measure),
            finetuned_key: None}
    if not val_split:
        gate["reason"] = "no validation split"
        return gate, None
    final, metrics = predict(val_split)
    gate[finetuned_key] = metrics.get(measure)
    seeded, finetuned = gate[seeded_key], gate[finetuned_key]
    if finetuned is None or seeded is None:
        gate["reason"] = "no readable validation image"
    elif finetuned > seeded if measure == "loss" else finetuned < seeded:
        gate["kept"] = "seeded"
        model.set_weights(seeded_weights)
        final, _ = predict(val_split)
        reporter.line(f"stage gate: fine-tuned validation {measure.replace('_', ' ')} {finetuned:.4f} is "
            f"{'above' if measure == 'loss' else 'below'} the seeded model's {seeded:.4f}; keeping the seeded model")
    return gate, final


def keep_seeded(predict: Predict, *, val_split: str | None, seeded_val: dict | None, measure: str,
                reason: str) -> tuple[dict, Any]:
    """The gate's record when fine-tuning was not run at all (the probes found nothing better)."""
    gate = {"kept": "seeded", "measure": measure, f"seeded_val_{measure}": (seeded_val or {}).get(measure),
            f"finetuned_val_{measure}": None, "reason": reason}
    return gate, (predict(val_split)[0] if val_split else None)
