"""The steps of ``headstart run`` (``headstart.pipeline.run.auto.recipe``: ``--recipe auto``, and ``--recipe
guide`` with every decision fixed), each a stage of stages.json.

Every step logs one header line, reuses its record when its key is unchanged, and returns the
record it saved; ``decisions`` turns the records into the decisions table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from headstart.pipeline.report.decisions import Candidate, Decision, explicit_decision
from headstart.pipeline.run.auto.head import auto_head_config, head_searchable, monitor_measure, search_space
from headstart.pipeline.run.keys import evaluate_key, extract_key, finetune_key, input_files, stage_key
from headstart.pipeline.run.toml_config import stage_values


def _shown(path: Any) -> str:
    import os

    relative = os.path.relpath(str(path))
    return str(path) if relative.startswith("..") else relative


def extract_step(steps: Any, size: int) -> dict:
    """The cache at ``size`` px: features.h5, or candidates/size-N/features.h5 for a size not at the top."""
    from headstart.pipeline.run.auto.finetune import auto_tap
    from headstart.pipeline.run.stages import extract_stage

    path = steps.layout.size_cache(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = steps.stage("extract", size)
    config = steps.at_size(size)
    if not steps.fixed:
        # With the tap the fine-tune trains on the cache (run.auto.finetune); the key records it, so a
        # resumed run reuses this cache and a cache without it is extracted again.
        config = dataclasses.replace(config, extract=dataclasses.replace(config.extract, tap=auto_tap(config)))
    tap = f", tap {config.extract.tap}" if config.extract.tap and not steps.fixed else ""
    steps.console.line(steps.header("extract", size, _shown(path)) + tap)
    record = extract_stage(config, path, steps.state.get(name), steps.console, steps.overwrite,
                           key=extract_key(config))
    return steps.save(name, {**record, "path": str(path), "image_size": size, "multi_label": _multi_label(path)})


def plan_step(steps: Any, first: dict) -> Any:
    """The search, sized to the data and the measured speeds, printed before it is spent (the guide's
    recipe: the fixed plan, one size and no search, neither printed nor saved)."""
    from headstart.features.registry import get_backbone_spec
    from headstart.pipeline.evidence.audit import AUDIT_CANDIDATES
    from headstart.pipeline.run.auto.plan import RecipePlan, plan_recipe
    from headstart.pipeline.run.auto.finetune import auto_tap

    config = steps.config
    if steps.fixed:
        return RecipePlan([config.extract.image_size], trials=0, audit=False, audit_candidates=0, probes=[],
                          depth_probe=False, probe_steps=0, budget_seconds=0.0, guide_seconds=0.0)
    key = stage_key({"cache": first["fingerprint"], "budget": config.budget, "explicit": list(config.explicit),
                     "finetune": stage_values(config, "finetune")})
    record = steps.state.get("plan")
    if record and record.get("key") == key:
        plan = RecipePlan.from_dict(record["plan"])
    else:
        ex = config.extract
        native = None
        if steps.open("extract.image_size") and not ex.backbone.startswith("hub:"):
            native = get_backbone_spec(ex.backbone).native_size
        speeds = _speeds(config, first)
        # The fine-tune runs on the tapped cache (run.auto.finetune): no end-to-end probes to plan (its
        # rates train to early stopping within the fine-tune itself); an open --augment is chosen by
        # the view trials (the audit's pre-filter and each item's views and heads), planned here.
        trials = len(AUDIT_CANDIDATES) if steps.open("finetune.augment") and auto_tap(config) else 0
        plan = plan_recipe(speeds, native_size=native, search_head=head_searchable(config), audit_candidates=trials,
                           probe_lrs=(), probe_depth=False, budget_minutes=config.budget,
                           trials=config.sweep.get("trials"), on_cache=auto_tap(config) is not None)
        steps.save("plan", {"key": key, "done": True, "status": "ran", "seconds": 0.0, "plan": plan.to_dict()})
    steps.console.line(f"[auto] recipe: {plan.describe()}")
    return plan


def _speeds(config: Any, first: dict) -> Any:
    """What the first extraction measured, as the plan reads it."""
    from headstart.pipeline.run.auto.plan import Speeds

    return Speeds(image_size=config.extract.image_size, rows=dict(first["splits"]),
                  images_per_second=float(first.get("images_per_second") or 50.0),
                  batch_size=config.finetune.batch_size, epochs=config.finetune.epochs)


def augment_plan_step(steps: Any, plan: Any, size: int, candidates: dict[int, tuple[dict, dict]]) -> Any:
    """The augmentation trials priced again at the chosen size, against what the budget has left after
    the sizes' measured extraction and sweeps (``run.auto.plan.plan_augmentation``); said in one line
    when that cuts them. Saved (and reused on resume), so a resumed run keeps what it printed."""
    from headstart.pipeline.run.auto.plan import RecipePlan, plan_augmentation

    if not plan.audit:
        return plan
    first = steps.config.extract.image_size
    spent = sum(float(head.get("seconds") or 0) + (float(cache.get("seconds") or 0) if s != first else 0.0)
                for s, (cache, head) in candidates.items())
    record = steps.state.get("augment_plan")
    key = stage_key({"plan": plan.to_dict(), "size": size})
    if record and record.get("key") == key:
        return RecipePlan.from_dict(record["plan"])
    speeds = _speeds(steps.config, candidates[first][0])
    replanned = plan_augmentation(plan, speeds, size, spent)
    steps.save("augment_plan", {"key": key, "done": True, "status": "ran", "seconds": 0.0, "spent": spent,
                                "plan": replanned.to_dict()})
    if replanned.cuts != plan.cuts:
        uncut = plan_augmentation(plan, speeds, size, -float("inf")).estimates["audit"]
        steps.console.line(f"[auto] the augmentation trials at {size} px would take about {uncut / 60:.0f} min, "
                          f"{max(0.0, plan.budget_seconds - spent) / 60:.0f} min of the budget is left: "
                          + ", ".join(c.split(": ", 1)[-1] for c in replanned.cuts[len(plan.cuts):]))
    return replanned


def head_step(steps: Any, size: int, cache: dict, plan: Any) -> dict:
    """The head on a cache: the sweep (trials from the plan), or train-head when it cannot search; the
    guide's recipe: its own [head] options (a [sweep] section given: that sweep), as the guide has them."""
    from headstart.pipeline.run.stages import SweepPlan, head_stage

    config = steps.config
    sweep = None
    if plan.trials:
        sweep = SweepPlan(search_space(config), plan.trials_at(size), steps.layout.size_sweep(size))
    head_dir = steps.layout.size_head(size)
    what = f"sweep of {sweep.trials} trials" if sweep else "train-head"
    steps.console.line(steps.header("head", size, _shown(head_dir), what))
    if steps.fixed:
        head_config, key = config, stage_key(guide_head_key(config, cache))
    else:
        head_config = dataclasses.replace(config, head=auto_head_config(config))
        key = stage_key({**stage_values(head_config, "head"), **input_files(config), "cache": cache["fingerprint"],
                         "sweep": [sweep.space.to_dict(), sweep.trials] if sweep else None})
    name = steps.stage("head", size)
    record = head_stage(head_config, Path(cache["path"]), head_dir, steps.state.get(name), steps.console, key=key,
                        sweep=sweep)
    return steps.save(name, {**record, "path": str(head_dir), "image_size": size})


