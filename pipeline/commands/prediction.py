"""Predict with a saved model: image files in, one row per file (class and probability, or the
label set of a multi-label model), printed or written as CSV.

The model is ``model.keras`` or any export (``headstart.pipeline.commands.predictor`` reads them all);
images go through the one prediction loop (``headstart.pipeline.training.predictions``) and the
input path every other stage uses. Evaluation on a split is
``headstart.pipeline.commands.evaluation``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TYPE_CHECKING

import numpy as np

# IMAGE_EXTENSIONS: what ``predict_images`` picks up in a directory (files named explicitly are always tried).
from headstart.features.reporter import Reporter
from headstart.pipeline.data.image_header import IMAGE_EXTENSIONS
from headstart.pipeline.errors import OptionError
from headstart.pipeline.options.checks import check_value
from headstart.pipeline.report.progress import observed

if TYPE_CHECKING:
    from headstart.pipeline.commands.predictor import Predictor

@dataclass
class PredictionRow:
    """One line of ``predict``: the class and its probability, or why the file was not read.

    A multi-label model's row has ``labels``: the label set, each class whose probability reaches
    its saved threshold (most probable first), and ``probabilities``: every class's probability;
    ``label`` is then the set joined with "|" ("" for the empty set) and ``probability`` None.
    """

    path: str
    label: str | None
    probability: float | None
    error: str | None = None
    labels: list[tuple[str, float]] | None = None
    probabilities: dict[str, float] | None = None


def predict_images(model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], *,
                   batch_size: int = 32, class_names: Sequence[str] | None = None,
                   reporter: Reporter | None = None,
                   note: Callable[[str], None] | None = None) -> list[PredictionRow]:
    """Classifies image files; a bad file gives a row with ``error`` set and never stops the rest.

    Args:
        model_path: ``model.keras`` or its run directory, a ``headstart run`` directory, or an export: a SavedModel directory, a
            ``.onnx`` or a ``.tflite`` file (see ``headstart.pipeline.commands.predictor``).
        paths: image files and/or directories (searched recursively for ``IMAGE_EXTENSIONS``).
        batch_size: images per forward pass.
        class_names: names of the class indices; default: those the export holds, else run.json
            beside the model, else "0", "1"…
        reporter: draws a progress line through the files (``features/reporter.py``); None draws none.
        note: where the one line naming the model a ``headstart run`` directory resolved to goes.

    Returns:
        One PredictionRow per file, in the order given (directories sorted): the predicted class and
        its probability.
    """
    from headstart.pipeline.commands.predictor import load_predictor

    check_value("predict", "batch_size", batch_size)  # 0 was TensorFlow's InvalidArgumentError traceback
    predictor = load_predictor(model_path)  # first: a mistyped path fails before TensorFlow starts
    from headstart.pipeline.store.run_layout import describe_model

    if note and describe_model(model_path):  # a `headstart run` directory: say which model it gave
        note(describe_model(model_path))
    from headstart.pipeline.data.file_list import FilesSource
    from headstart.pipeline.model.head import logits_to_probabilities
    from headstart.pipeline.training.predictions import predict_split

    k = predictor.num_classes
    names = list(class_names or predictor.class_names or [str(i) for i in range(k)])
    if len(names) != k:
        raise OptionError(f"{len(names)} class names given for a model of {k} classes")
    files = _expand(paths)
    with observed(reporter, "predict", len(files)) as observe:
        found = predict_split(predictor, FilesSource(files), FilesSource.SPLIT, batch_size=batch_size,
                              observe=observe)
    probabilities = iter(logits_to_probabilities(found.logits, k, predictor.multi_label))
    good, bad = iter(found.keys), iter(found.skipped)
    next_good, next_bad = next(good, None), next(bad, (None, None))
    rows = []
    for path in files:  # the loop keeps the files' order in both lists
        row = PredictionRow(path, None, None)
        if os.path.abspath(path) == next_good:
            _fill(row, next(probabilities), names, predictor)
            next_good = next(good, None)
        else:
            row.error = f"{path}: {next_bad[1]}"
            next_bad = next(bad, (None, None))
        rows.append(row)
    return rows


def _fill(row: PredictionRow, p: np.ndarray, names: Sequence[str], predictor: Predictor) -> None:
    """The predicted class and its probability, or a multi-label model's label set."""
    if predictor.multi_label:
        _set_label_set(row, p, names, predictor.thresholds)
        return
    best = int(np.argmax(p))
    row.label, row.probability = names[best], float(p[best])


def _set_label_set(row: PredictionRow, p: np.ndarray, names: Sequence[str], thresholds: np.ndarray) -> None:
    """Fills a multi-label row: the classes at or above their thresholds, most probable first."""
    chosen = [int(c) for c in np.argsort(-p, kind="stable") if p[c] >= thresholds[c]]
    row.labels = [(names[c], float(p[c])) for c in chosen]
    row.probabilities = {name: float(q) for name, q in zip(names, p)}
    row.label = "|".join(name for name, _ in row.labels)


def format_prediction(row: PredictionRow) -> str:
    """One line of ``predict``: ``path<TAB>class<TAB>probability``; for a multi-label model
    ``path<TAB>label|label<TAB>label probability, …`` ("(no label)" for the empty set); or
    ``path<TAB>error: reason``. Control characters in the path or a class name are shown escaped."""
    from headstart.pipeline.report.printable import printable, printable_values

    row = PredictionRow(printable(row.path), printable_values(row.label), row.probability,
                        printable_values(row.error), printable_values(row.labels))
    if row.error:
        return f"{row.path}\terror: {row.error}"
    if row.labels is not None:
        chosen = ", ".join(f"{name} {p:.4f}" for name, p in row.labels)
        return f"{row.path}\t{row.label or '(no label)'}\t{chosen or '-'}"
    return f"{row.path}\t{row.label}\t{row.probability:.4f}"


def write_predictions_csv(rows: Sequence[PredictionRow], path: str | os.PathLike) -> None:
    """Writes ``path,class,probability,error`` lines atomically; for a multi-label model
    ``path,labels,<one probability column per class>,error`` (labels joined with "|")."""
    import csv
    import io

    from headstart.pipeline.store.files import write_text_atomic

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = next((list(r.probabilities) for r in rows if r.probabilities is not None), None)
    if names is not None:
        writer.writerow(["path", "labels", *names, "error"])
        for r in rows:
            probs = r.probabilities or {}
            writer.writerow([r.path, r.label or "", *(f"{probs[n]:.6f}" if n in probs else "" for n in names),
                             r.error or ""])
    else:
        writer.writerow(["path", "class", "probability", "error"])
        for r in rows:
            writer.writerow([r.path, r.label or "", "" if r.probability is None else f"{r.probability:.6f}",
                             r.error or ""])
    write_text_atomic(path, buf.getvalue())


def _expand(paths: Sequence[str | os.PathLike]) -> list[str]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            # Not only regular files: a pipe or device named like an image gets a row saying why it
            # was not read (load_image never opens it), instead of vanishing from the output.
            out.extend(str(f) for f in sorted(p.rglob("*"))
                       if not f.is_dir() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        else:
            out.append(str(p))
    return out
