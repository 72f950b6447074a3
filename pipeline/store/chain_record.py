"""Where a ``ChainConfig`` is stored, and how a run.json written before it had one is read.

run.json's "chain" entry is ``ChainConfig.to_dict()``; a ``.keras`` file carries the same under
``"headstart": {"chain": …}`` in its metadata.json (Keras writes that file and never reads it back,
so the model still loads anywhere, in safe mode, with no custom object); export.json and the ONNX
metadata carry it as "chain" too.

``chain_from_record`` is the only code that knows run.json's layout from before the "chain" entry:
a head run's backbone in "cache.config", its head in "head"; a finetune's backbone in "backbone".
A multi-label chain's per-class thresholds, as thresholds.json keeps them, are read by
``thresholds_from_record`` (run directories, finetune's chain, export, predict). No TensorFlow here.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from headstart.features.chain_config import ChainBackbone, ChainConfig, ChainHead
from headstart.features.errors import ChainConfigError

#: Threshold of a class that validation cannot tell anything about (no positive row, or none at all).
DEFAULT_THRESHOLD = 0.5

#: run.json's entry, and the key of a model file's metadata.json that holds headstart's entries.
CHAIN_KEY, METADATA_KEY = "chain", "headstart"
#: Keras' member of a ``.keras`` zip that it writes and never reads.
KERAS_METADATA = "metadata.json"

#: ``damaged(field, expected, value)``: the reader's error naming its file and the field.
Damaged = Callable[[str, str, Any], Exception]


def chain_from_record(record: Mapping[str, Any], damaged: Damaged) -> ChainConfig:
    """The chain a run.json describes: its "chain" entry, else built from the keys written before it.

    Args:
        record: run.json as read.
        damaged: makes the error for a missing or wrong field (``RunDir._damaged``).

    Raises:
        whatever ``damaged`` returns, naming the field ("chain.image_size", "cache.config.pooling").
    """
    if CHAIN_KEY in record:
        try:
            return ChainConfig.from_dict(record[CHAIN_KEY])
        except ChainConfigError as exc:
            raise damaged(f"{CHAIN_KEY}.{exc.field}".rstrip("."), exc.expected, exc.found) from None
    finetune = record.get("kind") == "finetune"
    where = "backbone" if finetune else "cache.config"
    section = record.get("backbone") if finetune else (record.get("cache") or {}).get("config")
    if not isinstance(section, Mapping):
        raise damaged(where, "a table of the backbone's recipe", section)
    for key in ("backbone", "weights", "alpha", "image_size", "pooling", "weights_fingerprint"):
        if key not in section:
            raise damaged(f"{where}.{key}", "present", None)
    size = section["image_size"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise damaged(f"{where}.image_size", "a whole number of pixels", size)
    thresholds = (record.get("thresholds") or {}).get("thresholds")
    names = record.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise damaged("class_names", "a list of class names", names)
    calibration = record.get("calibration") or {}
    temperature = calibration.get("temperature") if calibration.get("method") == "temperature" else None
    return ChainConfig(
        backbone=ChainBackbone(name=section["backbone"], weights=section["weights"], alpha=section["alpha"],
                               fingerprint=section["weights_fingerprint"]),
        image_size=size, pooling=section["pooling"], class_names=tuple(names),
        head=head_from_record(record.get("head")) if not finetune else ChainHead(),
        task=record.get("task", "single_label"), preprocessing=section.get("preprocessing"),
        tap=(section.get("tap") or {}).get("spec"),
        thresholds=None if not thresholds else tuple(float(thresholds.get(n, 0.5)) for n in names),
        temperature=None if temperature is None else tuple(float(t) for t in
                                                             (temperature if isinstance(temperature, list)
                                                              else [temperature])))


class _NoRecipe(Exception):
    """A record without a backbone recipe (a head on a cache another tool made)."""


def record_with_chain(kind: str, record: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """(``record`` with its "chain" entry, that entry): the given one, or the one its keys describe;
    (``record``, None) when it describes no backbone (a head on a cache another tool made)."""
    try:
        chain = chain_from_record({"kind": kind, **record}, lambda *_: _NoRecipe()).to_dict()
    except _NoRecipe:
        return dict(record), None
    return {**record, CHAIN_KEY: chain}, chain


def head_from_record(head: object) -> ChainHead:
    """A head run's "head" record as a ``ChainHead`` (runs from before head kinds: the guide's head)."""
    head = head if isinstance(head, Mapping) else {}
    return ChainHead(kind=head.get("kind", "linear"), hidden_units=int(head.get("hidden_units", 256)),
                     normalize=head.get("normalize", "none"), dropout=float(head.get("dropout", 0.2)))


def add_to_keras_file(path: str | os.PathLike, entries: Mapping[str, Any]) -> None:
    """Adds ``entries`` under "headstart" to a ``.keras`` file's metadata.json, rewriting the zip.

    Called on the temporary file before it is moved into place (``files.save_model_atomic``); the
    other members are copied byte for byte, in their order.
    """
    tmp = f"{os.fspath(path)}.meta"
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename == KERAS_METADATA:
                    data = json.dumps({**json.loads(data), METADATA_KEY: dict(entries)}).encode()
                dst.writestr(info, data)
        os.replace(tmp, path)
    finally:  # a full disk mid-copy leaves no second temporary beside the first
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_keras_chain(path: str | os.PathLike) -> ChainConfig | None:
    """The chain a ``.keras`` file carries in its metadata.json; None when it carries none.

    Raises:
        ChainConfigError: an entry that is there but damaged (naming the file and the field).
    """
    from headstart.features.bounded_parse import loads_json

    try:
        with zipfile.ZipFile(path) as archive:
            metadata = loads_json(archive.read(KERAS_METADATA).decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    entry = (metadata.get(METADATA_KEY) or {}).get(CHAIN_KEY) if isinstance(metadata, dict) else None
    return None if entry is None else ChainConfig.from_dict(entry, where=f"{path} (metadata.json: chain)")


def thresholds_from_record(record: dict | None, class_names: Sequence[str]) -> np.ndarray:
    """The (C,) thresholds of a ``thresholds_record`` in ``class_names`` order.

    A missing record or class gets ``DEFAULT_THRESHOLD``.
    """
    values = ((record or {}).get("thresholds") or {})
    return np.array([float(values.get(name, DEFAULT_THRESHOLD)) for name in class_names], dtype=np.float64)
