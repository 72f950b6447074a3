"""The ``headstart`` command line: parse options → one library call → print.

Nothing here imports TensorFlow at module level, so ``headstart --help`` stays fast; each command
imports its library module when it runs. Library errors are domain exceptions (``HeadstartError``,
``FeaturesError``) and only this file turns them into click errors, with their exit code (2 for
input the user can fix).
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from headstart.features.errors import FeaturesError
from headstart.pipeline.config import ExtractConfig, FinetuneConfig, HeadConfig
from headstart.pipeline.distribute.strategy import STRATEGIES
from headstart.pipeline.errors import HeadstartError

_EXTRACT = ExtractConfig()
_HEAD = HeadConfig()
_FINETUNE = FinetuneConfig()


class _CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _library_call(fn):
    """Turns domain exceptions into one-line click errors; Ctrl-C into a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (HeadstartError, FeaturesError) as exc:
            raise _CliError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                            getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


def _quiet_tensorflow() -> None:
    # TF's C++ start-up chatter drowns the one-line output users read; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _distribute_options(fn):
    """--strategy, --mixed-precision and --jit-compile, shared by the training commands."""
    fn = click.option("--jit-compile", is_flag=True, help="Compile the training step with XLA.")(fn)
    fn = click.option("--mixed-precision", is_flag=True,
                      help="Compute in mixed_float16 on GPU, mixed_bfloat16 on CPU; logits stay float32.")(fn)
    return click.option("--strategy", type=click.Choice(STRATEGIES), default=_HEAD.strategy, show_default=True,
                        help="tf.distribute strategy: mirrored (local GPUs), multiworker (TF_CONFIG), default "
                             "(one device); auto picks multiworker with a TF_CONFIG cluster, mirrored with 2+ GPUs.")(fn)


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
    _quiet_tensorflow()


@main.command("extract-features")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write, e.g. features.h5.")
@click.option("--backbone", default=_EXTRACT.backbone, show_default=True,
              help="Backbone from the registry: xception, mobilenet, mobilenet_v2, resnet50, efficientnetv2_b0.")
@click.option("--weights", default=_EXTRACT.weights, show_default=True,
              help="'imagenet' (downloaded once by Keras), 'none' (random), or a local .h5/.weights.h5 file.")
@click.option("--alpha", type=float, default=None, help="Width multiplier for mobilenet and mobilenet_v2.")
@click.option("--image-size", type=int, default=_EXTRACT.image_size, show_default=True, help="Square input size in pixels.")
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=_EXTRACT.pooling, show_default=True,
              help="Pool the feature map (avg, max) or keep it spatial (none).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=_EXTRACT.dtype, show_default=True,
              help="Storage type of the cached features.")
@click.option("--batch-size", type=int, default=_EXTRACT.batch_size, show_default=True, help="Images per forward pass.")
@click.option("--splits", default=",".join(_EXTRACT.splits), show_default=True, help="Comma-separated splits to extract.")
@click.option("--split", "split_specs", multiple=True, metavar="NAME=SPEC",
              help="Override a split: TFDS slicing (train=train[:80%]); repeatable.")
@click.option("--validation-fraction", type=float, default=_EXTRACT.validation_fraction, show_default=True,
              help="Share of a single class-folder tree held out for validation (stable hash of the path).")
@click.option("--test-fraction", type=float, default=_EXTRACT.test_fraction, show_default=True,
              help="Share of a single class-folder tree held out for testing.")
@click.option("--max-bad", type=int, default=None, help="Fail when more than this many images are skipped (default: any).")
@click.option("--strict", is_flag=True, help="Fail on the first bad image, before writing any features.")
@click.option("--augment-views", type=int, default=_EXTRACT.augment_views, show_default=True,
              help="Extra augmented views stored per training image, for augmentation on the fast path.")
