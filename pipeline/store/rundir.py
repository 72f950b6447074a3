"""``RunDir``: a trained model's run directory, and the only code that reads or writes its files.

``train-head`` (and the sweep's ``best/``) and ``finetune`` write one each::

    run.json         resolved config, provenance, class names, task, the head / backbone recipe,
                     versions and timings; written last, so its presence marks a finished run
    metrics.json     validation and test measures (finetune: parity, stage gate, exports)
    thresholds.json  a multi-label model's per-class thresholds (also in run.json)
    history.csv, curves.png   per-epoch history and its plot; head.keras | model.keras (safe mode)
    backup/          while a finetune runs: progress.json and each stage's per-epoch backup

Every reader goes through the typed accessors (``class_names``, ``task``, ``thresholds``,
``cache_config``, ``backbone``, ``image_size``, ``source_spec``, …), which check what they read: a
damaged or foreign directory is one ``RunDirError`` naming the file and the field. Every writer
goes through ``write_outputs`` (atomic files, run.json last). The ``--out`` claim is
``out_dir.claim_run_dir``; a whole ``headstart run`` directory is ``run_layout.RunLayout``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from headstart.features.bounded_parse import loads_json
from headstart.features.errors import Arg
from headstart.features.regular_file import not_regular_reason
from headstart.pipeline.errors import RunDirError
from headstart.pipeline.store.run_layout import final_model_dir, stage_dir

RUN_JSON, METRICS_JSON, THRESHOLDS_JSON, HISTORY_CSV, CURVES_PNG = (
    "run.json", "metrics.json", "thresholds.json", "history.csv", "curves.png")
PROGRESS_JSON = "progress.json"
#: The model file of each kind of run.
MODEL_FILES = {"head": "head.keras", "finetune": "model.keras"}
#: The command that writes each kind, for messages.
COMMANDS = {"head": "train-head", "finetune": "finetune"}
TASKS = ("single_label", "multi_label")


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and len(value) >= 1 and all(isinstance(v, str) for v in value)


class RunDir:
    """A ``train-head`` or ``finetune`` run directory.

    Args:
        path: the directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._record: dict | None = None

    # ── opening ──────────────────────────────────────────────────────────────────────────────

    @classmethod
    def open(cls, path: str | os.PathLike, *, kind: str | None = None, option: str | None = None,
             recipe: bool = False) -> "RunDir":
        """A finished run directory, checked: run.json readable, of ``kind``, its fields sound.

        Args:
            path: the directory.
            kind: "head" or "finetune"; None takes either.
            option: the option that named it (e.g. "--head"), for messages.
            recipe: also check the chain (a head run that is to be rebuilt).

        Raises:
            RunDirError: missing, not a directory, unfinished (no run.json), another kind, a
                damaged field, or no model file.
        """
        run = cls(stage_dir(path, kind))  # a `headstart run` directory: its chosen head or final model
        where = (f"{option} " if option else "") + str(path) + (f" ({run.path})" if run.path != Path(path) else "")
        wanted = COMMANDS.get(kind or "", "train-head or finetune")
        if not run.path.is_dir():
            raise RunDirError(f"{where}: no such run directory (give a {wanted} ", Arg("out"), " directory)")
        if not run.complete:
            what = ("incomplete (no run.json; did it finish?)" if any(run.path.glob("*.keras"))
                    else f"not a {wanted} run directory (no run.json)")
            raise RunDirError(f"{where}: {what}")
        found = run.kind
        if found not in MODEL_FILES or (kind and found != kind):
            raise RunDirError(f"{where}: a {found or 'foreign'!r} run directory, not a {wanted} run")
        run.check(recipe=recipe)
        if not run.model_path.is_file():
            raise RunDirError(f"{where}: {run.model_path.name} is missing")
        return run

    @classmethod
    def beside(cls, path: str | os.PathLike) -> "RunDir | None":
        """The run directory a model file, an export or a run directory holding model.keras belongs
        to: the directory itself, else the file's folder; None unless it holds run.json or
        thresholds.json (a model copied with its thresholds keeps them)."""
        path = Path(path)  # a `headstart run` directory, or its model.keras: its finetune/ (RunLayout)
        folder = final_model_dir(path) or (
            path if path.is_dir() and (path / MODEL_FILES["finetune"]).is_file() else path.parent)
        run = cls(folder)
        return run if (run.run_json.is_file() or run.thresholds_json.is_file()) else None

    def check(self, *, recipe: bool = False) -> None:
        """Reads every field its kind needs, so a damaged one fails now, in one line.

        A head run's chain is read only with ``recipe`` (before it is rebuilt): caches made by other
        tools may train heads without a backbone recipe.

        Raises:
            RunDirError: naming the file and the field.
        """
        needed = ["class_names", "task", "head_architecture" if self.kind == "head" else "chain"]
        for name in needed + (["chain"] if recipe else []):
            getattr(self, name)  # each accessor checks what it reads

    # ── files ────────────────────────────────────────────────────────────────────────────────

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def thresholds_json(self) -> Path:
        return self.path / THRESHOLDS_JSON

    @property
    def complete(self) -> bool:
        """Whether run.json is there: the run finished."""
        return self.run_json.is_file()

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILES.get(self.kind if self.complete else "finetune", MODEL_FILES["finetune"])

    @property
    def backup_dir(self) -> Path:
        """Where an unfinished finetune keeps its resume record and per-stage backups."""
        return self.path / "backup"

    # ── run.json, checked field by field ─────────────────────────────────────────────────────

    @property
    def record(self) -> dict:
        """run.json as read (a dict)."""
        if self._record is None:
            self._record = self._read_json(self.run_json)
        return self._record

    def _read_json(self, path: Path) -> dict:
        try:
            data = loads_json(path.read_text(encoding="utf-8"))  # nesting checked: no RecursionError
        except FileNotFoundError:
            raise RunDirError(f"{path}: no such file") from None
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} is damaged: not readable JSON ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path} is damaged: not a JSON object")
        return data

    def _damaged(self, field: str, expected: str, value: Any, file: Path | None = None) -> RunDirError:
        command = COMMANDS.get(str(self.record.get("kind")), "the command that wrote it")
        return RunDirError(f"{file or self.run_json} is damaged: '{field}' should be {expected}, not "
                           f"{json.dumps(value)[:80]}; run {command} again")

    def _field(self, field: str, ok: Callable[[Any], bool], expected: str, default: Any = ...) -> Any:
        path = field.split(".")
        value: Any = self.record
        for part in path:
            if not isinstance(value, dict) or part not in value:
                if default is not ...:
                    return default
                raise self._damaged(field, expected, None)
            value = value[part]
        if not ok(value):
            raise self._damaged(field, expected, value)
        return value

    @property
    def kind(self) -> str | None:
        """"head" (train-head, a sweep's best) or "finetune"; None for anything else."""
        kind = self.record.get("kind")
        return kind if kind in MODEL_FILES else None

    @property
    def class_names(self) -> list[str]:
        return list(self._field("class_names", _is_names, "a list of class names"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def task(self) -> str:
        """"single_label" or "multi_label" (runs from before multi-label tasks: single-label)."""
        return self._field("task", lambda v: v in TASKS, " or ".join(TASKS), "single_label")

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    @property
    def config(self) -> dict:
        """The resolved options of the run ("config")."""
        return self._field("config", lambda v: isinstance(v, dict), "a table of options", {})

    @property
    def cache(self) -> dict:
        """A head run's "cache" section: path, fingerprint, config, provenance, splits."""
        return self._field("cache", lambda v: isinstance(v, dict) and isinstance(v.get("config"), dict),
                           "a table with the cache's path and config")

    @property
    def cache_config(self) -> dict:
        """The config of the cache a head run trained on (backbone, weights, image size, pooling…)."""
        return self.cache["config"]

    @property
    def chain(self) -> Any:
        """The model chain (``features.chain_config.ChainConfig``): run.json's "chain", or for a run
        from before it, built from its old keys (``store.chain_record.chain_from_record``)."""
        from headstart.pipeline.store.chain_record import chain_from_record

        return chain_from_record(self.record, self._damaged)

    @property
    def image_size(self) -> int:
        return self.chain.image_size

    @property
    def head_architecture(self) -> dict:
        """A head run's ``build_head`` keyword arguments ("head")."""
        from headstart.pipeline.store.chain_record import head_from_record

        head = head_from_record(self._field("head", lambda v: isinstance(v, dict), "a table of the head's settings"))
        return {**dataclasses.asdict(head), "multi_label": self.multi_label}

    @property
    def source_record(self) -> dict:
        """How the run read its SOURCE, as recorded: finetune's "source" (with "path"), a head run's
        cache's ``command_config``; {} when it recorded none."""
        if self.kind == "finetune":
            return dict(self._field("source", lambda v: isinstance(v, dict), "a table", {}))
        if self.kind == "head":
            return dict((self.cache.get("provenance") or {}).get("command_config") or {})
        return {}

    def source_spec(self, **given: Any) -> Any:
        """How the run read its SOURCE (a ``SourceSpec``): finetune's "source", or a head run's cache
        provenance; ``given`` (source, split_specs, label_options) as ``SourceSpec.from_record``."""
        from headstart.pipeline.data.source_spec import SourceSpec

        return SourceSpec.from_record(self.source_record, **given)

    @property
    def thresholds_record(self) -> dict | None:
        """A multi-label model's thresholds record: run.json's, else thresholds.json beside the model."""
        record = self.record.get("thresholds") if self.complete else None
        if record is None and self.thresholds_json.is_file():
            record = self._read_json(self.thresholds_json)
        if record is not None and not isinstance(record.get("thresholds", {}), dict):
            raise self._damaged("thresholds", "a table of class → threshold", record.get("thresholds"))
        return record

    def thresholds(self, class_names: list[str]) -> np.ndarray | None:
        """float64 (C,) per-class thresholds of a multi-label model, in ``class_names`` order; None
        for a single-label one."""
        from headstart.pipeline.store.chain_record import thresholds_from_record

        record = self.thresholds_record
        task = self.task if self.complete else (record or {}).get("task")
        return thresholds_from_record(record, class_names) if task == "multi_label" else None

    # ── the other files ──────────────────────────────────────────────────────────────────────

    def metrics(self) -> dict:
        """metrics.json ({} when it is missing)."""
        path = self.path / METRICS_JSON
        return self._read_json(path) if path.is_file() else {}

    def history(self) -> dict[str, list[float]]:
        """history.csv: metric → one value per epoch ({} when missing)."""
        from headstart.pipeline.store.files import read_history

        return read_history(self.path / HISTORY_CSV)

    def load_model(self) -> Any:
        """The run's model, loaded in Keras' safe mode (see ``load_model_file``)."""
        return load_model_file(self.model_path)

    def rebuild(self, *, weights: str | None = None, augmentation: Any = None) -> Any:
        """A head run as a model on raw images: its chain rebuilt, its head on top
        (``headstart.pipeline.model.head_run.rebuild_head_chain``); ``weights`` replaces the recorded file."""
        from headstart.pipeline.model.head_run import rebuild_head_chain

        chain = self.chain if weights is None else self.chain.replace(weights=weights)
        return rebuild_head_chain(chain, self.model_path, augmentation=augmentation)

    @property
    def interrupted(self) -> bool:
        """Whether an unfinished finetune left a resume record (backup/progress.json)."""
        return not self.complete and (self.backup_dir / PROGRESS_JSON).is_file()

    def read_resume_record(self) -> dict | None:
        """An unfinished finetune's resume record (backup/progress.json), or None."""
        path = self.backup_dir / PROGRESS_JSON
        return self._read_json(path) if path.is_file() else None

    def write_resume_record(self, resume_record: Mapping[str, Any]) -> None:
        from headstart.pipeline.store.files import write_json_atomic

        write_json_atomic(self.backup_dir / PROGRESS_JSON, resume_record)

    def backup_epochs(self) -> dict[str, int]:
        """Stage → epochs its backup holds (``headstart.pipeline.training.stage_fit``'s state.json)."""
        out = {}
        for state in sorted(self.backup_dir.glob("*/state.json")):
            try:
                out[state.parent.name] = int(json.loads(state.read_text(encoding="utf-8")).get("epoch", 0))
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        return out

    def recorded_options(self, kind: str) -> dict | None:
        """The options a ``kind`` run directory was made with: a finished run's "config", an
        unfinished finetune's resume record's; None when it records none (another kind, or a
        record that cannot be read)."""
        try:
            if self.complete:
                return self.config if self.kind == kind else None
            resume_record = self.read_resume_record() if kind == "finetune" else None
            return resume_record.get("config") if resume_record else None
        except RunDirError:
            return None

    # ── writing ──────────────────────────────────────────────────────────────────────────────

    def write_outputs(self, model: Any, *, kind: str, metrics: Mapping[str, Any], history: Mapping[str, Any],
                      best_epoch: int | None, title: str, record: Mapping[str, Any],
                      timings: Mapping[str, Any]) -> None:
        """The model, metrics.json, thresholds.json (multi-label), history.csv, curves.png, then
        run.json (``record`` stamped with versions, ``timings`` and the time: it marks the end).

        The chain (``record["chain"]``, else built from the record's keys where it has a backbone
        recipe) goes into run.json's "chain" and into the model file's metadata."""
        from headstart.pipeline.store.chain_record import CHAIN_KEY, record_with_chain
        from headstart.pipeline.store.curves import plot_curves
        from headstart.pipeline.store.files import save_model_atomic, write_history_csv, write_json_atomic
        from headstart.pipeline.store.provenance import stamp_record

        record, chain = record_with_chain(kind, record)
        save_model_atomic(model, self.path / MODEL_FILES[kind], metadata={CHAIN_KEY: chain} if chain else None)
        write_json_atomic(self.path / METRICS_JSON, metrics)
        if metrics.get("thresholds"):  # beside the model, so whoever copies it can take its cuts along
            write_json_atomic(self.thresholds_json, metrics["thresholds"])
        write_history_csv(history, self.path / HISTORY_CSV)
        plot_curves(history, self.path / CURVES_PNG, best_epoch=best_epoch, title=title)
        write_json_atomic(self.run_json, stamp_record({"kind": kind, **record}, timings=timings))
        self._record = None

    def update_record(self, **sections: Any) -> None:
        """Adds or replaces sections of run.json (e.g. the sweep's "sweep" record of its best/)."""
        from headstart.pipeline.store.files import write_json_atomic

        write_json_atomic(self.run_json, {**self.record, **sections})
        self._record = None

    def update_metrics(self, **sections: Any) -> None:
        """Adds or replaces sections of metrics.json (e.g. "exports" added to a finished finetune)."""
        from headstart.pipeline.store.files import write_json_atomic

        write_json_atomic(self.path / METRICS_JSON, {**self.metrics(), **sections})


def load_model_file(path: str | os.PathLike) -> Any:
    """Loads a ``.keras`` model file in safe mode (KerasHub layers registered first).

    Raises:
        RunDirError: no such file, or one Keras cannot load as a model.
    """
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path}: no such model file (give model.keras or its run directory)")
    if not_regular_reason(path):
        raise RunDirError(f"{path}: {not_regular_reason(path)} (give model.keras or its run directory)")
    if not zipfile.is_zipfile(path):  # Keras says "File not found" of a truncated .keras file
        raise RunDirError(f"{path}: not a complete .keras file (truncated or damaged: no zip directory at its "
                          f"end, {path.stat().st_size} bytes); save or copy the model again")
    import keras  # only now: a mistyped path fails before TensorFlow starts

    from headstart.features.hub import import_for_model_file

    import_for_model_file(path)  # KerasHub layers are registered serializables once it is imported
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - zip, JSON and Keras errors all mean "not a model"
        raise RunDirError(f"{path}: cannot load as a Keras model ({str(exc).splitlines()[0][:200]})") from exc
