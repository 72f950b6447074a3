"""``headstart inspect``: describe a feature cache or a run directory without loading TensorFlow.

Directories of six kinds are recognised: a ``headstart run`` directory (``config.toml``,
``stages.json``, ``summary.json``), the ``head/`` (train-head) and ``finetune/`` run directories
inside it or written by those commands on their own, a sweep directory (``study.db``,
``leaderboard.csv``, ``best/``), a diagnose report (``report.json``) and an export (``export.json``).
For each: what ran, with which config, what it found or scored, and whether it is unfinished (and
how to resume it).
"""

from __future__ import annotations

from pathlib import Path

from headstart.pipeline.errors import RunDirError
from headstart.pipeline.report.run_inspection import (acc, format_pipeline, inspect_pipeline, read_json,
                                                     settings, wrap)
from headstart.pipeline.store.run_layout import RunLayout
from headstart.pipeline.store.rundir import RunDir


def inspect_path(path: str) -> dict:
    """Returns a JSON-ready description of a feature cache (.h5) or a run directory.

    Raises:
        StoreError: a file that is not a readable headstart cache.
        RunDirError: a path that does not exist, or a directory that is not a headstart run.
    """
    p = Path(path)
    if not p.exists():
        raise RunDirError(f"{path}: no such file or directory")
    if p.is_dir():
        if RunLayout.is_run(p):
            return inspect_pipeline(p)
        if (p / "report.json").is_file():
            return _inspect_diagnose(p)
        if (p / "export.json").is_file():
            return _inspect_export(p)
        if any((p / name).exists() for name in ("study.db", "leaderboard.csv")):
            return _inspect_sweep(p)
        return _inspect_run_dir(p)
    from headstart.features.cache import summarize_cache

    info = summarize_cache(str(p))
    info["kind"] = "feature-cache"
    info["imbalance_warning"] = _imbalance_warning(info)
    return info


def _imbalance_warning(info: dict) -> str | None:
    # Single-label caches only: --class-weight weighs whole rows by their one class.
    train = (info.get("splits") or {}).get("train")
    if info.get("multi_label") or not train or not train.get("class_counts"):
        return None
    from headstart.pipeline.report.imbalance import imbalance_warning

    counts, names = train["class_counts"], list(info.get("class_names") or train["class_counts"])
    return imbalance_warning([counts.get(name, 0) for name in names], names)


def _inspect_run_dir(path: Path) -> dict:
    run = RunDir(path)
    if not run.complete:
        resume_record = run.read_resume_record()
        if resume_record is not None:
            return {"kind": "run-directory", "path": str(path), "complete": False,
                    "run": {"kind": "finetune", "config": resume_record.get("config", {})},
                    "backup": run.backup_epochs(), "files": _files(path)}
        raise RunDirError(f"{path} is not a headstart run directory (no run.json, config.toml or stages.json)")
    run = RunDir.open(path)  # a damaged run.json is reported here, naming the field
    return {"kind": "run-directory", "path": str(path), "complete": True, "run": run.record,
            **({"metrics": run.metrics()} if run.metrics() else {}), "files": _files(path)}


