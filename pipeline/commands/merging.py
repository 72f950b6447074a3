"""``merge-features``: the caches of ``extract-features --shard I/N`` joined into one cache.

No TensorFlow here: merging only copies arrays (``headstart.features.merge`` does the work, in
single-run order by each row's ``source_index``).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.errors import OptionError
from headstart.pipeline.store.provenance import utc_timestamp

if TYPE_CHECKING:
    from headstart.features.merge import MergeSummary


def merge_features(out: str, shards: list[str], *, overwrite: bool = False,
                   reporter: Reporter = QUIET) -> MergeSummary:
    """``merge-features``: joins the caches of ``extract-features --shard I/N`` into one cache.

    Args:
        out: the cache file to write.
        shards: one cache per shard 0 … N-1, in any order.
        overwrite: replace an OUT written with another configuration.
        reporter: where one-line status messages go.

    Returns:
        A ``headstart.features.merge.MergeSummary``.

    Raises:
        OptionError: no shards, or an unusable OUT path.
        headstart.features.errors.FeaturesError: shards that do not form one complete set
            (ShardError), or cache failures (StoreError, …).
    """
    if not shards:
        raise OptionError("merge-features needs the SHARD files to merge")
    target = Path(out)
    if target.is_dir():
        raise OptionError(f"OUT {target} is a directory; give a file name such as features.h5")
    if not target.parent.exists():
        raise OptionError(f"OUT {target}: folder {target.parent} does not exist")
    import h5py
    import numpy

    from headstart.features.merge import merge_shards
    from headstart.pipeline import __version__

    # No TensorFlow here: merging only copies arrays.
    provenance = {
        "headstart": __version__,
        "versions": {"python": platform.python_version(), "h5py": h5py.__version__,
                     "numpy": numpy.__version__},
        "created": utc_timestamp(),
    }
    return merge_shards(out, shards, provenance=provenance, overwrite=overwrite, reporter=reporter)
