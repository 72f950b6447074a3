"""The ``headstart`` command line: parse options → one library call → print.

Nothing here imports TensorFlow at module level, so ``headstart --help`` stays fast; each command
imports its library module when it runs. Library errors are domain exceptions (``HeadstartError``,
``FeaturesError``) and only the CLI turns them into click errors, with their exit code (2 for input
the user can fix): ``cli_errors.library_call`` wraps every command. Options that set a config field
come from the one table (``options.py``) through ``cli_options``.
"""

from __future__ import annotations

import json
import os

import click

from headstart.pipeline.cli_errors import library_call as _library_call
from headstart.pipeline.cli_options import distribute_options as _distribute_options
from headstart.pipeline.cli_options import field_options as _fields
from headstart.pipeline.cli_options import run_options as _run_options
from headstart.pipeline.config import DiagnoseConfig, ExtractConfig, FinetuneConfig, HeadConfig
from headstart.pipeline.report.printable import printable_lines
from headstart.pipeline.startup import quiet_tensorflow_startup, show_tensorflow_startup


def _echo(message: str = "", err: bool = False) -> None:
    # Every line printed goes through here: labels and file names come from the data, and a control
    # character in one (\r, \n, ESC) must not forge or hide output lines (report/printable.py).
    click.echo(printable_lines(str(message)), err=err)