def guide_head_key(config: Any, cache: dict) -> dict:
    """The guide's head stage's key: its [head] options, the files it reads, the cache; [sweep] only
    when a sweep is the head (without one the key stays as it was before sweeps)."""
    key = {**stage_values(config, "head"), **input_files(config), "cache": cache["fingerprint"]}
    if config.sweep.get("trials"):
        key["sweep"] = config.sweep
    return key


def diagnose_step(steps: Any, cache: dict) -> dict:
    """``diagnose`` of the first cache into RUN/diagnose/ (with ``--diagnose``)."""
    from headstart.pipeline.run.stages import diagnose_stage

    out = steps.layout.diagnose
    steps.console.line(f"[diagnose] → {_shown(out)}")
    return steps.save("diagnose", diagnose_stage(steps.config, Path(cache["path"]), out, steps.state.get("diagnose"),
                                                 steps.console, key=stage_key({"cache": cache["fingerprint"],
                                                                               "seed": steps.config.head.seed})))


def _multi_label(cache_path: Any) -> bool:
    from headstart.features.cache import open_cache

    with open_cache(cache_path) as cache:
        return bool(cache.split("train").multi_label)


def choose_size(steps: Any, candidates: dict[int, tuple[dict, dict]]) -> tuple[int, Decision]:
    """The image size whose best head scores better on validation; a tie keeps the first (smaller) one."""
    config = steps.config
    first = config.extract.image_size
    if not steps.open("extract.image_size"):
        return first, explicit_decision("image_size", first)
    measure = monitor_measure(config, any(cache.get("multi_label") for cache, _ in candidates.values()))
    scored = []
    for size, (cache, head) in candidates.items():
        value = (head.get("validation") or {}).get(measure)
        scored.append((size, value, float(cache.get("seconds") or 0) + float(head.get("seconds") or 0)))
    lower = measure == "loss"  # the rest (balanced accuracy, macro-F1, mAP) are higher-is-better
    best = scored[0]
    for entry in scored[1:]:
        if entry[1] is not None and (best[1] is None or (entry[1] < best[1] if lower else entry[1] > best[1])):
            best = entry
    why = ("the backbone's native size is the default one" if len(scored) == 1
           else f"the better best head on validation {measure.replace('_', ' ')}")
    return best[0], Decision("image_size", best[0], measure=f"val_{measure}", why=why,
                             # what trying the sizes that lost cost; the chosen size's head is the head row's
                             seconds=sum(s for size, _, s in scored if size != best[0]),
                             candidates=[Candidate(size, value, seconds, kept=size == best[0])
                                         for size, value, seconds in scored])


