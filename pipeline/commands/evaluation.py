"""Evaluate a full model (``model.keras``: raw images in, logits out) on a split of a source.

Exports live in ``headstart.pipeline.commands.export``; predicting on loose image files (which also
reads exports) in ``headstart.pipeline.commands.prediction``.

The split goes through the one prediction loop (``headstart.pipeline.training.predictions``), which
finetune computes its reported metrics with too, so ``evaluate`` on the saved model reproduces them.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.data.source_spec import check_source_path
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError, OptionError
from headstart.pipeline.options.checks import check_value
from headstart.pipeline.report.progress import observed
from headstart.pipeline.store.rundir import MODEL_FILES, RunDir, load_model_file
from headstart.pipeline.training.predictions import num_classes_of, predict_split, split_metrics


class WrongImages:
    """The ``keep`` most confidently wrong images of a split, most confident first (an ``observe``
    observer of ``predict_split``), each as (probability of the predicted class, key, true index,
    predicted index, uint8 (S, S, 3))."""

    def __init__(self, keep: int, num_classes: int):
        self.keep, self.num_classes, self.heap, self.rows = keep, num_classes, [], 0

    def __call__(self, batch: Any) -> None:
        from headstart.pipeline.model.head import logits_to_probabilities, predict_classes

        pred = predict_classes(batch.logits, self.num_classes)
        prob = logits_to_probabilities(batch.logits, self.num_classes)[np.arange(len(pred)), pred]
        for i in np.flatnonzero(pred != batch.labels):
            # A bounded min-heap keeps the most confident mistakes without holding every image.
            item = (float(prob[i]), self.rows + int(i), batch.keys[i], int(batch.labels[i]), int(pred[i]),
                    np.clip(batch.images[i], 0, 255).astype(np.uint8))
            (heapq.heappush if len(self.heap) < self.keep else heapq.heappushpop)(self.heap, item)
        self.rows += len(pred)

    @property
    def wrong(self) -> list[tuple[float, str, int, int, np.ndarray]]:
        return [(p, key, t, q, img) for p, _, key, t, q, img in sorted(self.heap, key=lambda x: (-x[0], x[1]))]


def evaluate_model(model_path: str | os.PathLike, source: str | Any, split: str = "test", *,
                   batch_size: int | None = None, split_specs: dict[str, str] | None = None,
                   validation_fraction: float | None = None, test_fraction: float | None = None,
                   path_column: str | None = None, label_column: str | None = None, images: str | None = None,
                   multi_label: bool = False, grid: str | os.PathLike | None = None, grid_size: int = 16,
                   reporter: Reporter = QUIET, note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Accuracy, loss, per-class metrics and confusion matrix of a saved model on one split.

    Args:
        model_path: ``model.keras`` or its run directory, or a ``headstart run`` directory (its final model).
        source: a source spec (``tfds:NAME``, a directory) or a ``headstart.pipeline.data.sources.Source``.
        split: split to evaluate.
        batch_size: images per forward pass; default: the run's batch size (same batches, so the
            same logits to the last bit), else 32.
        split_specs: how SOURCE is read, with ``validation_fraction``, ``test_fraction``, ``path_column``,
            ``label_column``, ``images`` and ``multi_label`` (``SourceSpec``; default: as the run
            recorded, when SOURCE is its source, so "test" means the same images).
        grid: write a PNG grid of at most ``grid_size`` most confidently wrong images here.
        reporter: the headline (measures to 4 decimals) and a progress line (default: quiet).
        note: where the one line naming the model a ``headstart run`` directory resolved to goes.

    Returns:
        ``{"model", "split", "loss", "accuracy", "balanced_accuracy", "macro_f1", "rows", "per_class", "confusion_matrix",
        "class_names", "skipped", "grid"}``.

    Raises:
        RunDirError: the model cannot be loaded.
        DataError: bad source, missing split, or classes that differ from the model's.
        OptionError: bad batch or grid size.
    """
    if isinstance(source, str):
        check_source_path(source)  # before the model load starts TensorFlow
    model, run, batch_size = _load(model_path, batch_size, grid_size, note)
    label_options = {"path_column": path_column, "label_column": label_column, "images": images,
                     "multi_label": multi_label}
    src = _resolve(source, run, split_specs, validation_fraction, test_fraction, label_options)
    if split not in src.split_names:
        raise DataError(f"source has no split '{split}' (it has {', '.join(src.split_names)})")
    class_names = list(src.class_names)
    if run and run.complete and run.class_names != class_names:
        raise DataError(f"source classes {class_names} differ from the model's {run.class_names}")
    thresholds = _thresholds(model_path, run, src, class_names, grid)
    multi_label = thresholds is not None
    width = int(model.output_shape[-1]) if multi_label else num_classes_of(model)
    if width != len(class_names):
        raise DataError(f"source has {len(class_names)} classes but the model predicts {width}")
    wrong = WrongImages(grid_size, width) if grid else None
    with observed(reporter, f"evaluate {split}", src.count(split), wrong) as observe:
        predictions = predict_split(model, src, split, batch_size=batch_size, multi_label=multi_label,
                                    observe=observe)
    metrics = {"model": str(model_path), "split": split,
               **split_metrics(predictions, class_names, multi_label=multi_label, thresholds=thresholds),
               "grid": str(grid) if wrong is not None else None}
    if wrong is not None:
        write_wrong_grid(wrong.wrong, class_names, grid)
    reporter.line(_headline(metrics, multi_label) + (f", {len(predictions.skipped)} skipped" if predictions.skipped else ""))
    return metrics


