"""``extract-features``: resolve the source, build the frozen extractor, fill the feature cache.

Also ``merge-features``: ``extract-features --shard I/N`` workers each write a cache of their 1/N
of every split (``headstart.pipeline.data.splits.shard_of`` says which items); ``merge_features`` joins them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from headstart.features.reporter import QUIET, Reporter
from headstart.features.registry import check_image_size, check_weights_option
from headstart.pipeline.config import ExtractConfig
from headstart.pipeline.data.source_spec import SourceSpec, check_source_path
from headstart.pipeline.data.splits import check_class_folders
from headstart.features.errors import Arg, parts_of
from headstart.pipeline.errors import OptionError
from headstart.pipeline.options.checks import check_config
from headstart.pipeline.commands.cache_record import store_args as cache_store_args
from headstart.pipeline.commands.cache_record import view_seed

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$", re.ASCII)


@dataclass
class ExtractSummary:
    """What an extraction produced, for the CLI to print."""

    path: str
    already_complete: bool
    backbone: dict
    class_names: list[str]
    splits: dict[str, dict] = field(default_factory=dict)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (split, key, reason)
    seconds: float = 0.0
    skipped_csv: str | None = None  # every skipped item of the cache (report/skipped.py), when any


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """Parses ``--shard I/N`` (worker I of N, counted from 0) into (I, N); None stays None.

    Raises:
        OptionError: not I/N, N < 1, or I outside 0 … N-1.
    """
    if spec is None:
        return None
    match = _SHARD.match(str(spec))
    if not match:
        raise OptionError(Arg("shard"), f" '{spec}': expected I/N, e.g. 0/4 for the first of 4 workers", value=spec)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise OptionError(Arg("shard"), f" '{spec}': N must be at least 1", value=spec)
    if index >= count:
        raise OptionError(Arg("shard"), f" '{spec}': I must be in 0..{count - 1} (workers count from 0)", value=spec)
    return index, count


def check_extract_config(config: ExtractConfig, *, label: Callable[[str], Arg] | None = None) -> None:
    """Every check of extract-features' options that needs no TensorFlow (``--out`` aside), so bad
    input fails fast: the option table's ranges and choices, then the source path, the backbone's
    image size, the splits and ``--shard``.

    Raises:
        OptionError, DataError, headstart.features.errors.FeaturesError: naming the option at fault
        (``label`` names it; default: extract-features' flag).
    """
    check_config("extract", config, label=label)
    folder = check_source_path(config.source)
    if not str(config.backbone).startswith("hub:"):  # KerasHub presets are checked when they load
        check_image_size(config.backbone, config.image_size)  # an unknown backbone, a size too small
    check_weights_option(config.weights, config.backbone, config.alpha)
    if not config.splits:
        raise OptionError((label or Arg)("splits"), " must name at least one split", value=config.splits)
    parse_shard(config.shard)
    SourceSpec.from_config(config)  # split names and fractions
    if config.tap is not None:
        _check_tap(config, label)
    # The options first (a typo is the cheapest fix), then what the folder holds: fewer than 2
    # classes is refused here, before TensorFlow starts, rather than after ~20 s of start-up.
    if folder is not None and folder.is_dir():
        check_class_folders(folder, config.source)


def _check_tap(config: ExtractConfig, label: Callable[[str], Arg] | None) -> None:
    """The tap's syntax, before TensorFlow starts (whether it cuts the backbone needs the model)."""
    from headstart.features.errors import TapError
    from headstart.features.tap import parse_tap

    name = (label or Arg)("tap")
    if str(config.backbone).startswith("hub:"):
        raise OptionError(name, f": {config.backbone} is a KerasHub preset; a tap needs a keras.applications backbone",
                          field="tap", value=config.tap)
    try:
        parse_tap(config.tap)
    except TapError as exc:
        raise OptionError(name, ": ", *parts_of(exc), field="tap", value=config.tap) from None


def _check_out_file(out: Path) -> None:
    if out.exists() and out.is_dir():
        raise OptionError(Arg("out", out), " is a directory; give a file name such as features.h5")
    if not out.parent.exists():
        raise OptionError(Arg("out", out), f": folder {out.parent} does not exist")


def extract_features(
    config: ExtractConfig,
    *,
    reporter: Reporter = QUIET,
    originals_from: str | None = None,
) -> ExtractSummary:
    """Runs the frozen backbone over every requested split and writes the feature cache.

    A killed run started again with the same config resumes from the last committed batch; a
    finished cache with the same config is left as it is.

    Args:
        config: the resolved extraction options.
        reporter: status lines and a progress line per split (``features/reporter.py``; default: quiet).
        originals_from: with views, a finished cache of the same backbone, size, tap and source whose
            training rows are copied by key, not computed again (a backbone pass per view only).

    Returns:
        An ExtractSummary.

    Raises:
        OptionError: bad options.
        DataError: a bad source.
        headstart.features.errors.FeaturesError: backbone, weights, cache and bad-image failures.
    """
    check_extract_config(config)
    _check_out_file(Path(config.out))
    shard = parse_shard(config.shard)
    source, splits = _open_source(config)
    for note in source.notes:
        reporter.line(note)
    _check_known_coverage(source, splits)  # before anything is written
    if config.strict:
        _refuse_bad_images(config, source, splits, shard)
    extractor, info, tap = _build_extractor(config)
    store_args = cache_store_args(config, info.to_dict(), source, splits, shard, tap)
    writer = _open_writer(config, source, store_args)
    summary = ExtractSummary(path=config.out, already_complete=writer.complete,
                             backbone=info.to_dict(), class_names=list(source.class_names))
    if writer.complete:
        reporter.line(f"{config.out} is already complete with this configuration; nothing to do")
        return summary
    start = time.perf_counter()
    try:
        _extract_splits(writer, config, source, splits, extractor, shard=shard, summary=summary,
                        reporter=reporter, originals_from=originals_from)
        if shard is None:  # a shard may lack a class; the merged cache is whole
            _check_committed_coverage(writer, source, splits, summary)
        else:
            writer = _add_source_index(writer, source, splits, store_args)
        summary.seconds = time.perf_counter() - start
        writer.finalize({"extract_seconds": round(summary.seconds, 3)})
    finally:
        # Idempotent after finalize(); otherwise it leaves the .partial for a resume.
        writer.close()
    _list_skipped(summary)
    return summary


def _build_extractor(config: ExtractConfig):
    """(extractor, info, tap or None): with ``tap`` the extractor also returns the activations there."""
    from headstart.features.chain import build_extractor, build_tapped_extractor

    from headstart.features.errors import TapError

    kwargs = dict(weights=config.weights, image_size=config.image_size, alpha=config.alpha, pooling=config.pooling)
    if config.tap:
        try:
            return build_tapped_extractor(config.backbone, tap=config.tap, **kwargs)
        except TapError as exc:
            raise OptionError(Arg("tap", config.tap), ": ", *parts_of(exc)) from None
    return (*build_extractor(config.backbone, **kwargs), None)


def _open_writer(config: ExtractConfig, source: Any, store_args: dict) -> Any:
    """The cache's writer (new, resumed or complete); a changed label file says how many rows changed."""
    from headstart.features.errors import StoreConfigMismatch
    from headstart.features.store import create_or_resume
    from headstart.pipeline.data.label_changes import explain_label_change

    try:
        return create_or_resume(config.out, **store_args)
    except StoreConfigMismatch as exc:  # a changed label file: how many rows, not two digests
        raise explain_label_change(exc, source, config.out) from None


def _list_skipped(summary: ExtractSummary) -> None:
    """Every skipped item of the finished cache goes to ``CACHE.skipped.csv`` (report/skipped.py)."""
    from headstart.pipeline.report.skipped import write_skipped_csv

    skipped_csv = write_skipped_csv(summary.path)
    summary.skipped_csv = str(skipped_csv) if skipped_csv else None


def _open_source(config: ExtractConfig):
    """The source and the splits to extract; the backbone's cheap checks come first."""
    from headstart.features.registry import check_image_size, get_backbone_spec
    from headstart.pipeline.data.sources import open_source

    get_backbone_spec(config.backbone)
    check_image_size(config.backbone, config.image_size)
    source = open_source(SourceSpec.from_config(config))
    return source, _select_splits(config, source.split_names)


def _check_known_coverage(source, splits: list[str]) -> None:
    """Refuses, before writing, a source left with under 2 classes, an empty split or a class
    without training items by what is known without decoding (bad label rows, pipes, loops)."""
    from headstart.pipeline.data.coverage import check_coverage, count_reasons

    known = {split: source.known_usable(split) for split in splits}
    if any(k is None for k in known.values()):  # TFDS: only the class count is known
        check_coverage(source.spec, source.class_names, {})
        return
    check_coverage(source.spec, source.class_names, {s: counts for s, (counts, _) in known.items()},
                   {s: count_reasons(reasons) for s, (_, reasons) in known.items()})


def _check_committed_coverage(writer, source, splits: list[str], summary: ExtractSummary) -> None:
    """The same check on the committed rows, before the cache is finished: files that did not decode
    can still empty a class. The ``.partial`` goes too: a resume would not read its finished splits
    again, so fixed images would never reach the cache."""
    import os

    from headstart.pipeline.data.coverage import check_coverage, class_counts, count_reasons
    from headstart.pipeline.errors import DataError

    counts = {s: class_counts(writer.labels(s), len(source.class_names)) for s in splits}
    bad = {s: count_reasons(r for split, _, r in summary.skipped if split == s) for s in splits}
    try:
        check_coverage(source.spec, source.class_names, counts, bad)
    except DataError as exc:
        writer.close()
        os.remove(writer.partial_path)
        raise DataError(*parts_of(exc), "; no cache written: fix the images and run the same command again") from None


def _refuse_bad_images(config: ExtractConfig, source, splits: list[str], shard: tuple[int, int] | None) -> None:
    # --strict promises that nothing is written when any image is bad, so look first.
    from headstart.features.errors import BadImagesError
    from headstart.features.extract import find_bad_images

    for split in splits:
        bad = find_bad_images(source.dataset(split, config.image_size, shard=shard), batch_size=config.batch_size)
        if bad:
            key, reason = bad[0]
            raise BadImagesError(f"{_describe_key(source, key)}: {reason} (", Arg("strict"), "; "
                                 f"{len(bad)} bad in split '{split}')", field="strict")


def _extract_splits(writer, config: ExtractConfig, source, splits: list[str], extractor, *,
                    shard: tuple[int, int] | None, summary: ExtractSummary,
                    reporter: Reporter, originals_from: str | None = None) -> None:
    """Fills every split in turn (resuming where the writer stopped), recording each in ``summary``."""
    from headstart.features.extract import extract_split

    views = _augmented_views(config, shard)
    if views is not None and originals_from:
        import dataclasses

        from headstart.features.extract import cached_originals

        views = dataclasses.replace(views, originals=cached_originals(originals_from, "train", writer))
    if shard is not None:
        reporter.line(f"shard {shard[0]}/{shard[1]}: extracting about 1/{shard[1]} of each split")
    bad = 0
    for split in splits:
        consumed, _ = writer.progress(split)
        if consumed and not writer.is_done(split):
            reporter.line(f"resuming split '{split}' after {consumed} images")
        report = extract_split(writer, split, source.dataset(split, config.image_size, shard=shard), extractor,
                               batch_size=config.batch_size, total=source.count(split, shard=shard),
                               views=views if split == "train" else None, max_bad=config.max_bad,
                               bad_so_far=bad, reporter=reporter)
        bad += len(report.skipped)
        summary.splits[split] = {"rows": report.rows, "skipped": len(report.skipped),
                                 "images_per_second": round(report.images_per_second, 2)}
        summary.skipped.extend((split, k, r) for k, r in report.skipped)


def _augmented_views(config: ExtractConfig, shard: tuple[int, int] | None):
    if not config.augment_views:
        return None
    from headstart.features.extract import AugmentedViews
    from headstart.pipeline.data.augment import build_augmentation

    return AugmentedViews(build_augmentation(config.augment, seed=config.seed), config.augment_views,
                          seed=view_seed(config.seed, shard))


def _add_source_index(writer, source, splits: list[str], store_args: dict):
    """Records each row's position in the unsharded split; returns the reopened writer.

    The store's writer keeps no per-row extras, so the index (what merge-features orders by) goes
    into the finished partial between a close and a resume; a run killed in between redoes just
    this step.
    """
    from headstart.features.merge import write_source_index
    from headstart.features.store import create_or_resume

    writer.close()
    write_source_index(writer.partial_path, splits, source.keys)
    return create_or_resume(writer.path, **store_args)


def _select_splits(config: ExtractConfig, available: list[str]) -> list[str]:
    requested = list(config.splits)
    missing = [s for s in requested if s not in available]
    if missing and tuple(requested) == ExtractConfig().splits:
        # The default asks for all three; a source without a test split simply has none.
        requested = [s for s in requested if s in available]
        missing = []
    if missing:
        raise OptionError(Arg("splits"), f": source has no split {', '.join(repr(m) for m in missing)} "
                          f"(it has {', '.join(available) or 'none'})")
    # A cache without "train" is allowed (e.g. features for evaluation only); train-head refuses it.
    return requested


def _describe_key(source, key: str) -> str:
    root = source.describe().get("root")
    return str(Path(root) / key) if root else key
