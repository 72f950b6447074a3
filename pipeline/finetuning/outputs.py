"""``finetune``'s outputs: the resume record of a run in flight, the files written at the end, and
the ``FinetuneResult`` (also read back from a finished run directory).

Files: ``model.keras``, the ``--export`` files, ``metrics.json``, ``history.csv``, ``curves.png``
and ``run.json`` (last: its presence marks a finished run), all through ``RunDir``. While the run is
going, ``backup/`` holds ``progress.json`` (the resolved config, the head's identity, the seeded
model's validation numbers, the head stage's outcome) and each stage's per-epoch backup; it is
removed once the outputs are written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.features.reporter import Reporter
from headstart.pipeline.config import FinetuneConfig
from headstart.pipeline.errors import RunDirError
from headstart.pipeline.store.rundir import RunDir
from headstart.pipeline.finetuning.plan import HEAD_IDENTITY, head_identity, resolved_config


@dataclass
class FinetuneResult:
    """What ``finetune`` produced (or found already done); ``metrics`` is metrics.json's content.

    ``epoch_seconds`` lets ``headstart run`` report images per second without reading run.json.
    """

    run_dir: str
    model_path: str
    kept: str                        # "finetuned" or "seeded" (stage gate)
    best_epoch: int | None           # 1-based fine-tune epoch whose weights were kept
    epochs_run: int
    val_accuracy: float | None
    test_accuracy: float | None
    seconds_per_epoch: float
    exports: dict = field(default_factory=dict)
    parity: Any = None               # a headstart.pipeline.model.parity.ParityResult (a dict when read back), or None
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    summary: str = ""
    epoch_seconds: list = field(default_factory=list)
    reused: bool = False             # the run directory already held this run
    recipe: dict = field(default_factory=dict)  # what --augment auto and --probe chose (finetuning/choices.py)

    @classmethod
    def from_run_dir(cls, run: RunDir) -> "FinetuneResult":
        """The result a finished finetune run directory records."""
        metrics, record = run.metrics(), run.record
        timings = record.get("timings") or {}
        val_m, test_m = metrics.get("validation") or {}, metrics.get("test") or {}
        result = cls(run_dir=str(run.path), model_path=str(run.model_path),
                     kept=(metrics.get("stage_gate") or {}).get("kept", "finetuned"),
                     best_epoch=metrics.get("best_epoch"), epochs_run=int(metrics.get("epochs_run") or 0),
                     val_accuracy=val_m.get("accuracy"), test_accuracy=test_m.get("accuracy"),
                     seconds_per_epoch=float(timings.get("seconds_per_epoch") or 0.0),
                     exports=record.get("exports") or {}, parity=metrics.get("parity"), metrics=metrics,
                     history=run.history(), epoch_seconds=list(timings.get("epoch_seconds") or []), reused=True,
                     recipe=record.get("recipe") or {})
        result.summary = summary_table(result)
        return result


def start_resume_record(run: RunDir, config: FinetuneConfig, head_run: Any) -> dict:
    """A fresh run's resume record (backup/progress.json); any earlier backup is dropped first."""
    shutil.rmtree(run.backup_dir, ignore_errors=True)  # never resume an overwritten run's state
    run.backup_dir.mkdir(parents=True)
    resume_record = {"config": resolved_config(config), HEAD_IDENTITY: head_identity(head_run)}
    run.write_resume_record(resume_record)
    return resume_record


