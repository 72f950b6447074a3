"""The four stages of ``headstart run``, each: reuse when its key is unchanged, else run or resume.

Every function returns the stage's record for ``stages.json``, built from the result the stage's
command returned (``ExtractSummary``, ``HeadResult``, ``SweepResult``, ``FinetuneResult``, the
evaluation's metrics) — never by reading back what it has just written: ``key`` (inputs +
result-shaping options), ``done``, ``status`` ("ran", "resumed" or "reused"), ``seconds`` (wall time
of this call, or of the original run when reused), ``images`` and ``images_per_second`` (of the
stage's main loop), and its scores. See ``headstart.pipeline.run.runner`` for the run directory.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TYPE_CHECKING

from headstart.features.file_hash import sha256_file
from headstart.features.reporter import Indented, LineReporter
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.report.metrics import HEADLINE
from headstart.pipeline.store.rundir import RUN_JSON, RunDir
from headstart.pipeline.store.run_layout import RunLayout
from headstart.pipeline.report.skipped import skipped_lines
from headstart.pipeline.run.toml_config import RunConfig

if TYPE_CHECKING:
    from headstart.pipeline.data.source import Source
    from headstart.pipeline.run.console import Console
    from headstart.pipeline.training.predictions import PredictedBatch

#: What a multi-label evaluation adds to its record (and summary.json to its "test" section).
MULTI_LABEL_KEYS = ("task", "map", "micro_f1", "exact_match")


def test_measures(metrics: dict) -> dict:
    """A stage record's headline measures (accuracy, balanced accuracy, macro-F1) from the test
    section of its metrics.json (None each when there is no test split)."""
    test = metrics.get("test") or {}
    return {k: test.get(k) for k in HEADLINE}


#: Files a stage needs but does not digest: later commands legitimately add to a run.json
#: (``finetune --export`` its exports, the recipe its decisions), and ``RunDir.open`` refuses a
#: damaged one when it is read.
_UNDIGESTED = frozenset({RUN_JSON})


def output_digests(*paths: Path) -> dict[str, dict]:
    """file name → {"size", "sha256"} of a stage's outputs (run.json aside), kept in its record to
    check on reuse."""
    return {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in paths
            if p.name not in _UNDIGESTED}


def _with_outputs(paths: Sequence[Path], record: dict) -> dict:
    return {**record, "outputs": output_digests(*paths)}


def _changed_output(record: dict, paths: Sequence[Path]) -> str | None:
    """Why a finished stage's files are not the ones its record describes (None: intact)."""
    # A record from before "outputs" has the models' digests only (head_sha256, model_sha256); its
    # other files are trusted once and checked from then on.
    recorded = record.get("outputs") or {name: {"sha256": record[field]} for name, field in
                                         (("head.keras", "head_sha256"), ("model.keras", "model_sha256"))
                                         if record.get(field)}
    for path in paths:
        was = recorded.get(path.name)
        if was is None or path.name in _UNDIGESTED:
            continue
        size = path.stat().st_size
        if was.get("size") is not None and size != was["size"]:
            return f"{path} changed since it was written ({size} bytes, recorded {was.get('size')})"
        if sha256_file(path) != was.get("sha256"):
            return f"{path} changed since it was written (its sha256 differs from the recorded one)"
    return None


def _reuse(record: dict | None, key: str, *paths: Path, console: Console | None = None) -> dict | None:
    """The record of a finished stage with this key whose outputs are intact (size and sha256 as
    recorded), marked "reused"; None when the stage must run, saying why when a file changed."""
    if record and record.get("key") == key and record.get("done") and all(p.exists() for p in paths):
        changed = _changed_output(record, paths)
        if changed is None:
            return {**(record if "outputs" in record else _with_outputs(paths, record)), "status": "reused"}
        if console is not None:
            console.line(f"  {changed}: running the stage again")
    return None


