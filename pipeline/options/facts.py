"""The one table of option facts: help text, choices, range and flag of each config field.

Every option that sets a config field is described here once, keyed by (section, field) of the
dataclasses in ``headstart.pipeline.config``; the field itself gives the default and the type, and
the choices come from the registries (``headstart.features.registry``: backbones, poolings, dtypes;
``config.EXPORT_FORMATS``, ``config.STRATEGIES``). ``cli.py`` turns an entry into a click option,
and ``RUN_OPTIONS`` (the flags of ``headstart run``) point at the same entries, so adding a backbone
or a dtype is one edit in its registry.

Ranges (``Bounds``) live here too, and ``check_config`` is the one check of a config's values against
them — the same for a flag, a ``--config`` TOML key and a Python API call — run before TensorFlow
starts; the commands add only what a table cannot say (a file that must exist, a monitor the task
allows). ``shapes_result=False`` marks the options that never change a result (``--out``,
``--overwrite``, ``--tensorboard``, batch sizes of extraction …), which the ``--out`` policy and
``headstart run``'s stage reuse leave out of their comparisons. No TensorFlow here, nor click.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from headstart.features.registry import BACKBONES, DTYPES, POOLINGS, alpha_backbones
from headstart.pipeline.config import (CALIBRATIONS, EXPORT_FORMATS, HEAD_KINDS, MONITORS, NORMALIZATIONS,
                                      QUANTIZE_MODES, RECIPES, STRATEGIES, DemoConfig, DiagnoseConfig, EvaluateConfig,
                                      ExportConfig, ExtractConfig, FinetuneConfig, HeadConfig, PredictConfig, RunConfig,
                                      SplitConfig, SweepConfig)
from headstart.pipeline.options.bounds import BATCH_SIZE, HIDDEN_UNITS, IMAGE_SIZE, POSITIVE, SEED, SHARE, Bounds, at_least

#: Section name → its config dataclass; "top" holds the top-level keys of ``headstart run``.
SECTIONS: dict[str, type] = {"extract": ExtractConfig, "head": HeadConfig, "finetune": FinetuneConfig}
_CLASSES: dict[str, type] = {**SECTIONS, "top": RunConfig, "sweep": SweepConfig, "diagnose": DiagnoseConfig,
                             "demo": DemoConfig, "export": ExportConfig, "split": SplitConfig,
                             "evaluate": EvaluateConfig, "predict": PredictConfig}
_EXTRACT = ExtractConfig()  # finetune without --head falls back to these


@dataclass(frozen=True)
class OptionFact:
    """What the command line says about one config field.

    Attributes:
        help: help text (click appends the default and the choices).
        choices: allowed values, from a registry; None for free values.
        flag: the option's name when it is not ``--field-name``.
        metavar: shown instead of the type, e.g. "NAME=SPEC".
        path: "file" or "dir" for options that name a file or a run directory.
        required: the command refuses to run without it.
        csv: a tuple field given as one comma-separated value (``--splits a,b``).
        bounds: the range of a number option.
        shapes_result: False for options that never change what the command computes.
    """

    help: str
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    path: str | None = None
    required: bool = False
    csv: bool = False
    bounds: Bounds | None = None
    shapes_result: bool = True


def _names(values) -> str:
    return ", ".join(values)


_CLASS_WEIGHT_HELP = ("Weigh each training image's loss by its class: none; balanced (n / (k * n_c), inverse "
                      "class frequency of the training split); or a TOML/JSON file mapping every class name to "
                      "a positive weight.")
_MONITOR_HELP = ("What early stopping and the stage gate watch: the validation loss, or validation balanced "
                 "accuracy, macro-F1 or mAP (multi-label tasks only); all but val_loss need a validation split.")
_IMBALANCE: dict[str, OptionFact] = {
    "class_weight": OptionFact(_CLASS_WEIGHT_HELP, metavar="none|balanced|FILE"),
    "monitor": OptionFact(_MONITOR_HELP, choices=MONITORS),
}
_SPLIT_HELP = "Override a split: TFDS slicing (train=train[:80%]); repeatable."
_STRATEGY_HELP = ("tf.distribute strategy: mirrored (local GPUs), multiworker (TF_CONFIG), default (one device); "
                  "auto picks multiworker with a TF_CONFIG cluster, mirrored with 2+ GPUs.")
_DISTRIBUTE: dict[str, OptionFact] = {
    "strategy": OptionFact(_STRATEGY_HELP, choices=STRATEGIES),
    "mixed_precision": OptionFact("Compute in mixed_float16 on GPU, mixed_bfloat16 on CPU; logits stay float32."),
    "jit_compile": OptionFact("Compile the training step with XLA."),
}

#: Options of a .csv/.jsonl label-file SOURCE (extract-features, finetune, evaluate, run).
_LABEL_FILE: dict[str, OptionFact] = {
    "path_column": OptionFact("Label file: the column of image paths (default: path, filename, file, image or id).",
                              metavar="NAME"),
    "label_column": OptionFact("Label file: the column of labels (default: label, or labels for several per row).",
                               metavar="NAME"),
    "images": OptionFact("Label file: folder its relative paths and bare ids (no extension) resolve in "
                         "(default: the file's folder).", path="dir", metavar="DIR"),
    "multi_label": OptionFact("Label file: several labels per row, separated by | or spaces (a labels column "
                              "implies it)."),
}

#: (section → field → fact) for every field an option sets.
FACTS: dict[str, dict[str, OptionFact]] = {
    "extract": {
        "out": OptionFact("HDF5 file to write, e.g. features.h5.", path="file", required=True, shapes_result=False),
        "backbone": OptionFact(f"Backbone from the registry: {_names(BACKBONES)}."),
        "weights": OptionFact("'imagenet' (downloaded once by Keras), 'none' (random), 'shipped' (the MobileNetV2 "
                              "0.35 ImageNet weights inside headstart: offline), or a local .h5/.weights.h5 file."),
        "alpha": OptionFact(f"Width multiplier for {' and '.join(alpha_backbones())}."),
        "image_size": OptionFact("Square input size in pixels.", bounds=IMAGE_SIZE),
        "pooling": OptionFact("Pool the feature map (avg, max) or keep it spatial (none); cls: the class token "
                              "of a hub: transformer.", choices=POOLINGS),
        "dtype": OptionFact("Storage type of the cached features.", choices=DTYPES),
        "batch_size": OptionFact("Images per forward pass.", bounds=BATCH_SIZE, shapes_result=False),
        "splits": OptionFact("Comma-separated splits to extract.", csv=True),
        "split_specs": OptionFact(_SPLIT_HELP, flag="--split", metavar="NAME=SPEC"),
        "validation_fraction": OptionFact("Share of a single class-folder tree held out for validation "
                                          "(stable hash of the path).", bounds=SHARE),
        "test_fraction": OptionFact("Share of a single class-folder tree held out for testing.", bounds=SHARE),
        **_LABEL_FILE,
        "max_bad": OptionFact("Fail when more than this many images are skipped (default: any).",
                              bounds=at_least(0), shapes_result=False),
        "strict": OptionFact("Fail on the first bad image, before writing any features.", shapes_result=False),
        "augment_views": OptionFact("Extra augmented views stored per training image, for augmentation on the "
                                    "fast path.", bounds=at_least(0)),
        "augment": OptionFact("Augmentation for --augment-views."),
        "seed": OptionFact("Seed of the augmented views.", bounds=SEED),
        "overwrite": OptionFact("Replace an existing cache written with another configuration.", shapes_result=False),
        "shard": OptionFact("Be worker I of N (from 0): extract a stable 1/N of each split into --out; join the N "
                            "files with merge-features.", metavar="I/N"),
        "tap": OptionFact("Also cache the backbone's activations below its last N layers (top:N, rounded up to a "
                          "block boundary) or at a layer's output (LAYER), float16, for `finetune --on-cache`.",
                          metavar="top:N|LAYER"),
    },
    "head": {
        "out": OptionFact("Run directory to write.", path="dir", required=True, shapes_result=False),
        "epochs": OptionFact("Most epochs; early stopping may end sooner. 0: no maximum, train until early "
                             "stopping ends it (safety cap 1000 epochs).", bounds=at_least(0)),
        "lr": OptionFact("Adam learning rate.", bounds=POSITIVE),
        "batch_size": OptionFact("Rows per step.", bounds=BATCH_SIZE),
        "dropout": OptionFact("Dropout before the Dense layer.", bounds=SHARE),
        "head_kind": OptionFact("The guide's linear head, or one hidden ReLU layer (--hidden-units) before it.",
                                choices=HEAD_KINDS),
        "hidden_units": OptionFact("Width of the hidden layer of --head-kind hidden.", bounds=HIDDEN_UNITS),
        "normalize": OptionFact("Feature normalisation inside the head: L2 to unit length, or standardize with the "
                                "training split's statistics.", choices=NORMALIZATIONS),
        "weight_decay": OptionFact("Decoupled weight decay on the kernels (Adam's weight_decay).",
                                   bounds=at_least(0)),
        "label_smoothing": OptionFact("Label smoothing of the training loss.", bounds=SHARE),
        "views": OptionFact("Train on the cache's augmented views, when it has them."),
        "patience": OptionFact("Epochs without a better --monitor value before stopping (best weights restored).",
                               bounds=at_least(0)),
        "seed": OptionFact("Seed of initialisation, shuffling and view sampling.", bounds=SEED),
        "deterministic": OptionFact("Bit-identical results for the same seed (slower ops)."),
        "memory_limit_mb": OptionFact("Load features into memory up to this size; stream them from HDF5 beyond it.",
                                      bounds=at_least(0), shapes_result=False),
        "exclude": OptionFact("CSV with a key column (e.g. diagnose's label_issues.csv): drop those images from "
                              "train and validation; test is kept.", path="file"),
        **_IMBALANCE,
        **_DISTRIBUTE,
        "tensorboard": OptionFact("Log every epoch with keras.callbacks.TensorBoard to DIR (train/, validation/).",
                                  metavar="DIR", path="dir", shapes_result=False),
        "overwrite": OptionFact("Replace an existing run directory.", shapes_result=False),
    },
    "finetune": {
        "head": OptionFact("train-head run directory to seed from; without it, the head is trained first on the "
                           "frozen backbone.", path="dir"),
        "out": OptionFact("Run directory to write.", path="dir", required=True, shapes_result=False),
        "backbone": OptionFact(f"Only without --head (default {_EXTRACT.backbone}); with --head it comes from the head run."),
        "weights": OptionFact("imagenet, none, shipped or a file; with --head only to point at a moved file "
                              "(fingerprint checked)."),
        "alpha": OptionFact("Width multiplier for mobilenet backbones (without --head)."),
        "image_size": OptionFact(f"Input size (without --head; default {_EXTRACT.image_size}).", bounds=IMAGE_SIZE),
        "pooling": OptionFact(f"Pooling (without --head; default {_EXTRACT.pooling}).", choices=POOLINGS),
        "split_specs": OptionFact("TFDS split override; repeatable.", flag="--split", metavar="NAME=SPEC"),
        **_LABEL_FILE,
        "epochs": OptionFact("Most fine-tuning epochs.", bounds=at_least(1)),
        "lr": OptionFact("Adam learning rate for fine-tuning.", bounds=POSITIVE),
        "batch_size": OptionFact("Images per fine-tuning step; lower it when memory runs out.", bounds=BATCH_SIZE),
        "head_epochs": OptionFact("Head epochs when there is no --head.", bounds=at_least(1)),
        "head_lr": OptionFact("Head learning rate when there is no --head.", bounds=POSITIVE),
        "head_batch_size": OptionFact("Batch size of the head stage when there is no --head.", bounds=BATCH_SIZE),
        "unfreeze": OptionFact("all, top:N (last N backbone layers) or from:LAYER; BatchNorm always stays frozen."),
        "on_cache": OptionFact("Train the backbone's layers above the head's cache's tap (extract-features --tap) on "
                               "its cached activations and views, not on images: many epochs for the price of one; "
                               "--unfreeze all then means every layer above the tap."),
        "augment": OptionFact("Augmentation, e.g. flip,rotate=0.1 or none; auto (with --head): keep each item that "
                              "heads trained with its cached views do not do worse with on validation."),
        "probe": OptionFact("none, lr, unfreeze or lr,unfreeze: choose them by short fine-tunes judged on "
                            "validation (rates 1e-5, 1e-4, 1e-3; all layers vs the top quarter); skip fine-tuning "
                            "when none beats the seeded model."),
        "probe_steps": OptionFact("Training steps per probe (0: one epoch, at most 300).", bounds=at_least(0)),
        "trial_views": OptionFact("With --augment auto: cached views per training image in each candidate's trial "
                                  "(each candidate's views cover its share of the training rows, so each view is "
                                  "one more pass of the training split through the backbone for all candidates "
                                  "together).",
                                  bounds=at_least(1)),
        "patience": OptionFact("Early-stopping patience on the --monitor value.", bounds=at_least(0)),
        "seed": OptionFact("Seed of shuffling and augmentation.", bounds=SEED),
        "deterministic": OptionFact("Bit-identical fine-tuned weights for the same seed (slower ops)."),
        "parity_samples": OptionFact("Validation images checked against the cached features before training "
                                     "(0: off).", bounds=at_least(0)),
        "resume": OptionFact("Continue an interrupted run from its last completed epoch (the same command "
                             "does so anyway when --out holds one with these options).", shapes_result=False),
        # What is exported changes no model: a finished run gains the exports it lacks (headstart export).
        "export": OptionFact("Also export the model (saved_model: an images and an encoded-bytes signature; "
                             "onnx; tflite), each checked against model.keras; repeatable.", choices=EXPORT_FORMATS,
                             shapes_result=False),
        "quantize": OptionFact("Quantization of --export tflite; int8 is calibrated on training images.",
                               choices=QUANTIZE_MODES, shapes_result=False),
        "calibrate": OptionFact("temperature: divide the final model's logits by a temperature fitted on validation "
                                "(one per class for multi-label) so its probabilities mean what they say; it is a "
                                "layer of model.keras and of every export. none: keep the raw scores.",
                                choices=CALIBRATIONS),
        "exclude": OptionFact("CSV with a key column (e.g. diagnose's label_issues.csv): drop those images from "
                              "train and validation; test is kept.", path="file"),
        **_IMBALANCE,
        **_DISTRIBUTE,
        "tensorboard": OptionFact("Log every epoch with keras.callbacks.TensorBoard to DIR (train/, validation/; "
                                  "DIR/head/ for the head trained without --head).",
                                 metavar="DIR", path="dir", shapes_result=False),
        "overwrite": OptionFact("Replace an existing run directory.", shapes_result=False),
    },
    "sweep": {
        "out": OptionFact("Sweep directory: study.db, leaderboard.csv, sweep.png, best/ (the winning "
                          "trial's own head; its weights also in trials/).",
                          path="dir", required=True, shapes_result=False),
        "trials": OptionFact("Finished trials in total (a resumed or shared study counts what it has).",
                             bounds=at_least(1)),
        "seed": OptionFact("Seed of the sampler and of every trial's head.", bounds=SEED),
        "storage": OptionFact("Optuna storage URL shared by several processes or machines (default: "
                              "sqlite:///DIR/study.db).", metavar="URL", shapes_result=False),
        "jit_compile": OptionFact("Compile the batched step with XLA (worth it on a GPU)."),
        "tensorboard": OptionFact("Log the best trial's epochs to DIR and every trial's epochs to "
                                  "DIR/trials/trial_NNNN (as keras.callbacks.TensorBoard writes them).",
                                  metavar="DIR", path="dir", shapes_result=False),
        "overwrite": OptionFact("Start the study anew: delete DIR's study.db, leaderboard, plot and best/.",
                                shapes_result=False),
        "monitor": OptionFact("What ranks the trials (Optuna's objective), prunes them, stops each early and "
                              "best/ records: the validation loss, or validation balanced accuracy, "
                              "macro-F1 or mAP; a multi-label cache's val_loss means mAP.", choices=MONITORS),
        "class_weight": OptionFact(_CLASS_WEIGHT_HELP + " Every trial and best/ train with them (single-label).",
                                   metavar="none|balanced|FILE"),
    },
    "diagnose": {
        "out": OptionFact("Directory for the report.", path="dir", required=True, shapes_result=False),
        "folds": OptionFact("K: heads trained for the out-of-fold predictions.", bounds=at_least(2)),
        "seed": OptionFact("Seed of the folds and heads.", bounds=SEED),
        "neighbours": OptionFact("Nearest neighbours looked at per image (duplicates, outlier scores).",
                                 bounds=at_least(1)),
        "duplicate_threshold": OptionFact("Cosine similarity of centred features from which two images count as "
                                          "near-duplicates, for every class, without the pixel check. Default: "
                                          "per class from the data, confirmed on the images' pixels.",
                                         bounds=Bounds(0, 1, low_open=True, expected="in (0, 1]")),
        "constant_std": OptionFact("Pixel standard deviation (0-255) below which an image counts as near-constant.",
                                   bounds=at_least(0)),
        "grid": OptionFact("Suspects and pairs shown in each PNG grid.", bounds=at_least(1)),
        "overwrite": OptionFact("Replace the files of an existing report directory.", shapes_result=False),
    },
    "demo": {
        "out": OptionFact("Folder for the generated images (data/) and the run directory (run/).", path="dir",
                          shapes_result=False),
        "data": OptionFact("Train on this folder of class folders instead of the generated shapes.", path="dir"),
        "weights": OptionFact("'imagenet', 'none', 'shipped' or a local .h5 file.  [default: ImageNet when Keras has them "
                              "cached or can fetch them, else the copy shipped with headstart]"),
        "images_per_class": OptionFact("Generated images per class (70% train, 10% validation, 20% test).",
                                       bounds=at_least(3)),
        "head_epochs": OptionFact("Most epochs of the head.", bounds=at_least(1)),
        "epochs": OptionFact("Most fine-tuning epochs.", bounds=at_least(1)),
        "seed": OptionFact("Seed of the generated images and every stage.", bounds=SEED),
        "tensorboard": OptionFact("Write TensorBoard logs of both training stages.", shapes_result=False),
        "overwrite": OptionFact("Redo the stages whose configuration changed since the last demo.",
                                shapes_result=False),
    },
    "export": {
        "out": OptionFact("Directory to write the exports (and export.json) into.", path="dir", required=True,
                          shapes_result=False),
        "formats": OptionFact("Format to write, each checked against the model by its own runtime (saved_model: an "
                              "images and an encoded-bytes signature; onnx; tflite); repeatable.", flag="--format",
                              choices=EXPORT_FORMATS, required=True),
        "quantize": OptionFact("Quantization of --format tflite; int8 is calibrated on training images.",
                               choices=QUANTIZE_MODES),
        "source": OptionFact("Images to check the exports on (its test split, else validation, else train) and to "
                             "calibrate int8 on. Default: the SOURCE the run recorded.", metavar="SOURCE"),
        "weights": OptionFact("A train-head run's backbone weights (imagenet, none, shipped or a file), when the "
                              "recorded file has moved (fingerprint checked).", metavar="PATH"),
        "batch_size": OptionFact("Images per forward pass of the checks.", bounds=BATCH_SIZE, shapes_result=False),
        "parity_samples": OptionFact("A train-head run: images on which the rebuilt model must reproduce the head's "
                                     "logits on cached features (0: off).", bounds=at_least(0), shapes_result=False),
        "overwrite": OptionFact("Replace an export directory written from another model or with other options.",
                                shapes_result=False),
    },
    "split": {
        "out": OptionFact("Directory to lay out as OUT/{train,validation,test}/<class>/.", path="dir", required=True,
                          shapes_result=False),
        "fractions": OptionFact("Shares of train, validation and test, per class (normalized by their sum; "
                                "0 leaves a split out).", metavar="TRAIN,VAL,TEST"),
        "seed": OptionFact("Salt of the split hash; 0 gives the split extract-features makes of SOURCE itself.",
                           bounds=SEED),
        "copy": OptionFact("Copy the files instead of linking to them."),
        "overwrite": OptionFact("Replace OUT's train/, validation/ and test/ folders.", shapes_result=False),
    },
    "evaluate": {
        "batch_size": OptionFact("Images per forward pass (default: what the run used).", bounds=BATCH_SIZE,
                                 shapes_result=False),
        "grid_size": OptionFact("Images in the --grid PNG.", bounds=Bounds(1, 1024), shapes_result=False),
    },
    "predict": {"batch_size": OptionFact("Images per forward pass.", bounds=BATCH_SIZE, shapes_result=False)},
    "top": {
        "recipe": OptionFact("auto: choose augmentation, head, image size and the fine-tuning rate and depth on "
                             "validation (what you set is kept as given); guide: the Keras guide's fixed recipe.",
                             choices=RECIPES),
        "budget": OptionFact("Minutes the auto recipe's search may take (default: planned from measured speeds, "
                             "about 2x the guide's run).", metavar="MINUTES", bounds=POSITIVE),
        "tensorboard": OptionFact("Write TensorBoard logs of both training stages to RUN_DIR/tensorboard/.",
                                  shapes_result=False),
        "diagnose": OptionFact("Diagnose the cache (label issues, duplicates, leaks, outliers) into RUN_DIR/diagnose/ "
                               "before training the head.", shapes_result=False),
    },
}


def fact(section: str, name: str) -> OptionFact:
    """The fact of one config field; a KeyError names a field no option sets."""
    return FACTS[section][name]


def flag_of(section: str, name: str) -> str:
    """The option that sets ``section.name`` in its stage's command, e.g. "--image-size"."""
    return fact(section, name).flag or "--" + name.replace("_", "-")


def config_class(section: str) -> type:
    """The dataclass whose fields a section's options set ("top": ``RunConfig``)."""
    return _CLASSES[section]


def field_default(section: str, name: str) -> Any:
    """The field's default, from its dataclass (the one source of defaults)."""
    return getattr(_CLASSES[section](), name)


def field_kind(section: str, name: str) -> str:
    """"bool", "int", "float", "str" or "multi" (a repeatable option: tuple and dict fields).

    The type follows the default; for a default of None, the annotation (``"float | None"``).
    """
    default = field_default(section, name)
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (tuple, dict)):
        return "str" if fact(section, name).csv else "multi"
    if default is not None:
        return type(default).__name__
    annotation = {f.name: str(f.type) for f in dataclasses.fields(_CLASSES[section])}[name]
    return annotation.split("|")[0].strip()


def result_free(section: str) -> frozenset[str]:
    """The fields of a section that never change a result (``shapes_result=False``)."""
    return frozenset(name for name, described in FACTS[section].items() if not described.shapes_result)
