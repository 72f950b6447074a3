"""A quiet TensorFlow start-up for the command line (and the Python API), and quiet TFLite calls.

TensorFlow 2.21 writes its start-up lines (oneDNN, CUDA stubs, CPU features, ``cuInit``) to file
descriptor 2 before absl logging is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them. The
CLI installs a one-shot import hook instead: whenever the first ``import tensorflow`` happens (from
keras, tensorflow-datasets or our own modules), it runs with descriptor 2 pointed at a temporary
file, together with device discovery (``tf.config.list_physical_devices``, which logs ``cuInit``
without creating the runtime, so virtual devices can still be configured later). Afterwards the
captured lines that are TensorFlow's own log format are dropped and everything else — a Python
warning, a traceback — is written back to stderr. ``--verbose`` leaves the hook out.
``native_lines_dropped`` does the same around TensorFlow Lite's conversions and interpreter loads,
which print their notices on every call.

No TensorFlow here: the point is to run before it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Iterator

# absl/TF C++ log lines ("I0000 00:00:1796156749.942337   11256 port.cc:153] …"), the banner absl
# prints before it is initialised, and the second line of the CPU-feature notice.
_TF_LOG_LINE = re.compile(rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
                          rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                          rb"|To enable the following instructions: )")


#: What TensorFlow Lite's converter and interpreter print straight to descriptor 2 on every conversion or
#: model load ("fully_quantize: 0, inference_type: 6, …", the XNNPACK delegate's INFO line).
_TFLITE_LINE = re.compile(rb"^(?:fully_quantize: \d|INFO: Created TensorFlow Lite XNNPACK delegate)")


def quiet_tensorflow_startup() -> None:
    """Makes the first ``import tensorflow`` of this process silent on stderr (see the module docstring).

    A no-op when TensorFlow is already imported or the hook is already installed.
    """
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


def show_tensorflow_startup() -> None:
    """Removes the hook again (``--verbose`` of a command): TensorFlow's start-up lines are shown."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader; then removes itself."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        show_tensorflow_startup()  # one shot, and no recursion into this finder
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader with descriptor 2 captured and filtered; hands the module its real loader."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _tensorflow_lines_dropped():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # device discovery logs too (cuInit on a CPU machine)
        # TensorFlow's Python logger speaks to TensorFlow's developers ("5 out of the last 15 calls to
        # <function …> triggered tf.function retracing": the prediction loop's smaller last batch, in the
        # middle of finetune's table); our own warnings go through the reporter, --verbose shows these.
        module.get_logger().setLevel("ERROR")

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, …
        return getattr(self._loader, name)


@contextlib.contextmanager
def native_lines_dropped() -> Iterator[None]:
    """Runs the block with descriptor 2 captured, dropping TensorFlow's and TensorFlow Lite's own log lines
    (a TFLite conversion, a LiteRT interpreter's first allocation); anything else is written back.
    ``--verbose`` (``TF_CPP_MIN_LOG_LEVEL=0``) keeps everything."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    with _tensorflow_lines_dropped(also=_TFLITE_LINE):
        yield


@contextlib.contextmanager
def _tensorflow_lines_dropped(also: re.Pattern | None = None) -> Iterator[None]:
    """Points descriptor 2 at a temporary file; on exit writes back what is not a TensorFlow log line
    (nor matches ``also``)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2 (embedded, closed): nothing to hide
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not _TF_LOG_LINE.match(line) and not (also is not None and also.match(line))]
            if kept:
                os.write(2, b"".join(kept))