def baselines_step(steps: Any, size: int, cache: dict) -> dict:
    """A k-NN and a logistic probe on the chosen cache (seconds), for the summary's comparison."""
    from headstart.pipeline.evidence.baselines import feature_baselines

    key = stage_key({"cache": cache["fingerprint"], "seed": steps.config.head.seed})
    record = steps.state.get("baselines")
    steps.console.line(f"[auto] baselines on the {size} px cache")
    if not (record and record.get("key") == key):
        import time

        start = time.perf_counter()
        scores = feature_baselines(cache["path"], seed=steps.config.head.seed)
        record = {"key": key, "done": True, "status": "ran", "seconds": time.perf_counter() - start,
                  "cache": cache["path"], "baselines": [b.to_dict() for b in scores]}
        steps.save("baselines", record)
    for b in record["baselines"]:
        test = f", test {b['test'][b['measure']]:.4f}" if b.get("test") else ""
        steps.console.line(f"  {b['label']}: validation {b['validation'][b['measure']]:.4f}{test}")
    return record


#: Fine-tuning epochs under auto unless set: early stopping ends each on-cache fit, not the guide's 10
#: (a fine-tune whose last epoch was its best goes on), within a limit of three times the guide's.
FINETUNE_EPOCHS = 30


def finetune_step(steps: Any, size: int, extract: dict, head: dict, plan: Any, callbacks: Sequence[Any]) -> dict:
    """finetune --on-cache from the chosen head (each open rate to early stopping) into finetune/, then
    the fine-tuned model against the head on validation, paired (``run.auto.finetune``)."""
    from headstart.pipeline.run.auto.finetune import finetune_line, paired_evidence
    from headstart.pipeline.run.stages import finetune_stage

    config = dataclasses.replace(steps.at_size(size), finetune=steps.finetune_options(FINETUNE_EPOCHS, plan))
    ft_key = finetune_key(config, head["head_sha256"])
    on_cache = " --on-cache" if config.finetune.on_cache and not steps.fixed else ""
    steps.console.line(steps.header("finetune", size, _shown(steps.layout.finetune), _shown(head["path"]) + on_cache))
    previous = steps.state.get("finetune")
    record = finetune_stage(config, steps.run_dir, previous, steps.console, key=ft_key,
                            train_images=int(extract["splits"].get("train", 0)),
                            started=lambda: steps.save("finetune", {"key": ft_key, "done": False}),
                            callbacks=callbacks, head_dir=Path(head["path"]))
    if steps.fixed:  # the guide's fine-tune: its stage gate decides, as the guide's does
        return steps.save("finetune", record)
    if previous and "paired" in previous and previous.get("model_sha256") == record.get("model_sha256"):
        evidence = previous["paired"]
    else:
        evidence = paired_evidence(Path(head["path"]), steps.layout.finetune)
    lr = _kept_lr(steps.layout.finetune)
    steps.console.line(f"  {finetune_line(record.get('kept', 'finetuned'), evidence, lr)}")
    return steps.save("finetune", {**record, "paired": evidence, "on_cache_lr": lr})


def _kept_lr(finetune_dir: Path) -> Any:
    from headstart.pipeline.store.rundir import RunDir

    return RunDir(finetune_dir).metrics().get("lr")


def evaluate_step(steps: Any, finetune: dict) -> dict:
    """The test split through the final model, as the guide's evaluate stage."""
    from headstart.pipeline.run.stages import evaluate_stage

    steps.console.line(steps.header("evaluate", 0, _shown(steps.layout.finetune / "model.keras")))
    return steps.save("evaluate", evaluate_stage(steps.config, steps.run_dir, steps.state.get("evaluate"),
                                                 steps.console, key=evaluate_key(steps.config, finetune["model_sha256"])))


def decisions(steps: Any, plan: Any, size_decision: Decision, head: dict, finetune: dict) -> list[Decision]:
    """The decisions table's rows, from the steps' records."""
    from headstart.pipeline.run.auto.decisions import augment_decision, finetune_decisions, head_decision

    return [size_decision, head_decision(steps, head), augment_decision(steps, finetune, plan),
            *finetune_decisions(steps, finetune)]
