"""``headstart run``'s one orchestrator: the guide's stages, with every choice left open made on
validation (``--recipe auto``), or every choice fixed to the guide's value (``--recipe guide``).

The order follows dependency and cost (every step but the last works on caches or on validation):

1. extract the cache at ``--image-size`` (the guide's 150 px unless given);
2. plan the search from what that measured (``headstart.pipeline.run.auto.plan``) and print it (once
   the size is chosen, the augmentation trials are priced again at it: ``plan_augmentation``);
3. the head: the sweep, its trials sized to the validation split, each trial stopped by early
   stopping alone (no epoch limit cuts a head that is still improving);
4. the image size: when ``--image-size`` was not given, the backbone's native training size gets a
   cache and a sweep of its own, and the better best head on validation (the ``--monitor``
   measure) decides; a tie keeps the smaller, cheaper size;
5. baselines on the chosen cache: a k-NN and a logistic probe;
6. finetune from the chosen head with ``--augment auto`` (the invariance audit) and ``--probe``
   (learning rate and depth from short fine-tunes; none, when no probe beats the head);
7. evaluate, as the guide does.

A flag or TOML key the user set is never second-guessed: its step is skipped and the value used as
given. Each step is a stage of stages.json with a key, so a killed run resumes after its last
finished step. The decisions, their candidates, scores and cost go to summary.json's ``"recipe"``
and the final model's run.json (the finetune stage records its own), and are printed as a table.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from headstart.pipeline.run.toml_config import RunConfig

def run_auto(config: RunConfig, run_dir: Path, console: Any, save: Callable[[str, dict], dict], state: dict, *,
             overwrite: bool, finetune_callbacks: Sequence[Any]) -> dict[str, dict]:
    """Runs the recipe's steps into ``run_dir``; returns the stage records the summary reads.

    The one orchestrator of ``headstart run``: ``--recipe guide`` is this recipe with every decision
    fixed to the guide's value (``_Steps.fixed``: one image size, the [head] options as given, no
    baselines, fine-tuning with the [finetune] options as given), not a second runner.

    Args:
        config: the resolved run configuration (``config.explicit``: what the user set).
        run_dir: the claimed run directory.
        console: status and progress lines.
        save: stores one stage's record in stages.json (and returns it).
        state: stages.json as read at the start (the records of a run being resumed).
        overwrite: a run directory made with another configuration may be redone.
        finetune_callbacks: extra Keras callbacks for the fine-tuning ``fit``.

    Returns:
        {"extract", "head", "finetune", "evaluate": the chosen path's records; auto adds "recipe":
        the decisions}.
    """
    from headstart.pipeline.run.auto.logistic import head_candidate_step
    from headstart.pipeline.run.auto.steps import (augment_plan_step, baselines_step, choose_size, diagnose_step,
                                                   evaluate_step, extract_step, finetune_step, head_step, plan_step)

    steps = _Steps(config, run_dir, console, save, state, overwrite)
    first = extract_step(steps, config.extract.image_size)
    if config.diagnose:
        diagnose_step(steps, first)
    plan = plan_step(steps, first)
    candidates = {config.extract.image_size: (first, head_step(steps, config.extract.image_size, first, plan))}
    for size in plan.image_sizes[1:]:
        cache = extract_step(steps, size)
        candidates[size] = (cache, head_step(steps, size, cache, plan))
    size, size_decision = choose_size(steps, candidates)
    extract, head = steps.promote(size, candidates)
    plan = augment_plan_step(steps, plan, size, candidates)
    baselines = {} if steps.fixed else baselines_step(steps, size, extract)
    if not steps.fixed:
        head = head_candidate_step(steps, size, extract, head, baselines)  # the logistic probe, when it beats the sweep
    finetune = finetune_step(steps, size, extract, head, plan, finetune_callbacks)
    evaluate = evaluate_step(steps, finetune)
    records = {"extract": extract, "head": head, "finetune": finetune, "evaluate": evaluate}
    if steps.fixed:
        return records
    recipe = steps.recipe_record(plan, size_decision, head, finetune, baselines)
    _record_with_model(steps.layout.finetune, recipe)
    return {**records, "recipe": recipe}


def _record_with_model(model_dir: Path, recipe: dict) -> None:
    """The final model's run.json carries how it was chosen: auto's decisions beside what its own
    audit and probes recorded."""
    from headstart.pipeline.store.rundir import RunDir

    run = RunDir(model_dir)
    own = run.record.get("recipe") or {}
    if own.get("decisions") != recipe["decisions"]:
        run.update_record(recipe={**own, **{k: recipe[k] for k in ("decisions", "plan", "baselines")}})


@dataclasses.dataclass
class _Steps:
    """What every step needs: the config, where to write, and how to save its record."""

    config: RunConfig
    run_dir: Path
    console: Any
    save: Callable[[str, dict], dict]
    state: dict
    overwrite: bool

    @property
    def fixed(self) -> bool:
        """The guide's recipe: every decision fixed to the guide's value, nothing searched."""
        return self.config.recipe == "guide"

    def open(self, name: str) -> bool:
        """Whether auto decides ``name`` ("section.key"): the user did not set it (never, for the guide)."""
        return not self.fixed and name not in self.config.explicit

    def header(self, step: str, size: int, path: str, detail: str = "") -> str:
        """A step's status line: numbered stages for the guide, "[auto] … at N px" for auto."""
        if self.fixed:
            return {"extract": f"[1/4] extract-features → {path}", "head": f"[2/4] {'sweep' if self.config.sweep.get('trials') else 'train-head'} → {path}",
                    "finetune": f"[3/4] finetune → {path}", "evaluate": f"[4/4] evaluate {path}"}[step]
        return {"extract": f"[auto] extract-features at {size} px → {path}", "head": f"[auto] {detail} on {size} px → {path}",
                "finetune": f"[auto] finetune from {detail} → {path}", "evaluate": f"[auto] evaluate {path}"}[step]

    def finetune_options(self, epochs: int, plan: Any = None) -> Any:
        """finetune's options: the guide's as given; auto's on the cache, each open rate trained to
        early stopping within ``epochs``, the augmentation trials as ``plan`` has them (``run.auto.finetune``)."""
        from headstart.pipeline.run.auto.finetune import auto_tap, on_cache_config

        if self.fixed:
            return self.config.finetune
        return on_cache_config(self, epochs, tapped=auto_tap(self.config) is not None, plan=plan)

    @property
    def layout(self) -> Any:
        """The run directory's layout, with the image size stages.json last put at the top."""
        from headstart.pipeline.store.run_layout import LAYOUT_STATE, RunLayout

        if not hasattr(self, "_layout"):
            top = (self.state.get(LAYOUT_STATE) or {}).get("top_size") or self.config.extract.image_size
            self._layout = RunLayout(self.run_dir, top_size=int(top))
        return self._layout

    def size_dir(self, size: int) -> Path:
        """Where an image size's cache, head and sweep are: the top, or RUN/candidates/size-N/."""
        return self.layout.size_dir(size)

    def promote(self, size: int, candidates: dict[int, tuple[dict, dict]]) -> tuple[dict, dict]:
        """Puts the chosen size's cache and head at the top (renames), the others under candidates/,
        and saves each moved record with its new paths; returns the chosen (extract, head) records."""
        from headstart.pipeline.store.run_layout import LAYOUT_STATE

        if self.layout.promote(size):
            self.console.line(f"[auto] {size} px chosen: its cache and head moved to the top of {self.run_dir}; "
                             f"the others are candidates in {self.layout.path / 'candidates'}")
            for other, (cache, head) in candidates.items():
                _repoint_head(self.layout.size_head(other), self.layout.size_cache(other))
                candidates[other] = (self.save(self.stage("extract", other),
                                               {**cache, "path": str(self.layout.size_cache(other))}),
                                     self.save(self.stage("head", other), self._moved_head(head, other)))
            # only after a swap: which size is at the top, for a resumed run (a record like the others)
            self.save(LAYOUT_STATE, {"top_size": size, "done": True, "status": "ran", "seconds": 0.0})
        return candidates[size]

    def stage(self, name: str, size: int) -> str:
        return name if size == self.config.extract.image_size else f"{name}@{size}"

    def at_size(self, size: int) -> RunConfig:
        return dataclasses.replace(self.config, extract=dataclasses.replace(self.config.extract, image_size=size))

    def _moved_head(self, head: dict, size: int) -> dict:
        """A head record with the paths its size's folders now have."""
        sweep = head.get("sweep")
        if sweep and sweep.get("leaderboard"):
            sweep = {**sweep, "leaderboard": str(self.layout.size_sweep(size) / "leaderboard.csv")}
        return {**head, "path": str(self.layout.size_head(size)), **({"sweep": sweep} if sweep else {})}

    def recipe_record(self, plan: Any, size_decision: Any, head: dict, finetune: dict, baselines: dict) -> dict:
        from headstart.pipeline.run.auto.steps import decisions

        found = _counted_once(decisions(self, plan, size_decision, head, finetune), finetune)
        return {"recipe": "auto", "plan": plan.to_dict(), "decisions": [d.to_dict() for d in found],
                "baselines": baselines.get("baselines", []), "head": head.get("path"),
                "cache": baselines.get("cache")}


