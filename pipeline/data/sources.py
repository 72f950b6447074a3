"""Sources (``tfds:NAME``, folders of class folders, label files), their splits, the one input path.

Every source yields element-level ``tf.data`` dicts in a deterministic order::

    {"image": float32 (S, S, 3) raw 0–255, "label": int64 (), "key": string (), "error": string ()}

(a multi-label source, ``source.multi_label``: "label" is int64 (C,) multi-hot.)

Each file is decoded on its own inside ``tf.py_function`` (``image.py``: header checks, then TF
decode → RGB → ``tf.image.resize``), so a bad file becomes one zero image with a reason in
``error`` — it is never dropped and never takes a batch of good images with it (``ignore_errors()``
after ``batch()`` would). Consumers skip and record it.

Which file or TFDS example belongs to which split and shard is ``splits.py``'s business (the two
class-folder layouts, the split hash, the shard hash); what SOURCE and its split options mean is
``source_spec.py``'s. ``dataset(…, shard=(I, N))`` drops other shards' items before decoding.
Class names are the sorted folder names or labels, or the TFDS label names. Label files (``.csv``,
``.jsonl``) are read by ``label_file.py`` and served by ``label_source.LabelFileSource``. The
``Source`` interface is ``source.py``'s; sources of files below a root, ``file_list.py``'s.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from headstart.features.tfdata import without_autotune_thread
from headstart.pipeline.config import CATS_VS_DOGS_SPLITS
from headstart.pipeline.data.file_list import FileListSource
from headstart.pipeline.data.image import decode_or_reason
from headstart.pipeline.data.listing_digest import listing_digest
from headstart.pipeline.data.source import Source, decode_map
from headstart.pipeline.data.source_spec import SourceSpec, check_source_path
from headstart.pipeline.data.splits import SPLIT_FOLDERS, list_class_folders, shard_of
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError, NetworkError, OptionError


def open_source(spec: SourceSpec) -> Source:
    """Opens the source a spec names (the one place a SOURCE becomes a Source).

    Raises:
        DataError: a missing path, an unknown or undownloadable dataset, a folder without classes,
            an empty class folder, a class too small for the stratified split, a split spec TFDS
            cannot read, a label file without a path or label column.
        OptionError: ``--split`` with a directory or label-file source.
    """
    if spec.is_tfds:
        return TfdsSource(spec.source, split_specs=spec.splits)
    path = check_source_path(spec.source)
    if spec.split_specs:
        what = "a label file" if spec.is_label_file else "a directory"
        raise OptionError(Arg("split_specs"), f" applies to tfds: sources only; {spec.source} is {what} "
                          f"(use {'/'.join(SPLIT_FOLDERS)} folders, a split column, or ", Arg("validation_fraction"),
                          "/", Arg("test_fraction"), ")")
    if spec.is_label_file:
        from headstart.pipeline.data.label_source import LabelFileSource

        return LabelFileSource(spec, path)
    return DirSource(spec.source, path, validation_fraction=spec.validation_fraction,
                     test_fraction=spec.test_fraction)


def resolve_source(
    spec: str,
    *,
    split_specs: dict[str, str] | None = None,
    validation_fraction: float = SourceSpec.validation_fraction,
    test_fraction: float = SourceSpec.test_fraction,
) -> Source:
    """``open_source(SourceSpec(spec, split_specs, validation_fraction, test_fraction))``.

    Args:
        spec: ``tfds:NAME`` (NAME may carry a config/version, e.g. ``mnist:3.*.*``) or a directory.
        split_specs: ``--split`` overrides, TFDS sources only ({name: TFDS split spec}).
        validation_fraction: share of a single class-folder tree held out for validation.
        test_fraction: share of a single class-folder tree held out for testing.

    Raises:
        DataError, OptionError: as ``open_source`` and ``SourceSpec``.
    """
    return open_source(SourceSpec(spec, split_specs or (), validation_fraction, test_fraction))


class DirSource(FileListSource):
    """A folder of class folders, with explicit split folders or hashed splits."""

    kind = "dir"

    def __init__(self, spec: str, root: Path, *, validation_fraction: float = 0.1, test_fraction: float = 0.1):
        super().__init__(spec, root)
        self.validation_fraction = validation_fraction
        self.test_fraction = test_fraction
        listing = list_class_folders(self.root, spec, validation_fraction=validation_fraction,
                                     test_fraction=test_fraction)
        self.layout, self.split_names, self._split_specs = listing.layout, listing.split_names, listing.split_specs
        self.class_names = listing.class_names
        self._items = listing.items
        self.notes.extend(listing.notes)
        # key → reason: directory symlinks not entered again, pipes and devices never opened
        self._reasons = {**listing.loops, **listing.not_regular}
        # The folder's content, not only its path, is what a cache was made from (listing_digest.py).
        self._listing_sha256 = listing_digest(self.root, listing.items)

    def describe(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "root": str(self.root), "layout": self.layout,
                "splits": dict(self._split_specs), "listing_sha256": self._listing_sha256}


class TfdsSource(Source):
    """A TensorFlow Datasets dataset; images go through the same decode path as files.

    The encoded image bytes are read with ``SkipDecoding`` so TFDS and folders share one decoder.
    Keys are TFDS ids (``add_tfds_id``), or ``SPEC#i`` when the reader gives none.
    """

    kind = "tfds"

    def __init__(self, spec: str, *, split_specs: dict[str, str] | None = None):
        super().__init__(spec)
        import tensorflow_datasets as tfds

        self._tfds = tfds
        self.name = spec[len("tfds:"):].strip()
        if not self.name:
            raise DataError(f"{spec}: give a dataset name, e.g. tfds:cats_vs_dogs")
        try:
            self.builder = tfds.builder(self.name)
        except Exception as e:  # noqa: BLE001 - DatasetNotFoundError and friends carry huge messages
            raise DataError(f"{spec}: unknown TFDS dataset ({_first_line(e)})") from None
        info = self.builder.info
        image_key, label_key = "image", "label"
        if isinstance(info.supervised_keys, tuple) and len(info.supervised_keys) == 2 \
                and all(isinstance(k, str) for k in info.supervised_keys):
            image_key, label_key = info.supervised_keys
        features = info.features
        if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
            raise DataError(f"{spec}: dataset has no image feature '{image_key}'")
        if label_key not in features or not hasattr(features[label_key], "names"):
            raise DataError(f"{spec}: dataset has no class-label feature '{label_key}'")
        self.image_key, self.label_key = image_key, label_key
        self.class_names = list(features[label_key].names)
        self._prepare()
        self._split_specs = self._default_splits()
        self._split_specs.update(split_specs or {})
        self._check_specs(split_specs or {})
        ordered = [s for s in SPLIT_FOLDERS if s in self._split_specs]
        self.split_names = ordered + [s for s in self._split_specs if s not in ordered]

    def _prepare(self) -> None:
        # Download now, before anything is built or written, so a failure is one clear line; and
        # ask the download hosts first: TFDS itself retries an unreachable one for minutes.
        from headstart.pipeline.data.network import unreachable

        offline = _OFFLINE_HINT
        if _downloads(self.builder) and not _quietly(self.builder.is_prepared):  # (logs for a folder not there)
            why = unreachable(list(self.builder.url_infos or ()) or [_TFDS_BUCKET])
            if why:
                raise NetworkError(f"{self.spec}: not in {self.builder.data_dir} and the network cannot reach its "
                                f"download ({why}); {offline}") from None
        try:
            self.builder.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - network, checksum, missing extras: all mean "no data"
            raise DataError(f"{self.spec}: the dataset could not be downloaded ({_first_line(e)}); {offline}") from None

    def _default_splits(self) -> dict[str, str]:
        if self.builder.name == "cats_vs_dogs":
            return dict(CATS_VS_DOGS_SPLITS)
        known = list(self.builder.info.splits.keys())
        wanted = [s for s in SPLIT_FOLDERS if s in known] or known
        return {s: s for s in wanted} if wanted else {"train": "train"}

    def _check_specs(self, overrides: dict[str, str]) -> None:
        known = self.builder.info.splits
        for name, split_spec in self._split_specs.items():
            where = Arg("split_specs", f"{name}={split_spec}") if name in overrides else f"{self.spec} split '{name}'"
            try:
                self._tfds.core.ReadInstruction.from_spec(split_spec)
                if len(known):  # unknown until prepared (and under tfds.testing.mock_data)
                    known[split_spec]
            except Exception as e:  # noqa: BLE001 - TFDS raises ValueError/KeyError/AssertionError
                raise DataError(where, f": {_first_line(e)}") from None

    def describe(self) -> dict:
        return {"source": self.spec, "kind": self.kind, "name": self.builder.name,
                "version": str(self.builder.version), "splits": dict(self._split_specs)}

    def count(self, split: str, *, shard: tuple[int, int] | None = None) -> int | None:
        self._check_split(split)
        if shard is not None and shard[1] > 1:
            return None  # would take a pass over the split's ids; progress shows no total instead
        try:
            return int(self.builder.info.splits[self._split_specs[split]].num_examples)
        except Exception:  # noqa: BLE001 - not prepared / mocked: ask the dataset instead
            n = int(self._read(split).cardinality())
            return n if n >= 0 else None

    def _read(self, split: str) -> tf.data.Dataset:
        tfds = self._tfds
        return self.builder.as_dataset(
            split=self._split_specs[split],
            shuffle_files=False,  # with the default deterministic interleave: a fixed order
            decoders={self.image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(add_tfds_id=True),
        )

    def keys(self, split: str) -> list[str]:
        """TFDS ids of a split in dataset order; reads the split's records but decodes nothing."""
        self._check_split(split)
        ids = self._keyed(split).map(lambda payload, label, key: key)
        return [key.decode("utf-8", "surrogateescape") for key in ids.as_numpy_iterator()]

    def _keyed(self, split: str) -> tf.data.Dataset:
        # (encoded image, label, key) in the fixed read order, before anything is decoded.
        ds = self._read(split)
        image_key, label_key, spec = self.image_key, self.label_key, self._split_specs[split]
        if "tfds_id" in ds.element_spec:
            return ds.map(lambda e: (e[image_key], e[label_key], e["tfds_id"]))
        return ds.enumerate().map(lambda i, e: (e[image_key], e[label_key],
                                                tf.strings.join([spec, "#", tf.strings.as_string(i)])))

    def dataset(self, split: str, image_size: int, *, max_pixels: int | None = None,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
        self._check_split(split)
        ds = without_autotune_thread(self._keyed(split))
        if shard is not None:
            ds = ds.filter(_shard_predicate(*shard))

        def load(data: bytes):
            return decode_or_reason(data, image_size, max_pixels=max_pixels)

        return ds.map(decode_map(load, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _shard_predicate(index: int, count: int):
    # A tf.data filter on the key, placed before the decode map so other shards' images are read
    # (TFDS stores them inline) but never decoded. SHA-1 has no TF op, hence py_function; it sees
    # only the short key string.
    def keep(key: tf.Tensor) -> bool:
        return shard_of(key.numpy().decode("utf-8", "surrogateescape"), count) == index

    def predicate(payload, label, key):
        kept = tf.py_function(keep, [key], tf.bool)
        kept.set_shape(())
        return kept

    return predicate


#: Where TFDS fetches prepared datasets from when a builder names no URLs of its own.
_TFDS_BUCKET = "https://storage.googleapis.com/tfds-data/"
_OFFLINE_HINT = ("without a network, point headstart at a local folder instead (DIR/<class>/*.jpg or "
                 "DIR/{train,validation,test}/<class>/*.jpg), or set TFDS_DATA_DIR to a copy of a prepared TFDS "
                 "data dir")


def _downloads(builder) -> bool:
    """Whether ``download_and_prepare`` is TFDS's own, which downloads (``tfds.testing.mock_data``'s makes
    data up offline, and needs no network)."""
    module = getattr(type(builder).download_and_prepare, "__module__", "") or ""
    return module.startswith("tensorflow_datasets.") and ".testing" not in module


def _quietly(call):
    """``call()`` with absl's Python log (TFDS's warnings) held back to errors."""
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return call()
    finally:
        logger.setLevel(level)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]
