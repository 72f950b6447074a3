"""``headstart run``: extract-features → train-head → finetune → evaluate into one run directory.

Layout of RUN_DIR::

    config.toml     the resolved configuration (``headstart run --config`` takes it back)
    stages.json     per stage: the key of its inputs and config, status, timings, scores
    features.h5     extract-features' cache        head/      train-head's run directory
    finetune/       finetune's run directory       samples.npz  test images shown in summary.png
    summary.json    every stage's scores and timings, written last but one (its presence marks a finished run)
    summary.png     both stages' curves, the confusion matrix, sample test images
    mistakes.npz    thumbnails of the test split's mistakes, for report.html
    report.html     one self-contained page about the run (run/report_html.py), written from the files above
    export/         with --export: the fine-tuned model's exports and export.json (headstart export)
    tensorboard/    with --tensorboard: head/ and finetune/ event files

Reuse: each stage's key hashes its result-shaping options together with its input (the cache's
fingerprint, the bytes of ``head.keras`` / ``model.keras``); a finished stage whose key is unchanged
is not run again, so only the stages downstream of a change are redone. Resume: an interrupted
extraction continues from its last committed batch (``features.h5.partial``), an interrupted
fine-tune from its last finished epoch (``finetune/backup``); train-head and evaluate take seconds and
simply run again. A run directory made with another configuration is refused, naming the first
difference, unless ``overwrite`` or nothing was computed there (config.toml alone: a first run that
failed, e.g. on weights that would not load, never blocks the corrected command); nothing is written
before every option has been checked. The run
holds the directory's lock from start to end (``headstart.pipeline.report.out_dir``), so a second
``run`` into it is refused rather than resuming a stage the first one is still writing.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from headstart.features.bounded_parse import loads_json
from headstart.features.errors import parts_of
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.errors import DataError, OptionError, RunDirError
from headstart.pipeline.report.files import write_json_atomic, write_text_atomic
from headstart.pipeline.report.metrics import HEADLINE
from headstart.pipeline.run.console import Console
from headstart.pipeline.run.keys import evaluate_key, extract_key, finetune_key, input_files, stage_key
from headstart.pipeline.run.report_data import REPORT_HTML, SUMMARY_JSON
from headstart.pipeline.run.stages import MULTI_LABEL_KEYS
from headstart.pipeline.run.toml_config import RunConfig, describe_differences, read_config_file, resolve_run_config, \
    result_settings, run_config_dict, run_label, stage_values, to_toml

STAGES = ("extract", "head", "finetune", "evaluate")
CONFIG_FILE, STATE_FILE, SUMMARY_PNG, SAMPLES = ("config.toml", "stages.json", "summary.png", "samples.npz")


@dataclass
class RunResult:
    """What ``run_pipeline`` produced: the run directory, summary.json's content and the table."""

    run_dir: str
    summary: dict = field(default_factory=dict)
    table: str = ""


def load_run_config(source: str | None, out: str | None, *, config_file: str | None = None,
                    flags: dict[str, Any] | None = None) -> RunConfig:
    """Reads ``--config`` (when given) and applies the flags on top; see ``headstart.pipeline.run.toml_config``."""
    values = read_config_file(config_file) if config_file else None
    return resolve_run_config(source, out, file_values=values, flags=flags)


def check_run_config(config: RunConfig) -> None:
    """Checks every stage's options and the source before anything is written or TensorFlow starts.

    Each stage's own check (``check_extract_config``, ``check_head_config``, ``check_finetune_config``:
    the option table's ranges, then what only the stage knows), naming an option as ``headstart run``
    spells it (``run_label``), then what only a whole run needs.

    Raises:
        OptionError, DataError, headstart.features.errors.FeaturesError: naming the option or path at fault.
    """
    from headstart.features.registry import alpha_backbones, get_backbone_spec
    from headstart.pipeline.stages.extraction import check_extract_config
    from headstart.pipeline.stages.finetuning import check_finetune_config
    from headstart.pipeline.stages.head_training import check_head_config

    from headstart.pipeline.options.checks import check_value

    check_value("top", "recipe", config.recipe, label="--recipe")
    check_value("top", "budget", config.budget, label="--budget")
    ex = config.extract
    check_extract_config(dataclasses.replace(ex, source=config.source, out="features.h5"), label=run_label("extract"))
    if ex.alpha is not None and not get_backbone_spec(ex.backbone).takes_alpha:
        raise OptionError(f"--alpha applies only to {', '.join(alpha_backbones())}, not to backbone '{ex.backbone}'")
    if "train" not in ex.splits:
        raise OptionError("[extract] splits must include 'train': headstart run trains on it")
    check_head_config(dataclasses.replace(config.head, features="features.h5", out="head"), label=run_label("head"))
    check_finetune_config(dataclasses.replace(config.finetune, source=config.source, head="head", out="ft"),
                          label=run_label("finetune"))


