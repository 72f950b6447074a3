"""``headstart run``: extract-features → train-head → finetune → evaluate into one run directory.

One orchestrator: ``run/auto/recipe.py`` ``run_auto`` runs both recipes (``--recipe guide`` is auto with
every decision fixed to the guide's value); this module checks the options, claims the directory,
runs it, publishes RUN/model.keras and writes the summary, the table and report.html.

The run directory's layout (the chosen model, cache and head at the top, a losing image size under
candidates/) is ``headstart.pipeline.store.run_layout.RunLayout``'s, and only its.

Reuse: each stage's key hashes its result-shaping options together with its input (the cache's
fingerprint, the bytes of ``head.keras`` / ``model.keras``); a finished stage whose key is unchanged
is not run again, so only the stages downstream of a change are redone. Resume: an interrupted
extraction continues from its last committed batch (``features.h5.partial``), an interrupted
fine-tune from its last finished epoch (``finetune/backup``); train-head and evaluate take seconds and
simply run again. A run directory made with another configuration is refused, naming the first
difference, unless ``overwrite`` or nothing was computed there (config.toml alone: a first run that
failed, e.g. on weights that would not load, never blocks the corrected command); nothing is written
before every option has been checked. The run
holds the directory's lock from start to end (``headstart.pipeline.store.out_dir``), so a second
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
from headstart.features.errors import Arg, parts_of
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.errors import DataError, OptionError, RunDirError
from headstart.pipeline.store.files import write_json_atomic, write_text_atomic
from headstart.pipeline.report.metrics import HEADLINE
from headstart.pipeline.store.run_layout import CONFIG_FILE, STATE_FILE, SUMMARY_JSON, RunLayout
from headstart.pipeline.store.stage_records import StageSummary
from headstart.pipeline.run.console import Console
from headstart.pipeline.run.keys import stage_key
from headstart.pipeline.run.stages import MULTI_LABEL_KEYS
from headstart.pipeline.run.toml_config import RunConfig, describe_differences, read_config_file, resolve_run_config, \
    result_settings, run_config_dict, run_label, to_toml

STAGES = ("extract", "head", "finetune", "evaluate")


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
    from headstart.pipeline.commands.extraction import check_extract_config
    from headstart.pipeline.finetuning.finetuning import check_finetune_config
    from headstart.pipeline.commands.head_training import check_head_config

    from headstart.pipeline.options.checks import check_value

    check_value("top", "recipe", config.recipe, label="--recipe")
    check_value("top", "budget", config.budget, label="--budget")
    ex = config.extract
    check_extract_config(dataclasses.replace(ex, source=config.source, out="features.h5"), label=run_label("extract"))
    if ex.alpha is not None and not get_backbone_spec(ex.backbone).takes_alpha:
        raise OptionError(Arg("extract.alpha"), f" applies only to {', '.join(alpha_backbones())}, "
                          f"not to backbone '{ex.backbone}'", value=ex.alpha)
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
    from headstart.pipeline.store.out_dir import claim

    run_dir = Path(config.out)

    def read_recorded() -> tuple[dict | None, bool]:
        try:
            recorded = run_config_dict(resolve_run_config(None, None, file_values=read_config_file(run_dir / CONFIG_FILE)))
        except OptionError as exc:
            if (run_dir / CONFIG_FILE).is_file() and not overwrite:
                raise RunDirError(Arg("top.out", _shown(str(run_dir))), f": its {CONFIG_FILE} is unreadable (",
                                  *parts_of(exc), "); pass ", Arg("top.overwrite")) from None
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
        records = _run_recipe(config, run_dir, console, overwrite=overwrite, finetune_callbacks=finetune_callbacks)
        RunLayout(run_dir).publish_model()  # RUN/model.keras: the final model, whichever stage made it
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


def _export(config: RunConfig, run_dir: Path, console: Console, records: dict, stages: "_Stages") -> None:
    """The run's export step, after evaluate and outside the finetune stage's key: exporting trains
    nothing again (both recipes)."""
    from headstart.pipeline.run.export_step import export_stage

    if config.finetune.export:
        console.line(f"[export] → {_shown(str(RunLayout(run_dir).export))}")
        records["export"] = stages.save("export", export_stage(
            config, run_dir, stages.state.get("export"), console,
            key=stage_key({"model": records["finetune"]["model_sha256"], "formats": sorted(config.finetune.export),
                           "quantize": config.finetune.quantize})))


def _run_recipe(config: RunConfig, run_dir: Path, console: Console, *, overwrite: bool,
                finetune_callbacks: Sequence[Any]) -> dict[str, dict]:
    """The one orchestrator (``headstart.pipeline.run.auto.recipe.run_auto``; the guide is its fixed case)
    over stages.json, then the export step."""
    from headstart.pipeline.run.auto.recipe import run_auto

    stages = _Stages(run_dir)
    records = run_auto(config, run_dir, console, stages.save, dict(stages.state), overwrite=overwrite,
                       finetune_callbacks=finetune_callbacks)
    for stage in ("head", "finetune"):
        _replay(config, run_dir, stage)
    _export(config, run_dir, console, records, stages)
    return records


def _replay(config: RunConfig, run_dir: Path, stage: str) -> None:
    """TensorBoard logs of a stage reused from a run without them, from its history.csv."""
    layout = RunLayout(run_dir)
    if config.tensorboard and not layout.tensorboard(stage).is_dir():
        from headstart.pipeline.store.rundir import RunDir
        from headstart.pipeline.report.tensorboard_logs import write_history

        write_history(RunDir(layout.path / stage).history(), layout.tensorboard(stage))


def _summary(config: RunConfig, run_dir: Path, records: dict[str, dict], seconds: float) -> dict:
    from headstart.pipeline.store.provenance import stamp_record
    from headstart.pipeline.run.auto.summary import recipe_section

    evaluate, layout = records["evaluate"], RunLayout(run_dir)
    return stamp_record({
        "kind": "headstart-run",
        "source": config.source,
        "run_dir": str(run_dir),
        "config": str(layout.config),
        "class_names": records["extract"].get("class_names"),
        "stages": {name: StageSummary.from_record(rec).to_dict() for name, rec in records.items() if name != "recipe"},
        "recipe": recipe_section(config, records, seconds),
        "validation": records["finetune"].get("validation"),
        "test": {k: evaluate.get(k) for k in ("split", *HEADLINE, "loss", "rows", "per_class",
                                                "confusion_matrix", "skipped", *MULTI_LABEL_KEYS) if k in evaluate
                 or k not in MULTI_LABEL_KEYS},
        # The evaluated split's ECE (15 bins) and NLL with the model's temperature undone and as it is.
        "calibration": evaluate.get("calibration"),
        # The final model (RUN/model.keras), where it came from, and the image sizes that lost.
        "model": {"path": str(layout.model), "from": "head" if _finetune_skipped(records) else "finetune",
                  "image_size": records["extract"].get("image_size", config.extract.image_size),
                  "cache": str(layout.cache), "head": str(layout.head)},
        "candidates": {str(size): str(folder) for size, folder in layout.candidates().items()},
        "plots": _plots(layout, records),
        "tensorboard": str(layout.tensorboard()) if config.tensorboard else None,
        "report": str(layout.report),
        "seconds": seconds,
    })


def _finetune_skipped(records: dict[str, dict]) -> bool:
    """Whether no fine-tuning epoch ran: the probes found none better than the head."""
    return not StageSummary.from_record(records["finetune"]).ran_epochs


def _plots(layout: RunLayout, records: dict[str, dict]) -> dict[str, str]:
    """summary.png and each stage's curves.png, a stage that ran no epoch left out (no empty chart)."""
    plots = {"summary": str(layout.summary_png), "head": str(layout.head / "curves.png")}
    if not _finetune_skipped(records):
        plots["finetune"] = str(layout.finetune / "curves.png")
    return plots


