"""The Python API's functions: the stage functions the CLI calls, with errors that name Python arguments.

A domain error names each setting by its field (``Arg("epochs")``, ``features/errors.py``), and each
audience renders it: the CLI as a flag (``--epochs must be at least 1, got 0``; ``pass --weights
PATH``), Python as the argument (``epochs must be at least 1, got 0``; ``pass weights=PATH``).
``str(exc)`` already reads as Python does; ``api_function`` wraps a stage function so that an error
leaving it is rendered with ``options.naming.ARGUMENT_NAMES`` (``run_pipeline``'s dotted fields,
"head.epochs"), keeping its type, its facts (``field``, ``value``, ``rule``) and its traceback.
``headstart.pipeline`` hands these wrappers out by name; the CLI calls the stage functions themselves.

The wrapper is also where the documented ``log=`` keyword (a function given each line, ``log=print``)
becomes the stage function's ``reporter=`` (``features.reporter.as_reporter``): the library itself
only takes a reporter.

Resolving any of them also makes TensorFlow's start-up quiet for the rest of the process, as the
CLI's is (``startup.quiet_tensorflow_startup``), unless TensorFlow is already imported.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

from headstart.features.errors import Fault
from headstart.features.reporter import as_reporter
from headstart.pipeline.options.naming import ARGUMENT_NAMES
from headstart.pipeline.startup import quiet_tensorflow_startup


def api_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose domain errors name Python arguments and, when ``fn`` takes a ``reporter``, which
    also takes ``log=`` (see the module docstring)."""
    takes_reporter = "reporter" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if takes_reporter and "log" in kwargs:
            kwargs["reporter"] = as_reporter(kwargs.get("reporter"), kwargs.pop("log"))
        try:
            return fn(*args, **kwargs)
        except Fault as exc:
            exc.args = (exc.render(ARGUMENT_NAMES),)
            raise

    return call


def _quiet() -> None:
    # TensorFlow's C++ start-up lines would otherwise greet every API user (the CLI hides them too);
    # a TF_CPP_MIN_LOG_LEVEL the user set is kept.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_tensorflow_startup()


_quiet()

#: The API's functions: name → (module, attribute).
FUNCTIONS: dict[str, tuple[str, str]] = {
    "extract_features": ("headstart.pipeline.commands.extraction", "extract_features"),
    "merge_features": ("headstart.pipeline.commands.merging", "merge_features"),
    "train_head": ("headstart.pipeline.commands.head_training", "train_head"),
    "finetune": ("headstart.pipeline.finetuning.finetuning", "finetune"),
    "evaluate": ("headstart.pipeline.commands.evaluation", "evaluate_model"),
    "predict": ("headstart.pipeline.commands.prediction", "predict_images"),
    "export": ("headstart.pipeline.commands.exporting", "export_model_dir"),
    "inspect_path": ("headstart.pipeline.report.inspection", "inspect_path"),
    "load_run_config": ("headstart.pipeline.run.runner", "load_run_config"),
    "run_pipeline": ("headstart.pipeline.run.runner", "run_pipeline"),
}


def __getattr__(name: str) -> Callable[..., Any]:
    from importlib import import_module

    if name not in FUNCTIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = FUNCTIONS[name]
    value = api_function(getattr(import_module(module), attribute))
    globals()[name] = value
    return value