def _check_classes(config: RunConfig) -> None:
    """The source opens (a TFDS dataset is there or can be downloaded: offline, a quick one-line failure)
    and has at least two classes; before config.toml is written, so a refused run leaves nothing behind
    (opening it starts TensorFlow: after the other checks)."""
    from headstart.pipeline.data.sources import open_source

    source = open_source(SourceSpec.from_config(config.extract, source=config.source))
    if len(source.class_names) < 2:
        what = "label(s)" if source.kind == "label_file" else "class folder(s)"
        raise DataError(f"{config.source}: {len(source.class_names)} {what}; a classifier needs 2 or more")


def claim_run_dir(config: RunConfig, overwrite: bool):
    """Holds the run directory (its lock) under the ``--out`` policy, as a context manager.

    A run directory made with the same configuration is reused and resumed stage by stage; one
    made with another is refused, naming the options that differ, unless ``overwrite`` (which redoes
    the stages that change), or unless it holds nothing but its config.toml (a run that failed
    before computing anything); one that is not a headstart run is refused.

    Raises:
        RunDirBusyError: another process writes it. RunDirError: foreign, or another configuration.
    """
    from headstart.pipeline.report.out_dir import claim

    run_dir = Path(config.out)

    def read_recorded() -> tuple[dict | None, bool]:
        try:
            recorded = run_config_dict(resolve_run_config(None, None, file_values=read_config_file(run_dir / CONFIG_FILE)))
        except OptionError as exc:
            if (run_dir / CONFIG_FILE).is_file() and not overwrite:
                raise RunDirError(f"--out {_shown(str(run_dir))}: its {CONFIG_FILE} is unreadable (", *parts_of(exc),
                                  "); pass --overwrite") from None
            return None, False
        return result_settings(recorded), (run_dir / SUMMARY_JSON).is_file()

    # config.toml alone records a run that failed before computing anything (weights that would not
    # load): nothing there to protect, so the corrected command starts afresh over it.
    return claim(run_dir, command="run", what="run", section=None, wanted=result_settings(run_config_dict(config)),
                 read_recorded=read_recorded, overwrite=overwrite, foreign=f"holds no headstart run (no {CONFIG_FILE})",
                 overwrite_hint="pass --overwrite to redo the stages that change", record_files=(CONFIG_FILE,),
                 describe=describe_differences)


def check_run_dir(config: RunConfig, overwrite: bool) -> None:
    """``claim_run_dir``'s refusals, the lock taken and given back at once (``demo`` checks before it draws)."""
    with claim_run_dir(config, overwrite):
        pass


def run_pipeline(config: RunConfig, *, overwrite: bool = False, console: Console | None = None,
                 finetune_callbacks: Sequence[Any] = ()) -> RunResult:
    """Runs (or reuses, or resumes) every stage into ``config.out`` and writes the summary.

    Args:
        config: the resolved configuration.
        overwrite: allow a run directory made with another configuration; stages whose key is
            unchanged are still reused.
        console: where status and progress go.
        finetune_callbacks: extra Keras callbacks for the fine-tuning ``fit``.

    Returns:
        A RunResult; ``table`` is the per-stage summary to print.

    Raises:
        OptionError: bad options.
        DataError: a bad source.
        RunDirError: a foreign run directory, or one of another configuration.
        headstart.features.errors.FeaturesError: the stages' own failures (and ParityError…).
    """
    console = console or Console()
    check_run_config(config)
    with claim_run_dir(config, overwrite):
        run_dir = _prepare_run_dir(config, console)
        t0 = time.perf_counter()
        records = (_run_auto(config, run_dir, console, overwrite=overwrite, finetune_callbacks=finetune_callbacks)
                   if config.recipe == "auto" else
                   _run_stages(config, run_dir, console, overwrite=overwrite, finetune_callbacks=finetune_callbacks))
        summary = _summary(config, run_dir, records, time.perf_counter() - t0)
        _plot(run_dir, summary, console)
        write_json_atomic(run_dir / SUMMARY_JSON, summary)
        from headstart.pipeline.run.report_html import write_report

        write_report(run_dir)  # from the files just written, as `headstart report RUN_DIR` would
    return RunResult(run_dir=str(run_dir), summary=summary, table=format_table(summary))


def _prepare_run_dir(config: RunConfig, console: Console) -> Path:
    """The claimed directory, once the source has classes, with config.toml and without summary.json."""
    _check_classes(config)
    run_dir = Path(config.out)
    import tensorflow as tf

    if not console.verbose:
        tf.get_logger().setLevel("ERROR")  # retracing notices and the like; --verbose shows them
    write_text_atomic(run_dir / CONFIG_FILE, to_toml(config))
    (run_dir / SUMMARY_JSON).unlink(missing_ok=True)  # until the end, the directory reads as unfinished
    console.debug(f"resolved configuration ({run_dir / CONFIG_FILE}):\n{to_toml(config)}")
    return run_dir