def _inspect_sweep(path: Path) -> dict:
    """A sweep directory: the study (from best/'s record), the trials (leaderboard.csv), the best head."""
    import csv

    rows = []
    if (path / "leaderboard.csv").is_file():
        with open(path / "leaderboard.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    best = RunDir(path / "best")
    record = RunDir.open(best.path, kind="head").record if best.complete else {}
    states: dict[str, int] = {}
    for row in rows:
        states[row.get("state", "?")] = states.get(row.get("state", "?"), 0) + 1
    test = ((best.metrics().get("test") or {}).get("accuracy")) if best.complete else None
    return {"kind": "sweep", "path": str(path), "complete": best.complete, "study": record.get("sweep") or {},
            "trials": {"finished": len(rows), **states}, "top": rows[:5],
            "best": {"path": str(best.path), "test_accuracy": test} if best.complete else None, "files": _files(path)}


def _inspect_diagnose(path: Path) -> dict:
    report = read_json(path / "report.json")
    if not isinstance(report, dict) or report.get("kind") != "diagnose":
        raise RunDirError(f"{path / 'report.json'} is not a diagnose report")
    return {"kind": "diagnose-report", "path": str(path), "complete": report.get("complete", True) is True,
            "cache": report.get("cache") or {},
            "counts": report.get("counts") or {}, "config": report.get("config") or {},
            "seconds": report.get("seconds"), "created": report.get("created"), "files": _files(path)}


def _inspect_export(path: Path) -> dict:
    from headstart.pipeline.store.export_record import read_export_record

    return {**(read_export_record(path) or {}), "kind": "export", "path": str(path), "files": _files(path)}


def _files(path: Path) -> list[str]:
    return sorted(f.name for f in path.iterdir() if not f.name.startswith("."))


def format_inspection(info: dict) -> str:
    """Formats ``inspect_path``'s result for people (control characters in names shown escaped)."""
    from headstart.pipeline.report.printable import printable_values

    info = printable_values(info)  # a label "cats\nsplit train: 999 rows" must not print a line of its own
    if info.get("kind") == "pipeline-run":
        return format_pipeline(info)
    if info.get("kind") == "run-directory":
        return _format_run_dir(info)
    formats = {"sweep": _format_sweep, "diagnose-report": _format_diagnose, "export": _format_export}
    return formats.get(info.get("kind"), _format_cache)(info)


def _format_cache(info: dict) -> str:
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
    tap = config.get("tap")
    if tap:
        lines.append(f"  tap: {tap['spec']}: activations below the last {tap['top_layers']} backbone layers "
                     f"(output of {tap['layer']}, {tuple(tap['shape'])} float16), for finetune --on-cache")
    if "class_names" in info:
        lines.append(f"  classes: {', '.join(info['class_names'])}")
    multi_label = bool(info.get("multi_label"))
    if multi_label:
        lines.append("  task: multi-label (a row may carry several labels; counts are images per label, "
                     "so they can add up to more than the rows)")
    source = config.get("source")
    if source:
        lines.append(f"  source: {source.get('source', source) if isinstance(source, dict) else source}")
    versions = info.get("provenance", {}).get("versions", {})
    if versions:
        lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for name, split in info.get("splits", {}).items():
        counts = split.get("class_counts", {})
        balance = ", ".join(f"{k} {v}" for k, v in counts.items())
        label_counts = "labels per class: " if multi_label else ""
        lines.append(f"  split {name}: {split.get('rows', 0)} rows ({label_counts}{balance}); "
                     f"{len(split.get('skipped', []))} skipped")
        for key, reason in split.get("skipped", []):
            lines.append(f"    skipped {key}: {reason}")
    if info.get("imbalance_warning"):
        lines.append(f"  {info['imbalance_warning']}")
    return "\n".join(lines)


def _format_run_dir(info: dict) -> str:
    run = info["run"]
    kind = run.get("kind") or run.get("stage") or "?"
    lines = [f"{info['path']}  ({'train-head' if kind == 'head' else kind} run)"]
    if not info.get("complete", True):
        epochs = ", ".join(f"{stage} after epoch {n}" for stage, n in info.get("backup", {}).items())
        lines.append(f"  INCOMPLETE: interrupted{' ' + epochs if epochs else ''}; run the same command with "
                     "--resume (or the same `headstart run` command) to continue")
    config = run.get("config", {})
    if kind == "head":
        cache = run.get("cache", {})
        cc = cache.get("config", {})
        lines.append(f"  features: {cache.get('path', '?')} ({cc.get('backbone')}"
                     f"{' alpha ' + str(cc['alpha']) if cc.get('alpha') else ''}, {cc.get('image_size')} px, "
                     f"{cc.get('pooling')} pooling, weights {cc.get('weights')})")
        lines += wrap("config", settings(config, skip=("features", "out")))
    else:
        backbone = run.get("backbone") or {}
        if backbone:
            lines.append(f"  backbone: {backbone.get('backbone')}"
                         f"{' alpha ' + str(backbone['alpha']) if backbone.get('alpha') else ''}, "
                         f"{backbone.get('image_size')} px, weights {backbone.get('weights')}")
        if config.get("head"):
            lines.append(f"  head run: {config['head']}")
        lines += wrap("config", settings(config, skip=("head", "out", "source")))
        lines.append(f"  source: {config.get('source', '?')}")
    lines += _recipe_lines(run.get("recipe") or {})
    if run.get("class_names"):
        lines.append(f"  classes: {', '.join(map(str, run['class_names']))}")
    if run.get("task") == "multi_label":
        cuts = ((run.get("thresholds") or {}).get("thresholds") or {})
        lines.append("  task: multi-label; thresholds " + ", ".join(f"{k} {v:.3f}" for k, v in cuts.items()))
    metrics = info.get("metrics", {})
    parity = metrics.get("parity")
    if parity:
        lines.append(f"  parity: largest logit difference {parity['max_abs_diff']:.3g} on {parity['samples']} "
                     f"{parity['split']} images (tolerance {parity['tolerance']:.3g})")
    gate = metrics.get("stage_gate") or run.get("stage_gate")
    if gate:
        measure = gate.get("measure", "accuracy")
        lines.append(f"  stage gate: kept the {gate.get('kept')} model (validation {measure} seeded "
                     f"{acc(gate.get(f'seeded_val_{measure}'))}, fine-tuned "
                     f"{acc(gate.get(f'finetuned_val_{measure}'))})")
    lines += _calibration_lines(metrics.get("calibration") or run.get("calibration"))
    if metrics.get("best_epoch") is not None:
        lines.append(f"  best epoch: {metrics['best_epoch']} of {metrics.get('epochs_run', '?')}")
    for split in ("validation", "test"):
        if isinstance(metrics.get(split), dict) and metrics[split].get("accuracy") is not None:
            m = metrics[split]
            if m.get("task") == "multi_label":
                lines.append(f"  {split} mAP: {acc(m.get('map'))}, micro-F1 {acc(m.get('micro_f1'))}, exact match "
                             f"{m['accuracy']:.4f} ({m.get('rows', '?')} images)")
                continue
            lines.append(f"  {split} accuracy: {m['accuracy']:.4f} ({m.get('rows', '?')} images)")
    timings = run.get("timings") or {}
    if timings.get("seconds_per_epoch"):
        lines.append(f"  time per epoch: {timings['seconds_per_epoch']:.2f} s")
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)