def _headline(metrics: dict[str, Any], multi_label: bool) -> str:
    measures = ", ".join(f"{label} {_fmt(metrics.get(key))}"
                         for label, key in _HEADLINES["multi_label" if multi_label else "single_label"])
    return f"{metrics['split']}: {metrics['rows']} images, {measures}, loss {_fmt(metrics.get('loss'))}"


def _note_model(model_path: str | os.PathLike, note: Callable[[str], None] | None) -> None:
    """Says which model a ``headstart run`` directory resolved to (nothing for a model or stage directory)."""
    from headstart.pipeline.store.run_layout import describe_model

    line = describe_model(model_path)
    if line and note:
        note(line)


def _load(model_path: str | os.PathLike, batch_size: int | None, grid_size: int,
          note: Callable[[str], None] | None = None) -> tuple[Any, RunDir | None, int]:
    """(the model, its run directory or None, the batch size: by default the run's, so the same
    batches give the same logits to the last bit, else 32)."""
    check_value("evaluate", "batch_size", batch_size)  # before the model load starts TensorFlow
    check_value("evaluate", "grid_size", grid_size)
    path = Path(model_path)
    run = RunDir.beside(path)
    model = load_model_file(path / MODEL_FILES["finetune"] if path.is_dir() else path)
    _note_model(model_path, note)
    if batch_size is None:
        batch_size = int((run.config if run and run.complete else {}).get("batch_size") or 32)
    return model, run, batch_size


def _thresholds(model_path: str | os.PathLike, run: RunDir | None, source: Any, class_names: list[str],
                grid: Any) -> np.ndarray | None:
    """A multi-label model's thresholds (None for a single-label one), checked against the source's task.

    The model's task comes from its run.json (or the thresholds.json beside it); thresholds are
    the ones saved with it (0.5 for a class it has none for).

    Raises:
        DataError: a multi-label source for a single-label model, or the other way round.
        OptionError: --grid with a multi-label model (the grid shows single-label mistakes).
    """
    thresholds = run.thresholds(class_names) if run is not None else None
    multi_label = thresholds is not None
    if bool(getattr(source, "multi_label", False)) != multi_label:
        tasks = ("multi-label", "single-label")
        raise DataError(f"SOURCE is {tasks[not getattr(source, 'multi_label', False)]} but the model "
                        f"{model_path} is {tasks[not multi_label]}")
    if multi_label and grid:
        raise OptionError(Arg("grid"), " shows single-label mistakes; this model is multi-label")
    return thresholds


def write_wrong_grid(wrong: Sequence[tuple], class_names: Sequence[str], path: str | os.PathLike) -> None:
    """Saves a PNG grid of wrong predictions (``WrongImages.wrong``), titled with the
    key, true and predicted class and the confidence. An empty list gives a "no errors" image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from headstart.pipeline.store.files import save_png

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
        save_png(fig, path, dpi=80)
    finally:
        plt.close(fig)


def _resolve(source: str | Any, run: RunDir | None, split_specs, validation_fraction, test_fraction,
             label_options: dict[str, Any]) -> Any:
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source

    if not isinstance(source, str):
        return source
    recorded = run.source_record if run is not None and run.complete else {}
    same = bool(recorded) and (source in (recorded.get("source"), recorded.get("path"))
                               or os.path.abspath(source) == recorded.get("path"))
    # The same source as the run's reads with the run's spec (so "test" means the same images);
    # anything given here wins, and what neither says takes the defaults.
    base = SourceSpec.from_record(recorded if same else None, source=source, label_options=label_options)
    given = {"split_specs": split_specs, "validation_fraction": validation_fraction, "test_fraction": test_fraction}
    return open_source(dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None}))


#: The headline measures of ``format_evaluation``'s first line, per task: (label, metrics key).
_HEADLINES = {
    "single_label": (("accuracy", "accuracy"), ("balanced accuracy", "balanced_accuracy"), ("macro-F1", "macro_f1")),
    "multi_label": (("mAP", "map"), ("micro-F1", "micro_f1"), ("macro-F1", "macro_f1"), ("exact match", "exact_match")),
}


def format_evaluation(metrics: dict[str, Any]) -> str:
    """Formats ``evaluate_model``'s result for people: totals, per-class table, confusion matrix
    (multi-label: mAP, F1s, exact match, and per class precision/recall/F1/AP at its threshold).
    Control characters in class names and keys are shown escaped."""
    from headstart.pipeline.report.printable import printable_values

    metrics = printable_values(metrics)
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
