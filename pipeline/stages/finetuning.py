"""``finetune``: rebuild the full model around a trained head and fine-tune it end to end.

The recipe, step by step (``_finetune``): read the head run (``train-head``'s run.json) → rebuild
backbone, preprocessing and pooling from its provenance, check the weights fingerprint and put the
head on top (``headstart.pipeline.model.head_run.rebuild_from_head_run``), augmentation in front →
parity check against the cache → (without a head run: train the head on the frozen backbone, the
guide's first workflow) → evaluate the seeded model → unfreeze (BatchNorm stays frozen), recompile,
fit with the best epoch kept by validation loss → stage gate → outputs
(``headstart.pipeline.stages.finetune_rundir``).

Resume: each stage's ``fit`` runs through ``headstart.pipeline.stages.stage_fit.fit_stage``, whose
backup callback commits one atomic state per epoch (see that module).
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

from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig
from headstart.pipeline.data.source_spec import SourceSpec, check_source_path
from headstart.pipeline.errors import OptionError
from headstart.pipeline.model.head_run import read_head_run
from headstart.pipeline.report.tensorboard_logs import check_log_dir, tensorboard_callback

#: Backbone options a FinetuneConfig may carry; None (or absent) means "from the head run".
BACKBONE_OPTIONS = ("backbone", "weights", "alpha", "image_size", "pooling")
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
    parity: Any = None               # a headstart.pipeline.model.parity.ParityResult, or None
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    summary: str = ""


@dataclass
class _Plan:
    """What the run works from, settled before any model is built."""

    head_run: dict | None            # the head run's run.json, or None without --head
    recipe: dict                     # BACKBONE_OPTIONS plus the expected "fingerprint"
    resuming: dict | None            # the interrupted run's progress record when resuming one
    source_spec: SourceSpec          # how SOURCE is read (run.json's "source")
    source: Any                      # the resolved Source, --exclude applied
    exclusion: Any                   # the --exclude Exclusion, or None
    class_names: list[str]
    val_split: str | None
    log_dir: str | None              # --tensorboard on the chief (one writer per log directory), else None
    multi_label: bool = False        # the source's (and head run's) task: one sigmoid per class
    class_weights: Any = None        # a stages.class_weights.ClassWeights (--class-weight), or None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return self.recipe["image_size"]


@dataclass
class _Built:
    model: Any                       # the chain with augmentation and head
    head: Any                        # its "head" layer
    info: Any                        # BackboneInfo of the rebuilt backbone
    policy: str                      # dtype policy the layers were built under


def validate_finetune_config(config: FinetuneConfig) -> Any:
    """Checks option values before any data or model is touched; returns the parsed ``--unfreeze``.

    Raises:
        OptionError: naming the option at fault.
    """
    from headstart.pipeline.data.augment import parse_augment_spec
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.stages.class_weights import check_class_weight_option
    from headstart.pipeline.stages.export import check_export_options
    from headstart.pipeline.stages.monitor import check_monitor

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
    check_class_weight_option(config.class_weight)
    check_monitor(config.monitor)
    parse_augment_spec(config.augment)
    check_log_dir(config.tensorboard)
    return parse_unfreeze(config.unfreeze)



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
        from headstart.pipeline.stages.finetune_rundir import check_out

        check_out(config)  # an occupied --out too; a cluster worker learns its role from TF first
    from headstart.pipeline.distribute.strategy import chief_output_dir, set_up_strategy

    # First TensorFlow work of the run: a multi-worker strategy must be set up before any other.
    setup = set_up_strategy(config.strategy, config.batch_size, log=log,
                            other_batches={"--head-batch-size": config.head_batch_size})
    # Every worker runs the whole stage (saving included); only the chief's files are kept. A
    # resumed multi-worker run needs --out on a filesystem all workers see: each starts from the
    # chief's backup.
    with chief_output_dir(config.out, setup.info.is_chief) as out:
        if not setup.info.is_chief:
            chief_backup = Path(config.out) / "backup"
            # No backup yet is a fresh start, as on one machine; a backup this worker cannot see is
            # caught before training, when the workers compare their starting epochs (stage_fit).
            if config.resume and chief_backup.is_dir():
                shutil.copytree(chief_backup, out / "backup")
            config = dataclasses.replace(config, out=str(out))
        # The same switch as train-head's (process-wide, restored afterwards); with the seed it
        # makes two CPU runs give bit-identical weights.
        from headstart.pipeline.stages.determinism import op_determinism

        with op_determinism(config.deterministic):
            result = _finetune(config, spec, setup, log=log, callbacks=callbacks)
    return result


def _finetune(config: FinetuneConfig, spec: Any, setup: Any, *, log: Callable[[str], None],
              callbacks: Sequence[Any]) -> FinetuneResult:
    """``finetune`` once the strategy is set up; writes into ``config.out``."""
    import keras

    from headstart.pipeline.report.rundir import write_json_atomic
    from headstart.pipeline.stages import finetune_rundir as rundir
    from headstart.pipeline.stages.monitor import gate_measure
    from headstart.pipeline.stages.stage_gate import apply_stage_gate, seeded_validation

    t_start = time.perf_counter()
    plan = _plan(config, log, is_chief=setup.info.is_chief)
    keras.utils.set_random_seed(config.seed)
    with setup.strategy.scope():  # variables must be created in the strategy's scope
        built = _build(config, plan, mixed=config.mixed_precision)
    parity = _check_parity(config, plan, built, log)
    # Only now, with the model built and checked, does --out get created: a refused run leaves nothing.
    run_dir, progress = rundir.open_run_dir(config, plan.resuming)
    head_stage = None if plan.head_run else _seed_head(config, plan, built, setup, run_dir, progress, log)
    evaluate = lambda split: _evaluate(config, plan, built.model, split)  # noqa: E731 - the gate's scorer
    measure = gate_measure(config.monitor, plan.multi_label)
    seeded_val = seeded_validation(evaluate, plan.val_split, progress, measure, lambda: write_json_atomic(
        run_dir / "backup" / "progress.json", progress))
    seeded_weights = built.model.get_weights()
    stage, counts = _fit_backbone(config, spec, plan, built.model, setup, run_dir, log, callbacks)

    # metrics.json as plain JSON values (the typed results become their dicts).
    metrics: dict[str, Any] = {"stage": "finetune", "parity": _plain(parity),
                               "head_stage": _plain(head_stage),
                               "seeded": {"validation": seeded_val}, "unfreeze": str(spec),
                               "trainable": counts, "best_epoch": stage.best_epoch,
                               "epochs_run": len(stage.epoch_seconds), "monitor": stage.monitor}
    metrics["stage_gate"], val_predictions = apply_stage_gate(
        lambda split: _predict(config, plan, built.model, split), built.model, val_split=plan.val_split,
        seeded_val=seeded_val, seeded_weights=seeded_weights, measure=measure, log=log)
    sections, thresholds = _final_metrics(config, plan, built.model, val_predictions)
    metrics.update(sections, **thresholds)
    return rundir.write_outputs(config, plan, built, run_dir=run_dir, spec=spec, stage=stage, metrics=metrics,
                                parity=parity, distribute=setup.distribute, log=log, t_start=t_start)


# ── the steps ────────────────────────────────────────────────────────────────────────────────


def _plan(config: FinetuneConfig, log: Callable[[str], None], *, is_chief: bool) -> _Plan:
    """Reads the head run, settles the backbone recipe, checks ``--out`` and resolves SOURCE."""
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.stages.class_weights import finetune_class_weights
    from headstart.pipeline.stages.finetune_rundir import check_out
    from headstart.pipeline.stages.monitor import check_monitor

    head_run = read_head_run(config.head) if config.head else None
    recipe = _recipe(config, head_run)
    resuming = check_out(config)
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
    multi_label = bool(getattr(source, "multi_label", False))
    if head_run and (head_run.get("task") == "multi_label") != multi_label:
        raise OptionError(f"SOURCE {config.source} is {_task(multi_label)} but the head run {config.head} is "
                          f"{_task(not multi_label)}; give the source the head's cache was extracted from")
    if "train" not in source.split_names:
        raise OptionError(f"{config.source}: no 'train' split to fine-tune on")
    val_split = "validation" if "validation" in source.split_names else None
    check_monitor(config.monitor, has_validation=val_split is not None, multi_label=multi_label)
    return _Plan(head_run=head_run, recipe=recipe, resuming=resuming, source_spec=source_spec, source=source,
                 exclusion=exclusion, class_names=class_names, val_split=val_split,
                 log_dir=config.tensorboard if is_chief else None, multi_label=multi_label,
                 class_weights=finetune_class_weights(config.class_weight, head_run, source, class_names, log,
                                                      multi_label=multi_label))


def _build(config: FinetuneConfig, plan: _Plan, *, mixed: bool) -> _Built:
    """The chain with augmentation and head: rebuilt from the head run, or with a new head."""
    from headstart.features.chain import build_backbone_parts, build_chain
    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.distribute.strategy import precision
    from headstart.pipeline.model.head import build_head
    from headstart.pipeline.model.head_run import rebuild_from_head_run

    # Layers take the dtype policy in force when they are built.
    with precision(mixed) as policy:
        if plan.head_run:
            rebuilt = rebuild_from_head_run(config.head, run=plan.head_run, weights=plan.recipe["weights"],
                                            augmentation=build_augmentation(config.augment, seed=config.seed))
            return _Built(model=rebuilt.model, head=rebuilt.head, info=rebuilt.info, policy=policy)
        recipe = plan.recipe
        base, preprocessing, pooling, info = build_backbone_parts(
            recipe["backbone"], weights=recipe["weights"], image_size=recipe["image_size"], alpha=recipe["alpha"],
            pooling=recipe["pooling"])
        head = build_head(info.feature_shape, plan.num_classes, dropout=HeadConfig().dropout,
                          multi_label=plan.multi_label)
        model = build_chain(base, preprocessing, pooling, head=head,
                            augmentation=build_augmentation(config.augment, seed=config.seed))
    return _Built(model=model, head=head, info=info, policy=policy)


def _check_parity(config: FinetuneConfig, plan: _Plan, built: _Built, log: Callable[[str], None]) -> Any:
    """The parity check against the head run's cache; None without a head run or samples."""
    from headstart.pipeline.model.parity import check_parity

    if not (plan.head_run and config.parity_samples):
        return None
    # The check is about the input path and the weights, which precision does not change; in
    # bfloat16 the logits drift by far more than any tolerance that would still catch a wrong
    # input path (1.3 on a logit of 7 measured), so a float32 twin of the model is checked.
    reference = _build(config, plan, mixed=False).model if config.mixed_precision else built.model
    parity = check_parity(reference, plan.head_run["cache"], plan.source, samples=config.parity_samples,
                          batch_size=config.batch_size)
    del reference
    log(f"parity: {parity.samples} {parity.split} images, largest logit difference "
        f"{parity.max_abs_diff:.3g} (tolerance {parity.tolerance:.3g})")
    return parity