def write_outputs(config: FinetuneConfig, plan: Any, built: Any, *, run_dir: Path, spec: Any, stage: Any,
                  metrics: dict, parity: Any, distribute: dict, reporter: Reporter, t_start: float,
                  resume_record: dict, recipe: dict | None = None) -> FinetuneResult:
    """Saves the model, exports, metrics, history, curves and run.json; removes the backup."""
    run = RunDir(run_dir)
    exports = _export(built, run_dir, config, plan, metrics, reporter) if config.export else {}
    epoch_seconds = stage.epoch_seconds
    seconds_per_epoch = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0
    run.write_outputs(built.model, kind="finetune", metrics=metrics, history=stage.history,
                      best_epoch=stage.best_epoch,
                      title=f"finetune: {plan.chain.backbone.name} {plan.image_size}px, --unfreeze {spec}",
                      record={**_run_record(config, plan, built, metrics, exports, distribute, resume_record),
                              **({"recipe": recipe} if recipe else {})},
                      timings={"seconds_per_epoch": seconds_per_epoch, "epoch_seconds": epoch_seconds,
                               "backup_seconds": stage.backup_seconds,
                               "total_seconds": time.perf_counter() - t_start})
    shutil.rmtree(run.backup_dir, ignore_errors=True)
    result = FinetuneResult(
        run_dir=str(run_dir), model_path=str(run.model_path), kept=metrics["stage_gate"]["kept"],
        best_epoch=stage.best_epoch, epochs_run=len(epoch_seconds),
        val_accuracy=(metrics["validation"] or {}).get("accuracy"), test_accuracy=(metrics["test"] or {}).get("accuracy"),
        seconds_per_epoch=seconds_per_epoch, exports=exports, parity=parity, metrics=metrics, history=stage.history,
        epoch_seconds=list(epoch_seconds), recipe=recipe or {})
    result.summary = summary_table(result)
    return result


def _export(built: Any, run_dir: Path, config: FinetuneConfig, plan: Any, metrics: dict,
            reporter: Reporter) -> dict[str, str | None]:
    """Writes the --export formats next to model.keras (``commands.exporting.write_exports``, as ``headstart
    export`` does) and records in ``metrics["exports"]`` how each one scores beside model.keras."""
    from headstart.pipeline.commands.exporting import write_exports

    exports, metrics["exports"] = write_exports(
        built.model, run_dir, config.export, quantize=config.quantize, class_names=plan.class_names, source=plan.source,
        batch_size=config.batch_size, multi_label=plan.multi_label, thresholds=metrics.get("thresholds"),
        reporter=reporter, chain=_final_chain(plan.chain, built, metrics).to_dict())
    return exports


def add_exports(run: RunDir, config: FinetuneConfig, reporter: Reporter) -> None:
    """A finished run asked again with ``--export``: writes the requested formats when run.json does not
    record them all (with this ``--quantize``), checked as ``write_exports`` checks them, and records
    them in run.json and metrics.json. The model is not trained again."""
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.commands.exporting import write_exports

    have = {fmt for fmt, path in (run.record.get("exports") or {}).items() if path}
    checked = run.metrics().get("exports") or {}
    quantize = (checked.get("tflite") or {}).get("quantize", "none")
    if set(config.export) <= have and ("tflite" not in config.export or quantize == config.quantize):
        return
    reporter.line(f"{config.out}: adding the exports {', '.join(config.export)} to the finished run")
    source = open_source(run.source_spec(source=config.source, split_specs=config.split_specs,
                                         label_options=dataclasses.asdict(config)))
    exports, checks = write_exports(run.load_model(), run.path, config.export, quantize=config.quantize,
                                    class_names=run.class_names, source=source, batch_size=config.batch_size,
                                    multi_label=run.multi_label, thresholds=run.thresholds_record, reporter=reporter,
                                    chain=run.chain.to_dict())
    run.update_metrics(exports={**checked, **checks})
    run.update_record(exports={**(run.record.get("exports") or {}), **exports})


def _run_record(config: FinetuneConfig, plan: Any, built: Any, metrics: dict, exports: dict,
                distribute: dict, resume_record: dict) -> dict:
    """run.json after its "kind" (``RunDir.write_outputs`` adds versions, timings and the time)."""
    from headstart.pipeline.store.provenance import precision_record
    from headstart.pipeline.training.class_weights import class_weight_record

    head_run, gate = plan.head_run, metrics["stage_gate"]
    chain = _final_chain(plan.chain, built, metrics)
    return {
        "stage": "finetune", "config": resolved_config(config),
        "task": "multi_label" if plan.multi_label else "single_label",
        **({"thresholds": metrics["thresholds"]} if metrics.get("thresholds") else {}),
        # The temperature is also the model's own "temperature" layer; recorded here for readers of run.json.
        "calibration": {k: v for k, v in (metrics.get("calibration") or {"method": "none"}).items()
                        if k in ("method", "temperature", "reason")},
        "head_run": ({"path": os.path.abspath(config.head), "cache": head_run.cache,
                      HEAD_IDENTITY: resume_record.get(HEAD_IDENTITY), "accuracy": _head_accuracy(head_run)}
                     if head_run else None),
        "chain": chain.to_dict(),
        # The backbone as run.json recorded it before "chain" (``inspect`` and older readers show it).
        "backbone": {"backbone": chain.backbone.name, "weights": chain.backbone.weights,
                     "alpha": chain.backbone.alpha, "image_size": chain.image_size, "pooling": chain.pooling,
                     "weights_fingerprint": chain.backbone.fingerprint,
                     "feature_shape": list(built.info.feature_shape)},
        "source": {**plan.source_spec.to_dict(), "path": os.path.abspath(config.source),
                   "describe": plan.source.describe()},
        "class_names": plan.class_names, "num_classes": plan.num_classes, "stage_gate": gate, "exports": exports,
        "exclude": plan.exclusion.record() if plan.exclusion else None,
        "class_weight": class_weight_record(plan.class_weights),
        "monitor": {"option": config.monitor, "gate_measure": gate["measure"]},
        "distribute": distribute,
        "precision": precision_record(built.model, built.policy),
    }


