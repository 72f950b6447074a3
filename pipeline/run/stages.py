"""The four stages of ``headstart run``, each: reuse when its key is unchanged, else run or resume.

Every function returns the stage's record for ``stages.json``: ``key`` (inputs + result-shaping
options), ``done``, ``status`` ("ran", "resumed" or "reused"), ``seconds`` (wall time of this call,
or of the original run when reused), ``images`` and ``images_per_second`` (of the stage's main loop),
and its scores. See ``headstart.pipeline.run.runner`` for the run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np

from headstart.features.file_hash import sha256_file
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.report.metrics import HEADLINE
from headstart.pipeline.run.toml_config import RunConfig

#: Test images kept for summary.png: evenly spread over the split, the last few of them mistakes.
SAMPLE_IMAGES, WRONG_SAMPLES = 12, 4


def test_measures(metrics: dict) -> dict:
    """A stage record's headline measures (accuracy, balanced accuracy, macro-F1) from the test
    section of its metrics.json (None each when there is no test split)."""
    test = metrics.get("test") or {}
    return {k: test.get(k) for k in HEADLINE}


def _reuse(record: dict | None, key: str, *paths: Path) -> dict | None:
    if record and record.get("key") == key and record.get("done") and all(p.exists() for p in paths):
        return {**record, "status": "reused"}
    return None


def extract_stage(config: RunConfig, path: Path, record: dict | None, console: Any, overwrite: bool, *,
                  key: str) -> dict:
    """extract-features into ``path``; resumes a ``.partial`` file, reuses a finished one."""
    reused = _reuse(record, key, path)
    if reused:
        console.log("  reused: same source and extraction options")
        return reused
    from headstart.features.cache import open_cache
    from headstart.pipeline.stages.extraction import extract_features

    resumed = Path(f"{path}.partial").exists()
    lines: dict[str, Any] = {}

    def on_progress(p: Any) -> None:
        line = lines.get(p.split) or lines.setdefault(p.split, console.progress(f"  extract {p.split}"))
        line.update(p.done, p.total, p.images_per_second)

    start = time.perf_counter()
    try:
        summary = extract_features(dataclasses.replace(config.extract, source=config.source, out=str(path),
                                                       overwrite=overwrite),
                                   on_progress=on_progress, log=lambda m: console.log(f"  {m}"))
    finally:
        console.close()
    seconds = time.perf_counter() - start
    with open_cache(str(path)) as cache:
        splits = {name: len(cache.split(name)) for name in cache.splits}
        fingerprint, class_names, provenance = cache.fingerprint, list(cache.class_names), cache.provenance
        skipped = sum(len(cache.split(name).skipped) for name in cache.splits)
    rows = sum(splits.values())
    loop_seconds = summary.seconds if not summary.already_complete else provenance.get("extract_seconds")
    for split, key_, reason in summary.skipped:
        console.log(f"  skipped [{split}] {key_}: {reason}")
    return {"key": key, "done": True, "seconds": seconds, "images": rows + skipped, "rows": rows,
            "status": "reused" if summary.already_complete else "resumed" if resumed else "ran",
            "images_per_second": (rows + skipped) / loop_seconds if loop_seconds else None,
            "fingerprint": fingerprint, "splits": splits, "class_names": class_names, "skipped": skipped}


def diagnose_stage(config: RunConfig, features: Path, out: Path, record: dict | None, console: Any, *,
                   key: str) -> dict:
    """``diagnose`` of the run's cache into ``out`` (seconds; reused while the cache is unchanged)."""
    reused = _reuse(record, key, out / "report.json")
    if reused:
        console.log("  reused: same features")
        return reused
    from headstart.pipeline.config import DiagnoseConfig
    from headstart.pipeline.diagnose.diagnosis import diagnose

    start = time.perf_counter()
    result = diagnose(DiagnoseConfig(features=str(features), out=str(out), seed=config.head.seed, overwrite=True),
                      log=lambda m: console.log(f"  {m}"))
    for line in result.summary.splitlines():
        console.log(f"  {line}")
    return {"key": key, "done": True, "status": "ran", "seconds": time.perf_counter() - start,
            "counts": result.counts, "report": str(out / "report.json")}


