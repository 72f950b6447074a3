"""Writing output files atomically: a crash never leaves half a file, a full disk is one line.

Every file is written under a temporary name in the same directory and moved into place with
``os.replace``, so a killed run never leaves a half-written model, JSON or CSV, and an earlier file of
the same name survives a failed write. Also the one format of a per-epoch ``history.csv``
(``write_history_csv`` / ``read_history``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TYPE_CHECKING

import numpy as np

from headstart.pipeline.errors import OutputError, environment_reason

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = "") -> None:
    """Calls ``write(tmp)`` on a temporary name beside ``path``, then ``os.replace``s it into place.

    Args:
        path: the final file.
        write: writes the whole file to the path it is given.
        suffix: extension the temporary name must end with (e.g. ".keras", ".png").

    Raises:
        OutputError: naming the file, when it cannot be written; the previous file is untouched.
    """
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a file the tool writes honours the umask
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        if environment_reason(exc):  # a writer's own error for a full disk (TensorFlow's, say)
            raise OutputError(f"cannot write {path}: {environment_reason(exc)}") from None
        raise


def write_dir_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp)`` to fill a directory ``.NAME.tmp`` beside ``path``, then puts it in
    place of ``path`` (a SavedModel is a directory; ``os.replace`` cannot swap a non-empty one).

    Raises:
        OutputError: naming ``path``, when the disk is full, read-only or forbidden (an ``OSError``,
            or TensorFlow's ``ResourceExhaustedError … No space left on device [Op:SaveV2]``);
            the temporary directory is removed and the previous ``path``, if any, is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(str(tmp))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = environment_reason(exc)
        if reason:
            raise OutputError(f"cannot write {path}: {reason}") from None
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _umask() -> int:
    """The process umask, read without changing it where the system tells (Linux), else set and reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The one wording of an output that cannot be written (see docs/troubleshooting.md, "Disk full")."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` via a temporary file and ``os.replace``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


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


def json_text(data: Any) -> str:
    """``data`` as indented, valid JSON: NumPy values become plain numbers, NaN and infinities null,
    anything else unknown its string (``--json`` of every command, and every JSON file written)."""
    return json.dumps(_jsonable(data), indent=2, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as indented JSON (``json_text``)."""
    write_text_atomic(path, json_text(data) + "\n")


def save_model_atomic(model: keras.Model, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Saves a Keras model to ``path`` (a ``.keras`` file) without ever exposing a partial file.

    ``model.save`` writes in place, so a crash mid-save would destroy the previous file; the model
    goes to a temporary ``.keras`` name first. ``metadata`` (e.g. the chain) goes into the file's
    metadata.json under "headstart" (``chain_record.add_to_keras_file``).
    """
    def save(tmp: str) -> None:
        model.save(tmp)
        if metadata:
            from headstart.pipeline.store.chain_record import add_to_keras_file

            add_to_keras_file(tmp, metadata)

    atomic_write(path, save, suffix=".keras")


def save_png(fig: Figure, path: str | os.PathLike, *, dpi: int, title: str | None = None) -> None:
    """Lays out a matplotlib figure (with its title, if any) and writes it atomically as a PNG."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), suffix=".png")


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


def read_history(path: str | os.PathLike) -> dict[str, list[float]]:
    """Reads a ``history.csv`` as ``write_history_csv`` writes it.

    Returns:
        metric → one value per epoch (NaN where empty); ``{}`` when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0].keys() if rows else []) if k != "epoch"]
    return {k: [float(r[k]) if r.get(k) else float("nan") for r in rows] for k in keys}
