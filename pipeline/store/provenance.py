"""What every run file ends with: the versions that shape its numbers, when it was made, and how.

``stamp_record`` closes run.json, summary.json and diagnose's report.json alike; ``precision_record``
is run.json's "precision" section.
"""

from __future__ import annotations

import platform
import time
from typing import Any, Mapping, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a run's numbers."""
    import h5py
    import keras
    import matplotlib
    import tensorflow as tf

    from headstart.pipeline import __version__

    return {
        "headstart": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def utc_timestamp() -> str:
    """Now in UTC as run files record it, e.g. "2026-12-01T20:25:02Z"."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def precision_record(model: keras.Model, policy: str) -> dict[str, Any]:
    """run.json's "precision" section: the dtype policy the model was built under, what dtype its
    logits come out in, and whether its steps were compiled with XLA."""
    return {"policy": policy, "logits_dtype": str(model.outputs[0].dtype), "jit_compile": bool(model.jit_compile)}


def stamp_record(record: Mapping[str, Any], *, timings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Closes a run record the way every run file ends: ``record``, then "versions", then "timings"
    (when given), then "created" (UTC, now).

    Args:
        record: the run's own sections, in the order they should appear.
        timings: the run's timing section.
    """
    stamped = {**record, "versions": library_versions()}
    if timings is not None:
        stamped["timings"] = dict(timings)
    stamped["created"] = utc_timestamp()
    return stamped