def head_stage(config: RunConfig, features: Path, head_dir: Path, record: dict | None, console: Any, *,
               key: str) -> dict:
    """train-head on the cache into ``head_dir`` (seconds: an interrupted one simply runs again)."""
    reused = _reuse(record, key, head_dir / "run.json", head_dir / "head.keras")
    if reused:
        console.log("  reused: same features and head options")
        return reused
    from headstart.pipeline.stages.head_training import train_head

    start = time.perf_counter()
    log_dir = str(head_dir.parent / "tensorboard" / "head") if config.tensorboard else None
    if config.sweep.get("trials"):
        return _sweep_head(config, features, head_dir, record, console, key=key, log_dir=log_dir)
    result = train_head(dataclasses.replace(config.head, features=str(features), out=str(head_dir), overwrite=True,
                                            tensorboard=log_dir),
                        log=lambda m: console.log(f"  {m}"))
    seconds = time.perf_counter() - start
    run = json.loads((head_dir / "run.json").read_text(encoding="utf-8"))
    images = int(run["cache"]["splits"]["train"]) * result.epochs_run
    train_seconds = run["timings"]["train_seconds"]
    return {"key": key, "done": True, "status": "ran", "seconds": seconds, "images": images,
            "images_per_second": images / train_seconds if train_seconds else None,
            **test_measures(result.metrics), "val_accuracy": result.val_accuracy,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "head_sha256": sha256_file(head_dir / "head.keras")}


def _sweep_head(config: RunConfig, features: Path, head_dir: Path, record: dict | None, console: Any, *,
                key: str, log_dir: str | None) -> dict:
    """The head stage as a sweep into RUN_DIR/sweep/; its best head becomes head/ for finetune.

    An interrupted sweep resumes from its study; a sweep with other settings starts anew.
    """
    import shutil

    from headstart.pipeline.config import SweepConfig
    from headstart.pipeline.sweep.space import space_from_dict
    from headstart.pipeline.sweep.study import run_sweep

    start = time.perf_counter()
    space = space_from_dict({k: v for k, v in config.sweep.items() if k != "trials"})
    sweep_dir = head_dir.parent / "sweep"
    result = run_sweep(SweepConfig(caches=(str(features),), out=str(sweep_dir), trials=int(config.sweep["trials"]),
                                   seed=config.head.seed, tensorboard=log_dir,
                                   overwrite=bool(record) and record.get("key") != key),
                       space, log=lambda m: console.log(f"  {m}"))
    shutil.rmtree(head_dir, ignore_errors=True)
    shutil.copytree(sweep_dir / "best", head_dir)
    run = json.loads((head_dir / "run.json").read_text(encoding="utf-8"))
    metrics = json.loads((head_dir / "metrics.json").read_text(encoding="utf-8"))
    seconds = time.perf_counter() - start
    images = int(run["cache"]["splits"]["train"]) * sum(int(r.get("epochs") or 0) for r in _leaderboard(sweep_dir))
    return {"key": key, "done": True, "status": "ran", "seconds": seconds, "images": images,
            "images_per_second": images / result.seconds if result.seconds else None,
            **test_measures(metrics), "accuracy": result.best_test_accuracy,
            "val_accuracy": (metrics.get("validation") or {}).get("accuracy"),
            "best_epoch": run["best_epoch"], "epochs_run": run["epochs_run"],
            "head_sha256": sha256_file(head_dir / "head.keras"),
            "sweep": {"trials": result.finished, "best_trial": run["sweep"]["trial"],
                      "leaderboard": str(sweep_dir / "leaderboard.csv")}}


