"""One call over any model file headstart writes: model.keras, saved_model/, model.onnx, model.tflite.

``load_predictor`` recognises the file, loads it with the runtime meant for it (Keras in safe mode,
``tf.saved_model.load``, onnxruntime, the LiteRT interpreter) and returns a ``Predictor`` whose
``logits`` takes what model.keras takes — float32 (B, S, S, 3) raw 0–255 — so ``predict`` and the
export checks treat every format alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from headstart.pipeline.errors import OptionError, RunDirError
from headstart.pipeline.startup import native_lines_dropped
from headstart.pipeline.store.export_record import export_record_beside
from headstart.pipeline.store.rundir import MODEL_FILES, RunDir, load_model_file

FORMATS = ("keras", "saved_model", "onnx", "tflite")

#: What each format needs beyond TensorFlow: writing it (``export``) and reading it back.
#: They come with ``pip install headstart[export]``.
REQUIRED_MODULES = {"saved_model": (), "onnx": ("tf2onnx", "onnx", "onnxruntime"),
                    "tflite": ("ai_edge_litert",)}



@dataclass
class Predictor:
    """A loaded model of any format.

    Attributes:
        kind: one of ``FORMATS``.
        path: the file or directory loaded.
        image_size: S of the (S, S, 3) input.
        width: logits per image (1 for two classes).
        class_names: from the file itself (SavedModel, ONNX, the chain in a .keras file's metadata),
            the run.json beside it or a ``headstart export`` directory's export.json, else None.
        run: the run directory beside the file (``RunDir``), or None.
        multi_label: one sigmoid logit per class (task "multi_label" in the file or its run.json).
        thresholds: a multi-label model's per-class decision thresholds (float64 (C,)), from the
            file (SavedModel, ONNX) or the run.json / thresholds.json beside it; else None.
    """

    kind: str
    path: str
    image_size: int
    width: int
    class_names: list[str] | None
    run: Any
    _fn: Callable[[np.ndarray], np.ndarray]
    multi_label: bool = False
    thresholds: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        """Classes the logits separate: one logit means two single-label classes."""
        return 2 if self.width == 1 and not self.multi_label else self.width

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 (B, S, S, 3) raw 0–255 → float32 (B, width) logits."""
        return np.asarray(self._fn(np.ascontiguousarray(images, dtype=np.float32)), dtype=np.float32)


def load_predictor(path: str | os.PathLike) -> Predictor:
    """Loads model.keras (or a run directory holding one), a SavedModel directory, .onnx or .tflite.

    Raises:
        RunDirError: no such file, or one that the format's runtime cannot load.
    """
    path = Path(path)
    kind = _kind_of(path)
    loader = {"keras": _load_keras, "saved_model": _load_saved_model, "onnx": _load_onnx,
              "tflite": _load_tflite}[kind]
    if kind in ("onnx", "tflite"):
        require_modules(kind, f"reading {path}")
    run = RunDir.beside(path)
    try:
        size, width, meta, fn = loader(path)
    except (RunDirError, OptionError):
        raise
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types for a bad file
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise RunDirError(f"{path}: cannot load as a {kind} model ({text})") from exc
    # What the file says wins over the run directory beside it (an export may have been copied alone),
    # and that over a `headstart export` directory's export.json (what a .tflite file cannot hold).
    recorded = run is not None and run.complete
    exported = export_record_beside(path) or {}
    names = meta.get("class_names") or (run.class_names if recorded else None) or exported.get("class_names")
    names = list(names) if names else None
    record = meta.get("thresholds") or (run.thresholds_record if run is not None else None) or exported.get("thresholds")
    multi_label = (meta.get("task") or (run.task if recorded else None) or exported.get("task")
                   or (record or {}).get("task")) == "multi_label"
    thresholds = None
    if multi_label:
        from headstart.pipeline.store.chain_record import thresholds_from_record

        thresholds = thresholds_from_record(record, names or [str(i) for i in range(width)])
    return Predictor(kind, str(path), size, width, names, run, fn, multi_label, thresholds)


def require_modules(fmt: str, what: str) -> None:
    """Refuses a format whose libraries are not installed, before any work is done.

    Raises:
        OptionError: naming the missing module and the extra that installs it.
    """
    import importlib.util

    missing = [m for m in REQUIRED_MODULES.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise OptionError(f"{what} needs {', '.join(missing)}: pip install 'headstart[export]'")


def _kind_of(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        if (path / "model.keras").is_file():
            return "keras"
        raise RunDirError(f"{path}: no model.keras or saved_model.pb in this directory")
    if not path.is_file():
        raise RunDirError(f"{path}: no such model file (give model.keras, its run directory, a SavedModel "
                          "directory, a .onnx or a .tflite file)")
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        return suffix[1:]
    return "keras"  # anything else is tried as .keras; Keras's error says why it is not one


def _load_keras(path: Path):
    from headstart.pipeline.store.chain_record import read_keras_chain

    file = path / MODEL_FILES["finetune"] if path.is_dir() else path
    model = load_model_file(file)
    # The chain in the file's metadata says what it answers, even for a model.keras copied alone.
    chain = read_keras_chain(file)
    meta = {} if chain is None else {"class_names": list(chain.class_names), "task": chain.task, **(
        {"thresholds": {"task": chain.task, "thresholds": dict(zip(chain.class_names, chain.thresholds))}}
        if chain.thresholds else {})}
    return int(model.input_shape[1]), int(model.output_shape[-1]), meta, model.predict_on_batch


def _load_saved_model(path: Path):
    import tensorflow as tf

    from headstart.pipeline.commands.saved_model_check import check_saved_model

    check_saved_model(path)  # before anything from the file runs: its initialisers run at load
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]
    (image_spec,) = spec.values()
    (output_spec,) = serve.structured_outputs.values()
    meta: dict[str, Any] = {}
    if "class_names" in loaded.signatures:
        meta["class_names"] = [n.decode() for n in loaded.signatures["class_names"]()["class_names"].numpy()]
    if "thresholds" in loaded.signatures:  # a multi-label export
        values = loaded.signatures["thresholds"]()["thresholds"].numpy().tolist()
        meta["task"] = "multi_label"
        meta["thresholds"] = {"task": "multi_label",
                              "thresholds": dict(zip(meta.get("class_names") or [], values))}
    key = next(iter(spec))

    def fn(images):
        # The signature returns a dict of one output; keep ``loaded`` alive through the closure.
        return next(iter(loaded.signatures["serving_default"](**{key: tf.constant(images)}).values())).numpy()

    return int(image_spec.shape[1]), int(output_spec.shape[-1]), meta, fn


def _load_onnx(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    meta = session.get_modelmeta().custom_metadata_map
    found = {key: json.loads(meta[key]) for key in ("class_names", "thresholds") if key in meta}
    if "task" in meta:
        found["task"] = meta["task"]

    def fn(images):
        return session.run(None, {inp.name: images})[0]

    return int(inp.shape[1]), int(session.get_outputs()[0].shape[-1]), found, fn


def _load_tflite(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    with native_lines_dropped():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    state: dict[str, Any] = {"batch": None}

    def fn(images):
        if state["batch"] != len(images):
            # The batch dimension is free in the file; the interpreter is sized per batch length.
            interpreter.resize_tensor_input(inp["index"], images.shape)
            with native_lines_dropped():
                interpreter.allocate_tensors()
            state["batch"] = len(images)
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).copy()

    return int(inp["shape"][1]), int(out["shape"][-1]), {}, fn
