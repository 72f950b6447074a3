"""The flags of ``headstart run``: each points at the option facts of the fields it sets.

``cli_options.run_options`` makes them click options; ``run.toml_config.resolve_run_config`` merges
their values over a ``--config`` file. Everything not here is set via ``--config``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headstart.pipeline.options.facts import fact, field_default, field_kind


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
    _o("--recipe", "top.recipe"),
    _o("--budget", "top.budget"),
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
    _o("--head-epochs", "head.epochs", "Most epochs of the head on cached features (0: until early stopping)."),
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
    _o("--calibrate", "finetune.calibrate"),
    _o("--seed", "extract.seed,head.seed,finetune.seed", "Seed of every stage."),
    _o("--strategy", "head.strategy,finetune.strategy"),
    _o("--mixed-precision/--no-mixed-precision", "head.mixed_precision,finetune.mixed_precision"),
    _o("--jit-compile/--no-jit-compile", "head.jit_compile,finetune.jit_compile"),
    _o("--tensorboard/--no-tensorboard", "top.tensorboard"),
    _o("--diagnose/--no-diagnose", "top.diagnose"),
    _o("--exclude", "head.exclude,finetune.exclude"),
    _o("--class-weight", "head.class_weight,finetune.class_weight"),
    _o("--monitor", "head.monitor,finetune.monitor"),
)


def option_default(option: RunOption) -> Any:
    """The default a flag falls back to (that of its first target), for help texts."""
    return field_default(*option.targets[0])
