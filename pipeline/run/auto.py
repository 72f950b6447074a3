"""``headstart run --recipe auto``: the guide's stages, with every choice left open made on validation.

The order follows dependency and cost (every step but the last works on caches or on validation):

1. extract the cache at ``--image-size`` (the guide's 150 px unless given);
2. plan the search from what that measured (``headstart.pipeline.recipe.plan``) and print it;
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
    """Runs the auto recipe's steps into ``run_dir``; returns the stage records the summary reads.

    Args:
        config: the resolved run configuration (``config.explicit``: what the user set).
        run_dir: the claimed run directory.
        console: status and progress lines.
        save: stores one stage's record in stages.json (and returns it).
        state: stages.json as read at the start (the records of a run being resumed).
        overwrite: a run directory made with another configuration may be redone.
        finetune_callbacks: extra Keras callbacks for the fine-tuning ``fit``.

    Returns:
        {"extract", "head", "finetune", "evaluate": the chosen path's records, "recipe": the decisions}.
    """
    from headstart.pipeline.run.auto_logistic import head_candidate_step
    from headstart.pipeline.run.auto_steps import (baselines_step, choose_size, evaluate_step, extract_step,
                                                   finetune_step, head_step, plan_step)

    steps = _Steps(config, run_dir, console, save, state, overwrite)
    first = extract_step(steps, config.extract.image_size)
    plan = plan_step(steps, first)
    candidates = {config.extract.image_size: (first, head_step(steps, config.extract.image_size, first, plan))}
    for size in plan.image_sizes[1:]:
        cache = extract_step(steps, size)
        candidates[size] = (cache, head_step(steps, size, cache, plan))
    size, size_decision = choose_size(steps, candidates)
    extract, head = candidates[size]
    baselines = baselines_step(steps, size, extract)
    head = head_candidate_step(steps, size, extract, head, baselines)  # the logistic probe, when it beats the sweep
    finetune = finetune_step(steps, size, extract, head, plan, finetune_callbacks)
    evaluate = evaluate_step(steps, finetune)
    recipe = steps.recipe_record(plan, size_decision, head, finetune, baselines)
    _record_with_model(run_dir / "finetune", recipe)
    return {"extract": extract, "head": head, "finetune": finetune, "evaluate": evaluate, "recipe": recipe}


def _record_with_model(model_dir: Path, recipe: dict) -> None:
    """The final model's run.json carries how it was chosen: auto's decisions beside what its own
    audit and probes recorded."""
    from headstart.pipeline.report.rundir import RunDir

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

    def open(self, name: str) -> bool:
        """Whether auto decides ``name`` ("section.key"): the user did not set it."""
        return name not in self.config.explicit

    def size_dir(self, size: int) -> Path:
        """Where the steps of an image size other than the first write: RUN_DIR/recipe/size-N/."""
        return self.run_dir if size == self.config.extract.image_size else self.run_dir / "recipe" / f"size-{size}"

    def stage(self, name: str, size: int) -> str:
        return name if size == self.config.extract.image_size else f"{name}@{size}"

    def at_size(self, size: int) -> RunConfig:
        return dataclasses.replace(self.config, extract=dataclasses.replace(self.config.extract, image_size=size))

    def recipe_record(self, plan: Any, size_decision: Any, head: dict, finetune: dict, baselines: dict) -> dict:
        from headstart.pipeline.run.auto_steps import decisions

        found = decisions(self, plan, size_decision, head, finetune)
        return {"recipe": "auto", "plan": plan.to_dict(), "decisions": [d.to_dict() for d in found],
                "baselines": baselines.get("baselines", []), "head": head.get("path"),
                "cache": baselines.get("cache")}