def _leaderboard(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "leaderboard.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class FitProgress(keras.callbacks.Callback):
    """A progress line per fine-tuning epoch: images done, rate and ETA.

    Args:
        console: a ``headstart.pipeline.run.runner.Console``.
        images: training images per epoch (the good ones).
        batch_size: images per step.
    """

    def __init__(self, console: Any, images: int, batch_size: int):
        super().__init__()
        self.console, self.images, self.batch_size = console, images, batch_size
        self._line, self._t0, self._done0 = None, 0.0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._line = self.console.progress(f"  finetune epoch {epoch + 1}")

    def on_train_batch_end(self, batch, logs=None):
        done = (batch + 1) * self.batch_size
        done = min(self.images, done) if self.images else done
        if batch == 0:  # the first step includes tracing the graph: rates count from its end
            self._t0, self._done0 = time.perf_counter(), done
            return
        elapsed = time.perf_counter() - self._t0
        self._line.update(done, self.images or None, (done - self._done0) / elapsed if elapsed > 0 else 0.0)


def finetune_stage(config: RunConfig, run_dir: Path, record: dict | None, console: Any, *, key: str,
                   train_images: int, started: Callable[[], Any], callbacks: Sequence[Any] = ()) -> dict:
    """finetune from ``head/`` into ``finetune/``; resumes an interrupted one with the same key."""
    ft_dir = run_dir / "finetune"
    reused = _reuse(record, key, ft_dir / "run.json", ft_dir / "model.keras")
    if reused:
        console.log("  reused: same head and fine-tuning options")
        return reused
    from headstart.pipeline.stages.finetuning import finetune

    resume = bool(record and record.get("key") == key and not record.get("done")
                  and (ft_dir / "backup" / "progress.json").is_file())
    started()
    extra = [FitProgress(console, train_images, config.finetune.batch_size)]
    log_dir = str(run_dir / "tensorboard" / "finetune") if config.tensorboard else None
    start = time.perf_counter()
    try:
        result = finetune(dataclasses.replace(config.finetune, source=config.source, head=str(run_dir / "head"),
                                              split_specs=dict(config.extract.split_specs),
                                              out=str(ft_dir), resume=resume, overwrite=not resume,
                                              tensorboard=log_dir),
                          log=lambda m: console.log(f"  {m}"), callbacks=[*extra, *callbacks])
    finally:
        console.close()
    seconds = time.perf_counter() - start
    run = json.loads((ft_dir / "run.json").read_text(encoding="utf-8"))
    epoch_seconds = run["timings"]["epoch_seconds"]
    images = train_images * len(epoch_seconds)
    return {"key": key, "done": True, "status": "resumed" if resume else "ran", "seconds": seconds,
            "images": images, "images_per_second": images / sum(epoch_seconds) if sum(epoch_seconds) else None,
            **test_measures(result.metrics), "val_accuracy": result.val_accuracy, "kept": result.kept,
            "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "model_sha256": sha256_file(ft_dir / "model.keras")}


def evaluate_stage(config: RunConfig, run_dir: Path, record: dict | None, console: Any, *, key: str) -> dict:
    """Evaluates the saved ``finetune/model.keras`` on the test split (else validation) and keeps
    evenly spread sample images in ``samples.npz`` for summary.png."""
    samples_path = run_dir / "samples.npz"
    reused = _reuse(record, key, samples_path)
    if reused:
        console.log("  reused: same model and source")
        return reused
    from headstart.pipeline.data.sources import open_source
    from headstart.pipeline.stages.evaluation import load_model, split_metrics

    model, finetune_run = load_model(run_dir / "finetune" / "model.keras")
    source = open_source(SourceSpec.from_config(config.extract, source=config.source))
    split = next((s for s in ("test", "validation") if s in source.split_names), None)
    if split is None:
        console.log("  no test or validation split: nothing to evaluate")
        return {"key": key, "done": True, "status": "ran", "seconds": 0.0, "split": None}
    thresholds = _thresholds(finetune_run, list(source.class_names))
    seen = _Evaluated(total=source.count(split), classes=len(source.class_names), thresholds=thresholds)
    start = time.perf_counter()
    _predict_keeping_samples(model, source, split, seen, batch_size=config.finetune.batch_size, console=console)
    seconds = time.perf_counter() - start
    metrics = split_metrics(seen.predictions(int(model.output_shape[-1])), list(source.class_names),
                            multi_label=thresholds is not None, thresholds=thresholds)
    _write_samples(samples_path, seen, source.class_names, size=int(model.input_shape[1]),
                   width=int(model.output_shape[-1]))
    skipped = seen.skipped
    headline = (f"mAP {metrics['map']:.4f}, exact match {metrics['exact_match']:.4f}" if thresholds is not None
                else ", ".join(f"{name} {metrics[k]:.4f}" for k, name in (("accuracy", "accuracy"),
                               ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))
                               if metrics.get(k) is not None) or "no images")
    console.log(f"  {split}: {metrics['rows']} images, {headline}" + (f", {len(skipped)} skipped" if skipped else ""))
    n = seen.seen - len(skipped)
    multi = ("task", "map", "micro_f1", "exact_match") if thresholds is not None else ()
    return {"key": key, "done": True, "status": "ran", "seconds": seconds, "images": n,
            "images_per_second": n / seconds if seconds else None, "split": split,
            **{k_: metrics.get(k_) for k_ in (*HEADLINE, *multi, "loss", "rows", "per_class", "confusion_matrix")},
            "skipped": len(skipped)}


def _thresholds(finetune_run: dict | None, class_names: list[str]) -> np.ndarray | None:
    """A multi-label model's saved thresholds (its finetune run.json); None for single-label."""
    if (finetune_run or {}).get("task") != "multi_label":
        return None
    from headstart.pipeline.report.multilabel_metrics import thresholds_from_record

    return thresholds_from_record(finetune_run.get("thresholds"), class_names)


@dataclasses.dataclass
class _Evaluated:
    """What the evaluation pass collects: logits of the good images, and sample images for the plot.

    ``kept`` are evenly spread over the split (``SAMPLE_IMAGES`` of them); ``wrong`` are the first
    misclassified others (at most ``WRONG_SAMPLES``); each item is (uint8 (S, S, 3), label, logits).
    """

    total: int | None
    classes: int
    thresholds: np.ndarray | None = None  # a multi-label model's; labels are then (C,) multi-hot
    seen: int = 0
    logits: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    keys: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)
    wrong: list = dataclasses.field(default_factory=list)

    def predictions(self, width: int):
        from headstart.pipeline.stages.evaluation import SplitPredictions

        return SplitPredictions(
            logits=np.concatenate(self.logits) if self.logits else np.zeros((0, width), np.float32),
            labels=np.concatenate(self.labels) if self.labels else
            np.zeros((0,) if self.thresholds is None else (0, self.classes), np.int64),
            keys=self.keys, skipped=self.skipped)


