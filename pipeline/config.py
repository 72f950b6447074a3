"""Typed configs: the one source of defaults for every stage.

The CLI reads its option defaults from these dataclasses, and every output directory or cache gets
the resolved config written next to it (``config.json`` / HDF5 attributes), so a run can be
reproduced from what it left behind. Defaults reproduce the Keras "transfer learning &
fine-tuning" guide.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from headstart.pipeline.errors import OptionError

#: The guide's splits of ``tfds:cats_vs_dogs`` (it only has a ``train`` split upstream).
CATS_VS_DOGS_SPLITS = {
    "train": "train[:40%]",
    "validation": "train[40%:50%]",
    "test": "train[50%:60%]",
}
DEFAULT_AUGMENT = "flip,rotate=0.1"
#: What ``finetune --export`` can write besides model.keras (``commands.export.export_model``).
EXPORT_FORMATS = ("saved_model", "onnx", "tflite")
#: TFLite quantization of ``finetune --export tflite --quantize`` (int8: calibrated on training images).
QUANTIZE_MODES = ("none", "float16", "int8")
#: ``--calibrate``: how the final model's probabilities are calibrated on validation
#: (pipeline/model/calibration.py): one temperature (per class for multi-label), or not at all.
CALIBRATIONS = ("temperature", "none")
#: Head kinds: the guide's linear head, or one hidden ReLU layer before it (pipeline/model/head.py).
HEAD_KINDS = ("linear", "hidden")
#: Feature normalisations applied inside the head.
NORMALIZATIONS = ("none", "l2", "standardize")
#: ``--class-weight`` words; any other value names a TOML/JSON file (pipeline/training/class_weights.py).
CLASS_WEIGHT_MODES = ("none", "balanced")
#: What early stopping and the stage gate watch (``--monitor``, pipeline/training/monitor.py): the
#: validation loss (lower is better), or a validation measure where higher is better.
MONITORS = ("val_loss", "balanced_accuracy", "macro_f1", "map")
#: The monitors where higher is better (the rest, the losses, are lower-is-better).
HIGHER_IS_BETTER = ("balanced_accuracy", "macro_f1", "map", "accuracy")
#: ``--strategy``: tf.distribute strategies a training stage runs under (pipeline/distribute/strategy.py).
STRATEGIES = ("auto", "default", "mirrored", "multiworker")


@dataclass
class ExtractConfig:
    """What ``extract-features`` needs; everything that shapes the cached features."""

    source: str = ""
    out: str = ""
    backbone: str = "xception"
    weights: str = "imagenet"
    alpha: float | None = None
    image_size: int = 150
    pooling: str = "avg"
    dtype: str = "float32"
    batch_size: int = 64
    splits: tuple[str, ...] = ("train", "validation", "test")
    split_specs: dict[str, str] = field(default_factory=dict)
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    # A .csv/.jsonl label-file SOURCE (pipeline/data/label_file.py): other column names, the folder
    # bare ids resolve in, several labels per row.
    path_column: str | None = None
    label_column: str | None = None
    images: str | None = None
    multi_label: bool = False
    max_bad: int | None = None
    strict: bool = False
    augment_views: int = 0
    augment: str = DEFAULT_AUGMENT
    seed: int = 0
    overwrite: bool = False
    shard: str | None = None
    # Also cache the backbone's activations at this cut ("top:N" or a layer name; features/tap.py),
    # so `finetune --on-cache` trains the top layers on the cache.
    tap: str | None = None


@dataclass
class HeadConfig:
    """What ``train-head`` needs."""

    features: str = ""
    out: str = ""
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 64
    dropout: float = 0.2
    head_kind: str = "linear"       # headstart.pipeline.model.head.HEAD_KINDS
    hidden_units: int = 256         # width of the hidden layer of head_kind "hidden"
    normalize: str = "none"         # headstart.pipeline.model.head.NORMALIZATIONS
    weight_decay: float = 0.0       # decoupled, on kernels
    label_smoothing: float = 0.0
    views: bool = True              # train on the cache's augmented views, when it has them
    patience: int = 3
    seed: int = 0
    deterministic: bool = False
    memory_limit_mb: int = 2048
    overwrite: bool = False
    strategy: str = "auto"          # STRATEGIES
    mixed_precision: bool = False
    jit_compile: bool = False
    tensorboard: str | None = None  # log directory for keras.callbacks.TensorBoard
    exclude: str | None = None      # CSV with a key column (diagnose's label_issues.csv, …)
    class_weight: str = "none"      # CLASS_WEIGHT_MODES or a TOML/JSON file: class name → weight
    monitor: str = "val_loss"       # MONITORS


@dataclass
class DiagnoseConfig:
    """What ``diagnose`` needs; the fold heads use ``HeadConfig``'s recipe with ``seed``."""

    features: str = ""
    out: str = ""
    other_caches: tuple[str, ...] = ()  # the same images through other backbones: label issues compared
    folds: int = 5
    seed: int = 0
    neighbours: int = 10            # k of the neighbour search (near-duplicates, outlier scores)
    # Cosine similarity of centred, unit-length features from which a pair is a near-duplicate;
    # None: per class from the data, confirmed on pixels (diagnose/duplicate_thresholds.py).
    duplicate_threshold: float | None = None
    constant_std: float = 2.0       # pixel std (0–255) below which an image is near-constant
    grid: int = 24                  # suspects / pairs shown in each PNG grid
    overwrite: bool = False


