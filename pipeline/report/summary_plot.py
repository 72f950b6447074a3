"""``summary.png`` of a ``headstart run``: one figure a user can read at a glance.

Top row: loss and accuracy of both training stages on one epoch axis (train-head's epochs, then
finetune's, a dashed line where fine-tuning starts, as in the Keras guide's plot), and the test
confusion matrix — for a multi-label run, the test average precision of each class instead, as bars
(a confusion matrix has no meaning when an image carries several labels). Below: a grid of sample test images, each titled with its true and predicted class
(green when right, red when wrong). Drawn with matplotlib's non-interactive Agg backend.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_summary(path: str | os.PathLike, *, head_history: Mapping[str, Sequence[float]],
                 finetune_history: Mapping[str, Sequence[float]], head_best: int | None = None,
                 finetune_best: int | None = None, confusion: Sequence[Sequence[int]] | None = None,
                 class_names: Sequence[str] = (), samples: Mapping[str, np.ndarray] | None = None,
                 title: str | None = None, per_class: Mapping[str, Mapping] | None = None) -> None:
    """Writes summary.png (atomically).

    Args:
        path: the PNG file.
        head_history, finetune_history: metric → per-epoch values (``loss``, ``accuracy``,
            ``val_loss``, ``val_accuracy``).
        head_best, finetune_best: 1-based epochs whose weights each stage kept.
        confusion: ``confusion[i][j]`` counts test images of true class i predicted as j.
        class_names: name of each class index.
        samples: ``images`` uint8 (N, S, S, 3), ``labels`` and ``predicted`` (N,), optional
            ``probability`` (N,).
        title: figure title.
        per_class: a multi-label run's test ``per_class`` measures (``average_precision`` per class):
            drawn as bars in place of the confusion matrix. Samples then hold (N, C) multi-hot
            ``labels`` and ``predicted``.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    from headstart.pipeline.store.files import save_png

    n_samples = 0 if samples is None else len(samples["images"])
    cols = 6
    sample_rows = -(-n_samples // cols) if n_samples else 0
    fig = plt.figure(figsize=(16, 4.6 + 2.5 * sample_rows))
    grid = fig.add_gridspec(1 + sample_rows, 3, height_ratios=[4.6] + [2.5] * sample_rows)
    try:
        for column, metric in enumerate(("loss", "accuracy")):
            _curves(fig.add_subplot(grid[0, column]), metric, head_history, finetune_history, head_best, finetune_best)
        if per_class is not None:
            _average_precision(fig.add_subplot(grid[0, 2]), per_class)
        else:
            _confusion(fig.add_subplot(grid[0, 2]), confusion, class_names)
        if n_samples:
            inner = grid[1:, :].subgridspec(sample_rows, cols)
            for i in range(sample_rows * cols):
                ax = fig.add_subplot(inner[i // cols, i % cols])
                ax.axis("off")
                if i < n_samples:
                    _sample(ax, samples, i, class_names)
        save_png(fig, path, dpi=80, title=title)
    finally:
        plt.close(fig)


def _epochs(history: Mapping) -> int:
    return max((len(v) for v in history.values()), default=0)


def _curves(ax: Axes, metric: str, head: Mapping, finetune: Mapping, head_best: int | None,
            finetune_best: int | None) -> None:
    offset = max((len(v) for v in head.values()), default=0)
    for history, start, stage in ((head, 0, "head"), (finetune, offset, "finetune")):
        for key, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
            values = history.get(key)
            if values:
                ax.plot(range(start + 1, start + len(values) + 1), values, style, marker="o", markersize=3,
                        label=f"{stage} {label}")
    if offset and finetune:
        ax.axvline(offset + 0.5, color="grey", linestyle=":", label="start fine-tuning")
    for best, start, colour in ((head_best, 0, "tab:blue"), (finetune_best, offset, "tab:green")):
        if best:
            ax.axvline(start + best, color=colour, alpha=0.25, linewidth=4)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ran = [label for label, history in (("train-head", head), ("finetune", finetune)) if _epochs(history)]
    skipped = "" if _epochs(finetune) else "; fine-tuning skipped"  # the stages that ran, and only those
    ax.set_xlabel(f"epoch ({', then '.join(ran) or 'no epochs'}{skipped}; shaded: kept epochs)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def _confusion(ax: Axes, confusion: Sequence[Sequence[int]] | None, class_names: Sequence[str]) -> None:
    if not confusion:
        ax.axis("off")
        ax.text(0.5, 0.5, "no test split", ha="center", va="center")
        return
    matrix = np.asarray(confusion, dtype=np.int64)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, np.maximum(totals, 1))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    k = len(matrix)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black", fontsize=9 if k <= 10 else 6)
    names = [str(c)[:12] for c in class_names] or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"test confusion matrix (accuracy {accuracy:.3f})")


def _average_precision(ax: Axes, per_class: Mapping[str, Mapping]) -> None:
    names = list(per_class)
    values = [per_class[n].get("average_precision") for n in names]
    ax.bar(range(len(names)), [0.0 if v is None else v for v in values], color="tab:blue")
    for i, v in enumerate(values):
        ax.text(i, (v or 0.0) + 0.02, "n/a" if v is None else f"{v:.2f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), [n[:12] for n in names], rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("average precision")
    defined = [v for v in values if v is not None]
    ax.set_title(f"test AP per class (mAP {np.mean(defined):.3f})" if defined else "test AP per class")


def _sample(ax: Axes, samples: Mapping[str, np.ndarray], i: int, class_names: Sequence[str]) -> None:
    if np.ndim(samples["labels"]) == 2:  # multi-label: label sets
        names = list(class_names)
        true = {names[c] for c in np.flatnonzero(samples["labels"][i])}
        pred = {names[c] for c in np.flatnonzero(samples["predicted"][i])}
        ax.imshow(samples["images"][i])
        ax.set_title(f"true {'|'.join(sorted(true)) or '-'}\npredicted {'|'.join(sorted(pred)) or '-'}",
                     fontsize=8, color="tab:green" if true == pred else "tab:red")
        return
    true, pred = int(samples["labels"][i]), int(samples["predicted"][i])
    names = list(class_names) or [str(j) for j in range(max(true, pred) + 1)]
    ax.imshow(samples["images"][i])
    prob = samples.get("probability")
    confidence = f" {float(prob[i]):.2f}" if prob is not None and len(prob) > i else ""
    ax.set_title(f"true {names[true]}\npredicted {names[pred]}{confidence}", fontsize=8,
                 color="tab:green" if true == pred else "tab:red")
