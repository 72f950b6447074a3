"""``finetune``'s run directory: the refusals about ``--out`` / ``--resume``, the progress record
of an interrupted run, and the outputs written at the end.

Files: ``model.keras``, the ``--export`` files, ``metrics.json``, ``history.csv``, ``curves.png``
and ``run.json`` (last: its presence marks a finished run). While the run is going, ``backup/``
holds ``progress.json`` (the resolved config, the seeded model's validation numbers, the head
stage's outcome) and each stage's per-epoch backup; it is removed once the outputs are written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from headstart.pipeline.config import FinetuneConfig, config_to_dict
from headstart.pipeline.errors import OptionError, RunDirError
from headstart.pipeline.report import rundir as report

#: Options that may change between a run and its --resume.
_RESUME_FREE = ("resume", "overwrite", "export", "quantize", "out", "tensorboard")  # "out": a non-chief worker resumes in a scratch copy


def check_out(config: FinetuneConfig) -> dict | None:
    """Every refusal about ``--out`` and ``--resume``, before minutes of model building.

    Returns:
        The interrupted run's progress record when resuming one, else None.

    Raises:
        RunDirError: ``--out`` is a file, holds a finished run (with ``--resume``), holds no
        interrupted run (with ``--resume``), or is not empty (without ``--overwrite``).
        OptionError: ``--resume`` with options other than the interrupted run's.
    """
    out = Path(config.out)
    progress_path = out / "backup" / "progress.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a directory for the run")
    if config.resume and progress_path.is_file():
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        old, new = progress.get("config", {}), resolved_config(config)
        for key in sorted(set(old) | set(new)):
            if key not in _RESUME_FREE and old.get(key) != new.get(key):
                raise OptionError(f"--resume: {out} was started with {key}={old.get(key)!r}, now "
                                  f"{new.get(key)!r}; resume with the same options")
        return progress
    if config.resume and (out / report.RUN_JSON).is_file():
        raise RunDirError(f"--resume: {out} holds a finished run; nothing to resume")
    if out.is_dir() and any(out.iterdir()):
        if config.resume:
            raise RunDirError(f"--resume: {out} has no interrupted finetune run to resume")
        if not config.overwrite:
            raise RunDirError(f"--out {out} already exists and is not empty; pass --overwrite to replace "
                              "its run files, or --resume to continue an interrupted run")
    return None


def open_run_dir(config: FinetuneConfig, progress: dict | None) -> tuple[Path, dict]:
    """Creates ``--out`` (or keeps the interrupted run's); returns (run dir, progress record)."""
    if progress is not None:
        return Path(config.out), progress
    run_dir = report.prepare_run_dir(config.out, config.overwrite)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # never resume an overwritten run's state
    (run_dir / "backup").mkdir()
    progress = {"config": resolved_config(config)}
    report.write_json_atomic(run_dir / "backup" / "progress.json", progress)
    return run_dir, progress


def resolved_config(config: FinetuneConfig) -> dict:
    """run.json's "config": every option, paths made absolute."""
    from headstart.pipeline.stages.finetuning import BACKBONE_OPTIONS

    resolved = config_to_dict(config)
    for name in BACKBONE_OPTIONS:
        resolved.setdefault(name, getattr(config, name, None))
    resolved["source"] = os.path.abspath(config.source) if os.path.exists(config.source) else config.source
    resolved["out"] = os.path.abspath(config.out)
    if config.head:
        resolved["head"] = os.path.abspath(config.head)
    return resolved


def write_outputs(config: FinetuneConfig, plan: Any, built: Any, *, run_dir: Path, spec: Any, stage: Any,
                  metrics: dict, parity: Any, distribute: dict, log: Callable[[str], None], t_start: float) -> Any:
    """Saves the model, exports, metrics, history, curves and run.json; removes the backup.

    Returns:
        The ``FinetuneResult``.
    """
    model_path = run_dir / "model.keras"
    report.save_model_atomic(built.model, model_path)
    exports = _export(built.model, run_dir, config, plan, metrics, log) if config.export else {}
    report.write_json_atomic(run_dir / "metrics.json", metrics)
    if metrics.get("thresholds"):  # multi-label: beside model.keras, as train-head's beside head.keras
        report.write_json_atomic(run_dir / "thresholds.json", metrics["thresholds"])
    report.write_history_csv(stage.history, run_dir / "history.csv")
    report.plot_curves(stage.history, run_dir / "curves.png", best_epoch=stage.best_epoch,
                       title=f"finetune: {plan.recipe['backbone']} {plan.image_size}px, --unfreeze {spec}")
    epoch_seconds = stage.epoch_seconds
    seconds_per_epoch = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0
    report.write_run_json(run_dir, _run_record(config, plan, built, metrics, exports, distribute),
                          timings={"seconds_per_epoch": seconds_per_epoch, "epoch_seconds": epoch_seconds,
                                   "backup_seconds": stage.backup_seconds,
                                   "total_seconds": time.perf_counter() - t_start})
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    return _result(run_dir, model_path, stage, metrics, parity, exports, seconds_per_epoch)


def _export(model: Any, run_dir: Path, config: FinetuneConfig, plan: Any, metrics: dict,
            log: Callable[[str], None]) -> dict[str, str | None]:
    """Writes the --export formats and records in ``metrics["exports"]`` how each one scores on the
    test split (else validation) next to model.keras, run by its own runtime."""
    from headstart.pipeline.stages.export import calibration_images, check_exports, export_model

    source = plan.source
    exports = export_model(model, run_dir, config.export, quantize=config.quantize, class_names=plan.class_names,
                           calibration=calibration_images(source, int(model.input_shape[1])), log=log,
                           thresholds=metrics.get("thresholds"))
    split = next((s for s in ("test", "validation") if s in source.split_names), None)
    if split:
        checked = check_exports(exports, model, source, split, quantize=config.quantize,
                                batch_size=config.batch_size, multi_label=plan.multi_label)
        metrics["exports"] = {"split": split, **checked}
        for fmt, row in checked.items():
            if row.get("accuracy") is not None:
                log(f"export {fmt}: {split} accuracy {row['accuracy']:.4f} (model.keras {row['keras_accuracy']:.4f}), "
                    f"same class on {row['agreement']:.1%} of images, largest logit difference "
                    f"{row['max_abs_logit_diff']:.3g}")
    return exports


def _run_record(config: FinetuneConfig, plan: Any, built: Any, metrics: dict, exports: dict,
                distribute: dict) -> dict:
    """run.json up to its "precision" section (``write_run_json`` adds versions, timings, created)."""
    from headstart.pipeline.stages.class_weights import class_weight_record

    head_run, recipe, gate = plan.head_run, plan.recipe, metrics["stage_gate"]
    return {
        "kind": "finetune", "stage": "finetune", "config": resolved_config(config),
        "task": "multi_label" if plan.multi_label else "single_label",
        **({"thresholds": metrics["thresholds"]} if metrics.get("thresholds") else {}),
        "head_run": ({"path": os.path.abspath(config.head), "cache": head_run["cache"],
                      "accuracy": _head_accuracy(Path(config.head))} if head_run else None),
        "backbone": {**{k: recipe[k] for k in ("backbone", "weights", "alpha", "image_size", "pooling")},
                     "weights_fingerprint": built.info.weights_fingerprint,
                     "feature_shape": list(built.info.feature_shape)},
        "source": {**plan.source_spec.to_dict(), "path": os.path.abspath(config.source), "describe": plan.source.describe()},
        "class_names": plan.class_names, "num_classes": plan.num_classes, "stage_gate": gate, "exports": exports,
        "exclude": plan.exclusion.record() if plan.exclusion else None,
        "class_weight": class_weight_record(plan.class_weights),
        "monitor": {"option": config.monitor, "gate_measure": gate.get("measure", "accuracy")},
        "distribute": distribute,
        "precision": report.precision_record(built.model, built.policy),
    }


def _result(run_dir: Path, model_path: Path, stage: Any, metrics: dict, parity: Any, exports: dict,
            seconds_per_epoch: float) -> Any:
    from headstart.pipeline.stages.finetuning import FinetuneResult

    gate = metrics["stage_gate"]
    measure = gate.get("measure", "accuracy")
    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    measure = gate.get("measure", "accuracy")
    if metrics.get("thresholds"):
        from headstart.pipeline.report.multilabel_metrics import summary_rows

        measures = summary_rows(val_m, test_m)
    else:
        measures = [("validation accuracy", val_m.get("accuracy")), ("test accuracy", test_m.get("accuracy")),
                    ("test balanced accuracy", test_m.get("balanced_accuracy")),
                    ("test macro-F1", test_m.get("macro_f1"))]
    short = _MEASURE_WORDS.get(measure, measure)
    summary = report.format_summary_table([
        ("parity (max logit diff)", None if parity is None else f"{parity.max_abs_diff:.3g}"),
        ("best epoch", f"{stage.best_epoch} of {len(stage.epoch_seconds)}"),
        ("stage gate", f"kept {gate['kept']} model (seeded val {short} {_fmt(gate[f'seeded_val_{measure}'])}, "
                       f"fine-tuned {_fmt(gate[f'finetuned_val_{measure}'])})"),
        *measures,
        ("time per epoch", f"{seconds_per_epoch:.2f} s"), ("model", str(model_path)),
        *((f"export {k}", v or "failed") for k, v in exports.items()),
    ], title="finetune")
    return FinetuneResult(run_dir=str(run_dir), model_path=str(model_path), kept=gate["kept"],
                          best_epoch=stage.best_epoch, epochs_run=len(stage.epoch_seconds),
                          val_accuracy=val_m.get("accuracy"), test_accuracy=test_m.get("accuracy"),
                          seconds_per_epoch=seconds_per_epoch, exports=exports, parity=parity,
                          metrics=metrics, history=stage.history, summary=summary)


def _head_accuracy(head_dir: Path) -> dict:
    # For comparing in run.json; a missing or odd metrics.json only loses this note.
    try:
        metrics = json.loads((head_dir / "metrics.json").read_text(encoding="utf-8"))
        return {split: (metrics.get(split) or {}).get("accuracy") for split in ("validation", "test")}
    except (OSError, ValueError, AttributeError):
        return {}


#: How the summary names the stage gate's measure.
_MEASURE_WORDS = {"accuracy": "acc", "balanced_accuracy": "balanced acc", "macro_f1": "macro-F1", "map": "mAP"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