def _quiet_tensorflow() -> None:
    # TF's C++ log lines after start-up (headstart.pipeline.startup hides those before it) drown the
    # one-line output users read; keep errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _OneLineErrors(click.Group):
    """A group whose usage errors (bad option value, unknown option or command) print one line.

    Click prints the usage block and a hint above the error; dropping the context keeps just
    "Error: …", exit code 2, like every other user-facing error here.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.ctx = None
            raise


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headstart")
@click.option("--quiet", "-q", "global_quiet", is_flag=True,
              help="Print only results and errors (sets --quiet of every command that has it).")
@click.option("--verbose", "-v", "global_verbose", is_flag=True,
              help="Also print the resolved configuration and TensorFlow's own log lines.")
@click.pass_context
def main(ctx: click.Context, global_quiet: bool, global_verbose: bool) -> None:
    """Transfer learning for image classifiers.

    Fast path: `extract-features` caches a frozen ImageNet backbone's features once, then
    `train-head` trains the classifier head on the cache in seconds. End-to-end path: `finetune`
    rebuilds the full model around the trained head and fine-tunes it with BatchNorm kept frozen.
    Whole job in one run directory: `run`. An offline tour on generated images: `demo`.
    """
    # Global flags reach each command through its own --quiet / --verbose, where it has one.
    wanted = {"quiet": global_quiet, "verbose": global_verbose and not global_quiet}
    ctx.default_map = {name: {k: True for k, on in wanted.items() if on and any(p.name == k for p in cmd.params)}
                       for name, cmd in main.commands.items()}
    if global_verbose and not global_quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        quiet_tensorflow_startup()
    _quiet_tensorflow()


@main.command("extract-features")
@click.argument("source")
@_fields("extract", "out", "backbone", "weights", "alpha", "image_size", "pooling", "dtype", "batch_size", "splits",
         "split_specs", "validation_fraction", "test_fraction", "path_column", "label_column", "images",
         "multi_label", "max_bad", "strict", "augment_views", "augment", "seed", "overwrite", "shard")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def extract_features_command(source, out, splits, split_specs, quiet, **options):
    """Run a frozen backbone over SOURCE once and cache its features in HDF5.

    SOURCE is `tfds:NAME` (e.g. tfds:cats_vs_dogs), a folder of class folders, optionally split
    into train/, validation/ and test/, or a .csv/.jsonl label file (path and label columns, an
    optional split column). A killed run resumes when started again with the same command.
    """
    from headstart.pipeline.data.source_spec import parse_split_option
    from headstart.pipeline import extract_features
    from headstart.pipeline.report.progress import ProgressLine
    from headstart.pipeline.report.skipped import SHOWN, skipped_lines

    config = ExtractConfig(source=source, out=out, splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
                           split_specs=parse_split_option(split_specs), **options)
    lines: dict[str, ProgressLine] = {}

    def on_progress(p):
        line = lines.setdefault(p.split, ProgressLine(f"extract {p.split}", quiet=quiet))
        line.update(p.done, p.total, p.images_per_second)

    try:
        summary = extract_features(config, on_progress=on_progress,
                                   log=(lambda m: None) if quiet else (lambda m: _echo(m, err=True)))
    finally:
        for line in lines.values():
            line.close()
    if summary.already_complete:
        _echo(f"{summary.path}: already complete")
        return
    for split, info in summary.splits.items():
        _echo(f"{split}: {info['rows']} rows, {info['skipped']} skipped, "
                   f"{info['images_per_second']:.1f} images/s")
    for line in skipped_lines(summary.skipped, summary.skipped_csv, shown=0 if quiet else SHOWN):
        _echo(line)  # at most SHOWN items, then counts per reason; every one is in the CSV
    _echo(f"wrote {summary.path} ({summary.backbone['backbone']}, {len(summary.class_names)} classes, "
               f"{summary.seconds:.1f} s)")


@main.command("merge-features")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT written with another configuration.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def merge_features_command(out, shards, overwrite, quiet):
    """Join the caches of `extract-features --shard I/N` workers into one cache OUT.

    Give every shard 0/N … N-1/N once, all of one configuration. OUT holds the rows in the order a
    single extract-features run writes them, and no longer needs the shard files.
    """
    from headstart.pipeline import merge_features

    summary = merge_features(out, list(shards), overwrite=overwrite,
                             log=(lambda m: None) if quiet else (lambda m: _echo(m, err=True)))
    if summary.already_complete:
        _echo(f"{summary.path}: already complete")
        return
    for split, info in summary.splits.items():
        _echo(f"{split}: {info['rows']} rows, {info['skipped']} skipped")
    _echo(f"wrote {summary.path} (merged {summary.shards} shards, {summary.seconds:.1f} s)")


@main.command("diagnose")
@click.argument("caches", metavar="CACHE [CACHE...]", nargs=-1, required=True, type=click.Path())
@_fields("diagnose", "out", "folds", "seed", "neighbours", "duplicate_threshold", "constant_std", "grid", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@_library_call
def diagnose_command(caches, quiet, **options):
    """Find label issues, duplicates, train/test leaks and outliers from a feature cache.

    Out-of-fold predictions of K heads (the train-head recipe) go through cleanlab; nearest
    neighbours of the cached features find near-duplicates (far closer than their class's typical
    neighbour, then confirmed on the images' pixels), and content hashes of the source files find
    byte copies; a pair across splits is a leak. More caches of the same images (other backbones)
    list the label issues they all agree on first. Writes label_issues.csv, duplicates.csv,
    outliers.csv, report.json and the grids label_issues.png, duplicates.png.
    Act on it with --exclude OUT/label_issues.csv on train-head, finetune or run.
    """
    from headstart.pipeline.diagnose.diagnosis import diagnose

    result = diagnose(DiagnoseConfig(features=caches[0], other_caches=tuple(caches[1:]), **options),
                      log=(lambda m: None) if quiet else (lambda m: _echo(m, err=True)))
    _echo(result.summary)


@main.command("train-head")
@click.argument("features", type=click.Path())
@_fields("head", "out", "epochs", "lr", "batch_size", "dropout", "head_kind", "hidden_units", "normalize",
         "weight_decay", "label_smoothing", "views", "patience", "seed", "deterministic", "memory_limit_mb", "exclude",
         "class_weight", "monitor")
@_distribute_options("head")
@_fields("head", "tensorboard", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def train_head_command(features, out, quiet, **options):
    """Train the classifier head on a feature cache (seconds, not minutes).

    FEATURES is a cache written by extract-features. The run directory gets head.keras,
    run.json (config and the cache's provenance), metrics.json, history.csv and curves.png.
    """
    from headstart.pipeline import train_head

    result = train_head(HeadConfig(features=features, out=out, **options),
                        log=(lambda m: None) if quiet else (lambda m: _echo(m, err=True)))
    _echo(result.summary)


@main.command("sweep")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@_fields("sweep", "out", "trials", "seed")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file whose [sweep] section changes the search space (ranges, choices, epochs, parallel).")
@_fields("sweep", "storage", "jit_compile", "tensorboard", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@_library_call
def sweep_command(caches, config_file, quiet, **options):
    """Search head configurations on one or several caches with Optuna; keep the best.

    Several CACHES (one per backbone, image size or pooling, of the same images) make a backbone
    shoot-out. Trials are trained many at a time in one compiled step. Kill it and run it again:
    the study in DIR/study.db resumes; --trials counts the total. DIR gets leaderboard.csv,
    sweep.png and best/, a train-head run directory for `finetune --head DIR/best`.
    """
    from headstart.pipeline.config import SweepConfig
    from headstart.pipeline.sweep.space import SearchSpace, read_space_file
    from headstart.pipeline.sweep.study import run_sweep

    config = SweepConfig(caches=tuple(caches), **options)
    space = read_space_file(config_file) if config_file else SearchSpace()
    from headstart.pipeline.report.progress import ProgressLine

    bar = ProgressLine("sweep", quiet=quiet, log_every=float("inf"))
    log = (lambda m: None) if quiet else (lambda m: (bar.close(), _echo(m, err=True)))
    try:
        result = run_sweep(config, space, log=log,
                           on_trial=lambda done, total, rate: bar.update(done, total, rate, unit="trial")
                           if bar.tty else None)
    finally:
        bar.close()
    _echo(result.table)
    best = result.best
    test = "-" if result.best_test_accuracy is None else f"{result.best_test_accuracy:.4f}"
    _echo(f"{result.finished} trials ({result.trained_here} trained here) in {result.seconds:.1f} s; best: "
               f"trial {best.get('number', '-')} on {best.get('cache', '-')}, test accuracy {test} -> "
               f"{result.out}/best")


@main.command("finetune")
@click.argument("source")
@_fields("finetune", "head", "out", "backbone", "weights", "alpha", "image_size", "pooling", "split_specs",
         "path_column", "label_column", "images", "multi_label", "epochs",
         "lr", "batch_size", "head_epochs", "head_lr", "head_batch_size", "unfreeze", "augment", "patience", "seed",
         "deterministic", "parity_samples", "resume", "export", "quantize", "exclude", "class_weight", "monitor")
@_distribute_options("finetune")
@_fields("finetune", "tensorboard", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def finetune_command(source, split_specs, export, quiet, **options):
    """Fine-tune the whole model end to end, seeded with a trained head.

    Rebuilds raw image → augmentation → preprocessing → backbone → pooling → head from the head
    run's provenance, checks that it reproduces the head's logits on cached features, unfreezes
    the backbone with every BatchNorm layer kept frozen, and writes model.keras (raw images in,
    logits out) with metrics, history and curves.
    """
    from headstart.pipeline.data.source_spec import parse_split_option
    from headstart.pipeline import finetune

    config = FinetuneConfig(source=source, split_specs=parse_split_option(split_specs), export=tuple(export), **options)
    result = finetune(config, log=(lambda m: None) if quiet else (lambda m: _echo(m, err=True)))
    _echo(result.summary)


@main.command("evaluate")
@click.argument("model", type=click.Path())
@click.argument("source")
@click.option("--split", default="test", show_default=True, help="Split of SOURCE to evaluate.")
@_fields("extract", "path_column", "label_column", "images", "multi_label")
@click.option("--batch-size", type=int, default=None, help="Default: what the run used.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Write a PNG grid of the most confidently wrong images.")
@click.option("--grid-size", type=int, default=16, show_default=True, help="Images in the grid.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def evaluate_command(model, source, split, as_json, **options):
    """Evaluate a model (model.keras or a finetune run directory) on a split of SOURCE.

    Prints accuracy, balanced accuracy, macro-F1, loss, per-class precision/recall and the
    confusion matrix.
    """
    from headstart.pipeline.stages.evaluation import evaluate_model, format_evaluation

    result = evaluate_model(model, source, split, **options)
    _echo(json.dumps(result, indent=2, default=str) if as_json else format_evaluation(result))


@main.command("predict")
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows to this CSV file.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@_library_call
def predict_command(model, paths, csv_path, batch_size):
    """Predict the class of images or folders of images with a model.

    MODEL is model.keras or its run directory, or an export: a SavedModel directory, model.onnx
    or model.tflite. One line per image: path, class, probability; for a multi-label model the
    label set (each class at or above its saved threshold) with each probability. Bad files are
    reported and do not stop the others; the exit status is then 1.
    """
    from headstart.pipeline.stages.prediction import format_prediction, predict_images, write_predictions_csv

    rows = predict_images(model, paths, batch_size=batch_size)
    for row in rows:
        _echo(format_prediction(row))
    if csv_path:
        write_predictions_csv(rows, csv_path)
    failed = sum(1 for row in rows if row.error)
    if failed:  # every row is printed first; then the exit status says that not all were read
        _echo(f"Error: {failed} of {len(rows)} input(s) could not be read (their lines say why)", err=True)
        raise SystemExit(1)


@main.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def backbones_command(as_json):
    """List the registered backbones: family, preprocessing, minimum input size, feature size and
    parameter count. Instant: nothing is built or downloaded."""
    from headstart.features.registry import backbone_rows, format_backbone_table

    rows = backbone_rows()
    _echo(json.dumps(rows, indent=2) if as_json else format_backbone_table(rows))


@main.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def inspect_command(path, as_json):
    """Show what a feature cache or run directory holds: provenance, splits, classes, scores."""
    from headstart.pipeline.report.inspection import inspect_path, format_inspection

    info = inspect_path(path)
    _echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


@main.command("run")
@click.argument("source", required=False)
@click.option("--out", type=click.Path(),
              help="Run directory: features.h5, head/, finetune/, summary.json, summary.png.")
@click.option("--config", "config_file", type=click.Path(), metavar="FILE",
              help="TOML file with [extract], [head] and [finetune] sections; flags override it.")
@_run_options
@click.option("--sweep", type=int, default=None, metavar="N",
              help="Make the head stage a sweep of N trials (headstart sweep; search space in --config [sweep]); "
                   "the best head goes on to finetune.")
@click.option("--overwrite", is_flag=True, help="Reuse a run directory made with another configuration, "
              "redoing the stages that change.")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@click.option("--verbose", is_flag=True, help="Also print the resolved configuration and TensorFlow's log lines.")
@_library_call
def run_command(source, out, config_file, overwrite, quiet, verbose, **flags):
    """Run extract-features → train-head → finetune → evaluate into one run directory.

    SOURCE is `tfds:NAME`, a folder of class folders or a .csv/.jsonl label file (or `source` in --config). With no options,
    `headstart run tfds:cats_vs_dogs --out runs/guide` follows the Keras guide end to end. Run the
    same command again: finished stages are reused, an interrupted one resumes. The resolved
    config is written to RUN_DIR/config.toml; `--config RUN_DIR/config.toml` reproduces the run.
    """
    from headstart.pipeline import load_run_config, run_pipeline
    from headstart.pipeline.run.console import Console

    if verbose and not quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        show_tensorflow_startup()
    config = load_run_config(source, out, config_file=config_file, flags=flags)
    result = run_pipeline(config, overwrite=overwrite,
                          console=Console(lambda m: _echo(m, err=True), quiet=quiet, verbose=verbose))
    _echo(result.table)


@main.command("demo")
@_fields("demo", "out", "data", "weights", "images_per_class", "head_epochs", "epochs", "seed", "tensorboard",
         "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@click.option("--verbose", is_flag=True, help="Also print the resolved configuration and TensorFlow's log lines.")
@_library_call
def demo_command(quiet, verbose, **options):
    """Run the whole pipeline on generated images of shapes, offline, in a few minutes.

    Draws circles, squares and triangles (random place, size, colour, noise), then runs
    extract-features → train-head → finetune → evaluate with a small MobileNetV2 and prints a table
    per stage. Use --weights PATH and --data DIR to try it on real material.
    """
    from headstart.pipeline.config import DemoConfig
    from headstart.pipeline.run.console import Console
    from headstart.pipeline.run.demo import run_demo

    if verbose and not quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        show_tensorflow_startup()
    result, weights = run_demo(DemoConfig(**options),
                               console=Console(lambda m: _echo(m, err=True), quiet=quiet, verbose=verbose))
    _echo(f"headstart demo: {weights}")
    _echo(result.table)


if __name__ == "__main__":  # pragma: no cover
    main()
