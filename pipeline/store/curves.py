"""``curves.png`` of a training run: loss and accuracy per epoch, train against validation."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from headstart.pipeline.store.files import save_png


def plot_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                best_epoch: int | None = None, title: str | None = None) -> None:
    """Plots loss and accuracy per epoch, train vs validation, into a PNG.

    Args:
        history: as for ``write_history_csv``; uses ``loss``, ``val_loss``, ``accuracy``,
            ``val_accuracy`` where present.
        path: the PNG file.
        best_epoch: 1-based epoch to mark with a vertical line (the restored weights).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
                values = history.get(key)
                if values:
                    ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
            if best_epoch is not None:
                ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a fine-tune skipped by its probes has no epochs
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes)
        save_png(fig, path, dpi=100, title=title)
    finally:
        plt.close(fig)
