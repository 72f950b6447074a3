"""Evaluate a full model (``model.keras``: raw images in, logits out) on a split of a source.

Exports live in ``headstart.pipeline.stages.export``; predicting on loose image files (which also
reads exports) in ``headstart.pipeline.stages.prediction``.

Every image goes through ``headstart.pipeline.data.sources`` (``Source.dataset`` for splits, ``load_image`` for loose
files), the same input path extraction and fine-tuning use, and every forward pass runs with
``training=False`` so the model's augmentation layers stay idle. ``finetune`` computes its reported
metrics with ``predict_split`` / ``split_metrics`` from here, so ``evaluate`` on the saved model
reproduces them.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.pipeline.data.source_spec import check_source_path
from headstart.pipeline.errors import DataError, OptionError, RunDirError


@dataclass
class SplitPredictions:
    """Logits of one split, in source order, good images only.

    Attributes:
        logits: float32 (N, 1) or (N, K).
        labels: int64 (N,).
        keys: N source keys.
        skipped: (key, reason) of every image that could not be decoded.
        wrong: up to ``keep_wrong`` most confidently wrong images, most confident first, as
            (probability of the predicted class, key, true index, predicted index, uint8 (S, S, 3)).
    """

    logits: np.ndarray
    labels: np.ndarray
    keys: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    wrong: list[tuple[float, str, int, int, np.ndarray]] = field(default_factory=list)


def num_classes_of(model: Any) -> int:
    """Classes a logits model separates: one logit means two classes."""
    units = int(model.output_shape[-1])
    return 2 if units == 1 else units


def load_model(path: str | os.PathLike) -> tuple[Any, dict | None]:
    """Loads ``model.keras`` (or the one in a run directory) in safe mode, with its run.json.

    Returns:
        (model, run) where run is the parsed ``run.json`` beside the model, or None.

    Raises:
        RunDirError: no such file, or a file Keras cannot load as a model.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise RunDirError(f"{path}: no such model file (give model.keras or its run directory)")
    import keras  # only now: a mistyped path fails before TensorFlow starts

    from headstart.features.hub import import_for_model_file

    import_for_model_file(path)  # KerasHub layers are registered serializables once it is imported
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, JSON and Keras errors all mean "not a model"
        raise RunDirError(f"{path}: cannot load as a Keras model ({str(exc).splitlines()[0][:200]})") from exc
    run = None
    run_json = path.parent / "run.json"
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run = None
    return model, run


