"""The rows of ``--recipe auto``'s decisions table, read from its steps' records.

The head stage's record names the sweep's best trial; the finetune stage's record carries what its
augmentation trials (with the invariance audit that pre-filtered them) and its probes decided (``FinetuneResult.recipe``) and its stage gate.
"""

from __future__ import annotations

from typing import Any

from headstart.pipeline.report.decisions import Candidate, Decision, explicit_decision

#: How the head decision names a sweep parameter (the rest print as they are), in the order it prints them.
_PARAM_WORDS = {"head_kind": "", "hidden_units": "units", "normalize": "norm", "weight_decay": "wd",
                "label_smoothing": "smoothing", "batch_size": "batch"}
_PARAM_ORDER = ("head_kind", "hidden_units", "normalize", "lr", "dropout", "weight_decay", "label_smoothing",
                "batch_size")


def head_decision(steps: Any, head: dict) -> Decision:
    """The head: the sweep's best trial (its parameters), or train-head's fixed options."""
    from headstart.pipeline.run.auto.head import head_searchable

    if not head_searchable(steps.config):
        return explicit_decision("head", "your [head] options")
    sweep = head.get("sweep")
    measure = _head_measure(steps, head)
    score = (head.get("validation") or {}).get(measure)
    if not sweep:
        return _with_logistic(Decision("head", "train-head", measure=f"val_{measure}",
                                       seconds=float(head.get("seconds") or 0),
                                       why=f"one head, trained until early stopping (validation {measure} {_fmt(score)})"),
                              head.get("candidates"), head.get("fitted_by") == "logistic")
    params = sweep.get("params") or {}
    chosen = ", ".join(t for t in (_param_text(k, params.get(k)) for k in _PARAM_ORDER) if t)
    decision = Decision("head", chosen or f"trial {sweep.get('best_trial')}", measure=f"val_{measure}",
                        seconds=float(head.get("seconds") or 0),
                        why=f"best of {sweep.get('trials')} sweep trials (validation {measure} {_fmt(score)})")
    return _with_logistic(decision, head.get("candidates"), head.get("fitted_by") == "logistic")


def _with_logistic(decision: Decision, record: dict | None, chosen: bool) -> Decision:
    """The sweep's head against the logistic probe on validation accuracy, paired (``run.auto.logistic``)."""
    paired = (record or {}).get("paired") or {}
    if "se" not in paired:
        return decision
    sweep_value = decision.chosen
    se = f"{paired['difference']:+.4f} ± {paired['se']:.4f}, paired, {paired['rows']} images"
    decision.candidates = [Candidate(f"sweep: {sweep_value}", paired["incumbent"], kept=not chosen),
                           Candidate(record["logistic"], paired["challenger"], float(record.get("seconds") or 0),
                                     kept=chosen, note=se)]
    decision.measure, decision.seconds = "val_accuracy", decision.seconds + float(record.get("seconds") or 0)
    if chosen:
        decision.chosen = record["logistic"]
        decision.why = "the logistic probe beats the sweep's head by more than 2 paired standard errors"
    else:
        decision.why += "; the logistic probe did not beat it by more than the noise"
    return decision


def augment_decision(steps: Any, finetune: dict, plan: Any = None) -> Decision:
    """The augmentation: each candidate's paired difference (with − without its cached views) ± SE."""
    if not steps.open("finetune.augment"):
        return explicit_decision("augment", steps.config.finetune.augment)
    record = (finetune.get("recipe") or {}).get("augment")
    if not record and plan is not None and plan.audit_candidates and not plan.audit:
        return Decision("augment", "none", why="not tried: the budget (" + "; ".join(plan.cuts) + "); fine-tuned "
                        "on the original images' cached activations")
    if not record:
        return Decision("augment", "-", why="no audit recorded")
    if "audit" not in record:  # recorded by the audit alone, before the view trials
        return Decision("augment", record["augment"], measure=record["measure"],
                        seconds=float(record.get("seconds") or 0),
                        why="an item is dropped when validation falls by more than max(0.02, 2 standard errors)",
                        candidates=[Candidate(c["item"], c["measure"], kept=c["kept"]) for c in record["candidates"]])
    seconds = float(record.get("seconds") or 0) + float(record["audit"].get("seconds") or 0)
    return Decision("augment", record["augment"], measure="val_accuracy difference", seconds=seconds,
                    why=f"heads with − without each item's {record['views']} cached "
                        f"view{'s' if record['views'] != 1 else ''} of its share of the training rows, "
                        f"{record['seeds']} seeds; "
                        "dropped when below zero by 2 SE, or by the audit when it falls by more than 0.15",
                    candidates=[_trial_candidate(c) for c in record["candidates"]])


def _trial_candidate(trial: dict) -> Candidate:
    if trial["judged_by"] == "audit":
        return Candidate(trial["item"], None, trial["seconds"], kept=False,
                         note=f"audit drop {trial['audit_drop']:.3f}")
    return Candidate(trial["item"], trial["difference"], trial["seconds"], kept=trial["kept"],
                     note=f"± {trial['se']:.4f}")