def extract_stage(config: RunConfig, path: Path, record: dict | None, console: Console, overwrite: bool, *,
                  key: str) -> dict:
    """extract-features into ``path``; resumes a ``.partial`` file, reuses a finished one."""
    reused = _reuse(record, key, path, console=console)
    if reused:
        console.line("  reused: same source and extraction options")
        return reused
    # A finished cache with this key that was not reused has changed since (_reuse said so): replace it.
    damaged = bool(record and record.get("key") == key and record.get("done") and path.exists())
    from headstart.features.cache import open_cache
    from headstart.pipeline.commands.extraction import extract_features

    resumed = Path(f"{path}.partial").exists()
    start = time.perf_counter()
    try:
        summary = extract_features(dataclasses.replace(config.extract, source=config.source, out=str(path),
                                                       overwrite=overwrite or damaged),
                                   reporter=Indented(console))
    finally:
        console.close()
    seconds = time.perf_counter() - start
    with open_cache(str(path)) as cache:  # the cache is the stage's output: its fingerprint keys the next stages
        splits = {name: len(cache.split(name)) for name in cache.splits}
        fingerprint, class_names, provenance = cache.fingerprint, list(cache.class_names), cache.provenance
        skipped = sum(len(cache.split(name).skipped) for name in cache.splits)
    rows = sum(splits.values())
    loop_seconds = summary.seconds if not summary.already_complete else provenance.get("extract_seconds")
    for line in skipped_lines(summary.skipped, summary.skipped_csv):  # the first few, then counts
        console.line(f"  {line}")
    return _with_outputs([path], {
        "key": key, "done": True, "seconds": seconds, "images": rows + skipped, "rows": rows,
        "status": "reused" if summary.already_complete else "resumed" if resumed else "ran",
        "images_per_second": (rows + skipped) / loop_seconds if loop_seconds else None,
        "fingerprint": fingerprint, "splits": splits, "class_names": class_names, "skipped": skipped})


def diagnose_stage(config: RunConfig, features: Path, out: Path, record: dict | None, console: Console, *,
                   key: str) -> dict:
    """``diagnose`` of the run's cache into ``out`` (seconds; reused while the cache is unchanged)."""
    reused = _reuse(record, key, out / "report.json", console=console)
    if reused:
        console.line("  reused: same features")
        return reused
    from headstart.pipeline.config import DiagnoseConfig
    from headstart.pipeline.diagnose.diagnosis import diagnose

    start = time.perf_counter()
    result = diagnose(DiagnoseConfig(features=str(features), out=str(out), seed=config.head.seed, overwrite=True),
                      reporter=Indented(console))
    for line in result.summary.splitlines():
        console.line(f"  {line}")
    return _with_outputs([out / "report.json"], {"key": key, "done": True, "status": "ran",
                                                 "seconds": time.perf_counter() - start, "counts": result.counts,
                                                 "report": str(out / "report.json")})