class _Stages:
    """stages.json: each stage's record, saved as soon as the stage is done (or started)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_FILE
        try:
            state = loads_json(self.path.read_text(encoding="utf-8"))
            self.state = state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            self.state = {}

    def save(self, name: str, record: dict) -> dict:
        self.state[name] = record
        write_json_atomic(self.path, self.state)
        return record


def _run_stages(config: RunConfig, run_dir: Path, console: Console, *, overwrite: bool,
                finetune_callbacks: Sequence[Any]) -> dict[str, dict]:
    """Runs, reuses or resumes each stage in turn, each fed by the one before's returned record."""
    from headstart.pipeline.run.stages import (diagnose_stage, evaluate_stage, extract_stage, finetune_stage,
                                               head_stage)

    stages = _Stages(run_dir)
    state, save = stages.state, stages.save
    features = run_dir / "features.h5"
    console.log(f"[1/4] extract-features → {_shown(str(features))}")
    ex = save("extract", extract_stage(config, features, state.get("extract"), console, overwrite,
                                       key=extract_key(config)))
    if config.diagnose:
        console.log(f"[diagnose] → {_shown(str(run_dir / 'diagnose'))}")
        save("diagnose", diagnose_stage(config, features, run_dir / "diagnose", state.get("diagnose"), console,
                                        key=stage_key({"cache": ex["fingerprint"], "seed": config.head.seed})))
    console.log(f"[2/4] {'sweep' if config.sweep.get('trials') else 'train-head'} → {_shown(str(run_dir / 'head'))}")
    hd = save("head", head_stage(config, features, run_dir / "head", state.get("head"), console,
                                 key=stage_key(_head_key(config, ex))))
    _replay(config, run_dir, "head")
    console.log(f"[3/4] finetune → {_shown(str(run_dir / 'finetune'))}")
    ft_key = finetune_key(config, hd["head_sha256"])
    ft = save("finetune", finetune_stage(config, run_dir, state.get("finetune"), console, key=ft_key,
                                         train_images=ex["splits"].get("train", 0),
                                         started=lambda: save("finetune", {"key": ft_key, "done": False}),
                                         callbacks=finetune_callbacks))
    _replay(config, run_dir, "finetune")
    console.log(f"[4/4] evaluate {_shown(str(run_dir / 'finetune' / 'model.keras'))}")
    ev = save("evaluate", evaluate_stage(config, run_dir, state.get("evaluate"), console,
                                         key=evaluate_key(config, ft["model_sha256"])))
    records = {"extract": ex, "head": hd, "finetune": ft, "evaluate": ev}
    _export(config, run_dir, console, records, stages)
    return records


def _export(config: RunConfig, run_dir: Path, console: Console, records: dict, stages: "_Stages") -> None:
    """The run's export step, after evaluate and outside the finetune stage's key: exporting trains
    nothing again (both recipes)."""
    from headstart.pipeline.run.export_step import EXPORT_DIR, export_stage

    if config.finetune.export:
        console.log(f"[export] → {_shown(str(run_dir / EXPORT_DIR))}")
        records["export"] = stages.save("export", export_stage(
            config, run_dir, stages.state.get("export"), console,
            key=stage_key({"model": records["finetune"]["model_sha256"], "formats": sorted(config.finetune.export),
                           "quantize": config.finetune.quantize})))


def _run_auto(config: RunConfig, run_dir: Path, console: Console, *, overwrite: bool,
              finetune_callbacks: Sequence[Any]) -> dict[str, dict]:
    """``--recipe auto`` (``headstart.pipeline.run.auto``) over the same stages.json."""
    from headstart.pipeline.run.auto import run_auto

    stages = _Stages(run_dir)
    records = run_auto(config, run_dir, console, stages.save, dict(stages.state), overwrite=overwrite,
                       finetune_callbacks=finetune_callbacks)
    _replay(config, run_dir, "finetune")
    _export(config, run_dir, console, records, stages)
    return records


def _head_key(config: RunConfig, ex: dict) -> dict:
    key = {**stage_values(config, "head"), **input_files(config), "cache": ex["fingerprint"]}
    if config.sweep.get("trials"):  # the search settings shape the head; without a sweep the key stays as it was
        key["sweep"] = config.sweep
    return key


def _replay(config: RunConfig, run_dir: Path, stage: str) -> None:
    """TensorBoard logs of a stage reused from a run without them, from its history.csv."""
    if config.tensorboard and not (run_dir / "tensorboard" / stage).is_dir():
        from headstart.pipeline.report.rundir import RunDir
        from headstart.pipeline.report.tensorboard_logs import write_history

        write_history(RunDir(run_dir / stage).history(), run_dir / "tensorboard" / stage)


