"""Scale-out for every training stage: tf.distribute strategies, mixed precision, chief-only writes.

Everything here is TensorFlow's own machinery — ``MirroredStrategy`` over the local devices,
``MultiWorkerMirroredStrategy`` configured by the standard ``TF_CONFIG`` — plus the few decisions a
stage has to make around it:

* **Which strategy** (``resolve_strategy``). ``auto`` picks ``multiworker`` when ``TF_CONFIG`` names
  more than one task, else ``mirrored`` when more than one GPU is visible, else ``default``.
* **Batch and learning rate** (``batch_policy``). The batch size the user sets is the *global*
  batch: each step splits it across the replicas (per replica ``B / N``). Each replica divides its
  summed loss by the global batch's row count and the replicas' gradients are summed, which is the
  gradient of the global batch's mean loss — the single-device step — so the learning rate stays.
* **The training loop** lives in ``headstart.pipeline.distribute.loop``: Keras 3's ``train_on_batch`` runs the
  un-split batch on every replica, and its ``fit`` fails under ``MultiWorkerMirroredStrategy``.
* **Only the chief writes** (``chief_output_dir``). Other workers run the same code — saving may
  need every worker — but into a temporary directory that is removed afterwards.
* **Precision** (``precision``). ``mixed_float16`` on GPU (Keras wraps the optimizer in a
  ``LossScaleOptimizer``), ``mixed_bfloat16`` on CPU; the head keeps its last layer float32.

TensorFlow is imported inside functions: ``read_tf_config`` and the option checks stay cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from headstart.pipeline.config import STRATEGIES
from headstart.features.errors import Arg
from headstart.features.reporter import Reporter
from headstart.pipeline.errors import OptionError

#: Split the CPU into this many logical devices before TensorFlow starts (try ``mirrored`` on a
#: machine without GPUs, as the tests and benchmarks/scaling.py do).
LOGICAL_CPUS_ENV = "HEADSTART_LOGICAL_CPUS"
LR_POLICY = "lr unchanged (it applies to the global batch's mean loss)"
#: Strategies made in this process, by kind and devices. Reused, never made twice: collective ops
#: are set up once per process for multiworker, and two MirroredStrategy objects over the same
#: devices hand out the same collective keys (a second one's all-reduce then meets the first one's
#: tensor shapes). So a second stage in one process (``headstart run``) reuses the first's.
_STRATEGIES: dict[tuple, Any] = {}


@dataclass(frozen=True)
class StrategyInfo:
    """What ``resolve_strategy`` chose.

    Attributes:
        strategy: the strategy chosen: "default", "mirrored" or "multiworker".
        requested: the ``--strategy`` value asked for (may be "auto").
        replicas: ``num_replicas_in_sync``.
        workers: training tasks in the cluster (1 without ``multiworker``).
        worker_index: "type:index" of this task under ``multiworker``, else None.
        is_chief: whether this process writes the outputs.
        devices: this task's devices.
        batch_policy: how a batch is split, for logs and run.json.
        lr_policy: what happens to the learning rate, for logs and run.json.
    """

    strategy: str
    requested: str
    replicas: int
    workers: int
    worker_index: str | None
    is_chief: bool
    devices: list[str]
    batch_policy: str
    lr_policy: str


@dataclass
class StageStrategy:
    """A training stage's strategy, set up: ``set_up_strategy``'s result.

    Attributes:
        strategy: the ``tf.distribute`` strategy (create variables in ``strategy.scope()``).
        info: what was chosen.
        distribute: run.json's "distribute" section: ``batch_policy`` of the stage's batch size plus
            requested, worker_index, is_chief and devices.
    """

    strategy: Any
    info: StrategyInfo
    distribute: dict[str, Any] = field(default_factory=dict)

    @property
    def replicas(self) -> int:
        return self.info.replicas


def set_up_strategy(name: str, batch_size: int, *, reporter: Reporter,
                    other_batches: dict[str, int] | None = None) -> StageStrategy:
    """The strategy set-up every training stage starts with: resolve, check batches, report one line.

    Call it before any other TensorFlow work in the process (see ``resolve_strategy``).

    Args:
        name: ``--strategy``.
        batch_size: the stage's global ``--batch-size``.
        reporter: gets the strategy line (none for a plain one-device run).
        other_batches: further global batch sizes the stage uses, by field (e.g.
            ``{"head_batch_size": 64}``); each is checked against the replica count.

    Raises:
        OptionError: as ``resolve_strategy``, or a batch smaller than the number of replicas.
    """
    strategy, info = resolve_strategy(name)
    distribute = {**batch_policy(info, batch_size),
                  **{k: getattr(info, k) for k in ("requested", "worker_index", "is_chief", "devices")}}
    for option, size in (other_batches or {}).items():
        batch_policy(info, size, option=option)
    line = strategy_line(info, distribute)
    if line:
        reporter.line(line)
    return StageStrategy(strategy=strategy, info=info, distribute=distribute)


def read_tf_config(environ: dict[str, str] | None = None) -> dict | None:
    """Parses and checks ``TF_CONFIG``; None when it is unset or empty.

    Returns:
        ``{"cluster": {type: [host:port, ...]}, "task": {"type", "index"}}``.

    Raises:
        OptionError: not JSON, no cluster, or a task that is not in the cluster.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise OptionError(f"TF_CONFIG is not valid JSON ({exc})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not any(isinstance(v, list) and v for v in cluster.values()):
        raise OptionError('TF_CONFIG has no "cluster" with host:port lists, e.g. '
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                          '"task": {"type": "worker", "index": 0}}')
    if not isinstance(task, dict) or task.get("type") not in cluster \
            or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise OptionError(f"TF_CONFIG task {task!r} is not one of its cluster's tasks "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())})")
    return config


