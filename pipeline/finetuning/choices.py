"""What ``finetune`` may choose for itself on validation: the augmentation and the rate and depth.

``--augment auto`` runs the invariance audit (``headstart.pipeline.evidence.audit``) with the head run's
head before the model is built, as a pre-filter for gross drops, then trains heads with and without
each remaining item's cached views (``headstart.pipeline.evidence.view_trials``) and fine-tunes with
the items that training with them did not hurt. ``--probe lr,unfreeze``
runs short fine-tunes from the seeded model (``headstart.pipeline.finetuning.rate_probes``) and
fine-tunes at the best rate and depth, or not at all when no probe improves on the seeded model.
Both results are saved in the run's resume record (a resumed run does not redo them) and in
run.json's "recipe".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from headstart.features.reporter import Reporter
from headstart.pipeline.config import FinetuneConfig
from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError

AUTO = "auto"


def check_choices(config: FinetuneConfig) -> None:
    """The TF-free checks of ``--augment auto``, ``--probe`` and ``--on-cache``.

    Raises:
        OptionError: ``--augment auto`` without ``--head``, or a bad ``--probe``; ``--on-cache`` without
            ``--head`` (the head run names the cache) or with ``--probe unfreeze`` (which judges
            end-to-end fine-tunes on images).
    """
    from headstart.pipeline.data.augment import parse_augment_spec
    from headstart.pipeline.finetuning.rate_probes import parse_probe

    if config.augment.strip().lower() == AUTO:
        if not config.head:
            raise OptionError(Arg("augment", "auto"), " needs ", Arg("head"), ": the audit scores the trained head on "
                              "transformed validation images")
    else:
        parse_augment_spec(config.augment)
    parse_probe(config.probe)
    if config.on_cache and not config.head:
        raise OptionError(Arg("on_cache"), " needs ", Arg("head"), ": the head run names the cache (extracted with ",
                          Arg("tap"), ") it trains on")
    if config.on_cache and "unfreeze" in parse_probe(config.probe):
        raise OptionError(Arg("on_cache"), " trains above the cache's tap, so ", Arg("probe", "unfreeze"),
                          " (which judges end-to-end fine-tunes on images) does not apply; ", Arg("probe", "lr"), " does")


def choose_augment(config: FinetuneConfig, plan: Any, resume_record: dict, save: Callable[[], None],
                   reporter: Reporter) -> str:
    """The augmentation to fine-tune with: ``--augment`` as given, or (``auto``) the items that training
    heads on their cached views did not hurt (``evidence.view_trials``), after the invariance audit has
    dropped the gross drops."""
    if config.augment.strip().lower() != AUTO:
        return config.augment
    if not plan.val_split:
        raise OptionError(Arg("augment", "auto"), " needs a validation split to judge augmentations on, and SOURCE has none")
    if "audit" not in resume_record:
        from headstart.pipeline.evidence.audit import audit_head_run

        result = audit_head_run(plan.head_run, plan.source, split=plan.val_split, weights=plan.chain.backbone.weights)
        resume_record["audit"] = result.to_dict()
        save()
        kept = {s.item for s in result.scores if s.kept}
        reporter.line(f"augmentation audit ({result.rows} validation images, {result.seconds:.1f} s): "
            + ", ".join(f"{s.item} {s.measure:.3f}{'' if s.item in kept else ' ✗'}" for s in result.scores)
            + f" (untransformed {result.reference:.3f})")
    if not (resume_record.get("view_trials") or {}).get("done"):
        resume_record["view_trials"] = _view_trials(config, plan, resume_record, save, reporter)
        save()
    return resume_record["view_trials"]["augment"]


def _view_trials(config: FinetuneConfig, plan: Any, resume_record: dict, save: Callable[[], None],
                 reporter: Reporter) -> dict:
    """Runs (or resumes) the view trials; returns their record, marked done."""
    from pathlib import Path

    from headstart.pipeline.evidence.audit import AUDIT_CANDIDATES, AuditResult, TransformScore
    from headstart.pipeline.evidence.view_trials import run_view_trials
    from headstart.pipeline.commands.extraction import extract_features

    record = resume_record.setdefault("view_trials", {})
    audit_record = resume_record["audit"]
    audit = AuditResult(augment=audit_record["augment"], measure_name=audit_record["measure"],
                        reference=audit_record["reference"], rows=audit_record["rows"],
                        scores=[TransformScore(**c) for c in audit_record["candidates"]])
    reporter.line(f"augmentation by training on cached views ({len(AUDIT_CANDIDATES)} candidates):")
    work = Path(config.out) / "view_trials"
    base = _extract_base(config, plan)
    if config.on_cache:  # the items' caches carry activations at the head cache's tap; the kept ones are trained on
        from headstart.pipeline.finetuning.on_cache import cache_tap

        base = dataclasses.replace(base, tap=cache_tap(plan.head_run.cache)["spec"])
    result = run_view_trials(plan.head_run, base, work, extract_features=extract_features,
                             candidates=AUDIT_CANDIDATES, audit=audit, resume_record=record, save=save,
                             reporter=reporter,
                             keep_views=config.on_cache, views=config.trial_views)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()  # every item's cache is deleted once recorded
    reporter.line(f"augmentation trials ({result.seconds:.1f} s) → --augment {result.augment}")
    return {**result.to_dict(), "done": True}


def kept_views(resume_record: dict) -> list[tuple[str, str]] | None:
    """(item, cache path) of each item the view trials kept with its cache (``--on-cache --augment auto``);
    None when no view trials ran."""
    if "view_trials" not in resume_record:
        return None
    candidates = resume_record["view_trials"].get("candidates") or []
    candidates = candidates.values() if isinstance(candidates, dict) else candidates  # a record still under way
    return [(c["item"], c["views_cache"]) for c in candidates if c.get("kept") and c.get("views_cache")]


def _extract_base(config: FinetuneConfig, plan: Any) -> Any:
    """The head cache's extraction (backbone, weights, size, pooling, dtype) on finetune's SOURCE."""
    from headstart.pipeline.config import ExtractConfig

    spec, chain = plan.source_spec, plan.chain
    return ExtractConfig(source=spec.source, split_specs=dict(spec.split_specs),
                         validation_fraction=spec.validation_fraction, test_fraction=spec.test_fraction,
                         path_column=spec.path_column, label_column=spec.label_column, images=spec.images,
                         multi_label=spec.multi_label, backbone=chain.backbone.name, weights=chain.backbone.weights,
                         alpha=chain.backbone.alpha, image_size=chain.image_size, pooling=chain.pooling,
                         dtype=plan.head_run.cache_config.get("dtype", "float32"), batch_size=config.batch_size,
                         seed=config.seed)


def probe_rates(config: FinetuneConfig, plan: Any, model: Any, *, prepare: Callable[[str], None], train: Any,
                score: Callable[[], float], measure: str, seeded_val: dict | None, resume_record: dict,
                save: Callable[[], None], reporter: Reporter) -> Any:
    """``--probe``'s short fine-tunes; returns a ``rate_probes.ProbeResult`` (None without ``--probe``, and
    with ``--on-cache``, whose fit tries the rates itself).

    Args:
        prepare: unfreezes as an ``--unfreeze`` value says and recompiles.
        train: the training batches. score: the model's validation ``measure`` as it is now.
        seeded_val: the seeded model's validation record (``stage_gate.seeded_validation``).
    """
    from headstart.pipeline.finetuning import rate_probes

    probe = rate_probes.parse_probe(config.probe)
    if not probe or config.on_cache:  # on the cache each rate trains to early stopping instead (finetuning/on_cache.py)
        return None
    if not plan.val_split:
        raise OptionError(Arg("probe"), " needs a validation split to judge the probes on, and SOURCE has none",
                          value=config.probe)
    done = resume_record.setdefault("probes", {})

    def keep(result: Any) -> None:
        done[result.name] = result.to_dict()
        save()

    steps = probe_steps(config, plan)
    return rate_probes.probe_rates(model, probe=probe, lr=config.lr, unfreeze=config.unfreeze, steps=steps, train=train,
                                   score=score, measure=measure, seeded=(seeded_val or {}).get(measure),
                                   prepare=prepare, seeded_weights=model.get_weights(), done=done, save=keep, reporter=reporter)


def probe_steps(config: FinetuneConfig, plan: Any) -> int:
    """``--probe-steps``, or one epoch of training batches capped at ``MAX_PROBE_STEPS``."""
    from headstart.pipeline.finetuning.rate_probes import MAX_PROBE_STEPS

    per_epoch = max(1, -(-int(plan.source.count("train") or 0) // config.batch_size))
    return min(config.probe_steps or MAX_PROBE_STEPS, per_epoch)


def with_choices(config: FinetuneConfig, augment: str, probes: Any) -> FinetuneConfig:
    """The config the model is built and fitted with: the chosen augmentation, rate and depth."""
    chosen = {"augment": augment}
    if probes is not None:
        chosen.update(lr=probes.lr, unfreeze=probes.unfreeze)
    return dataclasses.replace(config, **chosen)


def recipe_record(resume_record: dict, probes: Any) -> dict:
    """run.json's "recipe": what the audit and the probes decided (empty when neither ran)."""
    record = {}
    if "view_trials" in resume_record:  # the verdict, with the audit that pre-filtered it
        record["augment"] = {**resume_record["view_trials"], "audit": resume_record["audit"]}
    elif "audit" in resume_record:  # a run recorded before the view trials existed
        record["augment"] = resume_record["audit"]
    if probes is not None:
        record["probes"] = probes.to_dict()
    return record