def head_stage(config: RunConfig, features: Path, head_dir: Path, record: dict | None, console: Console, *,
               key: str, sweep: "SweepPlan | None" = None) -> dict:
    """train-head on the cache into ``head_dir``, or a sweep whose best head becomes it (seconds: an
    interrupted train-head simply runs again, an interrupted sweep resumes from its study).

    Args:
        sweep: the sweep to run instead of train-head; None takes ``[sweep] trials`` (none: train-head).
    """
    head = RunDir(head_dir)
    reused = _reuse(record, key, head.run_json, head_dir / "head.keras", console=console)
    if reused:
        console.line("  reused: same features and head options")
        return reused
    from headstart.pipeline.commands.head_training import train_head

    start = time.perf_counter()
    log_dir = str(RunLayout(head_dir.parent).tensorboard("head")) if config.tensorboard else None
    if sweep is None and config.sweep.get("trials"):
        from headstart.pipeline.sweep.space import space_from_dict

        sweep = SweepPlan(space_from_dict({k: v for k, v in config.sweep.items() if k != "trials"}),
                          int(config.sweep["trials"]), RunLayout(head_dir.parent).sweep)
    if sweep is not None:
        return _sweep_head(config, features, head_dir, record, console, key=key, log_dir=log_dir, sweep=sweep)
    result = train_head(dataclasses.replace(config.head, features=str(features), out=str(head_dir), overwrite=True,
                                            tensorboard=log_dir),
                        reporter=Indented(console))
    images = result.train_rows * result.epochs_run
    return _with_outputs([head.run_json, head_dir / "head.keras"], {
        "key": key, "done": True, "status": "ran", "seconds": time.perf_counter() - start, "images": images,
        "images_per_second": images / result.train_seconds if result.train_seconds else None,
        **test_measures(result.metrics), "val_accuracy": result.val_accuracy,
        "validation": _validation(result.metrics), "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run, "head_sha256": sha256_file(head_dir / "head.keras")})


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """A sweep as the head stage: its search space, its trials and its directory."""

    space: Any
    trials: int
    out: Path


def _validation(metrics: dict) -> dict:
    """A head's validation measures as its stage record keeps them (for comparing heads)."""
    return {k: v for k, v in (metrics.get("validation") or {}).items() if isinstance(v, (int, float))}


def _sweep_head(config: RunConfig, features: Path, head_dir: Path, record: dict | None, console: Console, *,
                key: str, log_dir: str | None, sweep: SweepPlan) -> dict:
    """The head stage as a sweep into ``sweep.out``; its best head becomes ``head_dir`` for finetune.

    An interrupted sweep resumes from its study; a sweep with other settings starts anew.
    """
    import shutil

    from headstart.pipeline.config import SweepConfig
    from headstart.pipeline.commands.head_training import HeadResult
    from headstart.pipeline.sweep.study import run_sweep

    start = time.perf_counter()
    result = run_sweep(SweepConfig(caches=(str(features),), out=str(sweep.out), trials=sweep.trials,
                                   seed=config.head.seed, tensorboard=log_dir, monitor=config.head.monitor,
                                   class_weight=config.head.class_weight,
                                   overwrite=bool(record) and record.get("key") != key),
                       sweep.space, reporter=Indented(console))
    shutil.rmtree(head_dir, ignore_errors=True)
    shutil.copytree(sweep.out / "best", head_dir)
    best = HeadResult.from_run_dir(RunDir.open(head_dir, kind="head"))
    images = best.train_rows * result.trial_epochs
    return _with_outputs([RunDir(head_dir).run_json, head_dir / "head.keras"], {
        "key": key, "done": True, "status": "ran", "seconds": time.perf_counter() - start, "images": images,
        "images_per_second": images / result.seconds if result.seconds else None,
        **test_measures(best.metrics), "accuracy": result.best_test_accuracy, "val_accuracy": best.val_accuracy,
        "validation": _validation(best.metrics), "best_epoch": best.best_epoch, "epochs_run": best.epochs_run,
        "head_sha256": sha256_file(head_dir / "head.keras"),
        "sweep": {"trials": result.finished, "best_trial": result.best.get("number"),
                  "params": {k: v for k, v in result.best.items() if k in SWEPT},
                  "leaderboard": str(sweep.out / "leaderboard.csv")}})


#: The leaderboard columns that describe a trial's head (what the decisions table shows).
SWEPT = ("head_kind", "hidden_units", "normalize", "lr", "weight_decay", "dropout", "label_smoothing",
         "batch_size", "views")


def finetune_stage(config: RunConfig, run_dir: Path, record: dict | None, console: Console, *, key: str,
                   train_images: int, started: Callable[[], Any], callbacks: Sequence[Any] = (),
                   head_dir: Path | None = None) -> dict:
    """finetune from ``head_dir`` (default ``head/``) into ``finetune/``; resumes an interrupted one
    with the same key."""
    from headstart.pipeline.run.console import fit_progress

    ft = RunDir(RunLayout(run_dir).finetune)
    reused = _reuse(record, key, ft.run_json, ft.model_path, console=console)
    if reused:
        console.line("  reused: same head and fine-tuning options")
        return reused
    from headstart.pipeline.finetuning.finetuning import finetune

    resume = bool(record and record.get("key") == key and not record.get("done") and ft.interrupted)
    started()
    log_dir = str(RunLayout(run_dir).tensorboard("finetune")) if config.tensorboard else None
    start = time.perf_counter()
    try:
        # --export is the run's own export step, after evaluate (run.export_step).
        result = finetune(dataclasses.replace(config.finetune, source=config.source,
                                              head=str(head_dir or RunLayout(run_dir).head),
                                              split_specs=dict(config.extract.split_specs), out=str(ft.path),
                                              resume=resume, overwrite=not resume, tensorboard=log_dir,
                                              export=(), quantize="none"),
                          # its lines, not its epoch lines: the run draws its own over the cache's good images
                          reporter=LineReporter(Indented(console).line),
                          callbacks=[fit_progress(console, train_images, config.finetune.batch_size), *callbacks])
    finally:
        console.close()
    images, epoch_seconds = train_images * len(result.epoch_seconds), sum(result.epoch_seconds)
    return _with_outputs([ft.run_json, ft.model_path], {
        "key": key, "done": True, "status": "resumed" if resume else "ran",
        "seconds": time.perf_counter() - start, "images": images,
        "images_per_second": images / epoch_seconds if epoch_seconds else None,
        **test_measures(result.metrics), "val_accuracy": result.val_accuracy, "kept": result.kept,
        "validation": _validation(result.metrics), "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "model_sha256": sha256_file(result.model_path), "recipe": result.recipe,
        "stage_gate": result.metrics.get("stage_gate")})


def evaluate_stage(config: RunConfig, run_dir: Path, record: dict | None, console: Console, *, key: str) -> dict:
    """Evaluates the saved ``finetune/model.keras`` on the test split (else validation) and keeps
    evenly spread sample images in ``samples.npz`` for summary.png."""
    samples_path = RunLayout(run_dir).samples
    reused = _reuse(record, key, samples_path, console=console)
    if reused:
        console.line("  reused: same model and source")
        return reused
    from headstart.pipeline.data.sources import open_source

    model_run = RunDir.open(RunLayout(run_dir).finetune, kind="finetune")
    source = open_source(SourceSpec.from_config(config.extract, source=config.source))
    split = next((s for s in ("test", "validation") if s in source.split_names), None)
    if split is None:
        console.line("  no test or validation split: nothing to evaluate")
        return {"key": key, "done": True, "status": "ran", "seconds": 0.0, "split": None}
    start = time.perf_counter()
    metrics, seen, skipped = _evaluate(model_run, source, split, samples_path, config.finetune.batch_size, console)
    seconds = time.perf_counter() - start
    console.line(f"  {split}: {metrics['rows']} images, {_headline(metrics)}"
                + (f", {skipped} skipped" if skipped else ""))
    n = seen - skipped
    multi = MULTI_LABEL_KEYS if metrics.get("task") == "multi_label" else ()
    return _with_outputs([samples_path], {
        "key": key, "done": True, "status": "ran", "seconds": seconds, "images": n,
        "images_per_second": n / seconds if seconds else None, "split": split,
        **{k: metrics.get(k) for k in (*HEADLINE, *multi, "loss", "rows", "per_class", "confusion_matrix",
                                       "calibration")},
        "skipped": skipped})


def _evaluate(model_run: RunDir, source: Source, split: str, samples_path: Path, batch_size: int,
              console: Console) -> tuple[dict, int, int]:
    """One pass of the prediction loop over the split: (its metrics, items seen, items skipped);
    sample images for summary.png go to ``samples_path`` on the way."""
    from headstart.pipeline.model.calibration import model_temperature
    from headstart.pipeline.report.calibration_measures import before_after
    from headstart.pipeline.run.samples import (CONFIDENT_MISTAKES, CellImages, SampleImages, write_mistakes,
                                                write_samples)
    from headstart.pipeline.commands.evaluation import WrongImages
    from headstart.pipeline.training.predictions import predict_split, split_metrics

    model = model_run.load_model()
    class_names = list(source.class_names)
    thresholds = model_run.thresholds(class_names)
    total = source.count(split)
    samples = SampleImages(total, len(class_names), thresholds)
    # report.html's pictures of the mistakes (single-label: a multi-label row has no one confusion cell)
    pictures = () if thresholds is not None else (CellImages(len(class_names)),
                                                  WrongImages(CONFIDENT_MISTAKES, len(class_names)))
    line, start = console.progress(f"  evaluate {split}"), time.perf_counter()
    seen = [0]

    def observe(batch: PredictedBatch) -> None:
        for observer in (samples, *pictures):
            observer(batch)
        seen[0] = batch.seen
        line.update(batch.seen, total, batch.seen / max(time.perf_counter() - start, 1e-9))

    try:
        predictions = predict_split(model, source, split, batch_size=batch_size, multi_label=thresholds is not None,
                                    observe=observe)
    finally:
        console.close()
    metrics = split_metrics(predictions, class_names, multi_label=thresholds is not None, thresholds=thresholds)
    write_samples(samples_path, samples, class_names, size=int(model.input_shape[1]),
                  width=int(model.output_shape[-1]))
    if pictures:
        from headstart.pipeline.store.run_layout import MISTAKES

        write_mistakes(samples_path.with_name(MISTAKES), *pictures)
    metrics["calibration"] = before_after(predictions.labels, predictions.logits, model_temperature(model),
                                          len(class_names), thresholds is not None)
    return metrics, seen[0], len(predictions.skipped)


def _headline(metrics: dict) -> str:
    if metrics.get("task") == "multi_label":
        return f"mAP {metrics['map']:.4f}, exact match {metrics['exact_match']:.4f}"
    return ", ".join(f"{name} {metrics[k]:.4f}" for k, name in (("accuracy", "accuracy"),
                     ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))
                     if metrics.get(k) is not None) or "no images"
