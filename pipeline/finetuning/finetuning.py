"""``finetune``: rebuild the full model around a trained head and fine-tune it end to end.

The recipe, step by step (``_finetune``): claim ``--out`` (its lock and the ``--out`` policy: the
same options on the same head are already done, or resume where an interrupted run stopped) → the
plan (``finetuning/plan.py``: the head run, the backbone recipe it fixes, SOURCE read as the head's cache
read it) → rebuild backbone, preprocessing and pooling from the head run's provenance, check the
weights fingerprint and put the head on top (``RunDir.rebuild``), augmentation in front → parity
check against the cache → (without a head run: train the head on the frozen backbone, the guide's
first workflow) → evaluate the seeded model → unfreeze (BatchNorm stays frozen), recompile, fit with
the best epoch kept by validation loss → stage gate → outputs (``finetuning/outputs.py``).

Resume: each stage's ``fit`` runs through ``headstart.pipeline.training.stage_fit.fit_stage``, whose
backup callback commits one atomic state per epoch (see that module).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from headstart.features.reporter import QUIET, QuietReporter, Reporter
from headstart.features.errors import Arg
from headstart.pipeline.config import FinetuneConfig
from headstart.pipeline.data.source_spec import check_source_path
from headstart.pipeline.options.checks import check_config
from headstart.pipeline.store.rundir import RunDir
from headstart.pipeline.report.tensorboard_logs import check_log_dir, tensorboard_callback
from headstart.pipeline.finetuning.outputs import FinetuneResult
from headstart.pipeline.finetuning.plan import FinetunePlan

#: Bytes of decoded images the training shuffle buffer may hold.
SHUFFLE_BYTES = 256 << 20


@dataclass
class _Built:
    model: Any                       # the chain with augmentation and head
    head: Any                        # its "head" layer
    info: Any                        # BackboneInfo of the rebuilt backbone
    policy: str                      # dtype policy the layers were built under


def check_finetune_config(config: FinetuneConfig, *, label: Callable[[str], Arg] | None = None) -> Any:
    """Every check of finetune's options that needs no data, model or TensorFlow; returns the parsed
    ``--unfreeze``.

    Raises:
        OptionError: naming the option at fault (``label`` names it; default: finetune's flag).
    """
    from headstart.features.registry import check_weights_option
    from headstart.pipeline.data.exclusion import check_exclude_option
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.commands.export import check_export_options
    from headstart.pipeline.finetuning.choices import check_choices
    from headstart.pipeline.training.class_weights import check_class_weight_option
    from headstart.pipeline.training.monitor import check_monitor

    check_config("finetune", config, label=label)
    check_source_path(config.source)
    check_weights_option(config.weights)
    check_export_options(config.export, config.quantize)
    check_class_weight_option(config.class_weight)
    check_monitor(config.monitor)
    check_choices(config)
    check_log_dir(config.tensorboard)
    check_exclude_option(config.exclude, (label or Arg)("exclude"))
    return parse_unfreeze(config.unfreeze)


def finetune(config: FinetuneConfig, *, reporter: Reporter = QUIET,
             callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """Fine-tunes the full model and writes the run directory (see the module docstring).

    Args:
        config: resolved options. Backbone options (backbone, alpha, image size, pooling), when
            not None, must agree with the head run's chain (``weights`` may
            name another path to the same weights: the fingerprint decides).
        reporter: one line per epoch and status messages, and a live progress line through every
            epoch of both stages (``features/reporter.py``; default: quiet).
        callbacks: extra Keras callbacks for the fine-tune ``fit``.

    Returns:
        A FinetuneResult; ``summary`` is the table for the CLI to print. A ``--out`` that already
        holds this run (same options, same head) is not trained again: its recorded result comes
        back; an interrupted one with the same options resumes after its last finished epoch.

    Raises:
        OptionError: bad or conflicting options. RunDirError: bad ``--head`` or ``--out``.
        RunDirBusyError: another process writes ``--out``. DataError: bad source or classes that
        differ from the head's. ParityError: the assembled model disagrees with the cache.
        headstart.features.errors.WeightsError: weights that do not match.
    """
    from headstart.pipeline.distribute.strategy import config_is_chief
    from headstart.pipeline.store.out_dir import RESUME, REUSE, claim_run_dir
    from headstart.pipeline.finetuning.outputs import add_exports, recorded_head
    from headstart.pipeline.finetuning.plan import HEAD_IDENTITY, head_identity, resolved_config

    spec = check_finetune_config(config)
    head_run = (RunDir.open(config.head, kind="head", option="--head", recipe=True) if config.head
                else None)  # a mistyped or damaged --head fails before TensorFlow starts
    if head_run is not None and head_run.path != Path(config.head):  # a `headstart run` directory
        reporter.line(f"--head {config.head}: using {head_run.path}, the run's chosen head")
    with claim_run_dir(config.out, section="finetune", command="finetune", resolved=resolved_config(config),
                       overwrite=config.overwrite, inputs={HEAD_IDENTITY: head_identity(head_run)},
                       recorded_inputs=recorded_head, chief=config_is_chief()) as (state, run):
        if state == REUSE:
            reporter.line(f"{config.out}: already done (a finetune run with these options from this head)")
            if config.export:
                add_exports(RunDir.open(config.out, kind="finetune"), config, reporter)
            return FinetuneResult.from_run_dir(RunDir.open(config.out, kind="finetune"))
        return _finetune_distributed(config, spec, head_run, run.read_resume_record() if state == RESUME else None,
                                     reporter, callbacks)


def _finetune_distributed(config: FinetuneConfig, spec: Any, head_run: Any, resuming: dict | None,
                          reporter: Reporter, callbacks: Sequence[Any]) -> FinetuneResult:
    """Sets up the strategy (the run's first TensorFlow work), then fine-tunes on every worker."""
    from headstart.pipeline.distribute.strategy import chief_output_dir, set_up_strategy
    from headstart.pipeline.training.determinism import op_determinism

    setup = set_up_strategy(config.strategy, config.batch_size, reporter=reporter,
                            other_batches={"head_batch_size": config.head_batch_size})
    # Every worker runs the whole stage (saving included); only the chief's files are kept. A
    # resumed multi-worker run needs --out on a filesystem all workers see: each starts from the
    # chief's backup.
    with chief_output_dir(config.out, setup.info.is_chief) as out:
        if not setup.info.is_chief:
            chief_backup = RunDir(config.out).backup_dir
            # No backup yet is a fresh start, as on one machine; a backup this worker cannot see is
            # caught before training, when the workers compare their starting epochs (stage_fit).
            if not config.overwrite and chief_backup.is_dir():
                shutil.copytree(chief_backup, RunDir(out).backup_dir)
            config = dataclasses.replace(config, out=str(out))
            resuming = RunDir(out).read_resume_record()
        # The same switch as train-head's (process-wide, restored afterwards); with the seed it
        # makes two CPU runs give bit-identical weights.
        with op_determinism(config.deterministic):
            return _finetune(config, spec, setup, head_run, resuming, reporter=reporter, callbacks=callbacks)


def _finetune(config: FinetuneConfig, spec: Any, setup: Any, head_run: Any, resuming: dict | None, *,
              reporter: Reporter, callbacks: Sequence[Any]) -> FinetuneResult:
    """``finetune`` once the strategy is set up; writes into ``config.out``; ``reporter`` draws the live epoch lines.

    ``config`` is the request as given (run.json records it, ``--augment auto`` included); ``work``
    is what the model is built and fitted with once the audit and the probes have chosen.
    """
    import keras

    from headstart.pipeline.finetuning.choices import choose_augment, recipe_record, with_choices
    from headstart.pipeline.finetuning.outputs import start_resume_record, write_outputs
    from headstart.pipeline.finetuning.plan import make_plan
    from headstart.pipeline.training.monitor import gate_measure
    from headstart.pipeline.finetuning.gate import seeded_validation

    t_start = time.perf_counter()
    plan = make_plan(config, head_run, resuming, reporter, is_chief=setup.info.is_chief)
    run = RunDir(config.out)
    run.path.mkdir(parents=True, exist_ok=True)  # a worker's scratch copy; the chief's exists (claimed)
    resume_record = plan.resuming if plan.resuming is not None else start_resume_record(run, config, head_run)
    save = lambda: run.write_resume_record(resume_record)  # noqa: E731 - the one way the record is saved
    work = with_choices(config, choose_augment(config, plan, resume_record, save, reporter), None)
    keras.utils.set_random_seed(config.seed)
    with setup.strategy.scope():  # variables must be created in the strategy's scope
        built = _build(work, plan, mixed=config.mixed_precision)
    parity = _check_parity(work, plan, built, reporter)
    live = _epoch_lines(reporter, plan)
    head_stage = None if plan.head_run else _seed_head(work, plan, built, setup, run, resume_record, reporter,
                                                       live("head epoch", config.head_batch_size))
    measure = gate_measure(config.monitor, plan.multi_label)
    seeded_val = seeded_validation(lambda split: _predict(work, plan, built.model, split)[1], plan.val_split,
                                   resume_record, measure, save)
    trained = _train(work, spec, plan, built, setup, run, resume_record, measure, seeded_val, reporter,
                     [*callbacks, *live("finetune epoch", config.batch_size)])
    metrics: dict[str, Any] = {"stage": "finetune", "parity": parity and parity.to_dict(),
                               "head_stage": head_stage and head_stage.to_dict(),
                               "seeded": {"validation": seeded_val}, **trained.metrics}
    from headstart.pipeline.finetuning.final import calibrate, final_metrics

    model, val_predictions, metrics["calibration"] = calibrate(
        work, built.model, trained.val_predictions, class_names=plan.class_names, multi_label=plan.multi_label, reporter=reporter)
    built = dataclasses.replace(built, model=model)  # thresholds and test are measured on the calibrated model
    sections, thresholds = final_metrics(work, plan, built.model, val_predictions, metrics["calibration"])
    metrics.update(sections, **thresholds)
    return write_outputs(config, plan, built, run_dir=run.path, spec=trained.spec, stage=trained.stage,
                         metrics=metrics, parity=parity, distribute=setup.distribute, reporter=reporter, t_start=t_start,
                         resume_record=resume_record, recipe=recipe_record(resume_record, trained.probes))


@dataclass
class _Trained:
    stage: Any                       # the fit's StageOutcome (empty when fine-tuning was skipped)
    spec: Any                        # the --unfreeze it ran with
    probes: Any                      # rate_probes.ProbeResult, or None without --probe
    metrics: dict                    # metrics.json's fields of the fit and the gate
    val_predictions: Any             # the kept model's validation predictions (None without validation)


def _train(work: FinetuneConfig, spec: Any, plan: FinetunePlan, built: _Built, setup: Any, run: RunDir,
           resume_record: dict, measure: str, seeded_val: dict | None, reporter: Reporter,
           callbacks: Sequence[Any]) -> _Trained:
    """Probes (``--probe``), then the fit at the chosen rate and depth, then the stage gate."""
    from headstart.pipeline.model.unfreeze import parse_unfreeze
    from headstart.pipeline.finetuning.choices import probe_rates, with_choices
    from headstart.pipeline.training.stage_fit import StageOutcome
    from headstart.pipeline.finetuning.gate import apply_stage_gate, keep_seeded

    predict = lambda split: _predict(work, plan, built.model, split)  # noqa: E731 - the gate's scorer
    seeded_weights = built.model.get_weights()
    probes = probe_rates(work, plan, built.model, prepare=lambda u: _compile(work, plan, built.model, setup, u),
                         train=_datasets(work, plan, work.batch_size)[0],
                         score=lambda: predict(plan.val_split)[1][measure], measure=measure, seeded_val=seeded_val,
                         resume_record=resume_record, save=lambda: run.write_resume_record(resume_record),
                         reporter=reporter)
    if probes is not None:
        work, spec = with_choices(work, work.augment, probes), parse_unfreeze(probes.unfreeze)
    if probes is not None and not probes.finetune:
        reporter.line(f"fine-tuning skipped: no probe improved on the seeded model's validation {measure.replace('_', ' ')} "
            f"{probes.seeded:.4f}; keeping the seeded model")
        gate, val_predictions = keep_seeded(predict, val_split=plan.val_split, seeded_val=seeded_val, measure=measure,
                                            reason="no probe improved on the seeded model")
        stage, counts = StageOutcome(monitor="val_loss" if measure == "loss" else f"val_{measure}"), {}
    else:
        stage, counts = _fit_backbone(work, spec, plan, built.model, setup, run.path, reporter, callbacks,
                                      resume_record)
        gate, val_predictions = apply_stage_gate(predict, built.model, val_split=plan.val_split, seeded_val=seeded_val,
                                                 seeded_weights=seeded_weights, measure=measure, reporter=reporter)
    metrics = {"unfreeze": str(spec), "lr": work.lr, "augment": work.augment, "trainable": counts,
               **counts.pop("metrics", {}), **({"on_cache": counts.pop("on_cache")} if "on_cache" in counts else {}),
               "best_epoch": stage.best_epoch, "epochs_run": len(stage.epoch_seconds), "monitor": stage.monitor,
               "stage_gate": gate}
    return _Trained(stage=stage, spec=spec, probes=probes, metrics=metrics, val_predictions=val_predictions)


# ── the steps ────────────────────────────────────────────────────────────────────────────────


def _epoch_lines(reporter: Reporter, plan: FinetunePlan) -> Callable[[str, int], list]:
    """``(label, batch size) → [a live progress callback]`` over the training split, or [] for a quiet reporter."""
    if isinstance(reporter, QuietReporter):  # it would draw nothing: no callback in the fit
        return lambda label, batch_size: []
    from headstart.pipeline.training.fit_progress import fit_progress_callback

    images = plan.source.count("train")
    return lambda label, batch_size: [fit_progress_callback(reporter, images, batch_size, label=label)]


def _build(config: FinetuneConfig, plan: FinetunePlan, *, mixed: bool) -> _Built:
    """The chain with augmentation and head: rebuilt from the head run, or with a new head."""
    from headstart.pipeline.data.augment import build_augmentation
    from headstart.pipeline.distribute.strategy import precision
    from headstart.pipeline.model.head_run import rebuild_head_chain

    # Layers take the dtype policy in force when they are built.
    with precision(mixed) as policy:
        built = rebuild_head_chain(plan.chain, plan.head_run.model_path if plan.head_run else None,
                                   augmentation=build_augmentation(config.augment, seed=config.seed))
    return _Built(model=built.model, head=built.head, info=built.info, policy=policy)


def _check_parity(config: FinetuneConfig, plan: FinetunePlan, built: _Built, reporter: Reporter) -> Any:
    """The parity check against the head run's cache; None without a head run or samples."""
    from headstart.pipeline.model.parity import check_parity

    if not (plan.head_run and config.parity_samples):
        return None
    # The check is about the input path and the weights, which precision does not change; in
    # bfloat16 the logits drift by far more than any tolerance that would still catch a wrong
    # input path (1.3 on a logit of 7 measured), so a float32 twin of the model is checked.
    reference = _build(config, plan, mixed=False).model if config.mixed_precision else built.model
    parity = check_parity(reference, plan.head_run.cache, plan.source, samples=config.parity_samples,
                          batch_size=config.batch_size)
    del reference
    reporter.line(f"parity: {parity.samples} {parity.split} images, largest logit difference "
        f"{parity.max_abs_diff:.3g} (tolerance {parity.tolerance:.3g})")
    return parity


def _datasets(config: FinetuneConfig, plan: FinetunePlan, batch_size: int) -> tuple[Any, Any]:
    """(shuffled train batches, validation batches or None) of (images, targets)."""
    from headstart.pipeline.training.labelled_dataset import labelled_dataset

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


def _seed_head(config: FinetuneConfig, plan: FinetunePlan, built: _Built, setup: Any, run: RunDir, resume_record: dict,
               reporter: Reporter, callbacks: Sequence[Any] = ()) -> Any:
    """Without a head run: trains the head on the frozen backbone (or takes the interrupted run's)."""
    from headstart.pipeline.model.assembly import freeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.training.stage_fit import StageOutcome, fit_stage

    seeded_head = run.backup_dir / "seeded_head.weights.h5"
    if "head_stage" in resume_record:
        built.head.load_weights(seeded_head)
        return StageOutcome.from_dict(resume_record["head_stage"])
    reporter.line(f"no --head: training the head on the frozen backbone for {config.head_epochs} epochs "
        f"(batch {config.head_batch_size}, lr {config.head_lr:g})")
    freeze_backbone(built.model)
    with setup.strategy.scope():
        compile_head(built.model, plan.num_classes, config.head_lr, jit_compile=_jit(config),
                     multi_label=plan.multi_label)
    train, val = _datasets(config, plan, config.head_batch_size)
    head_stage = fit_stage(built.model, "head", run_dir=run.path, train=train, val=val, epochs=config.head_epochs,
                           patience=config.patience, reporter=reporter, num_classes=plan.num_classes, monitor=config.monitor,
                           callbacks=[*callbacks, *([tensorboard_callback(Path(plan.log_dir) / "head")]
                                                    if plan.log_dir else [])],
                           replicas=setup.replicas, multi_label=plan.multi_label)
    built.head.save_weights(seeded_head)
    resume_record["head_stage"] = head_stage.to_dict()
    run.write_resume_record(resume_record)
    shutil.rmtree(run.backup_dir / "head", ignore_errors=True)
    return head_stage


def _compile(config: FinetuneConfig, plan: FinetunePlan, model: Any, setup: Any, unfreeze: Any) -> list[str]:
    """Unfreezes as an ``--unfreeze`` value (text or parsed) asks and recompiles; returns the layers thawed."""
    from headstart.pipeline.model.assembly import unfreeze_backbone
    from headstart.pipeline.model.head import compile_head
    from headstart.pipeline.model.unfreeze import parse_unfreeze

    unfrozen = unfreeze_backbone(model, parse_unfreeze(unfreeze) if isinstance(unfreeze, str) else unfreeze)
    with setup.strategy.scope():
        # trainables are fixed at compile
        compile_head(model, plan.num_classes, config.lr, jit_compile=_jit(config), multi_label=plan.multi_label)
    return unfrozen


def _fit_backbone(config: FinetuneConfig, spec: Any, plan: FinetunePlan, model: Any, setup: Any, run_dir: Path,
                  reporter: Reporter, callbacks: Sequence[Any], resume_record: dict) -> tuple[Any, dict]:
    """Unfreezes as ``--unfreeze`` asks, recompiles and fits; returns (outcome, trainable counts)."""
    from headstart.pipeline.model.assembly import trainable_counts
    from headstart.pipeline.finetuning.choices import kept_views
    from headstart.pipeline.finetuning.on_cache import fit_top_blocks
    from headstart.pipeline.training.stage_fit import fit_stage

    if config.on_cache:  # the layers above the cache's tap, trained on its activations
        return fit_top_blocks(config, spec, plan, model, setup, run_dir, reporter, callbacks,
                              views=kept_views(resume_record))
    unfrozen = _compile(config, plan, model, setup, spec)
    counts = trainable_counts(model)
    reporter.line(f"fine-tuning {len(unfrozen)} backbone layers with weights (--unfreeze {spec}), "
        f"{counts['trainable_params']:,} trainable parameters; BatchNorm frozen")
    train, val = _datasets(config, plan, config.batch_size)
    if plan.log_dir:
        callbacks = [*callbacks, tensorboard_callback(plan.log_dir)]
    stage = fit_stage(model, "finetune", run_dir=run_dir, train=train, val=val, epochs=config.epochs,
                      patience=config.patience, reporter=reporter, num_classes=plan.num_classes, callbacks=callbacks,
                      replicas=setup.replicas, multi_label=plan.multi_label, monitor=config.monitor)
    return stage, counts


def _predict(config: FinetuneConfig, plan: FinetunePlan, model: Any, split: str,
             thresholds: Any = None) -> tuple[Any, dict]:
    """(the model's predictions on ``split``, their split_metrics): the stage gate's scorer."""
    from headstart.pipeline.training.predictions import predict_split, split_metrics

    predictions = predict_split(model, plan.source, split, batch_size=config.batch_size, multi_label=plan.multi_label)
    return predictions, split_metrics(predictions, plan.class_names, multi_label=plan.multi_label,
                                      thresholds=thresholds)
