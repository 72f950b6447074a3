"""What a source's content was when it was read: the key of a cache and of ``headstart run``'s extract stage.

A label file is keyed by its bytes (``label_file.py``'s sha256); a folder of class folders by its
listing — every item's split, relative path, label, size and modification time — so moving a file
to another class folder, adding, removing or rewriting one changes the key, where the folder's path
alone never did (issue 28: a stale cache reused after cats were moved into ``dogs/``). No TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, TYPE_CHECKING

if TYPE_CHECKING:
    from headstart.pipeline.data.source_spec import SourceSpec


def listing_digest(root: Path, items: Mapping[str, Sequence[tuple[str, Any]]]) -> str:
    """sha256 of a folder's listing.

    Args:
        root: the folder the keys are relative to.
        items: split → [(key, label)], as ``splits.list_class_folders`` lists them (labels ints or
            multi-hot tuples).

    Returns:
        The hex digest over (split, key, label, size, mtime in ns) of every item, in listing order;
        an item that cannot be stat'ed counts with size and mtime -1 (the extraction says why).
    """
    digest = hashlib.sha256()
    for split in sorted(items):
        for key, label in items[split]:
            try:
                status = os.stat(root / key)
                size, mtime = status.st_size, status.st_mtime_ns
            except OSError:
                size = mtime = -1
            label = list(label) if isinstance(label, (tuple, list)) else label
            digest.update(json.dumps([split, key, label, size, mtime], default=int).encode("utf-8", "surrogateescape"))
            digest.update(b"\n")
    return digest.hexdigest()


def source_digest(spec: SourceSpec) -> str | None:
    """The content key of a ``SourceSpec``'s files: a folder's listing, a label file's sha256, None for
    a TFDS dataset or a source that cannot be read (the stage reading it then says why in one line)."""
    from headstart.pipeline.errors import HeadstartError

    if spec.is_tfds:
        return None
    path = Path(spec.source)
    try:
        if spec.is_label_file:
            from headstart.features.file_hash import sha256_file

            return sha256_file(path)
        from headstart.pipeline.data.splits import list_class_folders

        listing = list_class_folders(path.resolve(), spec.source, validation_fraction=spec.validation_fraction,
                                     test_fraction=spec.test_fraction)
        return listing_digest(path.resolve(), listing.items)
    except (OSError, HeadstartError):
        return None