def _repoint_head(head_dir: Path, cache: Path) -> None:
    """A moved head's run.json names its cache where it now is (finetune reads it for class weights)."""
    from headstart.pipeline.store.rundir import RunDir

    run = RunDir(head_dir)
    if run.complete and run.record.get("cache", {}).get("path") != str(cache):
        run.update_record(cache={**run.record["cache"], "path": str(cache)})


def _counted_once(found: list[Any], finetune: dict) -> list[Any]:
    """The decisions with each second in one row, and no value shown as chosen that nothing used.

    The depth probes at the chosen rate include the one the rate row already counts, and the
    finetune stage's seconds include its audit, view trials and probes (or on-cache fine-tunes at
    each rate): the depth row keeps the probes the rate row has not, the fine-tuning row what is
    left of its stage after the augmentation, rate and depth rows. When the head was kept, the rate
    and depth tuned nothing: they show "not used".
    """
    rows = {d.name: d for d in found}
    probes = ((finetune.get("recipe") or {}).get("probes") or {}).get("probes") or []
    audit = ((finetune.get("recipe") or {}).get("augment") or {}).get("seconds") or 0.0
    probed = sum(float(p.get("seconds") or 0) for p in probes)
    if "lr" in rows and "unfreeze" in rows and not rows["unfreeze"].explicit:
        rows["unfreeze"].seconds = max(0.0, probed - (0.0 if rows["lr"].explicit else rows["lr"].seconds))
    if "finetune" in rows:
        # The augmentation, rate and depth rows' seconds were all spent inside the finetune stage (the
        # audit and view trials, the end-to-end probes or the on-cache fine-tunes at each rate).
        inside = sum(rows[name].seconds for name in ("augment", "lr", "unfreeze")
                     if name in rows and not rows[name].explicit)
        rows["finetune"].seconds = max(0.0, float(finetune.get("seconds") or 0) - max(inside, probed + float(audit)))
    if (finetune.get("kept") or (finetune.get("stage_gate") or {}).get("kept")) == "seeded":
        for name in ("lr", "unfreeze"):
            if name in rows and not rows[name].explicit:
                rows[name].chosen = "not used"
                rows[name].why = "the head was kept: no fine-tuned model uses it"
                for candidate in rows[name].candidates:
                    candidate.kept = False
    return found
