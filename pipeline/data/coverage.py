"""A dataset a classifier can learn from: 2 classes or more, rows in every split, training rows for
every class. No TensorFlow.

Extraction checks this twice: before anything is written, on what is known without decoding (bad
label-file rows, pipes, directory loops), and before the cache is finished, on the rows actually
committed (files that turned out not to decode). Before issue 21 a JSONL label file whose one row
said ``"split": "TRAIN"`` (the others had no split, so "empty split") wrote a 1-class cache with
exit 0, a class folder of unreadable files stayed an output class with 0 training rows, and a
single class folder wrote a 1-class cache.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

from headstart.pipeline.errors import DataError

# A bad item's reason names its kind first: "missing file (labels.csv row 3)", "not a regular file
# (a named pipe); …", "image too large: 20000x20000 …", "corrupt image data (…)".
_KIND_END = re.compile(r" \(|: |; ")


def reason_kind(reason: str) -> str:
    """The kind of a bad item's reason, without its particulars: "missing file", "not an image"…"""
    return _KIND_END.split(reason, 1)[0].strip() or reason


def count_reasons(reasons: Iterable[str]) -> Counter[str]:
    """How many bad items there are of each ``reason_kind``."""
    return Counter(reason_kind(r) for r in reasons)


def describe_reasons(counts: Counter[str], limit: int = 3) -> str:
    """``"100000 missing file, 2 not an image"``: the commonest kinds first, at most ``limit``."""
    parts = [f"{n} {kind}" for kind, n in counts.most_common(limit)]
    rest = sum(counts.values()) - sum(n for _, n in counts.most_common(limit))
    return ", ".join(parts + ([f"{rest} other"] if rest else []))


def check_coverage(spec: str, class_names: Sequence[str], counts: Mapping[str, Sequence[int]],
                   bad: Mapping[str, Counter[str]] | None = None) -> None:
    """Refuses a dataset with fewer than 2 classes, an empty split, or a class without training rows.

    Args:
        spec: SOURCE as given, for messages.
        class_names: the classes.
        counts: split → usable rows per class (a multi-label row counts for each of its labels).
        bad: split → unusable items per ``reason_kind``, to say why (may be partial or None).

    Raises:
        DataError: naming the class or split and why.
    """
    bad = bad or {}
    every = sum((bad.get(s, Counter()) for s in bad), Counter())
    if len(class_names) < 2:
        shown = ", ".join(f"'{n}'" for n in class_names) or "none"
        raise DataError(f"{spec}: {len(class_names)} class ({shown}) among the usable images; a classifier "
                        f"needs 2 or more{_why(every)}")
    for split, per_class in counts.items():
        if sum(per_class) == 0:
            raise DataError(f"{spec}: split '{split}' has no usable image{_why(bad.get(split))}")
    train = counts.get("train")
    if train is not None:
        empty = [name for name, n in zip(class_names, train) if n == 0]
        if empty:
            raise DataError(f"{spec}: class '{empty[0]}' has no usable training image"
                            f"{' (nor ' + ', '.join(repr(e) for e in empty[1:4]) + ')' if len(empty) > 1 else ''}"
                            f"{_why(bad.get('train'), ' in train')}")


def class_counts(labels: Sequence, classes: int) -> list[int]:
    """Rows per class of labels: int indices (N,), or multi-hot rows (N, C)."""
    import numpy as np

    labels = np.asarray(labels)
    if labels.ndim == 2:
        return [int(n) for n in labels.sum(axis=0)] if len(labels) else [0] * classes
    return [int(n) for n in np.bincount(labels.astype(np.int64), minlength=classes)[:classes]]


def _why(counts: Counter[str] | None, where: str = "") -> str:
    if not counts:
        return ""
    return f" ({sum(counts.values())} unusable{where}: {describe_reasons(counts)})"
