"""Export a full model for deployment: SavedModel (serving signatures), ONNX, TFLite.

Every format is written from the inference half of the model (no augmentation, see
``inference_model``), takes what ``model.keras`` takes — float32 (B, S, S, 3) raw 0–255 — and
returns its logits. Each file is written under a temporary name and moved into place, so a failed
export never leaves half a file next to ``model.keras``.

- ``saved_model/``: signature ``serve`` (the default): images → logits; signature
  ``serve_bytes``: a batch of encoded image files (JPEG, PNG, GIF, BMP, WebP strings, what TF
  Serving and Vertex AI callers send) → ``{"logits", "probabilities", "class_index",
  "class_name"}``, decoded and resized inside the graph by ``decode_for_serving``, which refuses
  an image over ``MAX_IMAGE_PIXELS`` from its header before decoding it; signature
  ``class_names``: the class names as a constant; signature ``max_image_pixels``: that limit. A
  multi-label model's ``serve_bytes`` answers ``{"logits", "probabilities" (a sigmoid per class),
  "labels" (bool, at the saved per-class thresholds)}`` and signature ``thresholds`` holds the
  thresholds in class order.
- ``model.onnx``: Keras 3's ``model.export(format="onnx")``, which on the TensorFlow backend
  converts the traced function with tf2onnx (both needed); the class names go into the ONNX
  metadata (``class_names``, JSON; a multi-label model adds ``task`` and ``thresholds``, JSON; ``chain``,
  the model's ``ChainConfig`` as JSON, when it is known).
- ``model.tflite``: converted from the SavedModel's ``serve`` signature, ``--quantize none``
  (float32), ``float16`` (weights in float16) or ``int8`` (weights and activations in int8,
  calibrated on the run's own training images; input and output stay float32, so callers feed
  the same raw images).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

# No NumPy or TensorFlow at module level: cli.py reads EXPORT_FORMATS and QUANTIZE_MODES for --help.
from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import EXPORT_FORMATS, QUANTIZE_MODES
from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError, OutputError
from headstart.pipeline.store.files import atomic_write, write_dir_atomic
from headstart.pipeline.startup import native_lines_dropped

if TYPE_CHECKING:  # annotations only: numpy is imported inside the functions that use it
    import numpy as np

#: What each format is called in the export directory.
EXPORT_FILES = {"saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}
#: Training images the int8 converter sees to calibrate its activation ranges.
CALIBRATION_IMAGES = 100
#: The ONNX opset; 17 is what onnxruntime ≥ 1.14 and tf2onnx 1.17 both support fully.
ONNX_OPSET = 17


def check_export_options(formats: Sequence[str], quantize: str, *, option: str = "export") -> None:
    """Refuses unknown formats and quantize modes, and ``--quantize`` without a TFLite export.

    Args:
        formats, quantize: the options.
        option: the field of the formats option ("export"; ``headstart export``'s: "formats").

    Raises:
        OptionError: naming the option.
    """
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise OptionError(Arg(option), f": unknown format '{unknown[0]}' (choose from {', '.join(EXPORT_FORMATS)})",
                          value=unknown[0])
    if quantize not in QUANTIZE_MODES:
        raise OptionError(Arg("quantize"), f": unknown mode '{quantize}' (choose from {', '.join(QUANTIZE_MODES)})",
                          value=quantize)
    if quantize != "none" and "tflite" not in formats:
        raise OptionError(Arg("quantize", quantize), " applies to ", Arg(option, "tflite"), " only")
    from headstart.pipeline.commands.predictor import require_modules

    for fmt in formats:
        require_modules(fmt, f"{option} {fmt}")


def export_model(model: Any, out_dir: str | os.PathLike, formats: Sequence[str], *, quantize: str = "none",
                 class_names: Sequence[str] | None = None,
                 calibration: Callable[[], Iterable[np.ndarray]] | None = None,
                 reporter: Reporter = QUIET, thresholds: dict | None = None,
                 chain: dict | None = None) -> dict[str, str | None]:
    """Exports the inference half of ``model`` (no augmentation) into ``out_dir``.

    Args:
        model: a full model (raw images (B, S, S, 3) → logits (B, 1|K)), e.g. from model.keras.
        out_dir: directory to write ``saved_model/``, ``model.onnx``, ``model.tflite`` into.
        formats: some of ``EXPORT_FORMATS``.
        quantize: TFLite quantization, one of ``QUANTIZE_MODES``.
        class_names: names of the K classes (two for one logit); default "0", "1", …
        calibration: for ``quantize="int8"``: returns an iterable of float32 (S, S, 3) raw training
            images.
        reporter: one-line messages (a converter that fails is logged, not raised: model.keras is
            already saved).
        thresholds: a multi-label model's thresholds record (``multilabel_metrics.thresholds_record``):
            the SavedModel then answers sigmoid probabilities and label sets and has a
            "thresholds" endpoint; the ONNX file carries "task" and "thresholds" metadata.
        chain: the model's ``ChainConfig.to_dict()``, carried as the ONNX file's "chain" metadata, or None.

    Returns:
        format → written path, or None where the converter failed.

    Raises:
        OptionError: an unknown format or mode, or int8 without calibration images.
    """
    from headstart.pipeline.model.assembly import inference_model

    check_export_options(formats, quantize)
    if quantize == "int8" and calibration is None:
        raise OptionError(Arg("quantize", "int8"), " needs calibration images (the run's training split)")
    done: dict[str, str | None] = {}
    if not formats:
        return done
    out_dir = Path(out_dir)
    serving = inference_model(model)
    width = int(serving.output_shape[-1])
    names = [str(n) for n in (class_names or range(2 if width == 1 and not thresholds else width))]
    cuts = None
    if thresholds:
        from headstart.pipeline.store.chain_record import thresholds_from_record

        cuts = [float(t) for t in thresholds_from_record(thresholds, names)]
    # TFLite converts from a SavedModel; when only that is wanted, the serving extras are skipped, and it
    # goes beside saved_model/, never over one already there (an export that adds a format keeps it).
    saved = out_dir / (EXPORT_FILES["saved_model"] if "saved_model" in formats else ".saved_model.intermediate")
    _write_saved_model(serving, names, saved, serving_extras="saved_model" in formats, thresholds=cuts)
    if "saved_model" in formats:
        done["saved_model"] = str(saved)
    if "onnx" in formats:
        done["onnx"] = _guarded("onnx", reporter, lambda: _write_onnx(serving, names, out_dir / EXPORT_FILES["onnx"],
                                                                       thresholds, chain))
    if "tflite" in formats:
        done["tflite"] = _guarded("tflite", reporter, lambda: _write_tflite(saved, out_dir / EXPORT_FILES["tflite"],
                                                                      quantize, calibration))
    if "saved_model" not in formats:
        shutil.rmtree(saved, ignore_errors=True)
    return done


def calibration_images(source: Any, image_size: int, split: str = "train") -> Callable[[], Iterable[Any]]:
    """The int8 calibration set: the good images of the run's own training split, in source order.

    Returns:
        A function returning an iterator of float32 (S, S, 3) raw 0–255 images (the converter
        takes the first ``CALIBRATION_IMAGES``).
    """
    def images():
        for element in source.dataset(split, image_size):
            if not element["error"].numpy():
                yield element["image"].numpy()

    return images


def decode_for_serving(image_bytes: Any, image_size: int, max_pixels: int | None = None) -> Any:
    """headstart's decode → RGB → bilinear resize, in TensorFlow ops only (a SavedModel can hold it).

    The same ``tf.io.decode_image(channels=3, expand_animations=False)`` and ``tf.image.resize``
    as ``headstart.pipeline.data.image``, so a JPEG/PNG/GIF/24-bit BMP/WebP file gives the pixels
    ``load_image`` gives. The size limit is checked from the header first, in graph ops
    (``data/graph_header.check_pixels``): a decompression bomb fails the call with "image too
    large: …" before it is decoded. The input path's other Python checks (truncation) and its
    palette-BMP and animated-WebP fallbacks cannot live in a graph, and such files fail the call.

    Args:
        image_bytes: scalar tf.string, one encoded image file.
        image_size: S.
        max_pixels: pixel limit; ``MAX_IMAGE_PIXELS`` when None.

    Returns:
        float32 (S, S, 3) raw 0–255.
    """
    import tensorflow as tf

    from headstart.pipeline.data.graph_header import check_pixels
    from headstart.pipeline.data.image import MAX_IMAGE_PIXELS

    with tf.control_dependencies([check_pixels(image_bytes, MAX_IMAGE_PIXELS if max_pixels is None else max_pixels)]):
        pixels = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    pixels.set_shape((None, None, 3))
    return tf.image.resize(pixels, (image_size, image_size), method="bilinear")


def check_exports(done: dict[str, str | None], model: Any, source: Any, split: str, *, quantize: str = "none",
                  batch_size: int = 32, multi_label: bool = False,
                  observe: Callable[[Any], None] | None = None) -> dict[str, dict]:
    """Runs every written export and ``model`` over one split, with each format's own runtime.

    One pass of the prediction loop (``headstart.pipeline.training.predictions.predict_split``):
    ``model`` gives the reference logits and every export sees the same good images of each batch.

    Args:
        done: ``export_model``'s result (failed exports, None, are reported as failed).
        model: the Keras model the exports came from (raw images → logits).
        source: a ``headstart.pipeline.data.sources.Source``.
        split: the split to compare on (the test split in finetune).
        quantize: the TFLite quantization used, recorded with the tflite entry.
        batch_size: images per forward pass.
        multi_label: compare label sets (at probability 0.5): "accuracy" is then the exact-match
            ratio and "agreement" the share of images with model.keras's label set.
        observe: also called with every batch (a progress line: ``report.progress.observed``).

    Returns:
        format → ``{"path", "accuracy", "keras_accuracy", "agreement" (share of images whose
        predicted class matches model.keras's), "max_abs_logit_diff", "images"}`` (plus
        ``"quantize"`` for tflite); ``{"path": None, "failed": True}`` for a failed export.
    """
    import numpy as np

    from headstart.pipeline.model.head import predict_classes
    from headstart.pipeline.commands.predictor import load_predictor
    from headstart.pipeline.training.predictions import predict_split

    predictors = {fmt: load_predictor(path) for fmt, path in done.items() if path}
    got: dict[str, list] = {fmt: [] for fmt in predictors}

    def feed(batch: Any) -> None:
        for fmt, predictor in predictors.items():
            got[fmt].append(predictor.logits(batch.images))
        if observe is not None:
            observe(batch)

    reference = predict_split(model, source, split, batch_size=batch_size, multi_label=multi_label, observe=feed)
    width = reference.logits.shape[-1]
    k = 2 if width == 1 and not multi_label else width
    labels, n = reference.labels, len(reference.labels)
    keras_pred = predict_classes(reference.logits, k, multi_label)
    report: dict[str, dict] = {}
    for fmt, path in done.items():
        if not path:
            report[fmt] = {"path": None, "failed": True}
            continue
        logits = np.concatenate(got[fmt]) if got[fmt] else np.zeros_like(reference.logits)
        pred = predict_classes(logits, k, multi_label)
        report[fmt] = {"path": path, "images": int(n), "accuracy": _share(pred, labels),
                       "keras_accuracy": _share(keras_pred, labels), "agreement": _share(pred, keras_pred),
                       "max_abs_logit_diff": float(np.abs(logits - reference.logits).max()) if n else None}
        if fmt == "tflite":
            report[fmt]["quantize"] = quantize
    return report


def _share(a: Any, b: Any) -> float | None:
    """The share of images whose class (or label set) in ``a`` equals the one in ``b``; None for none."""
    import numpy as np

    return float(np.mean((a == b).reshape(len(a), -1).all(axis=1))) if len(a) else None


# ── writers ──────────────────────────────────────────────────────────────────────────────────


def _write_saved_model(serving: Any, names: list[str], target: Path, *, serving_extras: bool = True,
                       thresholds: list[float] | None = None) -> None:
    import keras
    import tensorflow as tf

    size = int(serving.input_shape[1])
    width = int(serving.output_shape[-1])
    archive = keras.export.ExportArchive()
    archive.track(serving)
    images_spec = tf.TensorSpec((None, size, size, 3), tf.float32, name="image")
    # The first endpoint becomes "serving_default": plain images → logits, as before.
    archive.add_endpoint("serve", lambda x: serving(x, training=False), input_signature=[images_spec])

    from headstart.pipeline.data.image import MAX_IMAGE_PIXELS

    max_pixels = MAX_IMAGE_PIXELS

    def serve_bytes(encoded):
        pixels = tf.map_fn(lambda b: decode_for_serving(b, size, max_pixels), encoded,
                           fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        logits = tf.cast(serving(pixels, training=False), tf.float32)
        if thresholds is not None:  # multi-label: a sigmoid per class, the label set at the saved cuts
            probabilities = tf.sigmoid(logits)
            return {"logits": logits, "probabilities": probabilities,
                    "labels": probabilities >= tf.constant(thresholds, tf.float32)}
        if width == 1:  # one logit: sigmoid gives P(class 1)
            p = tf.sigmoid(logits)
            probabilities = tf.concat([1.0 - p, p], axis=-1)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        index = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"logits": logits, "probabilities": probabilities, "class_index": index,
                "class_name": tf.gather(tf.constant(names), index)}

    if serving_extras:
        archive.add_endpoint("serve_bytes", serve_bytes,
                             input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")])
        archive.add_endpoint("class_names", lambda: {"class_names": tf.constant(names)}, input_signature=[])
        # What serve_bytes refuses to decode, for the people who deploy it.
        archive.add_endpoint("max_image_pixels", lambda: {"max_image_pixels": tf.constant(max_pixels, tf.int64)},
                             input_signature=[])
        if thresholds is not None:
            archive.add_endpoint("thresholds", lambda: {"thresholds": tf.constant(thresholds, tf.float32)},
                                 input_signature=[])
    # A full disk is one line naming the export, and no .saved_model.tmp/ is left behind.
    write_dir_atomic(target, lambda tmp: archive.write_out(tmp, verbose=False))


def _write_onnx(serving: Any, names: list[str], target: Path, thresholds: dict | None = None,
                chain: dict | None = None) -> str:
    import onnx
    import tensorflow as tf

    size = int(serving.input_shape[1])
    # tf2onnx logs every rewrite pass at INFO through Python logging.
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():  # NumPy's FutureWarning about np.object, raised inside Keras' tf2onnx shim
            warnings.simplefilter("ignore", FutureWarning)
            serving.export(tmp, format="onnx", verbose=False, opset_version=ONNX_OPSET,
                           input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="image")])
        proto = onnx.load(tmp)
        metadata = {"class_names": json.dumps(names)}
        if thresholds:
            metadata.update(task="multi_label", thresholds=json.dumps(thresholds))
        if chain:  # the whole chain, so the file describes itself (features.chain_config)
            metadata["chain"] = json.dumps(chain)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    atomic_write(target, write, suffix=".onnx")  # a full disk: one line, no temporary left
    return str(target)


def _write_tflite(saved: Path, target: Path, quantize: str,
                  calibration: Callable[[], Iterable[np.ndarray]] | None) -> str:
    import numpy as np
    import tensorflow as tf

    # Only "serve": the bytes signature's decode ops have no TFLite kernels.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for i, image in enumerate(calibration()):
                if i >= CALIBRATION_IMAGES:
                    break
                yield [np.asarray(image, np.float32)[None]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with native_lines_dropped():  # "fully_quantize: 0, inference_type: 6, …" on every conversion
        flatbuffer = converter.convert()
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(flatbuffer), suffix=".tflite")
    return str(target)


def _guarded(fmt: str, reporter: Reporter, write: Callable[[], str]) -> str | None:
    try:
        return write()
    except OutputError:
        raise  # a full or read-only disk is the machine's failure, not the converter's: stop, one line
    except Exception as exc:  # noqa: BLE001 - converters raise many unrelated types
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        reporter.warning(f"warning: {fmt} export failed ({text}); model.keras and the other exports are unaffected")
        return None