def finetune_decisions(steps: Any, finetune: dict) -> list[Decision]:
    """The rate, the depth, and whether fine-tuning was kept at all (on the cache: ``run.auto.finetune``)."""
    config = steps.config.finetune
    on_cache = _on_cache_record(steps)
    probes = (finetune.get("recipe") or {}).get("probes")
    out = []
    for name, option, field in (("lr", "finetune.lr", "lr"), ("unfreeze", "finetune.unfreeze", "unfreeze")):
        if not steps.open(option):
            out.append(explicit_decision(name, getattr(config, field)))
        elif on_cache is not None:
            out.append(_on_cache_decision(name, on_cache, finetune))
        elif not probes:
            out.append(Decision(name, getattr(config, field), why="not probed (the budget); the guide's value"))
        else:
            out.append(_probe_decision(name, field, probes))
    out.append(_gate_decision(finetune, probes))
    return out


def _on_cache_record(steps: Any) -> dict | None:
    """metrics.json's "on_cache" of the run's fine-tune (the tap, each rate's fit), or None."""
    from headstart.pipeline.store.rundir import RunDir

    run = RunDir(steps.run_dir / "finetune")
    return run.metrics().get("on_cache") if run.complete else None


def _on_cache_decision(name: str, on_cache: dict, finetune: dict) -> Decision:
    """The rate: each tried to early stopping on the cache; the depth: every layer above the tap."""
    tap = on_cache.get("tap") or {}
    if name == "unfreeze":
        return Decision("unfreeze", f"top:{tap.get('top_layers')}",
                        why=f"every layer above the cache's tap ({tap.get('spec')} at {tap.get('layer')})")
    rates = on_cache.get("rates") or []
    monitor = next((k for k in (rates[0] if rates else {}) if k.startswith("val_")), "val_loss")
    chosen = finetune.get("on_cache_lr")
    return Decision("lr", chosen, measure=monitor, seconds=sum(float(r.get("seconds") or 0) for r in rates),
                    why="fine-tunes on the cache, each to early stopping",
                    candidates=[Candidate(r["lr"], r.get(monitor), float(r.get("seconds") or 0), kept=r["lr"] == chosen,
                                          note=f"epoch {r.get('best_epoch')} of {r.get('epochs_run')}")
                                for r in rates])


def _probe_decision(name: str, field: str, probes: dict) -> Decision:
    other = "unfreeze" if field == "lr" else "lr"
    chosen = probes[field]
    # The rates were compared at one depth, the depths at the best rate: show the comparison made.
    rows = [p for p in probes["probes"] if p[other] == probes[other]] if field == "unfreeze" else \
        [p for p in probes["probes"] if p["unfreeze"] == probes["probes"][0]["unfreeze"]]
    if len({p[field] for p in rows}) < 2:
        return Decision(name, chosen, why="not probed (cut to fit the budget); the guide's value")
    return Decision(name, chosen, measure=f"val_{probes['measure']}", seconds=sum(p["seconds"] for p in rows),
                    why=f"short fine-tunes of {rows[0]['steps']} steps",
                    candidates=[Candidate(p[field], p["score"], p["seconds"], kept=p[field] == chosen
                                          and p[other] == probes[other]) for p in rows])


def _gate_decision(finetune: dict, probes: dict | None) -> Decision:
    gate = finetune.get("stage_gate") or {}
    measure = gate.get("measure", "loss")
    kept = finetune.get("kept") or gate.get("kept", "finetuned")
    seeded, tuned = gate.get(f"seeded_val_{measure}"), gate.get(f"finetuned_val_{measure}")
    paired = finetune.get("paired")
    if paired:
        return _paired_decision(finetune, kept, paired)
    if probes is not None and not probes.get("finetune", True):
        why = "skipped: no probe improved on the head"
    else:
        why = (f"stage gate on validation {measure}; best epoch {finetune.get('best_epoch')} of "
               f"{finetune.get('epochs_run')}")
    return Decision("finetune", "fine-tuned model" if kept == "finetuned" else "head kept", measure=f"val_{measure}",
                    why=why, seconds=float(finetune.get("seconds") or 0), candidates=[Candidate("head", seeded, kept=kept == "seeded"),
                                         *([Candidate("fine-tuned", tuned, kept=kept == "finetuned")]
                                           if tuned is not None else [])])


def _paired_decision(finetune: dict, kept: str, paired: dict) -> Decision:
    """Head against the on-cache fine-tune on the same validation images, with the paired standard error."""
    if kept != "finetuned":
        why = "skipped: the on-cache fine-tune did not improve on the head's validation loss (stage gate)"
    elif paired["beats"]:
        why = "the on-cache fine-tune beats the head by more than 2 paired standard errors; no end-to-end re-run"
    else:
        why = "kept by the stage gate (validation loss), within the noise on accuracy; no end-to-end fine-tune"
    se = f"± {paired['se']:.4f}, paired, {paired['rows']} images"
    return Decision("finetune", "fine-tuned on the cache" if kept == "finetuned" else "head kept",
                    measure="val_accuracy", why=why, seconds=float(finetune.get("seconds") or 0),
                    candidates=[Candidate("head", paired["incumbent"], kept=kept != "finetuned"),
                                Candidate("fine-tuned on the cache", paired["challenger"], kept=kept == "finetuned",
                                          note=f"{paired['difference']:+.4f} {se}")])


def _head_measure(steps: Any, head: dict) -> str:
    from headstart.pipeline.run.auto.head import monitor_measure

    return monitor_measure(steps.config, "map" in (head.get("validation") or {}))


def _param_text(key: str, value: Any) -> str:
    if value in (None, "") or (key == "hidden_units" and not value) or (key == "normalize" and value == "none"):
        return ""
    if isinstance(value, float):
        value = f"{value:.2g}"
    word = _PARAM_WORDS.get(key, key)
    return f"{word} {value}".strip()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
