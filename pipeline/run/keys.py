"""The keys of ``headstart run``'s stages: a hash of each stage's inputs and result-shaping options.

A finished stage whose key is unchanged is reused; the content of the files a stage reads (an
``--exclude`` CSV, a ``--class-weight`` FILE) is part of its key, not only their paths.
"""

from __future__ import annotations

import hashlib
import json

from headstart.pipeline.config import CLASS_WEIGHT_MODES, RunConfig


def stage_key(values: dict) -> str:
    """The sha256 of a stage's values, as sorted JSON."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def input_files(config: RunConfig) -> dict[str, str | None]:
    """The content of the files the head and finetune stages read (``--exclude``, a ``--class-weight``
    FILE), for their keys: not only a path decides what they train on."""
    files = {"exclude_sha256": _file_sha256(config.head.exclude)} if config.head.exclude else {}
    files.update({f"{stage}_class_weight_sha256": _file_sha256(path) for stage, path in
                  (("head", config.head.class_weight), ("finetune", config.finetune.class_weight))
                  if path not in CLASS_WEIGHT_MODES})
    return files


def _file_sha256(path: str) -> str | None:
    """sha256 of a file, None when it cannot be read (the stage then says why in one line)."""
    from headstart.features.file_hash import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return None


def extract_key(config: RunConfig) -> str:
    """The extract stage's key: the source, its content (a folder's listing, a label file's bytes:
    ``data/listing_digest.py``) and the extraction options; every later stage's key takes the cache's."""
    from headstart.pipeline.data.listing_digest import source_digest
    from headstart.pipeline.data.source_spec import SourceSpec
    from headstart.pipeline.run.toml_config import stage_values

    content = source_digest(SourceSpec.from_config(config.extract, source=config.source))
    return stage_key({"source": config.source, **stage_values(config, "extract"),
                      **({"content": content} if content else {})})


def finetune_key(config: RunConfig, head_sha256: str) -> str:
    """The finetune stage's key: its options, the files it reads, and the head's bytes."""
    from headstart.pipeline.run.toml_config import stage_values

    return stage_key({**stage_values(config, "finetune"), **input_files(config), "head": head_sha256})


def evaluate_key(config: RunConfig, model_sha256: str) -> str:
    """The evaluate stage's key: the model's bytes and how the source is split."""
    from headstart.pipeline.run.toml_config import stage_values

    extract = stage_values(config, "extract")
    return stage_key({"model": model_sha256, "source": config.source,
                      **{k: extract[k] for k in ("split_specs", "validation_fraction", "test_fraction")}})