def _summary(config: RunConfig, run_dir: Path, records: dict[str, dict], seconds: float) -> dict:
    from headstart.pipeline.report.provenance import stamp_record
    from headstart.pipeline.run.auto_summary import recipe_section

    keep = ("status", "seconds", "images", "images_per_second", *HEADLINE, "val_accuracy", "best_epoch",
            "epochs_run", "kept", "split", "loss", "skipped", "rows", "sweep", "exports", "checks")
    evaluate = records["evaluate"]
    return stamp_record({
        "kind": "headstart-run",
        "source": config.source,
        "run_dir": str(run_dir),
        "config": str(run_dir / CONFIG_FILE),
        "class_names": records["extract"].get("class_names"),
        "stages": {name: {k: rec.get(k) for k in keep if k in rec} for name, rec in records.items()
                   if name != "recipe"},
        "recipe": recipe_section(config, records),
        "validation": records["finetune"].get("validation"),
        "test": {k: evaluate.get(k) for k in ("split", *HEADLINE, "loss", "rows", "per_class",
                                                "confusion_matrix", "skipped", *MULTI_LABEL_KEYS) if k in evaluate
                 or k not in MULTI_LABEL_KEYS},
        # The evaluated split's ECE (15 bins) and NLL with the model's temperature undone and as it is.
        "calibration": evaluate.get("calibration"),
        "plots": {"summary": str(run_dir / SUMMARY_PNG),
                  "head": str(Path(records["head"].get("path") or run_dir / "head") / "curves.png"),
                  "finetune": str(run_dir / "finetune" / "curves.png")},
        "tensorboard": str(run_dir / "tensorboard") if config.tensorboard else None,
        "report": str(run_dir / REPORT_HTML),
        "seconds": seconds,
    })


def _plot(run_dir: Path, summary: dict, console: Console) -> None:
    import numpy as np

    from headstart.pipeline.report.rundir import RunDir
    from headstart.pipeline.report.summary_plot import plot_summary

    samples = None
    if (run_dir / SAMPLES).is_file():
        with np.load(run_dir / SAMPLES, allow_pickle=False) as z:
            samples = {k: z[k] for k in z.files}
    stages = summary["stages"]
    plot_summary(run_dir / SUMMARY_PNG,
                 head_history=RunDir(Path(summary["plots"]["head"]).parent).history(),
                 finetune_history=RunDir(run_dir / "finetune").history(),
                 head_best=stages["head"].get("best_epoch"), finetune_best=stages["finetune"].get("best_epoch"),
                 confusion=summary["test"].get("confusion_matrix"), class_names=summary["class_names"] or [],
                 per_class=summary["test"].get("per_class") if summary["test"].get("task") == "multi_label" else None,
                 samples=samples, title=f"headstart run: {summary['source']}")
    console.debug(f"wrote {run_dir / SUMMARY_PNG}")


STAGE_LABELS = {"extract": "extract-features", "head": "train-head", "finetune": "finetune", "evaluate": "evaluate"}


def format_table(summary: dict) -> str:
    """The per-stage table: status, test accuracy, balanced accuracy and macro-F1, time and images
    per second, then the plots."""
    rows = [("stage", "status", "test accuracy", "balanced acc.", "macro-F1", "time", "images/s")]
    for name in STAGES:
        rec = summary["stages"].get(name, {})
        rate = rec.get("images_per_second")
        status = rec.get("status", "-") + (f", kept {rec['kept']}" if rec.get("kept") == "seeded" else "")
        rows.append((STAGE_LABELS[name], status,
                     *("-" if rec.get(k) is None else f"{rec[k]:.4f}" for k in HEADLINE),
                     f"{rec.get('seconds', 0.0):.1f} s", "-" if not rate else f"{rate:.1f}"))
    from headstart.pipeline.run.auto_summary import format_recipe

    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    recipe = format_recipe(summary)
    lines[:0] = [recipe, ""] if recipe else []
    plots = {k: _shown(v) for k, v in summary["plots"].items()}
    lines += ["", f"run directory: {_shown(summary['run_dir'])} ({summary['seconds']:.1f} s)",
              f"plots: {plots['summary']}", f"       {plots['head']}", f"       {plots['finetune']}"]
    if summary.get("report"):
        lines.append(f"report: {_shown(summary['report'])}")
    if summary.get("tensorboard"):
        lines.append(f"tensorboard: tensorboard --logdir {_shown(summary['tensorboard'])}")
    exported = summary["stages"].get("export") or {}
    if exported.get("exports"):
        lines.append(f"exports: {', '.join(_shown(p) if p else f'{f} failed' for f, p in exported['exports'].items())}")
    return "\n".join(lines)


def _shown(path: str) -> str:
    # Paths below the working directory print relative to it, as the user typed them.
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