def _recipe_lines(recipe: dict) -> list[str]:
    """What a finetune run chose for itself (``--augment auto``, ``--probe``), one line each."""
    lines = []
    audit = recipe.get("augment")
    if audit:
        dropped = [c["item"] for c in audit["candidates"] if not c["kept"]]
        lines.append(f"  augment auto: {audit['augment']} (audited on {audit['rows']} validation images; dropped: "
                     f"{', '.join(dropped) or 'none'})")
    probes = recipe.get("probes")
    if probes:
        tried = ", ".join(f"lr {p['lr']:g} {p['unfreeze']} {acc(p['score'])}" for p in probes["probes"])
        verdict = "" if probes.get("finetune", True) else "; none beat the head, fine-tuning skipped"
        lines.append(f"  probes (validation {probes['measure']}): {tried} → lr {probes['lr']:g}, --unfreeze "
                     f"{probes['unfreeze']}{verdict}")
    return lines


def _format_sweep(info: dict) -> str:
    study, trials, best = info["study"], info["trials"], info.get("best")
    lines = [f"{info['path']}  (sweep)"]
    if not info["complete"]:
        lines.append("  INCOMPLETE: no best/ yet; run the same sweep command again to resume its study")
    if study:
        lines.append(f"  study: {study.get('study', '?')} ({study.get('storage', '?')}), seed {study.get('seed', '?')}")
        lines += wrap("caches", ", ".join(map(str, study.get("caches") or [])))
    others = ", ".join(f"{n} {state}" for state, n in trials.items() if state != "finished")
    lines.append(f"  trials: {trials['finished']} finished" + (f" ({others})" if others else ""))
    if best:
        lines.append(f"  best: trial {study.get('trial', '?')}, val_loss {acc(study.get('val_loss'))}; its own head "
                     f"as a train-head run, test accuracy {acc(best['test_accuracy'])} -> {best['path']}")
    for row in info["top"]:
        lines.append(f"    #{row.get('rank')}  trial {row.get('number')}  {row.get('cache')}  {row.get('state')}  "
                     f"val_loss {acc(_number(row.get('val_loss')))}  val_acc {acc(_number(row.get('val_accuracy')))}")
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)


def _format_diagnose(info: dict) -> str:
    c, cache = info["counts"], info["cache"]
    others = len(cache.get("other_fingerprints") or [])
    lines = [f"{info['path']}  (diagnose report)",
             f"  cache: {cache.get('path', '?')}" + (f" (and {others} other cache(s) of the same images)" if others else "")]
    issues = f"{c.get('label_issues')}" + (f" ({c['label_issues_consensus']} flagged by every cache)"
                                           if c.get("label_issues_consensus") is not None else "")
    near = "not measured" if c.get("near_constant") is None else c["near_constant"]
    lines += [f"  rows: {c.get('rows')}", f"  label issues: {issues}",
              f"  leaks (pairs across splits): {c.get('leaks')}",
              f"  duplicate pairs: {c.get('duplicate_pairs')} ({c.get('exact_duplicate_pairs')} exact)",
              f"  out-of-distribution: {c.get('out_of_distribution')}", f"  near-constant: {near}"]
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)


def _format_export(info: dict) -> str:
    lines = [f"{info['path']}  (headstart export)"]
    if not info.get("complete"):
        lines.append("  INCOMPLETE: run the same headstart export command again")
    lines.append(f"  model: {(info.get('input') or {}).get('what', '?')}")
    lines.append(f"  classes: {', '.join(map(str, info.get('class_names') or []))}")
    checks = info.get("checks") or {}
    for fmt, where in (info.get("exports") or {}).items():
        row = checks.get(fmt) or {}
        score = (f": {checks.get('split')} accuracy {acc(row['accuracy'])}, agreement {row['agreement']:.1%}, max "
                 f"logit diff {row['max_abs_logit_diff']:.3g}") if row.get("accuracy") is not None else ""
        lines.append(f"  {fmt}: {where or 'failed'}{score}")
    lines.append("  files: " + ", ".join(info.get("files", [])))
    return "\n".join(lines)


def _number(text: str | float | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _calibration_lines(record: dict | None) -> list[str]:
    """The temperature a finetune run's model carries and its test ECE/NLL before → after (none: no line)."""
    from headstart.pipeline.report.calibration_measures import describe_calibration

    return [f"  calibration: {describe_calibration(record)}"] if record else []
