"""The Python API's functions: the stage functions the CLI calls, with errors that name Python arguments.

The library's messages name an option as the command line spells it (``--epochs must be at least 1,
got 0``; ``pass --weights PATH``), because that is what most users type. Called from Python, the same
error names the argument instead (``epochs must be at least 1, got 0``; ``pass weights=PATH``):
``api_function`` wraps a stage function so that a ``HeadstartError`` or ``FeaturesError`` leaving it
has its flags renamed, through the option table, to the config field they set. The exception keeps its
type and traceback. ``headstart.pipeline`` hands these wrappers out by name; the CLI calls the stage
functions themselves.

Resolving any of them also makes TensorFlow's start-up quiet for the rest of the process, as the
CLI's is (``startup.quiet_tensorflow_startup``), unless TensorFlow is already imported.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any, Callable

from headstart.features.errors import FeaturesError
from headstart.pipeline.errors import HeadstartError
from headstart.pipeline.options.facts import FACTS, flag_of
from headstart.pipeline.options.run_flags import RUN_OPTIONS
from headstart.pipeline.startup import quiet_tensorflow_startup

#: A flag, and the placeholder after it when there is one ("--weights PATH").
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z_]*)\b)?")


def argument_names(section: str | None) -> dict[str, str]:
    """Flag → the Python argument it sets, for the functions of ``section``.

    "run" (``run_pipeline``): ``headstart run``'s flags → the ``RunConfig`` field they set
    ("--head-epochs" → "head.epochs"); any other section: its fields' flags → the field names
    ("--split" → "split_specs"). A flag not in the table is renamed by spelling alone.
    """
    if section == "run":
        return {option.flag.split("/")[0]: ".".join(option.targets[0]) if option.targets[0][0] != "top"
                else option.targets[0][1] for option in RUN_OPTIONS}
    return {flag_of(section, name): name for name in FACTS.get(section or "", {})}


def rename_flags(message: str, names: dict[str, str]) -> str:
    """``message`` with every ``--flag`` named as its Python argument (``--flag PLACEHOLDER`` →
    ``argument=PLACEHOLDER``, ``--no-flag`` → ``flag=False``)."""

    def renamed(match: re.Match) -> str:
        flag, placeholder = f"--{match.group(1)}", match.group(2)
        if flag not in names and flag.startswith("--no-") and f"--{flag[5:]}" in names:
            return f"{names['--' + flag[5:]]}=False"
        name = names.get(flag) or match.group(1).replace("-", "_")
        return f"{name}={placeholder}" if placeholder else name

    return _FLAG.sub(renamed, message)


def api_function(fn: Callable[..., Any], section: str | None) -> Callable[..., Any]:
    """``fn`` whose domain errors name Python arguments (see the module docstring)."""
    names = argument_names(section)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (HeadstartError, FeaturesError) as exc:
            if exc.args and isinstance(exc.args[0], str):
                exc.args = (rename_flags(exc.args[0], names), *exc.args[1:])
            raise

    return call


def _quiet() -> None:
    # TensorFlow's C++ start-up lines would otherwise greet every API user (the CLI hides them too);
    # a TF_CPP_MIN_LOG_LEVEL the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_startup()


_quiet()

#: The API's functions: name → (module, attribute, the option-table section whose flags its errors use).
FUNCTIONS: dict[str, tuple[str, str, str | None]] = {
    "extract_features": ("headstart.pipeline.stages.extraction", "extract_features", "extract"),
    "merge_features": ("headstart.pipeline.stages.merging", "merge_features", None),
    "train_head": ("headstart.pipeline.stages.head_training", "train_head", "head"),
    "finetune": ("headstart.pipeline.stages.finetuning", "finetune", "finetune"),
    "evaluate": ("headstart.pipeline.stages.evaluation", "evaluate_model", None),
    "predict": ("headstart.pipeline.stages.prediction", "predict_images", None),
    "export": ("headstart.pipeline.stages.exporting", "export_model_dir", "export"),
    "inspect_path": ("headstart.pipeline.report.inspection", "inspect_path", None),
    "load_run_config": ("headstart.pipeline.run.runner", "load_run_config", None),
    "run_pipeline": ("headstart.pipeline.run.runner", "run_pipeline", "run"),
}


def __getattr__(name: str) -> Callable[..., Any]:
    from importlib import import_module

    if name not in FUNCTIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute, section = FUNCTIONS[name]
    value = api_function(getattr(import_module(module), attribute), section)
    globals()[name] = value
    return value