@click.option("--augment", default=_EXTRACT.augment, show_default=True, help="Augmentation for --augment-views.")
@click.option("--seed", type=int, default=_EXTRACT.seed, show_default=True, help="Seed of the augmented views.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache written with another configuration.")
@click.option("--shard", default=None, metavar="I/N",
              help="Be worker I of N (from 0): extract a stable 1/N of each split into --out; join the N "
                   "files with merge-features.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def extract_features_command(source, out, splits, split_specs, quiet, **options):
    """Run a frozen backbone over SOURCE once and cache its features in HDF5.

    SOURCE is `tfds:NAME` (e.g. tfds:cats_vs_dogs) or a folder of class folders, optionally split
    into train/, validation/ and test/. A killed run resumes when started again with the same
    command.
    """
    from headstart.pipeline.data.sources import parse_split_option
    from headstart.pipeline.stages.extraction import extract_features
    from headstart.pipeline.report.progress import ProgressLine

    config = ExtractConfig(source=source, out=out, splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
                           split_specs=parse_split_option(split_specs), **options)
    lines: dict[str, ProgressLine] = {}

    def on_progress(p):
        line = lines.setdefault(p.split, ProgressLine(f"extract {p.split}", quiet=quiet))
        line.update(p.done, p.total, p.images_per_second)

    try:
        summary = extract_features(config, on_progress=on_progress,
                                   log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    finally:
        for line in lines.values():
            line.close()
    if summary.already_complete:
        click.echo(f"{summary.path}: already complete")
        return
    for split, info in summary.splits.items():
        click.echo(f"{split}: {info['rows']} rows, {info['skipped']} skipped, "
                   f"{info['images_per_second']:.1f} images/s")
    for split, key, reason in summary.skipped:
        click.echo(f"skipped [{split}] {key}: {reason}")
    click.echo(f"wrote {summary.path} ({summary.backbone['backbone']}, {len(summary.class_names)} classes, "
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
    from headstart.pipeline.stages.extraction import merge_features

    summary = merge_features(out, list(shards), overwrite=overwrite,
                             log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    if summary.already_complete:
        click.echo(f"{summary.path}: already complete")
        return
    for split, info in summary.splits.items():
        click.echo(f"{split}: {info['rows']} rows, {info['skipped']} skipped")
    click.echo(f"wrote {summary.path} (merged {summary.shards} shards, {summary.seconds:.1f} s)")


@main.command("train-head")
@click.argument("features", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--epochs", type=int, default=_HEAD.epochs, show_default=True, help="Most epochs; early stopping may end sooner.")
@click.option("--lr", type=float, default=_HEAD.lr, show_default=True, help="Adam learning rate.")
@click.option("--batch-size", type=int, default=_HEAD.batch_size, show_default=True, help="Rows per step.")
@click.option("--dropout", type=float, default=_HEAD.dropout, show_default=True, help="Dropout before the Dense layer.")
@click.option("--patience", type=int, default=_HEAD.patience, show_default=True,
              help="Epochs without a better validation loss before stopping (best weights restored).")
@click.option("--seed", type=int, default=_HEAD.seed, show_default=True, help="Seed of initialisation, shuffling and view sampling.")
@click.option("--deterministic", is_flag=True, help="Bit-identical results for the same seed (slower ops).")
@click.option("--memory-limit-mb", type=int, default=_HEAD.memory_limit_mb, show_default=True,
              help="Load features into memory up to this size; stream them from HDF5 beyond it.")
@_distribute_options
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def train_head_command(features, out, quiet, **options):
    """Train the classifier head on a feature cache (seconds, not minutes).

    FEATURES is a cache written by extract-features. The run directory gets head.keras,
    run.json (config and the cache's provenance), metrics.json, history.csv and curves.png.
    """
    from headstart.pipeline.stages.head_training import train_head

    result = train_head(HeadConfig(features=features, out=out, **options),
                        log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    click.echo(result.summary)


@main.command("finetune")
@click.argument("source")
@click.option("--head", type=click.Path(file_okay=False), default=None,
              help="train-head run directory to seed from; without it, the head is trained first on the frozen backbone.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--backbone", default=None, help="Only without --head (default xception); with --head it comes from the head run.")
@click.option("--weights", default=None, help="imagenet, none or a file; with --head only to point at a moved file (fingerprint checked).")
@click.option("--alpha", type=float, default=None, help="Width multiplier for mobilenet backbones (without --head).")
@click.option("--image-size", type=int, default=None, help="Input size (without --head; default 150).")
@click.option("--pooling", type=click.Choice(["avg", "max", "none"]), default=None, help="Pooling (without --head; default avg).")
@click.option("--split", "split_specs", multiple=True, metavar="NAME=SPEC", help="TFDS split override; repeatable.")
@click.option("--epochs", type=int, default=_FINETUNE.epochs, show_default=True, help="Most fine-tuning epochs.")
@click.option("--lr", type=float, default=_FINETUNE.lr, show_default=True, help="Adam learning rate for fine-tuning.")
@click.option("--batch-size", type=int, default=_FINETUNE.batch_size, show_default=True, help="Batch size of the fine-tune stage.")
@click.option("--head-epochs", type=int, default=_FINETUNE.head_epochs, show_default=True, help="Head epochs when there is no --head.")
@click.option("--head-lr", type=float, default=_FINETUNE.head_lr, show_default=True, help="Head learning rate when there is no --head.")
@click.option("--head-batch-size", type=int, default=_FINETUNE.head_batch_size, show_default=True,
              help="Batch size of the head stage when there is no --head.")
@click.option("--unfreeze", default=_FINETUNE.unfreeze, show_default=True,
              help="all, top:N (last N backbone layers) or from:LAYER; BatchNorm always stays frozen.")
@click.option("--augment", default=_FINETUNE.augment, show_default=True, help="Augmentation, e.g. flip,rotate=0.1 or none.")
@click.option("--patience", type=int, default=_FINETUNE.patience, show_default=True, help="Early-stopping patience on validation loss.")
@click.option("--seed", type=int, default=_FINETUNE.seed, show_default=True, help="Seed of shuffling and augmentation.")
@click.option("--parity-samples", type=int, default=_FINETUNE.parity_samples, show_default=True,
              help="Validation images checked against the cached features before training (0: off).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last completed epoch.")
@click.option("--export", multiple=True, type=click.Choice(["saved_model", "tflite"]), help="Also export; repeatable.")
@_distribute_options
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@_library_call
def finetune_command(source, split_specs, export, quiet, **options):
    """Fine-tune the whole model end to end, seeded with a trained head.

    Rebuilds raw image → augmentation → preprocessing → backbone → pooling → head from the head
    run's provenance, checks that it reproduces the head's logits on cached features, unfreezes
    the backbone with every BatchNorm layer kept frozen, and writes model.keras (raw images in,
    logits out) with metrics, history and curves.
    """
    from headstart.pipeline.data.sources import parse_split_option
    from headstart.pipeline.stages.finetuning import finetune

    config = FinetuneConfig(source=source, split_specs=parse_split_option(split_specs), export=tuple(export), **options)
    result = finetune(config, log=(lambda m: None) if quiet else (lambda m: click.echo(m, err=True)))
    click.echo(result.summary)


@main.command("evaluate")
@click.argument("model", type=click.Path())
@click.argument("source")
@click.option("--split", default="test", show_default=True, help="Split of SOURCE to evaluate.")
@click.option("--batch-size", type=int, default=None, help="Default: what the run used.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Write a PNG grid of the most confidently wrong images.")
@click.option("--grid-size", type=int, default=16, show_default=True, help="Images in the grid.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def evaluate_command(model, source, split, as_json, **options):
    """Evaluate a model (model.keras or a finetune run directory) on a split of SOURCE.

    Prints accuracy, loss, per-class precision/recall and the confusion matrix.
    """
    from headstart.pipeline.stages.evaluation import evaluate_model, format_evaluation

    result = evaluate_model(model, source, split, **options)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else format_evaluation(result))


@main.command("predict")
@click.argument("model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the rows to this CSV file.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@_library_call
def predict_command(model, paths, csv_path, batch_size):
    """Predict the class of images or folders of images with a model.

    One line per image: path, class, probability. Bad files are reported, not fatal.
    """
    from headstart.pipeline.stages.evaluation import predict_images, write_predictions_csv

    rows = predict_images(model, paths, batch_size=batch_size)
    for row in rows:
        if row.error:
            click.echo(f"{row.path}\terror: {row.error}")
        else:
            click.echo(f"{row.path}\t{row.label}\t{row.probability:.4f}")
    if csv_path:
        write_predictions_csv(rows, csv_path)


@main.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_library_call
def inspect_command(path, as_json):
    """Show what a feature cache or run directory holds: provenance, splits, classes, scores."""
    from headstart.pipeline.report.inspection import inspect_path, format_inspection

    info = inspect_path(path)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


def _run_options(fn):
    """Adds the stage flags of ``headstart run`` (headstart.pipeline.run.toml_config.RUN_OPTIONS); unset → None."""
    from headstart.pipeline.run.toml_config import RUN_OPTIONS, option_default

    for option in reversed(RUN_OPTIONS):
        default = option_default(option)
        shown = ("on" if default else "off") if isinstance(default, bool) else \
            None if isinstance(default, (tuple, dict)) else default
        text = option.help + (f"  [default: {shown}]" if shown not in (None, "", ()) else "")
        choice = click.Choice(option.choices) if option.choices else None
        if option.kind == "bool":
            fn = click.option(option.flag, option.dest, default=None, help=text)(fn)
        elif option.kind == "multi":
            fn = click.option(option.flag, option.dest, multiple=True, type=choice or str,
                              metavar="NAME=SPEC" if not choice else None, help=text)(fn)
        else:
            kind = choice or {"int": int, "float": float, "str": str}[option.kind]
            fn = click.option(option.flag, option.dest, type=kind, default=None, help=text)(fn)
    return fn


@main.command("run")
@click.argument("source", required=False)
@click.option("--out", type=click.Path(),
              help="Run directory: features.h5, head/, finetune/, summary.json, summary.png.")
@click.option("--config", "config_file", type=click.Path(), metavar="FILE",
              help="TOML file with [extract], [head] and [finetune] sections; flags override it.")
@_run_options
@click.option("--overwrite", is_flag=True, help="Reuse a run directory made with another configuration, "
              "redoing the stages that change.")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@click.option("--verbose", is_flag=True, help="Also print the resolved configuration and TensorFlow's log lines.")
@_library_call
def run_command(source, out, config_file, overwrite, quiet, verbose, **flags):
    """Run extract-features → train-head → finetune → evaluate into one run directory.

    SOURCE is `tfds:NAME` or a folder of class folders (or `source` in --config). With no options,
    `headstart run tfds:cats_vs_dogs --out runs/guide` follows the Keras guide end to end. Run the
    same command again: finished stages are reused, an interrupted one resumes. The resolved
    config is written to RUN_DIR/config.toml; `--config RUN_DIR/config.toml` reproduces the run.
    """
    from headstart.pipeline.run.runner import Console, load_run_config, run_pipeline

    if verbose and not quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    config = load_run_config(source, out, config_file=config_file, flags=flags)
    result = run_pipeline(config, overwrite=overwrite,
                          console=Console(lambda m: click.echo(m, err=True), quiet=quiet, verbose=verbose))
    click.echo(result.table)


@main.command("demo")
@click.option("--out", default="headstart-demo", show_default=True, type=click.Path(),
              help="Folder for the generated images (data/) and the run directory (run/).")
@click.option("--data", type=click.Path(), default=None,
              help="Train on this folder of class folders instead of the generated shapes.")
@click.option("--weights", default=None, help="'imagenet', 'none' or a local .h5 file.  [default: ImageNet "
              "when Keras has them cached or can fetch them, else a random backbone]")
@click.option("--images-per-class", type=int, default=150, show_default=True,
              help="Generated images per class (70% train, 10% validation, 20% test).")
@click.option("--head-epochs", type=int, default=20, show_default=True, help="Most epochs of the head.")
@click.option("--epochs", type=int, default=4, show_default=True, help="Most fine-tuning epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated images and every stage.")
@click.option("--tensorboard", is_flag=True, help="Write TensorBoard logs of both training stages.")
@click.option("--overwrite", is_flag=True, help="Redo the stages whose configuration changed since the last demo.")
@click.option("--quiet", is_flag=True, help="Print only the final table.")
@click.option("--verbose", is_flag=True, help="Also print the resolved configuration and TensorFlow's log lines.")
@_library_call
def demo_command(quiet, verbose, **options):
    """Run the whole pipeline on generated images of shapes, offline, in a few minutes.

    Draws circles, squares and triangles (random place, size, colour, noise), then runs
    extract-features → train-head → finetune → evaluate with a small MobileNetV2 and prints a table
    per stage. Use --weights PATH and --data DIR to try it on real material.
    """
    from headstart.pipeline.run.demo import DemoOptions, run_demo
    from headstart.pipeline.run.runner import Console

    if verbose and not quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    result, weights = run_demo(DemoOptions(**options),
                               console=Console(lambda m: click.echo(m, err=True), quiet=quiet, verbose=verbose))
    click.echo(f"headstart demo: {weights}")
    click.echo(result.table)


if __name__ == "__main__":  # pragma: no cover
    main()
