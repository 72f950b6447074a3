"""``headstart export``: deployable files from a model you already have; the export step finetune and run share.

RUN_OR_MODEL (``resolve_export_input``, settled before TensorFlow starts) is one of:

- a ``finetune`` run directory or its ``model.keras``: the model as saved;
- a ``train-head`` run directory (or its ``head.keras``), or a ``sweep`` directory (its ``best/``): the
  inference chain is rebuilt from the head's recipe (``RunDir.rebuild``: raw image → preprocessing →
  backbone → pooling → head, the weights' fingerprint checked) and must reproduce the head's logits on
  the cached features of the same images (``check_parity``) before anything is written;
- a ``headstart run`` directory or its top-level model.keras: the run's final model (``RunLayout``);
- a ``.keras`` model with no run beside it, given ``--source``.

``write_exports`` writes the formats (``commands.export.export_model``) and checks each with its own
runtime against the Keras model on one split of the source (``check_exports``: test, else validation,
else train); ``finetune --export`` and ``run --export`` call it too. ``--out`` follows the one ``--out``
policy (``store.out_dir.claim``) on what ``export.json`` records (``store.export_record``): the same
model with the same options is already done (so is a subset of the formats it holds); other formats
of the same model and options are added beside the ones there (``--format tflite`` into a directory
holding ONNX writes and checks only the TFLite file); anything else is refused unless ``--overwrite``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TYPE_CHECKING

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import ExportConfig
from headstart.pipeline.data.source_spec import check_source_path
from headstart.features.errors import Arg, parts_of
from headstart.pipeline.errors import DataError, OptionError, OutputError, RunDirError
from headstart.pipeline.options.checks import check_config
from headstart.pipeline.store.run_layout import describe_model, final_model_dir
from headstart.pipeline.store.rundir import RunDir

if TYPE_CHECKING:
    import keras

    from headstart.pipeline.data.source import Source

#: Files that mark a ``headstart run`` directory, and a sweep directory (beside its ``best/``).
SWEEP_MARKS = ("study.db", "leaderboard.csv")
#: Splits the exports are checked on, the first the source has.
CHECK_SPLITS = ("test", "validation", "train")
#: How export.json names the model's identity (the sha256 of its .keras file, shortened).
MODEL_KEY = "model"


@dataclass(frozen=True)
class ExportInput:
    """What RUN_OR_MODEL names.

    Attributes:
        given: the path as given.
        kind: "finetune" (a fine-tuned model, loaded as saved), "head" (a train-head run, rebuilt) or
            "model" (a .keras file with no run beside it).
        what: how messages name it.
        model_file: the .keras file whose bytes identify the model.
        run: its run directory, or None.
    """

    given: str
    kind: str
    what: str
    model_file: Path
    run: RunDir | None = None


@dataclass
class ExportResult:
    """What ``export_model_dir`` wrote (or found already done).

    Attributes:
        out: the export directory.
        exports: format → path written (None: its converter failed).
        checks: "split" and, per format, its check against the Keras model (``check_exports``).
        parity: a train-head run's parity check (``ParityResult.to_dict``), else None.
        record: export.json as written.
        summary: the table the CLI prints.
        reused: the directory already held this export.
    """

    out: str
    exports: dict
    checks: dict
    parity: dict | None
    record: dict = field(default_factory=dict)
    summary: str = ""
    reused: bool = False

    @classmethod
    def from_record(cls, out: str | os.PathLike, record: dict, *, reused: bool) -> "ExportResult":
        result = cls(out=str(out), exports=dict(record.get("exports") or {}), checks=dict(record.get("checks") or {}),
                     parity=record.get("parity"), record=record, reused=reused)
        result.summary = summary_table(result)
        return result


def check_export_config(config: ExportConfig) -> None:
    """Every check of ``export``'s options that needs no model, data or TensorFlow.

    Raises:
        OptionError: naming the option. DataError: a ``--source`` path that does not exist.
    """
    from headstart.features.registry import check_weights_option
    from headstart.pipeline.commands.export import check_export_options

    check_config("export", config)
    check_export_options(config.formats, config.quantize, option="formats")
    if config.source:
        check_source_path(config.source)
    check_weights_option(config.weights)


def resolve_export_input(path: str | os.PathLike) -> ExportInput:
    """What RUN_OR_MODEL names (see the module docstring); no TensorFlow.

    Raises:
        RunDirError: nothing there, an unfinished or damaged run, a run without a finished finetune
            stage, a file that is not a .keras model.
    """
    given, p = str(path), Path(path)
    if not p.exists():
        raise RunDirError(f"{given}: no such run directory or model file (give a finetune or train-head run "
                          "directory, a sweep or headstart run directory, or a .keras model file)")
    final = final_model_dir(p)
    if final is not None:
        if not RunDir(final).complete:
            raise RunDirError(f"{given}: this headstart run has no finished finetune stage yet; run it to the "
                              f"end, or export its head: headstart export {final.parent / 'head'} …")
        return _from_run(final, given, describe_model(p))
    if p.is_dir():
        if (p / "best").is_dir() and any((p / mark).is_file() for mark in SWEEP_MARKS):
            return _from_run(p / "best", given, f"the best head of the sweep {given}")
        return _from_run(p, given, None)
    run = RunDir.beside(p)
    if run is not None and run.complete and run.kind and run.model_path.resolve() == p.resolve():
        return _from_run(run.path, given, None)
    if p.suffix.lower() != ".keras":
        raise RunDirError(f"{given}: not a .keras model (give model.keras, head.keras or their run directory)")
    return ExportInput(given, "model", f"the model {given}", p)


def _from_run(folder: Path, given: str, what: str | None) -> ExportInput:
    probe = RunDir(folder)
    run = RunDir.open(folder, recipe=probe.complete and probe.kind == "head")
    command = "train-head" if run.kind == "head" else "finetune"
    return ExportInput(given, run.kind, what or f"the {command} run {given}", run.model_path, run)


def export_model_dir(config: ExportConfig, *, reporter: Reporter = QUIET) -> ExportResult:
    """Exports a trained model into ``config.out``, each format checked by its own runtime.

    Args:
        config: the options (``ExportConfig``).
        reporter: one-line status messages and a progress line for the checks' pass over the
            images (``features/reporter.py``; default: quiet).

    Returns:
        An ExportResult (``summary`` is the table to print). A ``--out`` that already holds this
        export is not written again.

    Raises:
        OptionError: bad options.
        DataError: a bad source.
        RunDirError: a bad RUN_OR_MODEL, or ``--out`` holding another export.
        ParityError: a rebuilt head run that disagrees with its cache.
        OutputError: a format whose converter failed (the others are written and checked).
        RunDirBusyError: another process writes ``--out``.
    """
    from headstart.features.file_hash import sha256_file
    from headstart.pipeline.store.export_record import read_export_record
    from headstart.pipeline.store.out_dir import REPLACE, REUSE, claim

    check_export_config(config)
    given = resolve_export_input(config.model)
    if config.weights and given.kind != "head":
        raise OptionError(Arg("weights"), f" applies to a train-head run (its backbone is rebuilt); {given.what} is "
                          "saved whole", value=config.weights)
    wanted = {MODEL_KEY: sha256_file(given.model_file)[:16], "formats": sorted(set(config.formats)),
              "quantize": config.quantize, "source": os.path.abspath(config.source) if config.source else None}

    kept: dict = {}  # a finished export of this model and options, whose formats stay

    def recorded() -> tuple[dict | None, bool]:
        try:
            record = read_export_record(config.out)
        except RunDirError:
            if config.overwrite:
                return None, False
            raise
        return (None, False) if record is None else _as_policy_sees_it(record, wanted, kept)

    with claim(config.out, command="export", what="headstart export", section="export", wanted=wanted,
               read_recorded=recorded, overwrite=config.overwrite, foreign="holds no export (no export.json)") as state:
        if state == REUSE:
            reporter.line(f"{config.out}: already done (an export of this model with these options)")
            return ExportResult.from_record(config.out, read_export_record(config.out), reused=True)
        return _export(config, given, wanted, reporter=reporter, kept=kept if state != REPLACE else {})


def _as_policy_sees_it(record: dict, wanted: dict, kept: dict) -> tuple[dict | None, bool]:
    """(the options, finished) of export.json for the ``--out`` policy, formats aside: a finished export
    of this model and options holding every format asked for is done; one lacking some is unfinished
    (``kept`` receives its record: its formats stay and the others are added); any other difference
    is the one a refusal names."""
    options, complete = record.get("options"), bool(record.get("complete"))
    if not (complete and isinstance(options, dict) and isinstance(options.get("formats"), list)):
        return options, complete
    if not _only_formats_differ(options, wanted):  # formats alone never refuse: name what else differs
        return {**options, "formats": wanted["formats"]}, complete
    holds_all = set(wanted["formats"]) <= set(options["formats"])
    if not holds_all:
        kept.update(record)
    return {**options, "formats": wanted["formats"], "quantize": wanted["quantize"]}, holds_all


def _only_formats_differ(recorded: dict, wanted: dict) -> bool:
    """Whether an export differs from the one asked for only in its formats (the same model, source,
    and quantization where both hold a TFLite file), so the new formats can join it."""
    same = all(recorded.get(k) == wanted.get(k) for k in wanted if k not in ("formats", "quantize"))
    tflite_in_both = "tflite" in recorded["formats"] and "tflite" in wanted["formats"]
    return same and (not tflite_in_both or recorded.get("quantize") == wanted["quantize"])


def _export(config: ExportConfig, given: ExportInput, wanted: dict, *, reporter: Reporter, kept: dict) -> ExportResult:
    """Builds the model, writes and checks every format (but those ``kept``: a finished export.json whose
    formats stay), then export.json (complete), listing the kept formats with the new ones."""
    from headstart.pipeline.store.export_record import chain_of, write_export_record

    start = time.perf_counter()
    source = _open_source(config, given)
    model, parity = _model(config, given, source, reporter)
    run = given.run
    class_names = run.class_names if run is not None else list(source.class_names)
    if list(source.class_names) != class_names:
        raise DataError(f"the source's classes {list(source.class_names)} differ from {given.what}'s {class_names}")
    multi_label = bool(run.multi_label) if run is not None else bool(getattr(source, "multi_label", False))
    thresholds = run.thresholds_record if run is not None and multi_label else None
    record = {"options": wanted, "input": {"given": os.path.abspath(given.given), "kind": given.kind,
                                           "what": given.what, "model_file": os.path.abspath(given.model_file)},
              "class_names": class_names, "task": "multi_label" if multi_label else "single_label",
              **({"thresholds": thresholds} if thresholds else {}), "source": source.describe(), "parity": parity,
              "chain": chain_of(run, given.model_file)}
    old = kept.get("options", {}).get("formats", [])
    formats = [f for f in config.formats if f not in old]
    if old:  # the formats there stay, with their checks, and so does their quantization
        quantize = config.quantize if "tflite" in formats else kept["options"]["quantize"]
        record["options"] = {**wanted, "formats": sorted({*old, *formats}), "quantize": quantize}
    write_export_record(config.out, {"complete": False, **record})  # until the end, a rerun redoes it
    _drop_other_formats(Path(config.out), record["options"]["formats"])
    exports, checks = write_exports(model, config.out, formats, quantize=config.quantize,
                                    class_names=class_names, source=source, batch_size=config.batch_size,
                                    multi_label=multi_label, thresholds=thresholds, reporter=reporter,
                                    chain=record["chain"])
    failed = [fmt for fmt, path in exports.items() if not path]
    record.update(exports={**kept.get("exports", {}), **exports}, checks={**kept.get("checks", {}), **checks},
                  seconds=time.perf_counter() - start)
    write_export_record(config.out, {"complete": not failed, **record})
    if failed:
        raise OutputError(f"{config.out}: the {' and '.join(failed)} export failed (see the warning above); the "
                          "other formats are written and checked; run the same command again to retry")
    from headstart.pipeline.store.export_record import read_export_record

    return ExportResult.from_record(config.out, read_export_record(config.out), reused=False)


def _drop_other_formats(out: Path, formats: Sequence[str]) -> None:
    """Removes the files of formats not asked for now (an --overwrite with fewer formats): the directory
    holds what export.json lists."""
    import shutil

    from headstart.pipeline.commands.export import EXPORT_FILES

    for fmt, name in EXPORT_FILES.items():
        if fmt not in formats:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def _open_source(config: ExportConfig, given: ExportInput) -> Source:
    """The images the exports are checked on: ``--source``, else the source the run recorded."""
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.data.sources import open_source

    if given.run is None and not config.source:
        raise OptionError(f"{given.given} has no run.json beside it to say which images it was trained on; give ",
                          Arg("source", placeholder="SOURCE"), " (a folder or label file with the model's classes) to "
                          "check the exports on", field="source")
    spec = (given.run.source_spec(source=config.source or _recorded_source(given.run)) if given.run is not None
            else SourceSpec.from_record(None, source=config.source))
    try:
        return open_source(spec)
    except DataError as exc:
        if config.source:
            raise
        first = parts_of(exc) if "\n" not in str(exc) else (str(exc).splitlines()[0],)
        raise DataError(*first, f" (the source {given.what} recorded); give ",
                        Arg("source"), " where its images are now", field="source") from None


def _recorded_source(run: RunDir) -> str | None:
    """Where the run's SOURCE is, as it recorded it: an absolute path where there is one (the run may have
    been made from another working directory), else the spec as given then."""
    record = run.source_record
    described = (record.get("describe") if run.kind == "finetune" else run.cache_config.get("source")) or {}
    described = described if isinstance(described, dict) else {}
    candidates = (record.get("path"), described.get("file"), None if "file" in described else described.get("root"))
    for candidate in candidates:
        if isinstance(candidate, str) and Path(candidate).exists():
            return candidate
    return record.get("source") or None


def _model(config: ExportConfig, given: ExportInput, source: Source,
           reporter: Reporter) -> tuple[keras.Model, dict | None]:
    """(the Keras model on raw images, a head run's parity check or None)."""
    from headstart.pipeline.store.rundir import load_model_file

    if given.kind == "model":
        return load_model_file(given.model_file), None
    if given.kind == "finetune":
        return given.run.load_model(), None
    from headstart.pipeline.model.parity import check_parity

    reporter.line(f"rebuilding {given.what} on raw images: preprocessing, {given.run.chain.backbone.name} backbone, "
                  f"{given.run.chain.pooling} pooling, head")
    model = given.run.rebuild(weights=config.weights).model
    if not config.parity_samples:
        return model, None
    parity = check_parity(model, given.run.cache, source, samples=config.parity_samples, batch_size=config.batch_size)
    reporter.line(f"parity: {parity.samples} {parity.split} images, largest logit difference {parity.max_abs_diff:.3g} "
        f"(tolerance {parity.tolerance:.3g})")
    return model, parity.to_dict()


def write_exports(model: keras.Model, out_dir: str | os.PathLike, formats: Sequence[str], *, quantize: str,
                  class_names: Sequence[str], source: Source, batch_size: int = 32, multi_label: bool = False,
                  thresholds: dict | None = None, reporter: Reporter = QUIET,
                  chain: dict | None = None) -> tuple[dict[str, str | None], dict]:
    """Writes ``formats`` of ``model`` into ``out_dir`` and checks each with its own runtime.

    The one export step: ``headstart export``, ``finetune --export`` and ``run --export`` call it.

    Args:
        model: raw images float32 (B, S, S, 3) 0–255 → logits (B, 1|K).
        out_dir: where ``saved_model/``, ``model.onnx``, ``model.tflite`` go.
        formats, quantize: as ``commands.export.export_model``.
        class_names: the K class names.
        source: a ``Source``: int8 calibrates on its train split; the checks run on its test split,
            else validation, else train.
        batch_size: images per forward pass of the checks.
        multi_label, thresholds, chain: a multi-label model, its thresholds record; the ONNX file's "chain".
        reporter: one-line messages (one per format checked) and a progress line for the checks' pass.

    Returns:
        (format → path or None where its converter failed, the checks: "split" and per format
        ``check_exports``' row).
    """
    from headstart.pipeline.report.progress import observed
    from headstart.pipeline.commands.export import calibration_images, check_exports, export_model

    if quantize == "int8" and "train" not in source.split_names:
        raise OptionError(Arg("quantize", "int8"), " calibrates on the source's train split, and it has none")
    calibration = calibration_images(source, int(model.input_shape[1])) if "train" in source.split_names else None
    reporter.line(f"exporting {', '.join(formats)} to {out_dir}")
    exports = export_model(model, out_dir, formats, quantize=quantize, class_names=list(class_names),
                           calibration=calibration, reporter=reporter, thresholds=thresholds, chain=chain)
    split = next(s for s in CHECK_SPLITS if s in source.split_names)
    with observed(reporter, f"check {split}", source.count(split)) as observe:
        checks = check_exports(exports, model, source, split, quantize=quantize, batch_size=batch_size,
                               multi_label=multi_label, observe=observe)
    for fmt, row in checks.items():
        if row.get("accuracy") is not None:
            reporter.line(f"export {fmt}: {split} accuracy {row['accuracy']:.4f} (Keras model {row['keras_accuracy']:.4f}), "
                f"same class on {row['agreement']:.1%} of images, largest logit difference "
                f"{row['max_abs_logit_diff']:.3g}")
    return exports, {"split": split, **checks}


def summary_table(result: ExportResult) -> str:
    """The table the CLI prints: what was exported and how each format checked."""
    from headstart.pipeline.report.summary_table import format_summary_table

    record, checks = result.record, result.checks
    split = checks.get("split", "-")
    rows: list[tuple[str, Any]] = [("model", (record.get("input") or {}).get("what", "-"))]
    if result.parity:
        rows.append(("parity (max logit diff)", f"{result.parity['max_abs_diff']:.3g} on {result.parity['samples']} "
                                                f"{result.parity['split']} images"))
    for fmt, path in result.exports.items():
        row = checks.get(fmt) or {}
        if not path:
            rows.append((fmt, "failed"))
        elif row.get("accuracy") is None:
            rows.append((fmt, path))
        else:
            rows.append((fmt, f"{path}: {split} accuracy {row['accuracy']:.4f} (Keras {row['keras_accuracy']:.4f}), "
                              f"agreement {row['agreement']:.1%}, max logit diff {row['max_abs_logit_diff']:.3g}"))
    return format_summary_table(rows, title="export")
