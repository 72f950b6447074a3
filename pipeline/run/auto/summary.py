"""How ``--recipe auto`` reports itself: the decisions table, the baselines, and the one-line warning
when the final model does worse on validation than a baseline on the cached features."""

from __future__ import annotations

from typing import Any


def format_recipe(summary: dict) -> str:
    """The decisions table and the baselines beside the final model (empty under ``--recipe guide``)."""
    from headstart.pipeline.report.decisions import format_decisions

    recipe = summary.get("recipe") or {}
    if recipe.get("recipe") != "auto":
        return ""
    lines = ["recipe auto: " + (recipe.get("plan") or {}).get("text", ""), "",
             format_decisions(recipe.get("decisions") or []), ""]
    final = summary.get("validation") or {}
    for baseline in recipe.get("baselines") or []:
        measure = baseline["measure"]
        test = (baseline.get("test") or {}).get(measure)
        lines.append(f"baseline {baseline['label']}: validation {measure} {baseline['validation'][measure]:.4f}"
                     + (f", test {test:.4f}" if test is not None else ""))
    warning = baseline_warning(final, recipe.get("baselines") or [])
    if warning:
        lines.append(warning)
    return "\n".join(lines)


def baseline_warning(final_validation: dict, baselines: list[dict]) -> str | None:
    """One line when the final model's validation measure is below a baseline's, else None."""
    worse = [b for b in baselines if final_validation.get(b["measure"]) is not None
             and final_validation[b["measure"]] < b["validation"][b["measure"]]]
    if not worse:
        return None
    best = max(worse, key=lambda b: b["validation"][b["measure"]])
    measure = best["measure"]
    return (f"note: the final model's validation {measure} {final_validation[measure]:.4f} is below the "
            f"{best['label']}'s {best['validation'][measure]:.4f} on the cached features")


def recipe_section(config: Any, records: dict[str, dict], seconds: float | None = None) -> dict:
    """summary.json's "recipe": auto's record, or which fixed recipe ran.

    With the run's wall time ``seconds``, auto's decisions end with an "other" row: the time no
    decision spent (extracting the chosen cache, the baselines, evaluate, export, start-up), so the
    cost column adds up to the run's time, each second counted once.
    """
    from headstart.pipeline.report.decisions import OTHER, Decision

    recipe = records.get("recipe")
    if not recipe:
        return {"recipe": config.recipe}
    if seconds is None:
        return recipe
    decisions = [d for d in recipe.get("decisions") or [] if d["name"] != OTHER]
    spent = sum(float(d.get("seconds") or 0) for d in decisions)
    other = Decision(OTHER, "-", seconds=max(0.0, seconds - spent),
                     why="time no decision spent: the chosen cache's extraction, baselines, evaluate, export, start-up")
    return {**recipe, "decisions": [*decisions, other.to_dict()], "seconds": seconds}