def _datasets(config: FinetuneConfig, plan: _Plan, batch_size: int) -> tuple[Any, Any]:
    """(shuffled train batches, validation batches or None) of (images, targets)."""
    from headstart.pipeline.stages.evaluation import labelled_dataset

    weights = None if plan.class_weights is None else plan.class_weights.weights.tolist()

    def data(split: str, shuffle: bool) -> Any:
        size = plan.image_size
        buffer = max(64, min(plan.source.count(split) or 1024, SHUFFLE_BYTES // (size * size * 12)))
        # Only the training batches carry class weights: validation losses stay unweighted.
        return labelled_dataset(plan.source, split, image_size=size, num_classes=plan.num_classes,
                                batch_size=batch_size, shuffle_seed=config.seed if shuffle else None,
                                shuffle_buffer=buffer, multi_label=plan.multi_label,
                                class_weights=weights if shuffle else None)

    return data("train", True), (data(plan.val_split, False) if plan.val_split else None)


def _jit(config: FinetuneConfig) -> bool | str:
    return True if config.jit_compile else "auto"  # "auto": Keras's default (XLA on one GPU)


def _seed_head(config: FinetuneConfig, plan: _Plan, built: _Built, setup: Any, run_dir: Path, progress: dict,
               log: Callable[[str], None]) -> StageOutcome:
    """Without a head run: trains the head on the frozen backbone (or takes the interrupted run's)."""
    from headstart.pipeline.model.assembly import freeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.report.rundir import write_json_atomic
    from headstart.pipeline.stages.stage_fit import StageOutcome, fit_stage

    seeded_head = run_dir / "backup" / "seeded_head.weights.h5"
    if "head_stage" in progress:
        built.head.load_weights(seeded_head)
        return StageOutcome.from_dict(progress["head_stage"])
    log(f"no --head: training the head on the frozen backbone for {config.head_epochs} epochs "
        f"(batch {config.head_batch_size}, lr {config.head_lr:g})")
    freeze_backbone(built.model)
    with setup.strategy.scope():
        compile_head(built.model, plan.num_classes, config.head_lr, jit_compile=_jit(config),
                     multi_label=plan.multi_label)
    train, val = _datasets(config, plan, config.head_batch_size)
    head_stage = fit_stage(built.model, "head", run_dir=run_dir, train=train, val=val, epochs=config.head_epochs,
                           patience=config.patience, log=log, num_classes=plan.num_classes, monitor=config.monitor,
                           callbacks=[tensorboard_callback(Path(plan.log_dir) / "head")] if plan.log_dir else (),
                           replicas=setup.replicas, multi_label=plan.multi_label)
    built.head.save_weights(seeded_head)
    progress["head_stage"] = head_stage.to_dict()
    write_json_atomic(run_dir / "backup" / "progress.json", progress)
    shutil.rmtree(run_dir / "backup" / "head", ignore_errors=True)
    return head_stage


def _fit_backbone(config: FinetuneConfig, spec: Any, plan: _Plan, model: Any, setup: Any, run_dir: Path,
                  log: Callable[[str], None], callbacks: Sequence[Any]) -> tuple[StageOutcome, dict]:
    """Unfreezes as ``--unfreeze`` asks, recompiles and fits; returns (outcome, trainable counts)."""
    from headstart.pipeline.model.assembly import trainable_counts, unfreeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.stages.stage_fit import fit_stage

    unfrozen = unfreeze_backbone(model, spec)
    with setup.strategy.scope():
        # trainables are fixed at compile
        compile_head(model, plan.num_classes, config.lr, jit_compile=_jit(config), multi_label=plan.multi_label)
    counts = trainable_counts(model)
    log(f"fine-tuning {len(unfrozen)} backbone layers with weights (--unfreeze {spec}), "
        f"{counts['trainable_params']:,} trainable parameters; BatchNorm frozen")
    train, val = _datasets(config, plan, config.batch_size)
    if plan.log_dir:
        callbacks = [*callbacks, tensorboard_callback(plan.log_dir)]
    stage = fit_stage(model, "finetune", run_dir=run_dir, train=train, val=val, epochs=config.epochs,
                      patience=config.patience, log=log, num_classes=plan.num_classes, callbacks=callbacks,
                      replicas=setup.replicas, multi_label=plan.multi_label, monitor=config.monitor)
    return stage, counts


def _plain(record: Any) -> dict | None:
    return None if record is None else record.to_dict()


def _evaluate(config: FinetuneConfig, plan: _Plan, model: Any, split: str, thresholds: Any = None) -> dict:
    return _predict(config, plan, model, split, thresholds)[1]


def _predict(config: FinetuneConfig, plan: _Plan, model: Any, split: str, thresholds: Any = None) -> tuple[Any, dict]:
    """(the model's predictions on ``split``, their split_metrics)."""
    from headstart.pipeline.stages.evaluation import predict_split, split_metrics

    predictions = predict_split(model, plan.source, split, batch_size=config.batch_size, multi_label=plan.multi_label)
    return predictions, split_metrics(predictions, plan.class_names, multi_label=plan.multi_label,
                                      thresholds=thresholds)


def _final_metrics(config: FinetuneConfig, plan: _Plan, model: Any, val_predictions: Any) -> tuple[dict, dict]:
    """metrics.json's "validation" and "test" (the kept model), and for multi-label its thresholds.

    Multi-label thresholds are chosen on the kept model's validation predictions and applied to
    both splits (``headstart.pipeline.report.split_measures.measure_splits``).
    """
    from headstart.pipeline.report.split_measures import measure_splits
    from headstart.pipeline.stages.evaluation import predict_split

    found = {"validation": val_predictions} if val_predictions is not None else {}
    if "test" in plan.source.split_names:
        found["test"] = predict_split(model, plan.source, "test", batch_size=config.batch_size,
                                      multi_label=plan.multi_label)
    sections, thresholds = measure_splits({n: p.labels for n, p in found.items()},
                                          {n: p.logits for n, p in found.items()}, plan.class_names,
                                          multi_label=plan.multi_label)
    for name, predictions in found.items():
        sections[name]["skipped"] = [list(s) for s in predictions.skipped]
    return sections, ({"thresholds": thresholds} if thresholds else {})


def _task(multi_label: bool) -> str:
    return "multi-label" if multi_label else "single-label"


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


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
    return SourceSpec.from_record(cmd, source=config.source, split_specs=config.split_specs,
                                  label_options=dataclasses.asdict(config))
