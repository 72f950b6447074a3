"""Orchestration of the headstart workflows: input path, model chain, stages, runs, reports and the CLI.

Installed as ``headstart.pipeline``; it imports ``headstart.features``, never the reverse.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("headstart")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
