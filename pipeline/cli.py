"""The ``headstart`` command line: parse options → one library call → print.

No TensorFlow at module level (``headstart --help`` stays fast): each command imports its library
module when it runs. Domain exceptions become one-line click errors with their exit code only in
``cli_errors.library_call``. Options that set a config field come from the option table via ``cli_options``.
"""

from __future__ import annotations

import os

import click

from headstart.pipeline.cli_errors import OneLineErrors
from headstart.pipeline.cli_errors import library_call as _library_call
from headstart.pipeline.cli_options import distribute_options as _distribute_options
from headstart.pipeline.cli_options import field_options as _fields
from headstart.pipeline.cli_options import run_options as _run_options
from headstart.pipeline.cli_output import console as _console
from headstart.pipeline.cli_output import echo as _echo
from headstart.pipeline.cli_output import echo_json as _echo_json
from headstart.pipeline.config import DiagnoseConfig, ExtractConfig, FinetuneConfig, HeadConfig, SplitConfig
from headstart.pipeline.startup import quiet_tensorflow_startup, show_tensorflow_startup
from headstart.pipeline.cli_models import evaluate_command, export_command, predict_command, report_command


def _show_tensorflow(verbose: bool) -> None:
    if verbose:  # --verbose of run and demo: TensorFlow's own lines too
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        show_tensorflow_startup()


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
    Whole job in one run directory: `run`. Deployable files from a trained model: `export`. An offline
    tour on generated images: `demo`.
    """
    # Global flags reach each command through its own --quiet / --verbose, where it has one.
    wanted = {"quiet": global_quiet, "verbose": global_verbose and not global_quiet}
    ctx.default_map = {name: {k: True for k, on in wanted.items() if on and any(p.name == k for p in cmd.params)}
                       for name, cmd in main.commands.items()}
    if global_verbose and not global_quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        quiet_tensorflow_startup()
    # TF's C++ log lines after start-up (startup.py hides those before it) drown the one-line output
    # users read; keep errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@main.command("extract-features")
@click.argument("source")
@_fields("extract", "out", "backbone", "weights", "alpha", "image_size", "pooling", "dtype", "batch_size", "splits",
         "split_specs", "validation_fraction", "test_fraction", "path_column", "label_column", "images",
         "multi_label", "max_bad", "strict", "augment_views", "augment", "seed", "overwrite", "shard", "tap")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def extract_features_command(source, out, splits, split_specs, quiet, **options):
    """Run a frozen backbone over SOURCE once and cache its features in HDF5.

    SOURCE is `tfds:NAME` (e.g. tfds:cats_vs_dogs), a folder of class folders, optionally split
    into train/, validation/ and test/, or a .csv/.jsonl label file (path and label columns, an
    optional split column). A killed run resumes when started again with the same command.
    """
    from headstart.pipeline.data.source_spec import parse_split_option
    from headstart.pipeline.report.skipped import SHOWN, skipped_lines
    from headstart.pipeline.commands.extraction import extract_features

    config = ExtractConfig(source=source, out=out, splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
                           split_specs=parse_split_option(split_specs), **options)
    console = _console(quiet)
    try:
        summary = extract_features(config, reporter=console)
    finally:
        console.close()
    if summary.already_complete:
        _echo(f"{summary.path}: already complete")
        return
    for split, info in summary.splits.items():
        _echo(f"{split}: {info['rows']} rows, {info['skipped']} skipped, {info['images_per_second']:.1f} images/s")
    for line in skipped_lines(summary.skipped, summary.skipped_csv, shown=0 if quiet else SHOWN):
        _echo(line)  # at most SHOWN items, then counts per reason; every one is in the CSV
    _echo(f"wrote {summary.path} ({summary.backbone['backbone']}, {len(summary.class_names)} classes, {summary.seconds:.1f} s)")


@main.command("split")
@click.argument("source", type=click.Path())
@_fields("split", "out", "fractions", "seed", "copy", "overwrite")
@_library_call
def split_command(source, **options):
    """Lay out a folder of class folders as OUT/{train,validation,test}/<class>/, stratified per class;
    links to SOURCE's files (--copy copies them), files with the same bytes in one split."""
    from headstart.pipeline.commands.splitting import split_folders

    _echo(split_folders(SplitConfig(source=source, **options)).table())


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
    from headstart.pipeline.commands.merging import merge_features

    summary = merge_features(out, list(shards), overwrite=overwrite, reporter=_console(quiet))
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
                      reporter=_console(quiet))
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
    from headstart.pipeline.commands.head_training import train_head

    result = train_head(HeadConfig(features=features, out=out, **options), reporter=_console(quiet))
    _echo(result.summary)


