"""``finetune``: rebuild the full model around a trained head and fine-tune it end to end.

Steps: read the head run (``train-head``'s run.json) → rebuild backbone, preprocessing and pooling
from the cache config and check the weights fingerprint → assemble with augmentation and the head →
parity check against the cache → (without a head run: train the head on the frozen backbone, the
guide's first workflow) → evaluate the seeded model → unfreeze (BatchNorm stays frozen), recompile,
fit with the best epoch kept by validation loss → stage gate → outputs.

Resume: each stage's ``fit`` runs through ``headstart.pipeline.stages.stage_fit.fit_stage``, whose backup callback
commits one atomic state per epoch (see that module).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig, config_to_dict
from headstart.pipeline.data.source_spec import SourceSpec, check_source_path
from headstart.pipeline.errors import OptionError, RunDirError
from headstart.pipeline.report.tensorboard_logs import check_log_dir, tensorboard_callback

#: Backbone options a FinetuneConfig may carry; None (or absent) means "from the head run".
BACKBONE_OPTIONS = ("backbone", "weights", "alpha", "image_size", "pooling")
#: Options that may change between a run and its --resume.
_RESUME_FREE = ("resume", "overwrite", "export", "quantize", "out", "tensorboard")  # "out": a non-chief worker resumes in a scratch copy
#: Bytes of decoded images the training shuffle buffer may hold.
SHUFFLE_BYTES = 256 << 20


@dataclass
class FinetuneResult:
    """What ``finetune`` produced; ``metrics`` is the content of ``metrics.json``."""

    run_dir: str
    model_path: str
    kept: str                        # "finetuned" or "seeded" (stage gate)
    best_epoch: int | None           # 1-based fine-tune epoch whose weights were kept
    epochs_run: int
    val_accuracy: float | None
    test_accuracy: float | None
    seconds_per_epoch: float
    exports: dict = field(default_factory=dict)
    parity: dict | None = None
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    summary: str = ""


def validate_finetune_config(config: FinetuneConfig) -> Any:
    """Checks option values before any data or model is touched; returns the parsed ``--unfreeze``.

    Raises:
        OptionError: naming the option at fault.
    """
    from headstart.pipeline.data.augment import parse_augment_spec
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.stages.export import check_export_options

    if not config.source:
        raise OptionError("SOURCE is required")
    if not config.out:
        raise OptionError("--out is required")
    check_source_path(config.source)
    checks = [("--epochs", config.epochs >= 1, "at least 1", config.epochs),
              ("--head-epochs", config.head_epochs >= 1, "at least 1", config.head_epochs),
              ("--lr", config.lr > 0 and math.isfinite(config.lr), "a positive number", config.lr),
              ("--head-lr", config.head_lr > 0 and math.isfinite(config.head_lr), "a positive number", config.head_lr),
              ("--batch-size", config.batch_size >= 1, "at least 1", config.batch_size),
              ("--head-batch-size", config.head_batch_size >= 1, "at least 1", config.head_batch_size),
              ("--patience", config.patience >= 0, "0 or more", config.patience),
              ("--parity-samples", config.parity_samples >= 0, "0 or more", config.parity_samples)]
    for option, ok, expected, value in checks:
        if not ok:
            raise OptionError(f"{option} must be {expected}, got {value}")
    check_export_options(config.export, config.quantize)
    parse_augment_spec(config.augment)
    check_log_dir(config.tensorboard)
    return parse_unfreeze(config.unfreeze)


def read_head_run(path: str | os.PathLike) -> dict:
    """Reads a ``train-head`` run directory's run.json.

    Raises:
        RunDirError: missing, not a directory, incomplete (no run.json), not a train-head run, or
            without ``head.keras``.
    """
    import json

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError(f"--head {run_dir}: no such run directory (give a train-head --out directory)")
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        what = "incomplete (no run.json; did train-head finish?)" if (run_dir / "head.keras").exists() else \
            "not a train-head run directory (no run.json)"
        raise RunDirError(f"--head {run_dir}: {what}")
    try:
        run = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"--head {run_dir}: run.json is unreadable ({exc})") from None
    kind = run.get("kind") if isinstance(run, dict) else None
    if kind != "head" or not isinstance(run.get("cache"), dict) or not (run_dir / "head.keras").is_file():
        raise RunDirError(f"--head {run_dir}: a {kind or 'foreign'!r} run directory, not a train-head run "
                          f"with head.keras")
    return run


def finetune(config: FinetuneConfig, *, log: Callable[[str], None] = print,
             callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """Fine-tunes the full model and writes the run directory (see the module docstring).

    Args:
        config: resolved options. Backbone options (``BACKBONE_OPTIONS``), when the config has them
            and they are not None, must agree with the head run (``weights`` may name another path
            to the same weights: the fingerprint decides).
        log: one line per epoch and status messages.
        callbacks: extra Keras callbacks for the fine-tune ``fit`` (e.g. a progress bar).

    Returns:
        A FinetuneResult; ``summary`` is the table for the CLI to print.

    Raises:
        OptionError: bad or conflicting options. RunDirError: bad ``--head`` or ``--out``.
        DataError: bad source or classes that differ from the head's. ParityError: the assembled
        model disagrees with the cache. headstart.features.errors.WeightsError: weights that do not match.
    """
    spec = validate_finetune_config(config)
    if config.head:
        read_head_run(config.head)  # a mistyped --head fails before TensorFlow starts
    if "TF_CONFIG" not in os.environ:  # one machine: this process is the chief and --out is its own
        from headstart.pipeline.report import rundir

        _check_out(config, rundir)  # an occupied --out too; a cluster worker learns its role from TF first
    from headstart.pipeline.distribute.strategy import batch_policy, chief_output_dir, resolve_strategy, strategy_line

    # First TensorFlow work of the run: a multi-worker strategy must be set up before any other.
    strategy, info = resolve_strategy(config.strategy)
    distribute = {**batch_policy(info, config.batch_size),
                  **{k: info[k] for k in ("requested", "worker_index", "is_chief", "devices")}}
    batch_policy(info, config.head_batch_size, option="--head-batch-size")
    if strategy_line(info, distribute):
        log(strategy_line(info, distribute))
    # Every worker runs the whole stage (saving included); only the chief's files are kept. A
    # resumed multi-worker run needs --out on a filesystem all workers see: each starts from the
    # chief's backup.
    with chief_output_dir(config.out, info["is_chief"]) as out:
        if not info["is_chief"]:
            chief_backup = Path(config.out) / "backup"
            # No backup yet is a fresh start, as on one machine; a backup this worker cannot see is
            # caught before training, when the workers compare their starting epochs (stage_fit).
            if config.resume and chief_backup.is_dir():
                shutil.copytree(chief_backup, out / "backup")
            config = dataclasses.replace(config, out=str(out))
        # The same switch as train-head's (process-wide, restored afterwards); with the seed it
        # makes two CPU runs give bit-identical weights.
        from headstart.pipeline.stages.head_training import _op_determinism as op_determinism

        with op_determinism(config.deterministic):
            result = _finetune(config, spec, strategy, distribute, log=log, callbacks=callbacks)
    return result


def _finetune(config: FinetuneConfig, spec: Any, strategy: Any, distribute: dict, *,
              log: Callable[[str], None], callbacks: Sequence[Any]) -> FinetuneResult:
    """``finetune`` once the strategy is set up; writes into ``config.out``."""
    import keras

    from headstart.pipeline.stages.stage_fit import fit_stage
    from headstart.pipeline.report import rundir as report
    from headstart.pipeline.distribute.strategy import precision
    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.stages.evaluation import labelled_dataset, predict_split, split_metrics
    from headstart.pipeline.model.head import build_head, compile_head, head_architecture
    from headstart.pipeline.model.assembly import (assemble_model, build_backbone_parts, check_parity, freeze_backbone,
                                trainable_counts, unfreeze_backbone)

    t_start = time.perf_counter()
    head_run = read_head_run(config.head) if config.head else None
    recipe = _recipe(config, head_run)
    resuming = _check_out(config, report)
    source_spec = _source_spec(config, head_run)
    source = open_source(source_spec)
    exclusion = None
    if config.exclude:
        from headstart.pipeline.data.exclusion import ExcludingSource

        source = ExcludingSource.wrap(source, config.exclude, data=config.source)
        exclusion = source.exclusion
        log(f"--exclude {config.exclude}: removed "
            + ", ".join(f"{n} {k}" for n, k in exclusion.removed.items()) + " images")
    class_names = list(source.class_names)
    if head_run and list(head_run["class_names"]) != class_names:
        raise OptionError(f"SOURCE classes {class_names} differ from the head run's {head_run['class_names']}")
    if "train" not in source.split_names:
        raise OptionError(f"{config.source}: no 'train' split to fine-tune on")
    num_classes, size = len(class_names), recipe["image_size"]
    val_split = "validation" if "validation" in source.split_names else None

    keras.utils.set_random_seed(config.seed)
    replicas = distribute["replicas"]

    def build(mixed: bool):
        # Layers take the dtype policy in force when they are built.
        with precision(mixed) as policy:
            base, pre, pool, fingerprint = build_backbone_parts(
                recipe["backbone"], weights=recipe["weights"], image_size=size, alpha=recipe["alpha"],
                pooling=recipe["pooling"], expected_fingerprint=recipe["fingerprint"])
            shape = tuple(int(d) for d in (head_run["feature_shape"] if head_run else _feature_shape(base, pool)))
            head = build_head(shape, num_classes, **(head_architecture(head_run["head"]) if head_run
                                                     else {"dropout": HeadConfig().dropout}))
            if head_run:
                _copy_head_weights(Path(config.head) / "head.keras", head)
            model = assemble_model(base, pre, pool, head, image_size=size,
                                   augmentation=build_augmentation(config.augment, seed=config.seed))
        return model, head, fingerprint, shape, policy

    with strategy.scope():  # variables must be created in the strategy's scope
        model, head, fingerprint, feature_shape, policy = build(config.mixed_precision)
    parity = None
    if head_run and config.parity_samples:
        # The check is about the input path and the weights, which precision does not change; in
        # bfloat16 the logits drift by far more than any tolerance that would still catch a wrong
        # input path (1.3 on a logit of 7 measured), so a float32 twin of the model is checked.
        reference = build(False)[0] if config.mixed_precision else model
        parity = check_parity(reference, head_run["cache"], source, samples=config.parity_samples,
                              batch_size=config.batch_size)
        del reference
        log(f"parity: {parity['samples']} {parity['split']} images, largest logit difference "
            f"{parity['max_abs_diff']:.3g} (tolerance {parity['tolerance']:.3g})")
    # Only now, with the model built and checked, does --out get created: a refused run leaves nothing.
    run_dir, progress = _open_run_dir(config, report, resuming)

    def data(split, batch, shuffle):
        buffer = max(64, min(source.count(split) or 1024, SHUFFLE_BYTES // (size * size * 12)))
        return labelled_dataset(source, split, image_size=size, num_classes=num_classes, batch_size=batch,
                                shuffle_seed=config.seed if shuffle else None, shuffle_buffer=buffer)

    jit = True if config.jit_compile else "auto"  # "auto": Keras's default (XLA on one GPU)
    log_dir = config.tensorboard if distribute.get("is_chief", True) else None  # one writer per log directory
    head_stage = None
    seeded_head = run_dir / "backup" / "seeded_head.weights.h5"
    if not head_run:
        if "head_stage" in progress:
            head.load_weights(seeded_head)
            head_stage = progress["head_stage"]
        else:
            log(f"no --head: training the head on the frozen backbone for {config.head_epochs} epochs "
                f"(batch {config.head_batch_size}, lr {config.head_lr:g})")
            freeze_backbone(model)
            with strategy.scope():
                compile_head(model, num_classes, config.head_lr, jit_compile=jit)
            head_stage = fit_stage(model, "head", run_dir, data("train", config.head_batch_size, True),
                                   data(val_split, config.head_batch_size, False) if val_split else None,
                                   config.head_epochs, config.patience, log,
                                   [tensorboard_callback(Path(log_dir) / "head")] if log_dir else (),
                                   num_classes, replicas)
            head.save_weights(seeded_head)
            progress["head_stage"] = head_stage
            report.write_json_atomic(run_dir / "backup" / "progress.json", progress)
            shutil.rmtree(run_dir / "backup" / "head", ignore_errors=True)

    def evaluate(split):
        return split_metrics(predict_split(model, source, split, batch_size=config.batch_size), class_names)

    if val_split and "seeded" not in progress:
        seeded = evaluate(val_split)
        progress["seeded"] = {"loss": seeded["loss"], "accuracy": seeded["accuracy"]}
        report.write_json_atomic(run_dir / "backup" / "progress.json", progress)
    seeded_val = progress.get("seeded")
    seeded_weights = model.get_weights()

    unfrozen = unfreeze_backbone(model, spec)
    with strategy.scope():
        compile_head(model, num_classes, config.lr, jit_compile=jit)  # recompile: trainables are fixed at compile
    counts = trainable_counts(model)
    log(f"fine-tuning {len(unfrozen)} backbone layers with weights (--unfreeze {spec}), "
        f"{counts['trainable_params']:,} trainable parameters; BatchNorm frozen")
    stage = fit_stage(model, "finetune", run_dir, data("train", config.batch_size, True),
                      data(val_split, config.batch_size, False) if val_split else None,
                      config.epochs, config.patience, log,
                      [*callbacks, tensorboard_callback(log_dir)] if log_dir else callbacks, num_classes, replicas)

    gate = {"kept": "finetuned", "seeded_val_accuracy": (seeded_val or {}).get("accuracy"),
            "finetuned_val_accuracy": None}
    metrics: dict[str, Any] = {"stage": "finetune", "parity": parity, "head_stage": head_stage,
                               "seeded": {"validation": seeded_val}, "unfreeze": str(spec),
                               "trainable": counts, "best_epoch": stage["best_epoch"],
                               "epochs_run": len(stage["epoch_seconds"]), "monitor": stage["monitor"]}
    if val_split:
        final_val = evaluate(val_split)
        gate["finetuned_val_accuracy"] = final_val["accuracy"]
        if final_val["accuracy"] is None or gate["seeded_val_accuracy"] is None:
            gate["reason"] = "no readable validation image"
        elif final_val["accuracy"] < gate["seeded_val_accuracy"]:
            gate["kept"] = "seeded"
            model.set_weights(seeded_weights)
            final_val = evaluate(val_split)
            log(f"stage gate: fine-tuned validation accuracy {gate['finetuned_val_accuracy']:.4f} is below "
                f"the seeded model's {gate['seeded_val_accuracy']:.4f}; keeping the seeded model")
        metrics["validation"] = final_val
    else:
        gate["reason"] = "no validation split"
        metrics["validation"] = None
    metrics["stage_gate"] = gate
    metrics["test"] = evaluate("test") if "test" in source.split_names else None

    model_path = run_dir / "model.keras"
    report.save_model_atomic(model, model_path)
    exports = _export(model, run_dir, config, source, class_names, metrics, log) if config.export else {}
    history = stage["history"]
    report.write_json_atomic(run_dir / "metrics.json", metrics)
    report.write_history_csv(history, run_dir / "history.csv")
    report.plot_curves(history, run_dir / "curves.png", best_epoch=stage["best_epoch"],
                       title=f"finetune: {recipe['backbone']} {size}px, --unfreeze {spec}")
    epoch_seconds = stage["epoch_seconds"]
    seconds_per_epoch = float(np.mean(epoch_seconds)) if epoch_seconds else 0.0
    report.write_json_atomic(run_dir / report.RUN_JSON, {
        "kind": "finetune", "stage": "finetune", "config": _resolved(config),
        "head_run": ({"path": os.path.abspath(config.head), "cache": head_run["cache"],
                      "accuracy": _head_accuracy(Path(config.head))} if head_run else None),
        "backbone": {**{k: recipe[k] for k in ("backbone", "weights", "alpha", "image_size", "pooling")},
                     "weights_fingerprint": fingerprint, "feature_shape": list(feature_shape)},
        "source": {**source_spec.to_dict(), "path": os.path.abspath(config.source), "describe": source.describe()},
        "class_names": class_names, "num_classes": num_classes, "stage_gate": gate, "exports": exports,
        "exclude": exclusion.record() if exclusion else None,
        "distribute": distribute,
        "precision": {"policy": policy, "logits_dtype": str(model.outputs[0].dtype),
                      "jit_compile": bool(model.jit_compile)},
        "versions": report.library_versions(),
        "timings": {"seconds_per_epoch": seconds_per_epoch, "epoch_seconds": epoch_seconds,
                    "backup_seconds": stage["backup_seconds"],
                    "total_seconds": time.perf_counter() - t_start},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    shutil.rmtree(run_dir / "backup", ignore_errors=True)

    val_m, test_m = metrics["validation"] or {}, metrics["test"] or {}
    summary = report.format_summary_table([
        ("parity (max logit diff)", None if parity is None else f"{parity['max_abs_diff']:.3g}"),
        ("best epoch", f"{stage['best_epoch']} of {len(epoch_seconds)}"),
        ("stage gate", f"kept {gate['kept']} model (seeded val acc {_fmt(gate['seeded_val_accuracy'])}, "
                       f"fine-tuned {_fmt(gate['finetuned_val_accuracy'])})"),
        ("validation accuracy", val_m.get("accuracy")), ("test accuracy", test_m.get("accuracy")),
        ("time per epoch", f"{seconds_per_epoch:.2f} s"), ("model", str(model_path)),
        *((f"export {k}", v or "failed") for k, v in exports.items()),
    ], title="finetune")
    return FinetuneResult(run_dir=str(run_dir), model_path=str(model_path), kept=gate["kept"],
                          best_epoch=stage["best_epoch"], epochs_run=len(epoch_seconds),
                          val_accuracy=val_m.get("accuracy"), test_accuracy=test_m.get("accuracy"),
                          seconds_per_epoch=seconds_per_epoch, exports=exports, parity=parity,
                          metrics=metrics, history=history, summary=summary)


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


def _export(model: Any, run_dir: Path, config: FinetuneConfig, source: Any, class_names: list[str],
            metrics: dict, log: Callable[[str], None]) -> dict[str, str | None]:
    """Writes the --export formats and records in ``metrics["exports"]`` how each one scores on the
    test split (else validation) next to model.keras, run by its own runtime."""
    from headstart.pipeline.stages.export import calibration_images, check_exports, export_model

    exports = export_model(model, run_dir, config.export, quantize=config.quantize, class_names=class_names,
                           calibration=calibration_images(source, int(model.input_shape[1])), log=log)
    split = next((s for s in ("test", "validation") if s in source.split_names), None)
    if split:
        checked = check_exports(exports, model, source, split, quantize=config.quantize,
                                batch_size=config.batch_size)
        metrics["exports"] = {"split": split, **checked}
        for fmt, row in checked.items():
            if row.get("accuracy") is not None:
                log(f"export {fmt}: {split} accuracy {row['accuracy']:.4f} (model.keras {row['keras_accuracy']:.4f}), "
                    f"same class on {row['agreement']:.1%} of images, largest logit difference "
                    f"{row['max_abs_logit_diff']:.3g}")
    return exports


def _recipe(config: FinetuneConfig, head_run: dict | None) -> dict:
    """Backbone, weights, alpha, image size, pooling and expected fingerprint for the rebuild."""
    given = {name: getattr(config, name, None) for name in BACKBONE_OPTIONS}
    if head_run is None:
        defaults = ExtractConfig()
        recipe = {name: given[name] if given[name] is not None else getattr(defaults, name)
                  for name in BACKBONE_OPTIONS}
        return {**recipe, "fingerprint": None}
    cache = head_run["cache"]["config"]
    recipe = {name: cache[name] for name in BACKBONE_OPTIONS}
    for name in ("backbone", "alpha", "image_size", "pooling"):
        if given[name] is not None and given[name] != recipe[name]:
            raise OptionError(f"--{name.replace('_', '-')} {given[name]} conflicts with the head run's "
                              f"{recipe[name]} ({head_run['cache']['path']}); leave it out: finetune takes it "
                              "from the head run")
    if given["weights"] is not None:
        recipe["weights"] = given["weights"]  # e.g. the file moved; the fingerprint check decides
    return {**recipe, "fingerprint": cache["weights_fingerprint"]}


def _source_spec(config: FinetuneConfig, head_run: dict | None) -> SourceSpec:
    # The head run's cache recorded how its source was read; the user does not repeat it.
    cmd = ((head_run or {}).get("cache", {}).get("provenance") or {}).get("command_config") or {}
    return SourceSpec.from_record(cmd, source=config.source, split_specs=config.split_specs)


def _check_out(config: FinetuneConfig, report: Any) -> dict | None:
    """Every refusal about ``--out`` and ``--resume``, before minutes of model building.

    Returns:
        The interrupted run's progress record when resuming one, else None.
    """
    import json

    out = Path(config.out)
    progress_path = out / "backup" / "progress.json"
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file; give a directory for the run")
    if config.resume and progress_path.is_file():
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        old, new = progress.get("config", {}), _resolved(config)
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


def _open_run_dir(config: FinetuneConfig, report: Any, progress: dict | None) -> tuple[Path, dict]:
    """Creates ``--out`` (or keeps the interrupted run's); returns (run dir, progress record)."""
    if progress is not None:
        return Path(config.out), progress
    run_dir = report.prepare_run_dir(config.out, config.overwrite)
    shutil.rmtree(run_dir / "backup", ignore_errors=True)  # never resume an overwritten run's state
    (run_dir / "backup").mkdir()
    progress = {"config": _resolved(config)}
    report.write_json_atomic(run_dir / "backup" / "progress.json", progress)
    return run_dir, progress


def _resolved(config: FinetuneConfig) -> dict:
    resolved = config_to_dict(config)
    for name in BACKBONE_OPTIONS:
        resolved.setdefault(name, getattr(config, name, None))
    resolved["source"] = os.path.abspath(config.source) if os.path.exists(config.source) else config.source
    resolved["out"] = os.path.abspath(config.out)
    if config.head:
        resolved["head"] = os.path.abspath(config.head)
    return resolved


def _feature_shape(base: Any, pool: Any) -> tuple[int, ...]:
    shape = tuple(int(d) for d in base.output_shape[1:])
    return shape[-1:] if pool is not None else shape


def _copy_head_weights(path: Path, head: Any) -> None:
    import keras

    from headstart.pipeline.model.head import set_head_weights

    try:
        trained = keras.saving.load_model(path, safe_mode=True, compile=False)
        set_head_weights(head, trained.get_weights())
    except Exception as exc:  # noqa: BLE001 - load and shape errors both mean a head we cannot use
        raise RunDirError(f"--head: {path} does not fit the rebuilt head ({str(exc).splitlines()[0][:200]})") from exc


def _head_accuracy(head_dir: Path) -> dict:
    # For comparing in run.json; a missing or odd metrics.json only loses this note.
    import json

    try:
        metrics = json.loads((head_dir / "metrics.json").read_text(encoding="utf-8"))
        return {split: (metrics.get(split) or {}).get("accuracy") for split in ("validation", "test")}
    except (OSError, ValueError, AttributeError):
        return {}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