def _plot(run_dir: Path, summary: dict, console: Console) -> None:
    import numpy as np

    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.report.summary_plot import plot_summary

    layout, samples = RunLayout(run_dir), None
    if layout.samples.is_file():
        with np.load(layout.samples, allow_pickle=False) as z:
            samples = {k: z[k] for k in z.files}
    stages = summary["stages"]
    plot_summary(layout.summary_png,
                 head_history=RunDir(layout.head).history(),
                 finetune_history=RunDir(layout.finetune).history() if "finetune" in summary["plots"] else {},
                 head_best=stages["head"].get("best_epoch"), finetune_best=stages["finetune"].get("best_epoch"),
                 confusion=summary["test"].get("confusion_matrix"), class_names=summary["class_names"] or [],
                 per_class=summary["test"].get("per_class") if summary["test"].get("task") == "multi_label" else None,
                 samples=samples, title=f"headstart run: {summary['source']}")
    console.debug(f"wrote {layout.summary_png}")


STAGE_LABELS = {"extract": "extract-features", "head": "train-head", "finetune": "finetune", "evaluate": "evaluate"}


def format_table(summary: dict) -> str:
    """The per-stage table: status, test accuracy, balanced accuracy and macro-F1, time and images
    per second, then the final model, the candidates and the plots."""
    rows = [("stage", "status", "test accuracy", "balanced acc.", "macro-F1", "time", "images/s")]
    for name in STAGES:
        rec = StageSummary.from_record(summary["stages"].get(name, {}))
        status = (rec.status or "-") + (f", kept {rec.kept}" if rec.kept == "seeded" else "")
        rows.append((STAGE_LABELS[name], status,
                     *("-" if getattr(rec, k) is None else f"{getattr(rec, k):.4f}" for k in HEADLINE),
                     f"{rec.seconds:.1f} s", "-" if not rec.images_per_second else f"{rec.images_per_second:.1f}"))
    from headstart.pipeline.run.auto.summary import format_recipe

    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    recipe = format_recipe(summary)
    lines[:0] = [recipe, ""] if recipe else []
    lines += ["", f"run directory: {_shown(summary['run_dir'])} ({summary['seconds']:.1f} s)"]
    model = summary.get("model") or {}
    if model:
        what = "the chosen head, fine-tuning skipped" if model.get("from") == "head" else "fine-tuned"
        lines.append(f"model: {_shown(model['path'])} ({model.get('image_size')} px; {what})")
    for size, folder in (summary.get("candidates") or {}).items():
        lines.append(f"candidate: {_shown(folder)} ({size} px, not chosen)")
    plots = [_shown(v) for v in summary["plots"].values()]
    lines += [f"plots: {plots[0]}", *(f"       {p}" for p in plots[1:])]
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