@dataclass
class FinetuneConfig:
    """What ``finetune`` needs; backbone, size, pooling and classes come from the head run."""

    source: str = ""
    head: str | None = None
    out: str = ""
    # None means "from the head run" (or the guide's default without --head); a value that
    # conflicts with the head run is refused rather than silently applied.
    backbone: str | None = None
    weights: str | None = None
    alpha: float | None = None
    image_size: int | None = None
    pooling: str | None = None
    split_specs: dict[str, str] = field(default_factory=dict)
    # Label-file SOURCE options, as for ExtractConfig; with --head they come from the head's cache.
    path_column: str | None = None
    label_column: str | None = None
    images: str | None = None
    multi_label: bool = False
    epochs: int = 10
    lr: float = 1e-5
    batch_size: int = 32
    head_epochs: int = 20
    head_lr: float = 1e-3
    head_batch_size: int = 64
    unfreeze: str = "all"
    augment: str = DEFAULT_AUGMENT  # or "auto": the invariance audit chooses (finetuning/choices.py)
    # "lr", "unfreeze" or "lr,unfreeze": short fine-tunes choose them on validation (finetuning/rate_probes.py).
    probe: str = "none"
    probe_steps: int = 0            # steps per probe; 0: one epoch, at most rate_probes.MAX_PROBE_STEPS
    trial_views: int = 2            # --augment auto: cached views per training image in each item's trial
    patience: int = 3
    seed: int = 0
    deterministic: bool = False     # TF op determinism (with the seed: bit-identical weights)
    parity_samples: int = 16
    resume: bool = False
    export: tuple[str, ...] = ()   # EXPORT_FORMATS
    quantize: str = "none"         # QUANTIZE_MODES, for the tflite export
    overwrite: bool = False
    strategy: str = "auto"          # STRATEGIES
    mixed_precision: bool = False
    jit_compile: bool = False
    tensorboard: str | None = None  # log directory for keras.callbacks.TensorBoard (LOG_DIR/head: the seeded head)
    exclude: str | None = None      # CSV with a key column: dropped from train and validation
    class_weight: str = "none"      # CLASS_WEIGHT_MODES or a TOML/JSON file: class name → weight
    monitor: str = "val_loss"       # MONITORS
    calibrate: str = "temperature"  # CALIBRATIONS: fitted on validation after the stage gate
    # Train the layers above the head's cache's tap on its cached activations (finetuning/on_cache.py).
    on_cache: bool = False


@dataclass
class ExportConfig:
    """What ``export`` needs: a trained model, a directory, the formats."""

    model: str = ""                 # a finetune run or its model.keras, a train-head / sweep run, a run directory
    out: str = ""
    formats: tuple[str, ...] = ()   # EXPORT_FORMATS, at least one
    quantize: str = "none"          # QUANTIZE_MODES, for the tflite export
    source: str | None = None       # images to check the exports on (int8: to calibrate); None: the run's SOURCE
    weights: str | None = None      # a head run's backbone weights, when the recorded file has moved
    batch_size: int = 32
    parity_samples: int = 16        # a head run: images of the rebuilt chain checked against its cache
    overwrite: bool = False


@dataclass
class EvaluateConfig:
    """The numbers ``evaluate`` takes (its source options are ``ExtractConfig``'s)."""

    batch_size: int | None = None   # None: the batch size the run used (same batches, same logits), else 32
    grid_size: int = 16             # images in the --grid PNG


@dataclass
class PredictConfig:
    """The numbers ``predict`` takes."""

    batch_size: int = 32


@dataclass
class RunConfig:
    """The resolved configuration of ``headstart run``: top-level keys and one config per stage."""

    source: str = ""
    out: str = ""
    # "auto": every choice left open (augmentation, head, fine-tuning rate and depth, image size) is
    # made on validation (headstart.pipeline.run.auto.recipe); "guide": the Keras guide's fixed recipe.
    recipe: str = "auto"
    budget: float | None = None     # minutes the auto recipe's search may take (None: planned from speeds)
    tensorboard: bool = False
    diagnose: bool = False          # diagnose the cache into RUN_DIR/diagnose/ before the head stage
    # The [sweep] table: "trials" (0: train-head's one head) and the search space's keys
    # (headstart.pipeline.sweep.space.SearchSpace); with trials, the head stage is a sweep.
    sweep: dict = field(default_factory=dict)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # "section.key" of every setting a flag or the --config file gave: auto never second-guesses them.
    explicit: tuple[str, ...] = ()

    def is_explicit(self, section: str, key: str) -> bool:
        return f"{section}.{key}" in self.explicit