def _tasks(config: dict | None) -> int:
    # Parameter servers and evaluators do not train under MultiWorkerMirroredStrategy.
    if not config:
        return 0
    return sum(len(config["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def config_is_chief() -> bool:
    """Whether this process is the chief, from ``TF_CONFIG`` alone (no TensorFlow): True without one.

    The chief writes ``--out`` and claims it before TensorFlow starts; the other workers of a
    cluster write throw-away copies (``chief_output_dir``).
    """
    return _config_is_chief(read_tf_config())


def _config_is_chief(config: dict | None) -> bool:
    # TF's rule: the "chief" task if the cluster has one, else worker 0.
    if not config:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def configure_logical_cpus(count: int) -> None:
    """Splits the first CPU into ``count`` logical devices (for ``mirrored`` without GPUs).

    Raises:
        OptionError: TensorFlow has already set up its devices in this process.
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise OptionError(f"{LOGICAL_CPUS_ENV}={count}: TensorFlow's devices are already set up in "
                              f"this process; set it before anything runs") from None


def resolve_strategy(name: str = "auto") -> tuple[Any, StrategyInfo]:
    """Creates the ``tf.distribute`` strategy for ``--strategy NAME``.

    Call it before any other TensorFlow work in the process: ``MultiWorkerMirroredStrategy`` and
    logical CPU devices can only be set up at start-up.

    Args:
        name: "auto", "default", "mirrored" or "multiworker".

    Returns:
        (strategy, StrategyInfo).

    Raises:
        OptionError: unknown name, ``multiworker`` without ``TF_CONFIG``, a bad ``TF_CONFIG``, or
            a strategy asked for after TensorFlow started.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise OptionError.invalid("strategy", name, f"must be one of {', '.join(STRATEGIES)}", shown=f"'{name}'")
    tf_config = read_tf_config()
    _apply_logical_cpus()
    gpus = tf.config.list_physical_devices("GPU")
    chosen = name
    if name == "auto":
        chosen = "multiworker" if _tasks(tf_config) > 1 else "mirrored" if len(gpus) > 1 else "default"
    if chosen == "multiworker":
        strategy = _multiworker_strategy(tf_config)
        task = tf_config["task"]
        workers, index, chief = _tasks(tf_config), f"{task['type']}:{task['index']}", _config_is_chief(tf_config)
    else:
        strategy = _mirrored_strategy(bool(gpus)) if chosen == "mirrored" else tf.distribute.get_strategy()
        workers, index, chief = 1, None, True
    replicas = int(strategy.num_replicas_in_sync)
    if chosen == "default":  # the default strategy has no device list; TF places ops on this one
        local = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["/device:CPU:0"]
    else:
        local = list(strategy.extended.worker_devices)
    info = StrategyInfo(
        strategy=chosen, requested=name, replicas=replicas, workers=workers, worker_index=index,
        is_chief=chief, devices=[str(d) for d in local],
        batch_policy=f"global batch split across {replicas} replica(s) ({workers} worker(s))",
        lr_policy=LR_POLICY)
    return strategy, info


def _apply_logical_cpus() -> None:
    logical = os.environ.get(LOGICAL_CPUS_ENV, "").strip()
    if logical:
        if not logical.isdigit() or int(logical) < 1:
            raise OptionError(f"{LOGICAL_CPUS_ENV} must be a whole number ≥ 1, got '{logical}'")
        configure_logical_cpus(int(logical))


def _multiworker_strategy(tf_config: dict | None) -> Any:
    import tensorflow as tf

    if tf_config is None:
        raise OptionError(Arg("strategy", "multiworker"), " needs TF_CONFIG naming the cluster and this task, e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                          '"task": {"type": "worker", "index": 0}}')
    if ("multiworker",) not in _STRATEGIES:
        try:
            _STRATEGIES[("multiworker",)] = tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:
            raise OptionError(Arg("strategy", "multiworker"), " must be set up before TensorFlow starts "
                              f"({exc})") from None
    return _STRATEGIES[("multiworker",)]


def _mirrored_strategy(have_gpus: bool) -> Any:
    import tensorflow as tf

    # With GPUs, MirroredStrategy takes them all; without, every logical CPU device, so a split
    # CPU gives replicas (its own default would be CPU:0 alone).
    devices = None if have_gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
    key = ("mirrored", tuple(devices or ()))
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(devices)
    return _STRATEGIES[key]


def batch_policy(info: StrategyInfo, global_batch_size: int, *, option: str = "batch_size") -> dict[str, Any]:
    """The per-replica batch for a global batch under ``info``'s strategy, for logs and run.json.

    Raises:
        OptionError: a global batch smaller than the number of replicas (some would get nothing).
    """
    replicas = int(info.replicas)
    if global_batch_size < replicas:
        raise OptionError(Arg(option, global_batch_size), f" is smaller than the {replicas} replicas; "
                          f"give at least {replicas}")
    per = global_batch_size / replicas
    text = (f"global batch {global_batch_size} = {replicas} × {int(per)}" if per.is_integer() else
            f"global batch {global_batch_size} split over {replicas} replicas as evenly as possible "
            f"({math.floor(per)}–{math.ceil(per)} each)")
    return {"strategy": info.strategy, "replicas": replicas, "workers": info.workers,
            "global_batch_size": int(global_batch_size), "per_replica_batch_size": math.ceil(per),
            "batch_policy": text, "lr_policy": info.lr_policy}


def strategy_line(info: StrategyInfo, policy: dict[str, Any]) -> str | None:
    """The log line naming the strategy, batch split and lr policy; None for a plain one-device run.

    Args:
        info: from ``resolve_strategy``. policy: from ``batch_policy``.
    """
    if info.strategy == "default" and info.replicas == 1:
        return None
    return (f"strategy {info.strategy}: {info.replicas} replica(s), {info.workers} worker(s); "
            f"{policy['batch_policy']}; {info.lr_policy}")


def is_chief(strategy: Any = None) -> bool:
    """Whether this process writes outputs: always, except a non-chief ``multiworker`` task.

    Args:
        strategy: a strategy from ``resolve_strategy``; None means the one in scope.
    """
    import tensorflow as tf

    strategy = strategy if strategy is not None else tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextlib.contextmanager
def chief_output_dir(path: str | os.PathLike, chief: bool) -> Iterator[Path]:
    """Yields where this process writes: ``path`` on the chief, a throw-away directory elsewhere.

    Every worker runs the same writing code (a save may take part in collectives), so the other
    workers write into a fresh temporary directory, removed on exit. Usage::

        with chief_output_dir(config.out, info.is_chief) as out:
            RunDir(out).write_outputs(model, ...)
            ...
    """
    if chief:
        yield Path(path)
        return
    scratch = Path(tempfile.mkdtemp(prefix="headstart-worker-"))
    try:
        yield scratch / Path(path).name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def precision_policy_name(mixed: bool) -> str:
    """"mixed_float16" with a GPU, "mixed_bfloat16" without (CPUs have no fast float16), or "float32"."""
    if not mixed:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def apply_precision(mixed: bool) -> str:
    """Sets Keras's global dtype policy for the layers built next; returns its name.

    The policy is process-wide: prefer ``precision()``, which puts the previous one back.
    """
    import keras

    name = precision_policy_name(mixed)
    keras.mixed_precision.set_global_policy(name)
    return name


@contextlib.contextmanager
def precision(mixed: bool) -> Iterator[str]:
    """Applies ``apply_precision(mixed)`` for the ``with`` block and restores the previous policy.

    Layers keep the policy they were built with, so build (and compile) the model inside the block.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    name = apply_precision(mixed)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)