def labelled_dataset(source: Any, split: str, *, image_size: int, num_classes: int, batch_size: int,
                     shuffle_seed: int | None = None, shuffle_buffer: int = 256, multi_label: bool = False,
                     class_weights: Sequence[float] | None = None) -> Any:
    """Batches of (image, target) of the good images of one split, for ``fit`` and ``evaluate``.

    Args:
        source: a ``headstart.pipeline.data.sources.Source``.
        split: split name.
        image_size: S.
        num_classes: decides the target: float32 (1,) for two classes (binary cross-entropy against
            one logit), int64 () otherwise.
        batch_size: images per batch.
        shuffle_seed: shuffle (reshuffled every epoch) with this seed; None keeps source order.
        shuffle_buffer: images held by the shuffle buffer.
        multi_label: the source's labels are multi-hot (C,); the target is float32 (C,).
        class_weights: one loss weight per class (``--class-weight``, single-label): each element
            then also carries its class's weight, which ``fit`` applies as a sample weight.

    Returns:
        ``tf.data.Dataset`` of (float32 (B, S, S, 3), target (B, 1), (B,) or (B, C)), plus float32
        (B,) sample weights with ``class_weights``.
    """
    import tensorflow as tf

    weights = None if class_weights is None else tf.constant(list(class_weights), tf.float32)

    def to_pair(element):
        label = element["label"]
        if multi_label:
            target = tf.reshape(tf.cast(label, tf.float32), (num_classes,))
        elif num_classes == 2:
            target = tf.reshape(tf.cast(label, tf.float32), (1,))
        else:
            target = tf.cast(label, tf.int64)
        if weights is None:
            return element["image"], target
        return element["image"], target, tf.gather(weights, tf.cast(label, tf.int64))

    ds = source.dataset(split, image_size).filter(lambda e: tf.equal(tf.strings.length(e["error"]), 0))
    if shuffle_seed is not None:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict_split(model: Any, source: Any, split: str, *, batch_size: int = 32,
                  keep_wrong: int = 0, multi_label: bool = False) -> SplitPredictions:
    """Runs ``model`` (inference mode) over one split of ``source``.

    Args:
        model: raw images (B, S, S, 3) → logits.
        source: a ``headstart.pipeline.data.sources.Source``.
        split: split name.
        batch_size: images per forward pass.
        keep_wrong: how many of the most confidently wrong images to keep for a grid (single-label).
        multi_label: the model has one sigmoid logit per class; labels are multi-hot (N, C).
    """
    import tensorflow as tf

    from headstart.pipeline.distribute.loop import predict_logits
    from headstart.pipeline.model.head import logits_to_probabilities, predict_classes

    image_size = int(model.input_shape[1])
    k = int(model.output_shape[-1]) if multi_label else num_classes_of(model)
    keep_wrong = 0 if multi_label else keep_wrong
    logits, labels, keys, skipped, heap = [], [], [], [], []
    for batch in source.dataset(split, image_size).batch(batch_size).prefetch(tf.data.AUTOTUNE):
        errors = [e.decode() for e in batch["error"].numpy()]
        names = [key.decode() for key in batch["key"].numpy()]
        good = np.array([not e for e in errors])
        skipped.extend((n, e) for n, e in zip(names, errors) if e)
        if not good.any():
            continue
        # Whole batches (bad rows are zero images, dropped after): one batch shape, no retracing.
        out = np.asarray(predict_logits(model, batch["image"]), dtype=np.float32)[good]
        images = batch["image"].numpy()[good] if keep_wrong else None
        truth = batch["label"].numpy()[good].astype(np.int64)
        logits.append(out)
        labels.append(truth)
        keys.extend(n for n, g in zip(names, good) if g)
        if keep_wrong:
            pred = predict_classes(out, k)
            prob = logits_to_probabilities(out, k)[np.arange(len(pred)), pred]
            for i in np.flatnonzero(pred != truth):
                # A bounded min-heap keeps the most confident mistakes without holding every image.
                item = (float(prob[i]), len(keys) - len(pred) + int(i), keys[len(keys) - len(pred) + i],
                        int(truth[i]), int(pred[i]), np.clip(images[i], 0, 255).astype(np.uint8))
                (heapq.heappush if len(heap) < keep_wrong else heapq.heappushpop)(heap, item)
    width = int(model.output_shape[-1])
    wrong = [(p, key, t, q, img) for p, _, key, t, q, img in sorted(heap, key=lambda x: (-x[0], x[1]))]
    return SplitPredictions(
        logits=np.concatenate(logits) if logits else np.zeros((0, width), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros((0, k) if multi_label else (0,), np.int64),
        keys=keys, skipped=skipped, wrong=wrong)


def split_metrics(predictions: SplitPredictions, class_names: Sequence[str], *, multi_label: bool = False,
                  thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Loss (the training loss, mean over images) and the task's measures
    (``headstart.pipeline.report.split_measures.measure_split``): accuracy, per-class metrics and
    confusion matrix, or for multi-label mAP, F1s and per-class AP at ``thresholds``."""
    from headstart.pipeline.report.split_measures import measure_split

    metrics = measure_split(predictions.labels, predictions.logits, class_names, multi_label=multi_label,
                            thresholds=thresholds)
    metrics["skipped"] = [list(s) for s in predictions.skipped]
    return metrics


def evaluate_model(model_path: str | os.PathLike, source: str | Any, split: str = "test", *,
                   batch_size: int | None = None, split_specs: dict[str, str] | None = None,
                   validation_fraction: float | None = None, test_fraction: float | None = None,
                   path_column: str | None = None, label_column: str | None = None, images: str | None = None,
                   multi_label: bool = False, grid: str | os.PathLike | None = None, grid_size: int = 16,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Accuracy, loss, per-class metrics and confusion matrix of a saved model on one split.

    Split specs and fractions default to those the model's run recorded (run.json beside the
    model) when SOURCE is the source it was trained on, so "test" means the same images.

    Args:
        model_path: ``model.keras`` or its run directory.
        source: a source spec (``tfds:NAME``, a directory) or a ``headstart.pipeline.data.sources.Source``.
        split: split to evaluate.
        batch_size: images per forward pass; default: the run's batch size (same batches, so the
            same logits to the last bit), else 32.
        split_specs, validation_fraction, test_fraction: as for ``headstart.pipeline.data.sources.resolve_source``.
        path_column, label_column, images, multi_label: how a label-file SOURCE is read (default:
            as the run recorded, when SOURCE is its source).
        grid: write a PNG grid of the most confidently wrong images here.
        grid_size: at most this many images in the grid.
        log: one-line status messages.

    Returns:
        ``{"model", "split", "loss", "accuracy", "balanced_accuracy", "macro_f1", "rows", "per_class", "confusion_matrix",
        "class_names", "skipped", "grid"}``.

    Raises:
        RunDirError: the model cannot be loaded. DataError: bad source, missing split, or classes
        that differ from the model's. OptionError: bad batch or grid size.
    """
    if isinstance(source, str):
        check_source_path(source)  # before the model load starts TensorFlow
    model, run = load_model(model_path)
    if batch_size is None:
        batch_size = int(((run or {}).get("config") or {}).get("batch_size") or 32)
    if batch_size < 1 or grid_size < 1:
        raise OptionError(f"--batch-size and the grid size must be at least 1, got {batch_size}, {grid_size}")
    label_options = {"path_column": path_column, "label_column": label_column, "images": images,
                     "multi_label": multi_label}
    src = _resolve(source, run, split_specs, validation_fraction, test_fraction, label_options)
    if split not in src.split_names:
        raise DataError(f"source has no split '{split}' (it has {', '.join(src.split_names)})")
    class_names = list(src.class_names)
    expected = (run or {}).get("class_names")
    if expected and list(expected) != class_names:
        raise DataError(f"source classes {class_names} differ from the model's {list(expected)}")
    multi_label, thresholds = _task_of(model_path, run, src, class_names, grid)
    width = int(model.output_shape[-1]) if multi_label else num_classes_of(model)
    if width != len(class_names):
        raise DataError(f"source has {len(class_names)} classes but the model predicts {width}")
    predictions = predict_split(model, src, split, batch_size=batch_size, keep_wrong=grid_size if grid else 0,
                                multi_label=multi_label)
    metrics = {"model": str(model_path), "split": split,
               **split_metrics(predictions, class_names, multi_label=multi_label, thresholds=thresholds),
               "grid": None}
    if grid:
        write_wrong_grid(predictions.wrong, class_names, grid)
        metrics["grid"] = str(grid)
    if multi_label:
        log(f"{split}: {metrics['rows']} images, mAP {metrics['map']}, micro-F1 {metrics['micro_f1']}, "
            f"macro-F1 {metrics['macro_f1']}, exact match {metrics['exact_match']}, loss {metrics['loss']}"
            + (f", {len(predictions.skipped)} skipped" if predictions.skipped else ""))
        return metrics
    log(f"{split}: {metrics['rows']} images, accuracy {metrics['accuracy']}, balanced accuracy "
        f"{metrics['balanced_accuracy']}, macro-F1 {metrics['macro_f1']}, loss {metrics['loss']}"
        + (f", {len(predictions.skipped)} skipped" if predictions.skipped else ""))
    return metrics


def _task_of(model_path: str | os.PathLike, run: dict | None, source: Any, class_names: list[str],
             grid: Any) -> tuple[bool, np.ndarray | None]:
    """(multi_label, thresholds) of the model, checked against the source's task.

    The model's task comes from its run.json (or the thresholds.json beside it); thresholds are
    the ones saved with it (0.5 for a class it has none for).

    Raises:
        DataError: a multi-label source for a single-label model, or the other way round.
        OptionError: --grid with a multi-label model (the grid shows single-label mistakes).
    """
    from headstart.pipeline.report.multilabel_metrics import thresholds_from_record

    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    record = (run or {}).get("thresholds")
    if record is None and (folder / "thresholds.json").is_file():
        try:
            record = json.loads((folder / "thresholds.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise RunDirError(f"{folder / 'thresholds.json'} is unreadable") from None
    multi_label = ((run or {}).get("task") or (record or {}).get("task")) == "multi_label"
    if bool(getattr(source, "multi_label", False)) != multi_label:
        tasks = ("multi-label", "single-label")
        raise DataError(f"SOURCE is {tasks[not getattr(source, 'multi_label', False)]} but the model "
                        f"{model_path} is {tasks[not multi_label]}")
    if multi_label and grid:
        raise OptionError("--grid shows single-label mistakes; this model is multi-label")
    return multi_label, (thresholds_from_record(record, class_names) if multi_label else None)


def write_wrong_grid(wrong: Sequence[tuple], class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Saves a PNG grid of wrong predictions (from ``SplitPredictions.wrong``), titled with the
    key, true and predicted class and the confidence. An empty list gives a "no errors" image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from headstart.pipeline.report.rundir import _atomic_write

    n = max(1, len(wrong))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    try:
        for ax in axes.flat:
            ax.axis("off")
        if not wrong:
            axes[0][0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
        for ax, (prob, key, true, pred, image) in zip(axes.flat, wrong):
            ax.imshow(image)
            ax.set_title(f"{Path(key).name[:28]}\ntrue {class_names[true]}, said {class_names[pred]} "
                         f"{prob:.2f}", fontsize=8)
        fig.tight_layout()
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80), suffix=".png")
    finally:
        plt.close(fig)


def _resolve(source: str | Any, run: dict | None, split_specs, validation_fraction, test_fraction,
             label_options: dict[str, Any]) -> Any:
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source

    if not isinstance(source, str):
        return source
    recorded = _recorded_source(run)
    same = bool(recorded) and (source in (recorded.get("source"), recorded.get("path"))
                               or os.path.abspath(source) == recorded.get("path"))
    # The same source as the run's reads with the run's spec (so "test" means the same images);
    # anything given here wins, and what neither says takes the defaults.
    base = SourceSpec.from_record(recorded if same else None, source=source, label_options=label_options)
    given = {"split_specs": split_specs, "validation_fraction": validation_fraction, "test_fraction": test_fraction}
    return open_source(dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None}))


def _recorded_source(run: dict | None) -> dict:
    # finetune's run.json records how SOURCE was resolved under "source"; nothing → defaults.
    return dict((run or {}).get("source") or {})


#: The headline measures of ``format_evaluation``'s first line, per task: (label, metrics key).
_HEADLINES = {
    "single_label": (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1")),
    "multi_label": (("mAP", "map"), ("micro-F1", "micro_f1"), ("macro-F1", "macro_f1"), ("exact match", "exact_match")),
}


def format_evaluation(metrics: dict[str, Any]) -> str:
    """Formats ``evaluate_model``'s result for people: totals, per-class table, confusion matrix
    (multi-label: mAP, F1s, exact match, and per class precision/recall/F1/AP at its threshold)."""
    multi = metrics.get("task") == "multi_label"
    names = list(metrics["class_names"])
    loss = metrics["loss"]
    measures = ", ".join(f"{label} {_fmt(metrics.get(key))}"
                         for label, key in _HEADLINES["multi_label" if multi else "single_label"])
    lines = [f"{metrics['model']} on split '{metrics['split']}': {metrics['rows']} images"
             f"{' (multi-label)' if multi else ''}, {measures}" + (f", loss {loss:.4f}" if loss is not None else "")]
    width = max(8, *(len(n) for n in names))
    lines += _multilabel_table(metrics, names, width) if multi else _class_table(metrics, names, width)
    for key, reason in metrics.get("skipped", []):
        lines.append(f"  skipped {key}: {reason}")
    if metrics.get("grid"):
        lines.append(f"  most confidently wrong: {metrics['grid']}")
    return "\n".join(lines)


def _class_table(metrics: dict[str, Any], names: list[str], width: int) -> list[str]:
    lines = [f"  {'class':<{width}}  precision  recall  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"  {name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['support']:7d}")
    lines.append("  confusion matrix (rows: true, columns: predicted): " + ", ".join(names))
    for name, counts in zip(names, metrics["confusion_matrix"]):
        lines.append(f"  {name:<{width}}  " + " ".join(f"{c:6d}" for c in counts))
    return lines


def _multilabel_table(metrics: dict[str, Any], names: list[str], width: int) -> list[str]:
    lines = [f"  {'class':<{width}}  threshold  precision  recall      F1      AP  support"]
    for name in names:
        row = metrics["per_class"][name]
        lines.append(f"  {name:<{width}}  {row['threshold']:9.4f}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                     f"{row['f1']:6.4f}  {_fmt(row['average_precision']):>6}  {row['support']:7d}")
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
