"""The one table of command-line option facts: help text, choices and flag of each config field.

Every option that sets a config field is described here once, keyed by (section, field) of the
dataclasses in ``headstart.pipeline.config``; the field itself gives the default and the type, and
the choices come from the registries (``headstart.features.registry``: backbones, poolings, dtypes;
``config.EXPORT_FORMATS``; ``distribute.strategy.STRATEGIES``). ``cli.py`` turns an entry into a
click option, and ``RUN_OPTIONS`` (the flags of ``headstart run``) point at the same entries, so
adding a backbone or a dtype is one edit in its registry. No TensorFlow here, nor click.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from headstart.features.registry import BACKBONES, DTYPES, POOLINGS, alpha_backbones
from headstart.pipeline.config import (EXPORT_FORMATS, HEAD_KINDS, MONITORS, NORMALIZATIONS, QUANTIZE_MODES,
                                      ExtractConfig, FinetuneConfig, HeadConfig, RunConfig, SweepConfig)
from headstart.pipeline.distribute.strategy import STRATEGIES

#: Section name → its config dataclass; "top" holds the top-level keys of ``headstart run``.
SECTIONS: dict[str, type] = {"extract": ExtractConfig, "head": HeadConfig, "finetune": FinetuneConfig}
_CLASSES: dict[str, type] = {**SECTIONS, "top": RunConfig, "sweep": SweepConfig}
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
    """

    help: str
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    path: str | None = None
    required: bool = False
    csv: bool = False


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
        "out": OptionFact("HDF5 file to write, e.g. features.h5.", path="file", required=True),
        "backbone": OptionFact(f"Backbone from the registry: {_names(BACKBONES)}."),
        "weights": OptionFact("'imagenet' (downloaded once by Keras), 'none' (random), or a local .h5/.weights.h5 file."),
        "alpha": OptionFact(f"Width multiplier for {' and '.join(alpha_backbones())}."),
        "image_size": OptionFact("Square input size in pixels."),
        "pooling": OptionFact("Pool the feature map (avg, max) or keep it spatial (none); cls: the class token "
                              "of a hub: transformer.", choices=POOLINGS),
        "dtype": OptionFact("Storage type of the cached features.", choices=DTYPES),
        "batch_size": OptionFact("Images per forward pass."),
        "splits": OptionFact("Comma-separated splits to extract.", csv=True),
        "split_specs": OptionFact(_SPLIT_HELP, flag="--split", metavar="NAME=SPEC"),
        "validation_fraction": OptionFact("Share of a single class-folder tree held out for validation "
                                          "(stable hash of the path)."),
        "test_fraction": OptionFact("Share of a single class-folder tree held out for testing."),
        **_LABEL_FILE,
        "max_bad": OptionFact("Fail when more than this many images are skipped (default: any)."),
        "strict": OptionFact("Fail on the first bad image, before writing any features."),
        "augment_views": OptionFact("Extra augmented views stored per training image, for augmentation on the "
                                    "fast path."),
        "augment": OptionFact("Augmentation for --augment-views."),
        "seed": OptionFact("Seed of the augmented views."),
        "overwrite": OptionFact("Replace an existing cache written with another configuration."),
        "shard": OptionFact("Be worker I of N (from 0): extract a stable 1/N of each split into --out; join the N "
                            "files with merge-features.", metavar="I/N"),
    },
    "head": {
        "out": OptionFact("Run directory to write.", path="dir", required=True),
        "epochs": OptionFact("Most epochs; early stopping may end sooner."),
        "lr": OptionFact("Adam learning rate."),
        "batch_size": OptionFact("Rows per step."),
        "dropout": OptionFact("Dropout before the Dense layer."),
        "head_kind": OptionFact("The guide's linear head, or one hidden ReLU layer (--hidden-units) before it.",
                                choices=HEAD_KINDS),
        "hidden_units": OptionFact("Width of the hidden layer of --head-kind hidden."),
        "normalize": OptionFact("Feature normalisation inside the head: L2 to unit length, or standardize with the "
                                "training split's statistics.", choices=NORMALIZATIONS),
        "weight_decay": OptionFact("Decoupled weight decay on the kernels (Adam's weight_decay)."),
        "label_smoothing": OptionFact("Label smoothing of the training loss."),
        "views": OptionFact("Train on the cache's augmented views, when it has them."),
        "patience": OptionFact("Epochs without a better --monitor value before stopping (best weights restored)."),
        "seed": OptionFact("Seed of initialisation, shuffling and view sampling."),
        "deterministic": OptionFact("Bit-identical results for the same seed (slower ops)."),
        "memory_limit_mb": OptionFact("Load features into memory up to this size; stream them from HDF5 beyond it."),
        "exclude": OptionFact("CSV with a key column (e.g. diagnose's label_issues.csv): drop those images from "
                              "train and validation; test is kept.", path="file"),
        **_IMBALANCE,
        **_DISTRIBUTE,
        "tensorboard": OptionFact("Log every epoch with keras.callbacks.TensorBoard to DIR (train/, validation/).",
                                  metavar="DIR", path="dir"),
        "overwrite": OptionFact("Replace an existing run directory."),
    },
    "finetune": {
        "head": OptionFact("train-head run directory to seed from; without it, the head is trained first on the "
                           "frozen backbone.", path="dir"),
        "out": OptionFact("Run directory to write.", path="dir", required=True),
        "backbone": OptionFact(f"Only without --head (default {_EXTRACT.backbone}); with --head it comes from the head run."),
        "weights": OptionFact("imagenet, none or a file; with --head only to point at a moved file "
                              "(fingerprint checked)."),
        "alpha": OptionFact("Width multiplier for mobilenet backbones (without --head)."),
        "image_size": OptionFact(f"Input size (without --head; default {_EXTRACT.image_size})."),
        "pooling": OptionFact(f"Pooling (without --head; default {_EXTRACT.pooling}).", choices=POOLINGS),
        "split_specs": OptionFact("TFDS split override; repeatable.", flag="--split", metavar="NAME=SPEC"),
        **_LABEL_FILE,
        "epochs": OptionFact("Most fine-tuning epochs."),
        "lr": OptionFact("Adam learning rate for fine-tuning."),
        "batch_size": OptionFact("Images per fine-tuning step; lower it when memory runs out."),
        "head_epochs": OptionFact("Head epochs when there is no --head."),
        "head_lr": OptionFact("Head learning rate when there is no --head."),
        "head_batch_size": OptionFact("Batch size of the head stage when there is no --head."),
        "unfreeze": OptionFact("all, top:N (last N backbone layers) or from:LAYER; BatchNorm always stays frozen."),
        "augment": OptionFact("Augmentation, e.g. flip,rotate=0.1 or none."),
        "patience": OptionFact("Early-stopping patience on the --monitor value."),
        "seed": OptionFact("Seed of shuffling and augmentation."),
        "deterministic": OptionFact("Bit-identical fine-tuned weights for the same seed (slower ops)."),
        "parity_samples": OptionFact("Validation images checked against the cached features before training "
                                     "(0: off)."),
        "resume": OptionFact("Continue an interrupted run from its last completed epoch."),
        "export": OptionFact("Also export the model (saved_model: an images and an encoded-bytes signature; "
                             "onnx; tflite), each checked against model.keras; repeatable.", choices=EXPORT_FORMATS),
        "quantize": OptionFact("Quantization of --export tflite; int8 is calibrated on training images.",
                               choices=QUANTIZE_MODES),
        "exclude": OptionFact("CSV with a key column (e.g. diagnose's label_issues.csv): drop those images from "
                              "train and validation; test is kept.", path="file"),
        **_IMBALANCE,
        **_DISTRIBUTE,
        "tensorboard": OptionFact("Log every epoch with keras.callbacks.TensorBoard to DIR (train/, validation/; "
                                  "DIR/head/ for the head trained without --head).", metavar="DIR", path="dir"),
        "overwrite": OptionFact("Replace an existing run directory."),
    },
    "sweep": {
        "out": OptionFact("Sweep directory: study.db, leaderboard.csv, sweep.png, best/.", path="dir", required=True),
        "trials": OptionFact("Finished trials in total (a resumed or shared study counts what it has)."),
        "seed": OptionFact("Seed of the sampler and of every trial's head."),
        "storage": OptionFact("Optuna storage URL shared by several processes or machines (default: "
                              "sqlite:///DIR/study.db).", metavar="URL"),
        "jit_compile": OptionFact("Compile the batched step with XLA (worth it on a GPU)."),
        "tensorboard": OptionFact("Log the best head's retraining with keras.callbacks.TensorBoard to DIR, "
                                  "and every trial's epochs to DIR/trials/trial_NNNN.",
                                  metavar="DIR", path="dir"),
        "overwrite": OptionFact("Start the study anew: delete DIR's study.db, leaderboard, plot and best/."),
    },
    "top": {
        "tensorboard": OptionFact("Write TensorBoard logs of both training stages to RUN_DIR/tensorboard/."),
        "diagnose": OptionFact("Diagnose the cache (label issues, duplicates, leaks, outliers) into RUN_DIR/diagnose/ "
                               "before training the head."),
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


@dataclass(frozen=True)
class RunOption:
    """One ``headstart run`` flag and the config keys it sets.

    Attributes:
        flag: the option, e.g. "--head-epochs".
        targets: (section, key) pairs it sets; section "top" is the top level.
        kind: "int", "float", "str", "bool" (a --x/--no-x switch) or "multi" (repeatable).
        help: help text; the default is appended from the dataclasses.
        choices: allowed values, for "str" and "multi".
    """

    flag: str
    targets: tuple[tuple[str, str], ...]
    kind: str
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.split("/")[0].lstrip("-").replace("-", "_")


def _o(flag: str, targets: str, help: str | None = None) -> RunOption:
    # Kind, choices and (unless a flag sets several fields) help come from the first target's fact.
    pairs = tuple(tuple(t.split(".")) for t in targets.split(","))
    section, name = pairs[0]
    described = fact(section, name)
    return RunOption(flag, pairs, field_kind(section, name), help or described.help,  # type: ignore[arg-type]
                     described.choices)


#: The flags of ``headstart run``; everything else via --config.
RUN_OPTIONS: tuple[RunOption, ...] = (
    _o("--backbone", "extract.backbone"),
    _o("--weights", "extract.weights"),
    _o("--alpha", "extract.alpha"),
    _o("--image-size", "extract.image_size"),
    _o("--pooling", "extract.pooling"),
    _o("--dtype", "extract.dtype"),
    _o("--extract-batch-size", "extract.batch_size", "Images per forward pass during extraction."),
    _o("--split", "extract.split_specs"),
    _o("--validation-fraction", "extract.validation_fraction"),
    _o("--test-fraction", "extract.test_fraction"),
    _o("--path-column", "extract.path_column"),
    _o("--label-column", "extract.label_column"),
    _o("--images", "extract.images"),
    _o("--multi-label/--no-multi-label", "extract.multi_label"),
    _o("--max-bad", "extract.max_bad", "Fail when more than this many images are skipped."),
    _o("--augment-views", "extract.augment_views"),
    _o("--head-epochs", "head.epochs", "Most epochs of the head on cached features."),
    _o("--head-lr", "head.lr", "Adam learning rate of the head."),
    _o("--head-batch-size", "head.batch_size", "Rows per step when training the head."),
    _o("--dropout", "head.dropout"),
    _o("--head-patience", "head.patience", "Head epochs without a better validation loss before stopping."),
    _o("--epochs", "finetune.epochs"),
    _o("--lr", "finetune.lr"),
    _o("--batch-size", "finetune.batch_size"),
    _o("--unfreeze", "finetune.unfreeze"),
    _o("--augment", "finetune.augment,extract.augment", "Augmentation while fine-tuning (and for --augment-views)."),
    _o("--patience", "finetune.patience", "Fine-tuning epochs without a better validation loss before stopping."),
    _o("--export", "finetune.export"),
    _o("--quantize", "finetune.quantize"),
    _o("--seed", "extract.seed,head.seed,finetune.seed", "Seed of every stage."),
    _o("--tensorboard/--no-tensorboard", "top.tensorboard"),
    _o("--diagnose/--no-diagnose", "top.diagnose"),
    _o("--exclude", "head.exclude,finetune.exclude"),
    _o("--class-weight", "head.class_weight,finetune.class_weight"),
    _o("--monitor", "head.monitor,finetune.monitor"),
)


def option_default(option: RunOption) -> Any:
    """The default a flag falls back to (that of its first target), for help texts."""
    return field_default(*option.targets[0])
