"""The run directory: what a user looks at after ``train-head`` or ``finetune``.

Every file is written under a temporary name in the same directory and moved into place with
``os.replace``, so a crash never leaves a half-written ``head.keras`` or ``run.json``. ``run.json`` is
written last and marks a finished run: a directory without it is incomplete.

Files: ``run.json`` (resolved config, provenance, versions, timings), ``metrics.json``,
``history.csv``, ``curves.png`` and the model (``head.keras`` / ``model.keras``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from headstart.pipeline.errors import OutputError, RunDirError

#: Written last by every run; its presence marks a complete run directory.
RUN_JSON = "run.json"


def check_run_dir_free(path: str | os.PathLike, overwrite: bool) -> Path:
    """``prepare_run_dir``'s refusals without touching anything, for checks before TensorFlow starts.

    Raises:
        RunDirError: the path is a file, or a directory with content and ``overwrite`` is False.
    """
    run_dir = Path(path)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file; give a directory for the run")
    if not overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        raise RunDirError(f"--out {run_dir} already exists and is not empty; "
                          f"pass --overwrite to replace its run files")
    return run_dir


def prepare_run_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Checks and creates the run directory before any work starts.

    A missing or empty directory is used as it is. An existing directory with content is refused
    unless ``overwrite``; with ``overwrite`` nothing is deleted (a wrong ``--out`` must not cost the
    user files), but the old ``run.json`` is removed first, so a crash before the new run finishes
    leaves a directory marked incomplete rather than one that describes the old run.

    Args:
        path: the run directory.
        overwrite: allow replacing the files of an existing run.

    Returns:
        The directory as a Path; it exists on return.

    Raises:
        RunDirError: the path is a file, its parent cannot be created, or it has content and
            ``overwrite`` is False.
    """
    run_dir = check_run_dir_free(path, overwrite)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        (run_dir / RUN_JSON).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--out {run_dir}: cannot create the directory ({exc.strerror})") from None
    check_writable(run_dir, "--out")
    return run_dir


def check_writable(directory: str | os.PathLike, option: str) -> None:
    """Creates and removes a file in ``directory``, so a read-only one fails before any work.

    Raises:
        OutputError: naming the option and the directory.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {directory}: cannot write there ({exc.strerror})") from None


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "") -> None:
    # The temp file lives in the target's directory so os.replace is a same-filesystem rename;
    # `suffix` keeps extensions that writers insist on (Keras refuses to save without ".keras").
    # Any OSError (read-only, full, forbidden) becomes one OutputError naming the file; the
    # previous file, if any, is untouched and no temporary is left behind.
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The one wording of an output that cannot be written (see README, Troubleshooting)."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "") -> None:
    """Calls ``write(tmp)`` on a temporary name beside ``path``, then ``os.replace``s it into place.

    Args:
        path: the final file.
        write: writes the whole file to the path it is given.
        suffix: extension the temporary name must end with (e.g. ".keras", ".png").
    """
    _atomic_write(path, write, suffix=suffix)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` via a temporary file and ``os.replace``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def _jsonable(value: Any) -> Any:
    # NumPy scalars/arrays and tuples turn up in metrics and configs; NaN/inf are not valid JSON.
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON; NumPy values become plain numbers, NaN becomes null."""
    write_text_atomic(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def save_model_atomic(model: Any, path: str | os.PathLike) -> None:
    """Saves a Keras model to ``path`` (a ``.keras`` file) without ever exposing a partial file.

    ``model.save`` writes in place, so a crash mid-save would destroy the previous file; the model
    goes to a temporary ``.keras`` name first.
    """
    _atomic_write(path, lambda tmp: model.save(tmp), suffix=".keras")


def write_history_csv(history: Mapping[str, Sequence[float]], path: str | os.PathLike) -> None:
    """Writes a per-epoch history as CSV: an ``epoch`` column (1-based), then one column per key.

    Args:
        history: metric name → one value per epoch, e.g. ``{"loss": [...], "val_loss": [...]}``.
        path: the CSV file.
    """
    keys = list(history)
    epochs = max((len(v) for v in history.values()), default=0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for i in range(epochs):
        row = [i + 1]
        for k in keys:
            values = history[k]
            row.append(repr(float(values[i])) if i < len(values) and values[i] is not None else "")
        writer.writerow(row)
    write_text_atomic(path, buf.getvalue())


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
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100), suffix=".png")
    finally:
        plt.close(fig)


def format_summary_table(rows: Sequence[tuple[str, Any]], *, title: str | None = None) -> str:
    """Formats label/value pairs as a small two-column table for the terminal.

    Floats print with 4 decimals, None as "-".

    Args:
        rows: (label, value) pairs in display order.
        title: optional first line.

    Returns:
        The table, lines joined by newlines, no trailing newline.
    """
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.4f}"
        return str(value)

    cells = [(str(label), fmt(value)) for label, value in rows]
    left = max((len(a) for a, _ in cells), default=0)
    right = max((len(b) for _, b in cells), default=0)
    rule = "-" * (left + right + 3)
    lines = [title] if title else []
    lines.append(rule)
    lines.extend(f"{a.ljust(left)} | {b}" for a, b in cells)
    lines.append(rule)
    return "\n".join(lines)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a run's numbers."""
    import h5py
    import keras
    import matplotlib
    import tensorflow as tf

    from headstart.pipeline import __version__

    return {
        "headstart": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def utc_timestamp() -> str:
    """Now in UTC as run files record it, e.g. "2026-12-01T20:25:02Z"."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def precision_record(model: Any, policy: str) -> dict[str, Any]:
    """run.json's "precision" section: the dtype policy the model was built under, what dtype its
    logits come out in, and whether its steps were compiled with XLA."""
    return {"policy": policy, "logits_dtype": str(model.outputs[0].dtype), "jit_compile": bool(model.jit_compile)}


def stamp_record(record: Mapping[str, Any], *, timings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Closes a run record the way every run file ends: ``record``, then "versions", then "timings"
    (when given), then "created" (UTC, now).

    Args:
        record: the run's own sections, in the order they should appear.
        timings: the run's timing section.
    """
    stamped = {**record, "versions": library_versions()}
    if timings is not None:
        stamped["timings"] = dict(timings)
    stamped["created"] = utc_timestamp()
    return stamped


def write_run_json(run_dir: str | os.PathLike, record: Mapping[str, Any], *,
                   timings: Mapping[str, Any] | None = None) -> None:
    """Writes ``RUN_DIR/run.json`` (``stamp_record(record, timings=timings)``) atomically.

    Write it last: its presence marks a finished run.
    """
    write_json_atomic(Path(run_dir) / RUN_JSON, stamp_record(record, timings=timings))
