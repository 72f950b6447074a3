"""What ``finetune`` may choose for itself on validation: the augmentation and the rate and depth.

``--augment auto`` runs the invariance audit (``headstart.pipeline.recipe.audit``) with the head run's
head before the model is built, and fine-tunes with the items it keeps. ``--probe lr,unfreeze``
runs short fine-tunes from the seeded model (``headstart.pipeline.training.rate_probes``) and
fine-tunes at the best rate and depth, or not at all when no probe improves on the seeded model.
Both results are saved in the run's progress record (a resumed run does not redo them) and in
run.json's "recipe".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from headstart.pipeline.config import FinetuneConfig
from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError

AUTO = "auto"


def check_choices(config: FinetuneConfig) -> None:
    """The TF-free checks of ``--augment auto``, ``--probe`` and ``--on-cache``.

    Raises:
        OptionError: ``--augment auto`` without ``--head``, or a bad ``--probe``; ``--on-cache`` without
            ``--head`` (the head run names the cache) or with ``--augment auto`` / ``--probe unfreeze``
            (they judge end-to-end fine-tunes on images).
    """
    from headstart.pipeline.data.augment import parse_augment_spec
    from headstart.pipeline.training.rate_probes import parse_probe

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
    if config.on_cache and (config.augment.strip().lower() == AUTO or "unfreeze" in parse_probe(config.probe)):
        raise OptionError(Arg("on_cache"), " trains on the cached views and above the cache's tap, so ",
                          Arg("augment", "auto"), " and ", Arg("probe", "unfreeze"), " (which judge end-to-end "
                          "fine-tunes on images) do not apply; ", Arg("probe", "lr"), " does")


def choose_augment(config: FinetuneConfig, plan: Any, progress: dict, save: Callable[[], None],
                   log: Callable[[str], None]) -> str:
    """The augmentation to fine-tune with: ``--augment`` as given, or the audit's verdict (``auto``)."""
    if config.augment.strip().lower() != AUTO:
        return config.augment
    if "audit" not in progress:
        from headstart.pipeline.recipe.audit import audit_head_run

        if not plan.val_split:
            raise OptionError(Arg("augment", "auto"), " needs a validation split to audit on, and SOURCE has none")
        result = audit_head_run(plan.head_run, plan.source, split=plan.val_split, weights=plan.recipe["weights"])
        progress["audit"] = result.to_dict()
        save()
        kept = {s.item for s in result.scores if s.kept}
        log(f"augmentation audit ({result.rows} validation images, {result.seconds:.1f} s): "
            + ", ".join(f"{s.item} {s.measure:.3f}{'' if s.item in kept else ' ✗'}" for s in result.scores)
            + f" (untransformed {result.reference:.3f}) → --augment {result.augment}")
    return progress["audit"]["augment"]


def probe_rates(config: FinetuneConfig, plan: Any, model: Any, *, prepare: Callable[[str], None], train: Any,
                score: Callable[[], float], measure: str, seeded_val: dict | None, progress: dict,
                save: Callable[[], None], log: Callable[[str], None]) -> Any:
    """``--probe``'s short fine-tunes; returns a ``rate_probes.ProbeResult`` (None without ``--probe``, and
    with ``--on-cache``, whose fit tries the rates itself).

    Args:
        prepare: unfreezes as an ``--unfreeze`` value says and recompiles.
        train: the training batches. score: the model's validation ``measure`` as it is now.
        seeded_val: the seeded model's validation record (``stage_gate.seeded_validation``).
    """
    from headstart.pipeline.training import rate_probes

    probe = rate_probes.parse_probe(config.probe)
    if not probe or config.on_cache:  # on the cache each rate trains to early stopping instead (finetune_on_cache)
        return None
    if not plan.val_split:
        raise OptionError(Arg("probe"), " needs a validation split to judge the probes on, and SOURCE has none",
                          value=config.probe)
    done = progress.setdefault("probes", {})

    def keep(result: Any) -> None:
        done[result.name] = result.to_dict()
        save()

    steps = probe_steps(config, plan)
    return rate_probes.probe_rates(model, probe=probe, lr=config.lr, unfreeze=config.unfreeze, steps=steps, train=train,
                                   score=score, measure=measure, seeded=(seeded_val or {}).get(measure),
                                   prepare=prepare, seeded_weights=model.get_weights(), done=done, save=keep, log=log)


def probe_steps(config: FinetuneConfig, plan: Any) -> int:
    """``--probe-steps``, or one epoch of training batches capped at ``MAX_PROBE_STEPS``."""
    from headstart.pipeline.training.rate_probes import MAX_PROBE_STEPS

    per_epoch = max(1, -(-int(plan.source.count("train") or 0) // config.batch_size))
    return min(config.probe_steps or MAX_PROBE_STEPS, per_epoch)


def with_choices(config: FinetuneConfig, augment: str, probes: Any) -> FinetuneConfig:
    """The config the model is built and fitted with: the chosen augmentation, rate and depth."""
    chosen = {"augment": augment}
    if probes is not None:
        chosen.update(lr=probes.lr, unfreeze=probes.unfreeze)
    return dataclasses.replace(config, **chosen)


def recipe_record(progress: dict, probes: Any) -> dict:
    """run.json's "recipe": what the audit and the probes decided (empty when neither ran)."""
    record = {}
    if "audit" in progress:
        record["augment"] = progress["audit"]
    if probes is not None:
        record["probes"] = probes.to_dict()
    return record
