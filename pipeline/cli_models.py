"""``headstart`` commands that take a trained model or a finished run: evaluate, predict, export, report.

A part of the command line (``cli.py`` adds them to its group), by concept: each reads a model or a
run directory that the training commands wrote. The same rules as ``cli.py``: parse options → one
library call → print; no TensorFlow at module level.
"""

from __future__ import annotations

import click

from headstart.pipeline.cli_errors import library_call as _library_call
from headstart.pipeline.cli_options import field_options as _fields
from headstart.pipeline.cli_output import console as _console
from headstart.pipeline.cli_output import echo as _echo
from headstart.pipeline.cli_output import echo_json as _echo_json


@click.command("evaluate")
@click.argument("model", type=click.Path())
@click.argument("source")
@click.option("--split", default="test", show_default=True, help="Split of SOURCE to evaluate.")
@_fields("extract", "path_column", "label_column", "images", "multi_label")
@_fields("evaluate", "batch_size")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Write a PNG grid of the most confidently wrong images.")
@_fields("evaluate", "grid_size")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def evaluate_command(model, source, split, as_json, **options):
    """Evaluate a model (model.keras, a finetune run directory, or a `headstart run` directory: its final model) on a split of SOURCE.

    Prints accuracy, balanced accuracy, macro-F1, loss, per-class precision/recall and the
    confusion matrix.
    """
    from headstart.features.reporter import ProgressOnly
    from headstart.pipeline.commands.evaluation import evaluate_model, format_evaluation

    # The headline is the table's first line: nothing but the result goes to stdout.
    result = evaluate_model(model, source, split, reporter=ProgressOnly(_console()),
                            note=lambda m: _echo(m, err=True), **options)
    _echo_json(result) if as_json else _echo(format_evaluation(result))


@click.command("predict")
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows to this CSV file.")
@_fields("predict", "batch_size")
@_library_call
def predict_command(model, paths, csv_path, batch_size):
    """Predict the class of images or folders of images with a model.

    MODEL is model.keras or its run directory, a `headstart run` directory (its final model), or an export: a SavedModel directory, model.onnx
    or model.tflite. One line per image: path, class, probability; for a multi-label model the
    label set (each class at or above its saved threshold) with each probability. Bad files are
    reported and do not stop the others; the exit status is then 1.
    """
    from headstart.pipeline.commands.prediction import format_prediction, predict_images, write_predictions_csv

    rows = predict_images(model, paths, batch_size=batch_size, reporter=_console(),
                          note=lambda m: _echo(m, err=True))
    for row in rows:
        _echo(format_prediction(row))
    if csv_path:
        write_predictions_csv(rows, csv_path)
    failed = sum(1 for row in rows if row.error)
    if failed:  # every row is printed first; then the exit status says that not all were read
        _echo(f"Error: {failed} of {len(rows)} input(s) could not be read (their lines say why)", err=True)
        raise SystemExit(1)


@click.command("export")
@click.argument("model", metavar="RUN_OR_MODEL", type=click.Path())
@_fields("export", "out", "formats", "quantize", "source", "weights", "batch_size", "parity_samples", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@_library_call
def export_command(model, formats, quiet, **options):
    """Export a trained model for deployment, each format checked by its own runtime.

    RUN_OR_MODEL is a finetune run (or its model.keras), a train-head run or a sweep directory (the
    model is rebuilt on raw images from the head's recipe and checked against its cache), or a
    `headstart run` directory (its final model, RUN/model.keras). DIR gets saved_model/, model.onnx, model.tflite and export.json.
    """
    from headstart.pipeline.config import ExportConfig
    from headstart.pipeline.commands.exporting import export_model_dir

    console = _console(quiet)
    result = export_model_dir(ExportConfig(model=model, formats=tuple(formats), **options), reporter=console)
    _echo(result.summary)


@click.command("report")
@click.argument("run_dir", type=click.Path())
@_library_call
def report_command(run_dir):
    """Write RUN_DIR/report.html (decisions, stages, curves, mistakes, calibration) for a finished run."""
    from headstart.pipeline.run.report_html import write_report
    _echo(f"report: {write_report(run_dir)}")
