"""Orchestration of the headstart workflows: input path, model chain, stages, runs, reports and the CLI.

Installed as ``headstart.pipeline``; it imports ``headstart.features``, never the reverse.

The Python API is the functions the CLI calls, importable from here::

    from headstart.pipeline import ExtractConfig, HeadConfig, FinetuneConfig, extract_features, train_head, finetune, evaluate

Every name loads its module on first use (module ``__getattr__``): ``headstart --help`` imports
this package and must not start TensorFlow. The functions come through ``headstart.pipeline.api``,
whose errors name Python arguments ("epochs must be at least 1") where the CLI's name flags.
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("headstart")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Public name → "module:attribute" it stands for.
_API = {
    # The stages, as the CLI's commands call them, with errors that name Python arguments
    # (headstart.pipeline.api).
    **{name: f"headstart.pipeline.api:{name}" for name in (
        "extract_features", "merge_features", "train_head", "finetune", "evaluate", "predict", "export",
        "inspect_path", "load_run_config", "run_pipeline")},
    # Their configs: the one source of defaults.
    "ExtractConfig": "headstart.pipeline.config:ExtractConfig",
    "HeadConfig": "headstart.pipeline.config:HeadConfig",
    "FinetuneConfig": "headstart.pipeline.config:FinetuneConfig",
    "ExportConfig": "headstart.pipeline.config:ExportConfig",
    "RunConfig": "headstart.pipeline.config:RunConfig",
    # What they raise on bad input (each with an exit_code).
    "HeadstartError": "headstart.pipeline.errors:HeadstartError",
    "OptionError": "headstart.pipeline.errors:OptionError",
    "DataError": "headstart.pipeline.errors:DataError",
    "RunDirError": "headstart.pipeline.errors:RunDirError",
    "ParityError": "headstart.pipeline.errors:ParityError",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(_import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *_API})
