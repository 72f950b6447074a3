"""``headstart inspect``: describe a feature cache or a run directory without loading TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import RunDirError


def inspect_path(path: str) -> dict:
    """Returns a JSON-ready description of a feature cache (.h5) or a run directory.

    Raises:
        StoreError: a file that is not a readable headstart cache.
        RunDirError: a directory that is not a headstart run directory.
    """
    p = Path(path)
    if p.is_dir():
        return _inspect_run_dir(p)
    from features.store import summarize_cache

    info = summarize_cache(str(p))
    info["kind"] = "feature-cache"
    return info


def _inspect_run_dir(path: Path) -> dict:
    run_json = path / "run.json"
    if not run_json.is_file():
        raise RunDirError(f"{path} is not a headstart run directory (no run.json)")
    try:
        run = json.loads(run_json.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_json} cannot be read: {exc}") from None
    info = {"kind": "run-directory", "path": str(path), "run": run}
    metrics = path / "metrics.json"
    if metrics.is_file():
        info["metrics"] = json.loads(metrics.read_text())
    info["files"] = sorted(f.name for f in path.iterdir())
    return info


def format_inspection(info: dict) -> str:
    """Formats ``inspect_path``'s result for people."""
    if info.get("kind") == "run-directory":
        return _format_run_dir(info)
    lines = [f"{info.get('path', '')}"]
    if not info.get("complete", True):
        lines.append("  INCOMPLETE: an interrupted extract-features; run the same command again to resume")
    config = info.get("config", {})
    for key in ("backbone", "alpha", "weights", "weights_fingerprint", "image_size", "pooling",
                "preprocessing", "dtype", "feature_shape", "augment_views"):
        if key in config and config[key] is not None:
            value = config[key]
            if key == "weights_fingerprint":
                value = str(value)[:16] + "…"
            lines.append(f"  {key}: {value}")
    if "class_names" in info:
        lines.append(f"  classes: {', '.join(info['class_names'])}")
    source = config.get("source")
    if source:
        lines.append(f"  source: {source.get('source', source)}")
    versions = info.get("provenance", {}).get("versions", {})
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for name, split in info.get("splits", {}).items():
        counts = split.get("class_counts", {})
        balance = ", ".join(f"{k} {v}" for k, v in counts.items())
        lines.append(f"  split {name}: {split.get('rows', 0)} rows ({balance}); "
                     f"{len(split.get('skipped', []))} skipped")
        for key, reason in split.get("skipped", []):
            lines.append(f"    skipped {key}: {reason}")
    return "\n".join(lines)


def _format_run_dir(info: dict) -> str:
    run = info["run"]
    lines = [info["path"], f"  stage: {run.get('stage', '?')}"]
    config = run.get("config", {})
    for key, value in config.items():
        lines.append(f"  {key}: {value}")
    metrics = info.get("metrics", {})
    for split in ("validation", "test"):
        if isinstance(metrics.get(split), dict) and "accuracy" in metrics[split]:
            lines.append(f"  {split} accuracy: {metrics[split]['accuracy']:.4f}")
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)
