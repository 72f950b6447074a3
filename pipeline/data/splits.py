"""Which item goes to which split and which shard; the two class-folder layouts. No TensorFlow.

* ``DIR/{train,validation,test}/<class>/…`` — explicit splits, used as given.
* ``DIR/<class>/…`` — one tree, split per class by a stable hash of each file's path relative to
  DIR (``assign_stratified``): within a class, files are ranked by ``hash_fraction`` of their key
  and the lowest ``round(n · test_fraction)`` go to test, the next ``round(n · validation_fraction)``
  to validation (at least one each when the fraction is above 0), the rest to train. So a rare
  class is in every split, and a class too small for that (fewer than 3 files with both fractions
  above 0) is a one-line error naming it. A file's split depends only on its class's keys: adding
  files to a class moves at most the items next to a boundary of the ranking (each boundary shifts
  by at most one rank per added file), never the others, and other classes not at all. The
  recorded split spec says ``sha1-stratified[…]``, so a cache cut by the older unstratified
  threshold rule (``sha1[…]``) is a visible config mismatch, never mixed with this one.

Every non-hidden file inside a class folder is listed; files that are not images are reported as
bad later rather than silently ignored. Class names are the sorted folder names.

Shards (``--shard I/N``) keep the items whose ``shard_of(key, N) == I``. The shard hash is the
split hash salted, so it is independent of the split and each shard gets about 1/N of every split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from headstart.features.regular_file import not_regular_reason
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError

#: Split folder names recognised at the top of a directory source, in their canonical order.
SPLIT_FOLDERS = ("train", "validation", "test")

# OS clutter that is never an intended image; other stray files are reported, not ignored.
_JUNK_FILES = {"thumbs.db", "desktop.ini"}


def hash_fraction(relative_path: str) -> float:
    """Maps a file's relative path (forward slashes) to a stable number in [0, 1).

    The first 8 bytes of its SHA-1, so the split of a file depends on nothing but its own path.
    """
    digest = hashlib.sha1(relative_path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


#: Prefix hashed with each key for the shard hash; a different input than the split hash's.
SHARD_SALT = "shard:"
#: Names the shard hash in cache configs, so shards cut by another rule never merge silently.
SHARD_HASH = f"sha1({SHARD_SALT!r}+key)"


def shard_of(key: str, count: int) -> int:
    """The shard (0 … count-1) of a key (relative path or TFDS id): stable, split-independent."""
    # hash_fraction can round up to 1.0 for the very largest digests; keep the result in range.
    return min(int(hash_fraction(SHARD_SALT + key) * count), count - 1)


@dataclass(frozen=True)
class FolderListing:
    """A class-folder tree, listed and split.

    Attributes:
        layout: "explicit" (split folders) or "hashed" (one tree split by ``assign_stratified``).
        split_names: the splits present, in ``SPLIT_FOLDERS`` order.
        split_specs: split → how it was cut ("train/" or "sha1-stratified[0.2:1]"), for cache provenance.
        class_names: sorted class folder names.
        items: split → [(key, label index)], sorted by key.
        loops: key → reason for the directory symlinks that led to a folder already listed; each
            is also one item of its split, so the loop is reported once among the skipped images.
        not_regular: key → reason for the entries that are not regular files (named pipes,
            devices, sockets): items of their split like the loops, reported and never opened.
        notes: warnings for the user (classes too small for the requested split shares).
    """

    layout: str
    split_names: list[str]
    split_specs: dict[str, str]
    class_names: list[str]
    items: dict[str, list[tuple[str, int]]]
    loops: dict[str, str] = field(default_factory=dict)
    not_regular: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def list_class_folders(root: Path, spec: str, *, validation_fraction: float,
                       test_fraction: float) -> FolderListing:
    """Lists every file of a class-folder tree and assigns it to a split.

    Args:
        root: the resolved directory.
        spec: SOURCE as given, for messages.
        validation_fraction, test_fraction: held-out shares of a single tree (hashed layout).

    Raises:
        DataError: split folders mixed with other folders, no class folders, an empty class
            folder, or a folder that cannot be listed.
    """
    top = _subfolders(root)
    split_dirs = [d for d in SPLIT_FOLDERS if d in top]
    seen, loops, not_regular, notes = _walked_tops(root, split_dirs, top), {}, {}, []
    if split_dirs:
        others = sorted(set(top) - set(split_dirs))
        if others:
            raise DataError(f"{spec}: mixes split folders ({', '.join(split_dirs)}) with other folders "
                            f"({', '.join(others[:3])}); use DIR/{{train,validation,test}}/<class>/ or DIR/<class>/")
        layout, split_specs = "explicit", {s: f"{s}/" for s in split_dirs}
        files = [(split, key, cls) for split in split_dirs
                 for cls, key in _class_files(root, split, seen, loops, not_regular)]
    else:
        layout, split_specs = "hashed", hashed_split_specs(validation_fraction, test_fraction)
        listed = [(key, cls) for cls, key in _class_files(root, "", seen, loops, not_regular)]
        chosen = assign_stratified(listed, validation_fraction=validation_fraction,
                                   test_fraction=test_fraction, spec=spec, notes=notes)
        files = [(chosen[key], key, cls) for key, cls in listed]
    split_names = [s for s in SPLIT_FOLDERS if s in split_specs]
    class_names = sorted({cls for _, _, cls in files})
    if not class_names:
        raise DataError(f"{spec}: no class folders found (expected DIR/<class>/<image> "
                        f"or DIR/{{train,validation,test}}/<class>/<image>{_LABEL_FILE_WAY})")
    index = {name: i for i, name in enumerate(class_names)}
    items: dict[str, list[tuple[str, int]]] = {s: [] for s in split_names}
    for split, key, cls in sorted(files):
        items[split].append((key, index[cls]))
    return FolderListing(layout, split_names, split_specs, class_names, items, loops, not_regular, notes)


#: The other way to give labels, named when a folder has none.
_LABEL_FILE_WAY = ", or give a .csv/.jsonl label file (path and label columns) as SOURCE"


def check_class_folders(root: Path, spec: str) -> None:
    """Refuses a folder SOURCE with fewer than two class folders, from its top-level listing only.

    No walk and no TensorFlow, so the commands that train (extract-features, run) refuse it at once
    rather than after TensorFlow's start-up (about 20 s on 2 cores); ``list_class_folders`` still
    checks the rest (empty class folders, mixed layouts) when the source is opened.

    Raises:
        DataError: no class folder (loose images: naming a label file as the other way), or one.
    """
    top = _subfolders(root)
    split_dirs = [d for d in SPLIT_FOLDERS if d in top]
    if split_dirs and set(top) - set(split_dirs):
        return  # a mixed layout: list_class_folders says what is wrong with it
    classes = sorted({c for d in split_dirs for c in _subfolders(root / d)}) if split_dirs else top
    if not classes:
        try:
            loose = sum(1 for e in os.scandir(root) if _visible(e.name) and not e.is_dir())
        except OSError:
            loose = 0
        held = f" (its {loose} file(s) are not in a class folder, so they have no labels)" if loose else ""
        raise DataError(f"{spec}: no class folders{held}; put the images in one folder per class "
                        f"(DIR/<class>/<image>){_LABEL_FILE_WAY}")
    if len(classes) < 2:
        where = f"{'/'.join(split_dirs)}/" if split_dirs else ""
        raise DataError(f"{spec}: 1 class folder ({where}'{classes[0]}'); a classifier needs 2 or more: add a folder "
                        f"per class{_LABEL_FILE_WAY}")


def hashed_split_specs(validation_fraction: float, test_fraction: float) -> dict[str, str]:
    """split → how ``assign_stratified`` cuts it, for cache provenance (a source without splits).

    With both fractions 0 everything is train, as under the older unstratified rule, so the spec
    stays ``sha1[0:1]`` and such caches still match.
    """
    low, mid = test_fraction, test_fraction + validation_fraction
    if mid == 0:
        return {"train": "sha1[0:1]"}
    rule = "sha1-stratified"
    specs = {"train": f"{rule}[{mid:g}:1]"}
    if validation_fraction > 0:
        specs["validation"] = f"{rule}[{low:g}:{mid:g}]"
    if test_fraction > 0:
        specs["test"] = f"{rule}[0:{low:g}]"
    return specs


#: How far (absolute) a class's held-out share may end from the requested fraction before a warning.
SHARE_TOLERANCE = 0.1


def assign_stratified(items: Sequence[tuple[str, str]], *, validation_fraction: float, test_fraction: float,
                      spec: str, notes: list[str] | None = None) -> dict[str, str]:
    """Splits items per stratum (class) by their stable hash: key → "train"/"validation"/"test".

    Within each stratum the items are ranked by ``hash_fraction(key)`` (ties by key); the first
    ``round(n · test_fraction)`` go to test and the next ``round(n · validation_fraction)`` to
    validation — at least one each when its fraction is above 0, and always at least one left
    for train — the rest to train. Adding items to a stratum moves only items at the boundaries
    of its ranking (see the module docstring).

    Args:
        items: (key, stratum) pairs; the stratum is the class name (multi-label sources: the row's
            rarest label).
        validation_fraction, test_fraction: held-out shares, each in [0, 1), together below 1.
        spec: SOURCE as given, for messages.
        notes: when given, receives one warning line naming the strata whose held-out shares end
            more than ``SHARE_TOLERANCE`` from the fractions (1/1/1 of 3 images for 0.1/0.1).

    Raises:
        DataError: a stratum with too few items to give every split one (fewer than 3 when both
            fractions are above 0), naming the class.
    """
    by_stratum: dict[str, list[str]] = {}
    for key, stratum in items:
        by_stratum.setdefault(stratum, []).append(key)
    chosen: dict[str, str] = {}
    far: list[str] = []
    for stratum in sorted(by_stratum):
        ranked = sorted(by_stratum[stratum], key=lambda k: (hash_fraction(k), k))
        n_test, n_val = _held_out_counts(len(ranked), validation_fraction, test_fraction, stratum, spec)
        for rank, key in enumerate(ranked):
            chosen[key] = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
        n = len(ranked)
        if max(abs(n_val / n - validation_fraction), abs(n_test / n - test_fraction)) > SHARE_TOLERANCE:
            far.append(f"'{stratum}' {n - n_val - n_test}/{n_val}/{n_test}")
    if far and notes is not None:
        notes.append(f"warning: {spec}: too few images for the requested shares in {len(far)} class(es), split "
                     f"train/validation/test as {', '.join(far[:3])}{' …' if len(far) > 3 else ''} instead of "
                     f"{1 - validation_fraction - test_fraction:g}/{validation_fraction:g}/{test_fraction:g}; "
                     f"add images, or give split folders or a split column")
    return chosen


def _held_out_counts(n: int, validation_fraction: float, test_fraction: float, stratum: str,
                     spec: str) -> tuple[int, int]:
    """(test, validation) counts of a stratum of n items; each ≥ 1 when its fraction is > 0."""
    def share(fraction: float) -> int:
        return max(1, int(n * fraction + 0.5)) if fraction > 0 else 0

    needed = 1 + (validation_fraction > 0) + (test_fraction > 0)
    if n < needed:
        held = " and ".join(name for name, f in (("validation", validation_fraction), ("test", test_fraction))
                            if f > 0)
        raise DataError(f"{spec}: class '{stratum}' has {n} image(s); a stratified split needs at least "
                        f"{needed} (one for train and one each for {held}): add images, or set ",
                        Arg("validation_fraction"), "/", Arg("test_fraction"), " to 0")
    n_test, n_val = share(test_fraction), share(validation_fraction)
    while n_test + n_val > n - 1:  # rounding up may leave train empty: give back from the larger share
        if n_val > 1 and (n_val >= n_test or n_test <= 1):
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in _JUNK_FILES


def _subfolders(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if _visible(e.name) and e.is_dir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list ({e.strerror})") from None


def _class_files(root: Path, split: str, seen: dict[tuple[int, int], str],
                 loops: dict[str, str], not_regular: dict[str, str]) -> list[tuple[str, str]]:
    """(class name, key) for every visible file below root/split/<class>/, recursively.

    Files directly in root/split are not in any class and are left alone. File and directory
    symlinks are followed (datasets are often laid out with them), but no directory is entered
    twice: ``seen`` maps (device, inode) → key of every directory already walked (the root, split
    and class folders are registered first, ``_walked_tops``), and a directory met again — a
    symlink to a parent, or a second link to a folder already listed — becomes one item whose key
    goes into ``loops`` with the reason. Before this, a link to a parent was followed ~30 levels
    deep: 7 images became 531 rows, the same photo in train, validation and test.

    An entry that is not a regular file once links are followed (a named pipe, a device, a socket)
    is one item whose reason goes into ``not_regular``; it is never opened (a pipe would block the
    reader for ever) and does not count as a file of its class.
    """
    base = root / split if split else root
    out = []
    for cls in _subfolders(base):
        found = 0
        for folder, dirs, names in os.walk(base / cls, followlinks=True):
            entered = []
            for d in sorted(d for d in dirs if _visible(d)):
                if _first_visit(Path(folder, d), root, seen, loops):
                    entered.append(d)
                else:
                    out.append((cls, Path(folder, d).relative_to(root).as_posix()))
            dirs[:] = entered
            for name in names:
                if _visible(name):
                    key = Path(folder, name).relative_to(root).as_posix()
                    out.append((cls, key))
                    reason = not_regular_reason(Path(folder, name))
                    if reason:
                        not_regular[key] = f"{reason}; skipped without opening it"
                    else:
                        found += 1
        if not found:
            raise DataError(f"{base / cls}: empty class folder")
    return out


def _walked_tops(root: Path, split_dirs: list[str], top: list[str]) -> dict[tuple[int, int], str]:
    """(device, inode) → key of the root, split and class folders, before any walk enters them."""
    classes = ([root / d / c for d in split_dirs for c in _subfolders(root / d)] if split_dirs
               else [root / c for c in top])
    seen: dict[tuple[int, int], str] = {}
    for folder in [root, *(root / d for d in split_dirs), *classes]:
        _first_visit(folder, root, seen)
    return seen


def _first_visit(folder: Path, root: Path, seen: dict[tuple[int, int], str],
                 loops: dict[str, str] | None = None) -> bool:
    """Records ``folder`` as walked; False (and its reason in ``loops``) when it was seen before."""
    try:
        st = os.stat(folder)
    except OSError:
        return True  # vanished or unreadable: os.walk lists nothing under it anyway
    key = folder.relative_to(root).as_posix()
    ident = (st.st_dev, st.st_ino)
    if ident in seen:
        if loops is not None:
            where = f"{seen[ident]}/" if seen[ident] != "." else "the dataset root"
            loops[key] = (f"directory loop: the same folder as {where} (a symlink to a folder "
                          f"already listed); not entered again")
        return False
    seen[ident] = key
    return True