#: ``headstart run --recipe``: choose on validation, or the Keras guide's fixed recipe.
RECIPES = ("auto", "guide")


@dataclass
class DemoConfig:
    """What ``headstart demo`` needs: where, on what, and how long each training stage may take."""

    out: str = "headstart-demo"
    data: str | None = None         # a folder of class folders instead of the generated shapes
    weights: str | None = None      # None: ImageNet when Keras has them, else the shipped copy
    images_per_class: int = 150     # generated images per class (70 % train, 10 % validation, 20 % test)
    head_epochs: int = 20
    epochs: int = 4
    seed: int = 0
    tensorboard: bool = False
    overwrite: bool = False


@dataclass
class SplitConfig:
    """What ``headstart split`` needs: a class-folder SOURCE laid out as OUT/{train,validation,test}/<class>/."""

    source: str = ""
    out: str = ""
    fractions: str = "70,10,20"     # train,validation,test shares, normalized by their sum
    seed: int = 0                   # 0: the split extract-features' hashed layout makes of SOURCE
    copy: bool = False              # False: symbolic links to SOURCE's files
    overwrite: bool = False


@dataclass
class SweepConfig:
    """What ``sweep`` needs; the search space itself is ``headstart.pipeline.sweep.space.SearchSpace``."""

    caches: tuple[str, ...] = ()
    out: str = ""
    trials: int = 64                # finished trials in total, over every process and resume
    seed: int = 0
    storage: str | None = None      # an Optuna storage URL; None means sqlite:///OUT/study.db
    overwrite: bool = False
    jit_compile: bool = False
    tensorboard: str | None = None  # the best trial's history in DIR/, and every trial's in DIR/trials/
    heartbeat: int = 5              # seconds; a trial silent for twice this is rerun
    # What ranks, prunes and early-stops the trials (a multi-label cache's val_loss means mAP, as in
    # train-head), and the class weights of every trial's training loss; best/ records both.
    monitor: str = "val_loss"       # MONITORS
    class_weight: str = "none"      # CLASS_WEIGHT_MODES or a TOML/JSON file: class name → weight


def read_settings_file(path: Any, option: str = "--config") -> dict[str, Any]:
    """Reads a ``--config`` file, TOML or (by its ``.json`` suffix) JSON, into a table of settings.

    The one reader behind ``headstart run --config``, ``headstart sweep --config`` and
    ``--class-weight FILE``; each checks its own sections.

    Args:
        path: the file.
        option: the option that named it, for the messages.

    Raises:
        OptionError: missing or unreadable file, bad syntax, or a file that is not a table; the
            message names the file.
    """
    import tomllib
    from pathlib import Path

    from headstart.features.bounded_parse import ParseLimitError, loads_json, loads_toml, read_text
    from headstart.features.regular_file import not_regular_reason

    path = Path(path)
    if not path.exists():
        raise OptionError(f"{option} {path}: no such file")
    if not_regular_reason(path):  # a named pipe would be waited on for ever
        raise OptionError(f"{option} {path}: {not_regular_reason(path)}")
    is_json = path.suffix.lower() == ".json"
    try:
        text = read_text(path)
        raw = loads_json(text) if is_json else loads_toml(text)
    except ParseLimitError as exc:
        raise OptionError(f"{option} {path}: refused before parsing: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{option} {path}: cannot read ({exc})") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(f"{option} {path}: not valid {'JSON' if is_json else 'TOML'} "
                          f"({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise OptionError(f"{option} {path}: expected a table of settings")
    return raw


def config_to_dict(config: Any) -> dict[str, Any]:
    """Returns a JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(cls: type, values: dict[str, Any], *, origin: str = "config") -> Any:
    """Builds a config dataclass from a dict, refusing unknown keys and wrong types.

    Args:
        cls: one of the config dataclasses.
        values: key → value, e.g. parsed from TOML or JSON.
        origin: names the file or place the values came from, for the error message.

    Raises:
        OptionError: an unknown key or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise OptionError(f"{origin}: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        default = getattr(cls(), key)
        kwargs[key] = _coerce(value, default, f"{origin}: key '{key}'")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    # Type checks follow the default's type, so the dataclass stays the only place types live.
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise OptionError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(default, dict):
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return dict(value)
    raise OptionError(f"{where} must be of type {type(default).__name__}, got {value!r}")
