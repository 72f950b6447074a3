"""What extraction skipped, for people: counts per reason on the terminal, every item in a CSV.

A label file of 100,000 rows naming missing files printed 100,000 "skipped …" lines. Now the
terminal gets the first ``SHOWN`` items and one line of counts per reason, and ``CACHE.skipped.csv``
beside the cache (``features.h5`` → ``features.skipped.csv``) lists every skipped item of every
split, resumed runs included: ``split,key,reason``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

#: Skipped items named one per line on the terminal before the rest is left to the CSV.
SHOWN = 10


def skipped_csv_path(cache: str | os.PathLike) -> Path:
    """``features.h5`` → ``features.skipped.csv``, beside it."""
    cache = Path(cache)
    return cache.with_name(f"{cache.stem if cache.suffix else cache.name}.skipped.csv")


def write_skipped_csv(cache: str | os.PathLike) -> Path | None:
    """Writes every skipped item of a finished cache to ``skipped_csv_path(cache)``.

    Returns:
        The CSV, or None when nothing was skipped (an older CSV there is removed).
    """
    from headstart.features.cache import open_cache
    from headstart.pipeline.store.files import write_text_atomic

    target = skipped_csv_path(cache)
    with open_cache(str(cache)) as c:
        rows = [(split, key, reason) for split in c.splits for key, reason in c.split(split).skipped]
    if not rows:
        target.unlink(missing_ok=True)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "key", "reason"])
    writer.writerows(rows)
    write_text_atomic(target, buffer.getvalue())
    return target


def skipped_lines(skipped: Sequence[tuple[str, str, str]], csv_path: str | os.PathLike | None, *,
                  shown: int = SHOWN) -> list[str]:
    """The terminal's account of the skipped items: up to ``shown`` of them, then the counts.

    Args:
        skipped: (split, key, reason) of this run.
        csv_path: where all of them are listed, or None.
        shown: items named one per line (0 with ``--quiet``).
    """
    from headstart.pipeline.data.coverage import count_reasons, describe_reasons
    from headstart.pipeline.report.printable import printable

    if not skipped:
        return []
    lines = [printable(f"skipped [{split}] {key}: {reason}") for split, key, reason in skipped[:shown]]
    if len(skipped) > shown:
        lines.append(f"skipped {len(skipped)} in all: {describe_reasons(count_reasons(r for _, _, r in skipped))}"
                     + (f"; every one in {csv_path}" if csv_path else ""))
    return lines