@main.command("sweep")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@_fields("sweep", "out", "trials", "seed")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file whose [sweep] section changes the search space (ranges, choices, epochs, parallel).")
@_fields("sweep", "monitor", "class_weight", "storage", "jit_compile", "tensorboard", "overwrite")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@_library_call
def sweep_command(caches, config_file, quiet, **options):
    """Search head configurations on one or several caches with Optuna; keep the best.

    Several CACHES (one per backbone, image size or pooling, of the same images) make a backbone
    shoot-out. Trials are trained many at a time in one compiled step and ranked by --monitor on
    validation (a multi-label cache: sigmoid heads, validation mAP). Kill it and run it again:
    the study in DIR/study.db resumes; --trials counts the total. DIR gets leaderboard.csv,
    sweep.png and best/, a train-head run directory for `finetune --head DIR/best`.
    """
    from headstart.pipeline.config import SweepConfig
    from headstart.pipeline.sweep.space import SearchSpace, read_space_file
    from headstart.pipeline.sweep.study import run_sweep

    config = SweepConfig(caches=tuple(caches), **options)
    space = read_space_file(config_file) if config_file else SearchSpace()
    from headstart.features.reporter import LineReporter
    from headstart.pipeline.report.progress import ProgressLine

    bar = ProgressLine("sweep", quiet=quiet, log_every=float("inf"))
    write = (lambda m: None) if quiet else (lambda m: (bar.close(), _echo(m, err=True)))
    try:
        result = run_sweep(config, space, reporter=LineReporter(write),
                           on_trial=lambda done, total, rate: bar.update(done, total, rate, unit="trial")
                           if bar.tty else None)
    finally:
        bar.close()
    _echo(result.table)
    best, measure = result.best, "mAP" if "map" in result.best_test else "accuracy"
    test = result.best_test.get("map" if measure == "mAP" else "accuracy")
    _echo(f"{result.finished} trials ({result.trained_here} trained here) in {result.seconds:.1f} s; best: "
               f"trial {best.get('number', '-')} on {best.get('cache', '-')}, test {measure} "
               f"{'-' if test is None else f'{test:.4f}'} -> {result.out}/best")


@main.command("finetune")
@click.argument("source")
@_fields("finetune", "head", "out", "backbone", "weights", "alpha", "image_size", "pooling", "split_specs",
         "path_column", "label_column", "images", "multi_label", "epochs",
         "lr", "batch_size", "head_epochs", "head_lr", "head_batch_size", "unfreeze", "augment", "trial_views", "probe", "probe_steps",
         "patience", "seed", "deterministic", "parity_samples", "resume", "export", "quantize", "calibrate", "exclude",
         "class_weight", "monitor", "on_cache")
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
    from headstart.pipeline.finetuning.finetuning import finetune

    config = FinetuneConfig(source=source, split_specs=parse_split_option(split_specs), export=tuple(export), **options)
    console = _console(quiet)
    result = finetune(config, reporter=console)
    _echo(result.summary)


@main.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def backbones_command(as_json):
    """List the registered backbones: family, preprocessing, minimum input size, feature size and
    parameter count. Instant: nothing is built or downloaded."""
    from headstart.features.registry import backbone_rows, format_backbone_table

    rows = backbone_rows()
    _echo_json(rows) if as_json else _echo(format_backbone_table(rows))


@main.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def inspect_command(path, as_json):
    """Show what a feature cache or run directory holds: provenance, splits, classes, scores."""
    from headstart.pipeline.report.inspection import inspect_path, format_inspection

    info = inspect_path(path)
    _echo_json(info) if as_json else _echo(format_inspection(info))


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

    SOURCE is `tfds:NAME`, a folder of class folders or a .csv/.jsonl label file (or `source` in --config).
    By default (--recipe auto) what you leave unset is chosen on validation (augmentation, head, image
    size, fine-tuning rate and depth); --recipe guide is the Keras guide's fixed recipe. Run it again:
    finished stages are reused, an interrupted one resumes; `--config RUN_DIR/config.toml` reproduces it.
    """
    from headstart.pipeline.run.runner import load_run_config, run_pipeline
    from headstart.pipeline.run.console import Console

    _show_tensorflow(verbose and not quiet)
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

    _show_tensorflow(verbose and not quiet)
    result, weights = run_demo(DemoConfig(**options),
                               console=Console(lambda m: _echo(m, err=True), quiet=quiet, verbose=verbose))
    _echo(f"headstart demo: {weights}")
    _echo(result.table)


# The commands on a trained model or a finished run live in cli_models.py; registered before any
# `python -m headstart.pipeline.cli` call below runs the group.
for _command in (evaluate_command, predict_command, export_command, report_command):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