def _final_chain(chain: Any, built: Any, metrics: dict) -> Any:
    """The plan's chain as the model came out: the weights' fingerprint as built, the thresholds
    chosen on validation, the fitted temperature."""
    from headstart.pipeline.store.chain_record import thresholds_from_record

    temperature = (metrics.get("calibration") or {}).get("temperature")
    thresholds = metrics.get("thresholds")
    return chain.replace(
        fingerprint=built.info.weights_fingerprint,
        thresholds=tuple(float(t) for t in thresholds_from_record(thresholds, chain.class_names)) if thresholds else None,
        temperature=None if temperature is None else tuple(float(t) for t in np.atleast_1d(temperature)))


def recorded_head(run: RunDir) -> dict:
    """The head identity a finetune directory recorded (run.json's "head_run", or progress.json)."""
    if run.complete:
        return {HEAD_IDENTITY: (run.record.get("head_run") or {}).get(HEAD_IDENTITY)}
    return {HEAD_IDENTITY: (run.read_resume_record() or {}).get(HEAD_IDENTITY)}


def summary_table(result: FinetuneResult) -> str:
    """The table the CLI prints at the end."""
    from headstart.pipeline.report.calibration_measures import describe_calibration
    from headstart.pipeline.report.summary_table import format_summary_table

    metrics, parity = result.metrics, result.parity
    gate = metrics["stage_gate"]
    measure = gate.get("measure", "accuracy")  # run directories written before issue 20 gated on accuracy
    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    if metrics.get("thresholds"):
        from headstart.pipeline.report.multilabel_metrics import summary_rows

        measures = summary_rows(val_m, test_m)
    else:
        measures = [("validation accuracy", val_m.get("accuracy")), ("test accuracy", test_m.get("accuracy")),
                    ("test balanced accuracy", test_m.get("balanced_accuracy")),
                    ("test macro-F1", test_m.get("macro_f1"))]
    short = _MEASURE_WORDS.get(measure, measure)
    largest = None if parity is None else (parity["max_abs_diff"] if isinstance(parity, dict) else parity.max_abs_diff)
    return format_summary_table([
        ("parity (max logit diff)", None if largest is None else f"{largest:.3g}"),
        ("best epoch", f"{result.best_epoch} of {result.epochs_run}"),
        ("stage gate", f"kept {gate['kept']} model (seeded val {short} {_fmt(gate[f'seeded_val_{measure}'])}, "
                       f"fine-tuned {_fmt(gate[f'finetuned_val_{measure}'])})"),
        *measures,
        ("calibration", describe_calibration(metrics.get("calibration"))),
        ("time per epoch", f"{result.seconds_per_epoch:.2f} s"), ("model", result.model_path),
        *((f"export {k}", v or "failed") for k, v in result.exports.items()),
    ], title="finetune")


def _head_accuracy(head_run: RunDir) -> dict:
    # For comparing in run.json; a missing or odd metrics.json only loses this note.
    try:
        metrics = head_run.metrics()
        return {split: (metrics.get(split) or {}).get("accuracy") for split in ("validation", "test")}
    except (RunDirError, AttributeError):
        return {}


#: How the summary names the stage gate's measure.
_MEASURE_WORDS = {"accuracy": "acc", "loss": "loss", "balanced_accuracy": "balanced acc", "macro_f1": "macro-F1",
                  "map": "mAP"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
