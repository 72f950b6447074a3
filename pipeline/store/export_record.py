"""An export directory's record, ``export.json``: what was exported, from which model, how each format checked.

``headstart export`` (and ``headstart run``'s export step) writes one into its ``--out`` next to
``saved_model/``, ``model.onnx`` and ``model.tflite``::

    kind          "export"
    complete      false while the export runs, true once every format is written and checked
    options       what shaped the files (the model's sha256, formats, quantize, source): the --out policy
                  compares them
    input         the path given, what it was (a finetune run, a train-head run, a model file), the model file
    class_names, task, thresholds   what the model answers (a .tflite file holds none of it)
    chain         the model's ``ChainConfig`` (``features.chain_config``), when the input describes it
    exports, checks, parity         the files written, each format's check, a head run's parity check

``predict`` reads a .tflite file's class names (and a multi-label model's thresholds) from it;
``inspect`` shows it. No TensorFlow here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, TYPE_CHECKING

from headstart.features.bounded_parse import loads_json
from headstart.features.errors import Arg
from headstart.pipeline.errors import RunDirError

if TYPE_CHECKING:
    from headstart.pipeline.store.rundir import RunDir

EXPORT_JSON = "export.json"


def read_export_record(folder: str | os.PathLike) -> dict | None:
    """``folder``/export.json as written; None when there is none.

    Raises:
        RunDirError: a file that is not a JSON object of kind "export".
    """
    path = Path(folder) / EXPORT_JSON
    if not path.is_file():
        return None
    try:
        record = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path} is damaged: not readable JSON ({str(exc).splitlines()[0][:120]}); "
                          "run headstart export again with ", Arg("overwrite")) from None
    if not isinstance(record, dict) or record.get("kind") != "export":
        raise RunDirError(f"{path} is damaged: not an export record; run headstart export again with ", Arg("overwrite"))
    return record


def export_record_beside(path: str | os.PathLike) -> dict | None:
    """The export record of the directory an exported file (or a ``saved_model/``) sits in, if any.

    A damaged record reads as none here: the file itself still loads, only without what it lacks.
    """
    try:
        return read_export_record(Path(path).parent)
    except RunDirError:
        return None


def write_export_record(folder: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Writes ``folder``/export.json atomically, stamped with versions and the time."""
    from headstart.pipeline.store.files import write_json_atomic
    from headstart.pipeline.store.provenance import stamp_record

    write_json_atomic(Path(folder) / EXPORT_JSON, stamp_record({"kind": "export", **record}))


def chain_of(run: RunDir | None, model_file: str | os.PathLike) -> dict | None:
    """export.json's "chain": the run directory's chain (``RunDir.chain``), else the one the model
    file's metadata carries; None when neither describes the model."""
    from headstart.pipeline.store.chain_record import read_keras_chain

    if run is not None and run.complete:
        return run.chain.to_dict()
    chain = read_keras_chain(model_file)
    return None if chain is None else chain.to_dict()
