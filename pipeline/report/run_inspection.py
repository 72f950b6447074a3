"""``headstart inspect RUN`` for a ``headstart run`` directory, and the line helpers every
inspection uses: a finished run is read from summary.json (the chosen model's stages, the final
model, the candidates), an unfinished one from stages.json; files are found through ``RunLayout``."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from headstart.features.bounded_parse import loads_json, loads_toml
from headstart.pipeline.errors import RunDirError
from headstart.pipeline.store.run_layout import RunLayout
from headstart.pipeline.store.stage_records import StageSummary

_STAGE_LABELS = {"extract": "extract-features", "head": "train-head", "finetune": "finetune", "evaluate": "evaluate"}


def read_json(path: Path) -> Any:
    try:
        return loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} cannot be read: {exc}") from None


def inspect_pipeline(path: Path) -> dict:
    """A ``headstart run`` directory: a finished one from summary.json (the chosen path's stages, the
    final model, the candidates), an unfinished one from stages.json."""
    layout = RunLayout(path)
    info: dict[str, Any] = {"kind": "pipeline-run", "path": str(path), "complete": layout.summary.is_file()}
    try:
        info["config"] = loads_toml(layout.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        info["config"] = {"error": str(exc).splitlines()[0]}
    info["stages"] = read_json(layout.stages) if layout.stages.is_file() else {}
    if info["complete"]:
        summary = info["summary"] = read_json(layout.summary)
        # stages.json keeps every size's records; summary.json's are the chosen model's path
        info["stages"] = {**info["stages"], **{k: {**v, "done": True} for k, v in (summary.get("stages") or {}).items()},
                          "evaluate": {**(summary.get("stages") or {}).get("evaluate", {}), **(summary.get("test") or {})}}
        info["model"], info["candidates"] = summary.get("model"), summary.get("candidates") or {}
    info["files"] = sorted(f.name + ("/" if f.is_dir() else "") for f in path.iterdir() if not f.name.startswith("."))
    return info


def settings(values: dict, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items() if k not in skip and v not in (None, [], {}, ""))


def wrap(label: str, text: str) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=f"  {label}: ", subsequent_indent=" " * (len(label) + 4),
                         break_long_words=False, break_on_hyphens=False) or [f"  {label}:"]


def acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_pipeline(info: dict) -> str:
    config, stages = info.get("config", {}), info.get("stages", {})
    lines = [f"{info['path']}  (headstart run)"]
    if not info["complete"]:
        done = [_STAGE_LABELS[s] for s in _STAGE_LABELS if (stages.get(s) or {}).get("done")]
        lines.append(f"  INCOMPLETE: finished stages: {', '.join(done) or 'none'}; run the same "
                     "`headstart run` command again to reuse them and resume the rest")
    lines.append(f"  source: {config.get('source', '?')}")
    for section in ("extract", "head", "finetune"):
        if config.get(section) and isinstance(config.get(section), dict):  # an empty section says nothing
            lines += wrap(f"[{section}]", settings(config[section]))
    lines.append("  stages:")
    for name, label in _STAGE_LABELS.items():
        rec = stages.get(name)
        if not rec:
            lines.append(f"    {label:<17} not run")
            continue
        if not rec.get("done"):
            lines.append(f"    {label:<17} interrupted (resumes on the next run)")
            continue
        stage = StageSummary.from_record(rec)
        parts = [f"{stage.status or '?':<8}", f"{stage.seconds:7.1f} s"]
        if stage.images_per_second:
            parts.append(f"{stage.images_per_second:.1f} images/s")
        if name == "extract":
            parts.append(", ".join(f"{k} {v}" for k, v in (rec.get("splits") or {}).items())
                         + (f"; {stage.skipped} skipped" if stage.skipped else ""))
        elif name in ("head", "finetune"):
            parts.append(f"test {acc(stage.accuracy)}, validation {acc(stage.val_accuracy)}"
                         + (f", best epoch {stage.best_epoch} of {stage.epochs_run}" if stage.ran_epochs
                            else ", no epoch run (the head was kept)" if name == "finetune" else "")
                         + (f", kept {stage.kept}" if stage.kept else ""))
        else:
            parts.append(f"{stage.split} {acc(stage.accuracy)} on {stage.rows} images")
        lines.append(f"    {label:<17} " + "  ".join(parts))
    evaluate = stages.get("evaluate") or {}
    for name, m in (evaluate.get("per_class") or {}).items():
        lines.append(f"    {name}: precision {m['precision']:.3f}, recall {m['recall']:.3f}, {m['support']} images")
    summary = info.get("summary") or {}
    lines += _model_lines(info)
    recipe = summary.get("recipe") or {}
    if recipe.get("decisions"):
        from headstart.pipeline.report.decisions import format_decisions

        lines.append("  recipe auto: " + (recipe.get("plan") or {}).get("text", ""))
        lines += ["    " + line for line in format_decisions(recipe["decisions"]).splitlines()]
    elif recipe.get("recipe"):
        lines.append(f"  recipe: {recipe['recipe']}")
    if summary.get("plots"):
        lines.append("  plots: " + ", ".join(summary["plots"].values()))
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)


def _model_lines(info: dict) -> list[str]:
    """The final model (what predict/evaluate/export take from the run) and the losing image sizes."""
    model = info.get("model") or {}
    lines = []
    if model:
        what = "the chosen head, fine-tuning skipped" if model.get("from") == "head" else "fine-tuned"
        lines.append(f"  model: {model['path']} ({model.get('image_size')} px; {what})")
    for size, folder in (info.get("candidates") or {}).items():
        lines.append(f"  candidate (not chosen): {folder} ({size} px)")
    return lines
