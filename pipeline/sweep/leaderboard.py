"""The sweep's report: ``leaderboard.csv``, the top-ten table, ``sweep.png``, and ``DIR/best``.

Everything is rebuilt from the study itself, so whichever process finishes last writes a report of
every process's trials, and a resumed sweep's report covers the trials of the runs before it.
Trials are ranked by the sweep's monitored validation measure (``training.objective``), best first;
a multi-label sweep's rows hold ``val_map`` and its ``val_accuracy`` is the exact-match ratio.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from headstart.features.reporter import Reporter
from headstart.pipeline.config import SweepConfig
from headstart.pipeline.training.objective import Objective
from headstart.pipeline.sweep.setup import SweepSetup
from headstart.pipeline.sweep.space import SearchSpace

#: Leaderboard columns, in order; parameters sit between the scores and the bookkeeping.
PARAMS = ("lr", "dropout", "weight_decay", "label_smoothing", "batch_size", "head_kind", "hidden_units",
          "normalize", "views")
#: The validation measures (a trial record's keys) shown as ``val_<measure>`` columns.
MEASURES = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "map")
COLUMNS = ("rank", "number", "cache", "state", *(f"val_{m}" for m in MEASURES), *PARAMS, "best_epoch", "epochs",
           "seconds")


def leaderboard_rows(study: Any, objective: Objective = Objective()) -> list[dict[str, Any]]:
    """One row per finished trial, best monitored value first (pruned trials after complete ones)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED") or "result" not in t.user_attrs:
            continue
        result = t.user_attrs["result"]
        v = result["validation"]
        rows.append({"number": t.number, "cache": result["params"]["cache"], "state": t.state.name.lower(),
                     **{f"val_{m}": v.get(m) for m in MEASURES}, **{k: result["params"][k] for k in PARAMS},
                     "best_epoch": result["best_epoch"], "epochs": result["epochs"], "seconds": result["seconds"]})
    rows.sort(key=lambda r: (r["state"] != "complete", objective.rank(r[objective.history_key]), r["number"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def write_leaderboard(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes ``leaderboard.csv`` (via a temporary name: a reader never sees half a file)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in COLUMNS})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def format_top(rows: list[dict[str, Any]], count: int = 10, objective: Objective = Objective()) -> str:
    """The first ``count`` rows as a fixed-width table for the terminal (the monitored column after
    val_loss and val_acc when it is another one)."""
    watched = () if objective.measure == "loss" else (objective.history_key,)
    head = ("#", "trial", "cache", "val_loss", "val_acc", *watched, "head", "norm", "lr", "wd", "drop", "smooth",
            "batch", "views", "ep")
    lines = [head]
    for r in rows[:count]:
        kind = r["head_kind"] if r["head_kind"] == "linear" else f"hidden{r['hidden_units']}"
        lines.append((str(r["rank"]), str(r["number"]), str(r["cache"]), _number(r["val_loss"]),
                      _number(r["val_accuracy"]), *(_number(r[key]) for key in watched), kind, r["normalize"],
                      f"{r['lr']:.2e}", f"{r['weight_decay']:.1e}", f"{r['dropout']:.2f}",
                      f"{r['label_smoothing']:.2f}", str(r["batch_size"]), "yes" if r["views"] else "no",
                      str(r["epochs"])))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def plot_sweep(rows: list[dict[str, Any]], path: Path, title: str, objective: Objective = Objective()) -> None:
    """``sweep.png``: the monitored value per trial over the search, against each parameter, best per cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(rows, key=lambda r: r["number"])
    caches = list(dict.fromkeys(r["cache"] for r in ordered))
    colours = {c: f"C{i}" for i, c in enumerate(caches)}
    panels = ["search", *PARAMS] + (["caches"] if len(caches) > 1 else [])
    key = objective.history_key
    cols = 4
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(13, 3 * -(-len(panels) // cols)))
    axes = axes.reshape(-1)
    for ax, panel in zip(axes, panels):
        if panel == "search":
            _plot_search(ax, ordered, colours, objective)
        elif panel == "caches":
            best = [objective.best([r[key] for r in ordered if r["cache"] == c]) for c in caches]
            ax.bar(range(len(caches)), best, color=[colours[c] for c in caches])
            ax.set_xticks(range(len(caches)), caches, rotation=20, fontsize=7)
            ax.set_title(f"best {key} per cache", fontsize=9)
        else:
            _plot_param(ax, ordered, panel, colours, key)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=72)
    plt.close(fig)
    os.replace(tmp, path)


def _plot_search(ax: Any, ordered: list[dict], colours: dict[str, str], objective: Objective) -> None:
    key = objective.history_key
    for row in ordered:
        ax.scatter(row["number"], row[key], s=12, color=colours[row["cache"]],
                   marker="o" if row["state"] == "complete" else "x")
    xs, ys = [], []
    for row in (r for r in ordered if r["state"] == "complete"):
        xs.append(row["number"])
        ys.append(objective.best([*ys[-1:], row[key]]))
    ax.step(xs, ys, where="post", color="k", linewidth=1, label="best so far")
    ax.set_xlabel("trial", fontsize=8)
    ax.set_ylabel(key, fontsize=8)
    ax.set_title(f"{key} over the search (x: pruned)", fontsize=9)
    ax.legend(fontsize=7)


def _plot_param(ax: Any, ordered: list[dict], name: str, colours: dict[str, str], key: str) -> None:
    values = [r[name] for r in ordered]
    present = [v for v in values if v is not None]
    categorical = any(isinstance(v, (str, bool)) for v in present) or name in ("batch_size", "hidden_units")
    if categorical:
        labels = [str(v) for v in sorted(set(present))]  # numbers in numeric order
        xs = [labels.index(str(v)) if v is not None else None for v in values]
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
    else:
        xs = values
        if name in ("lr", "weight_decay"):
            ax.set_xscale("log")
    for x, row in zip(xs, ordered):
        if x is not None:
            ax.scatter(x, row[key], s=10, color=colours[row["cache"]], alpha=0.7)
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)


def write_outputs(study: Any, out: Path, setup: SweepSetup, space: SearchSpace, config: SweepConfig,
                  reporter: Reporter) -> dict[str, Any]:
    """Writes leaderboard.csv, sweep.png and DIR/best; returns SweepResult's best, table, test
    measures and the epochs its trials trained."""
    from headstart.pipeline.sweep.best import write_best

    objective = setup.objective
    rows = leaderboard_rows(study, objective)
    write_leaderboard(rows, out / "leaderboard.csv")
    if rows:
        plot_sweep(rows, out / "sweep.png", f"headstart sweep: {len(rows)} trials on {', '.join(setup.caches)}",
                   objective)
    complete = [r for r in rows if r["state"] == "complete"]
    summary = {"table": format_top(rows, objective=objective), "trial_epochs": sum(int(r.get("epochs") or 0)
                                                                                    for r in rows)}
    if not complete:
        reporter.line("no trial completed (all pruned?): no DIR/best")
        return {"best": {}, "best_test_accuracy": None, **summary}
    test = write_best(study, complete[0], out, setup, space, config, rows, reporter)
    return {"best": complete[0], "best_test_accuracy": test.get("accuracy"), "best_test": test, **summary}


__all__ = ["COLUMNS", "format_top", "leaderboard_rows", "plot_sweep", "write_leaderboard",
           "write_outputs"]