def _predict_keeping_samples(model: Any, source: Any, split: str, seen: _Evaluated, *, batch_size: int,
                             console: Any) -> None:
    from headstart.pipeline.model.head import predict_classes

    total = seen.total
    wanted = set(np.linspace(0, total - 1, min(SAMPLE_IMAGES, total)).round().astype(int)) if total else set()
    line = console.progress(f"  evaluate {split}")
    start = time.perf_counter()
    try:
        for batch in source.dataset(split, int(model.input_shape[1])).batch(batch_size):
            errors = [e.decode() for e in batch["error"].numpy()]
            names = [n.decode() for n in batch["key"].numpy()]
            good = np.array([not e for e in errors])
            seen.skipped += [(n, e) for n, e in zip(names, errors) if e]
            if good.any():
                images = batch["image"].numpy()
                out = np.asarray(model.predict_on_batch(images[good]), dtype=np.float32)
                seen.logits.append(out)
                seen.labels.append(batch["label"].numpy()[good].astype(np.int64))
                seen.keys += [n for n, g in zip(names, good) if g]
                multi = seen.thresholds is not None
                predicted = predict_classes(out, seen.classes, multi, seen.thresholds)
                for j, i in enumerate(np.flatnonzero(good)):
                    item = (np.clip(images[i], 0, 255).astype(np.uint8), seen.labels[-1][j], out[j])
                    if seen.seen + i in wanted or (not total and len(seen.kept) < SAMPLE_IMAGES):
                        seen.kept.append(item)
                    elif np.any(predicted[j] != seen.labels[-1][j]) and len(seen.wrong) < WRONG_SAMPLES:
                        seen.wrong.append(item)
            seen.seen += len(names)
            line.update(seen.seen, total, seen.seen / max(time.perf_counter() - start, 1e-9))
    finally:
        console.close()


def _write_samples(path: Path, seen: _Evaluated, class_names: Sequence[str], *, size: int, width: int) -> None:
    """``samples.npz`` for summary.png: images, labels, predicted classes and their probabilities."""
    from headstart.pipeline.model.head import logits_to_probabilities, predict_classes
    from headstart.pipeline.report.rundir import atomic_write

    kept, k = seen.kept, seen.classes
    if seen.wrong and kept:  # mistakes are worth seeing: they replace some of the evenly spread images
        spread = np.linspace(0, len(kept) - 1, max(1, SAMPLE_IMAGES - len(seen.wrong))).round().astype(int)
        kept = [kept[i] for i in sorted(set(spread.tolist()))] + seen.wrong
    multi = seen.thresholds is not None
    sample_logits = np.stack([o for _, _, o in kept]) if kept else np.zeros((0, width), np.float32)
    probs = logits_to_probabilities(sample_logits, k, multi) if kept else np.zeros((0, k), np.float32)
    empty = (0, k) if multi else (0,)
    # Multi-label: labels and predicted are (N, C) multi-hot, probability (N, C) per class.
    arrays = {"images": np.stack([im for im, _, _ in kept]) if kept else np.zeros((0, size, size, 3), np.uint8),
              "labels": np.array([t for _, t, _ in kept], np.int64).reshape(-1, *empty[1:]),
              "predicted": predict_classes(sample_logits, k, multi, seen.thresholds).astype(np.int64) if kept
              else np.zeros(empty, np.int64),
              "probability": (probs if multi else probs.max(axis=1)) if kept else np.zeros(empty, np.float32),
              "class_names": np.array(class_names, dtype=str)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write, suffix=".npz")
