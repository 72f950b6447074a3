"""``headstart split``: a class-folder SOURCE laid out as ``OUT/{train,validation,test}/<class>/``.

The README asks for a 70/10/20 split in folders; this makes it from ``SOURCE/<class>/…`` without a
second splitter: the files are listed by ``data.splits.list_class_folders`` and cut per class by
``data.splits.assign_stratified`` (the rule of extract-features' hashed layout; with ``--seed 0`` the
same split extract-features makes of SOURCE itself, ``--seed N`` salts the hash). Files with the same
bytes (``features.file_hash.sha256_file``) are one item, placed in one split together, so a copy of a
training photo never lands in test. Each file becomes a symbolic link to SOURCE's file (``--copy``:
a copy), at the same path below its class folder. No TensorFlow.

``OUT`` is claimed by the ``--out`` policy (``store.out_dir``): ``split.json`` records the options
(written first, marked complete last), so the same command again is "already done", other options
are refused naming the difference, and ``--overwrite`` replaces OUT's split folders.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from headstart.features.file_hash import sha256_file
from headstart.pipeline.config import SplitConfig
from headstart.pipeline.data.splits import SPLIT_FOLDERS, assign_stratified, check_class_folders, \
    list_class_folders
from headstart.features.errors import Arg
from headstart.pipeline.errors import DataError, OptionError, OutputError, RunDirError
from headstart.pipeline.options.checks import check_config
from headstart.pipeline.store.files import write_json_atomic
from headstart.pipeline.store.out_dir import REUSE, claim
from headstart.pipeline.report.printable import printable

SPLIT_RECORD = "split.json"


@dataclass(frozen=True)
class SplitResult:
    """What ``split_folders`` laid out.

    Attributes:
        out: the directory.
        class_names: sorted class names.
        counts: split → class → files placed there.
        duplicates: files that followed an identical file (same bytes) into its split.
        mode: "symlink" or "copy".
        already_done: OUT already held this split (nothing was written).
        notes: warnings (classes far from the shares, identical files under different classes, skipped entries).
    """

    out: str
    class_names: list[str]
    counts: dict[str, dict[str, int]]
    duplicates: int
    mode: str
    already_done: bool = False
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The per-class, per-split counts, then one line saying what was written.

        Returns:
            Lines like ``class  train  validation  test  total`` / ``cats  70  10  20  100``.
        """
        splits = [s for s in SPLIT_FOLDERS if s in self.counts]
        rows = [["class", *splits, "total"]]
        for name in [*self.class_names, "total"]:
            per = [sum(self.counts[s].values()) if name == "total" else self.counts[s].get(name, 0) for s in splits]
            rows.append([printable(name), *map(str, per), str(sum(per))])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        done = "already laid out" if self.already_done else f"laid out ({'copies' if self.mode == 'copy' else 'symlinks'})"
        same = f"; {self.duplicates} identical file(s) kept in their twin's split" if self.duplicates else ""
        return "\n".join([*self.notes, *lines, f"{printable(self.out)}: {done}{same}"])


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"70,10,20"`` → (0.7, 0.1, 0.2): train, validation and test shares normalized by their sum.

    Raises:
        OptionError: not three non-negative numbers, or no share left for train.
    """
    try:
        shares = [float(part) for part in text.split(",")]
    except ValueError:
        shares = []
    if len(shares) != 3 or any(not (s >= 0) or s == float("inf") for s in shares):
        raise OptionError.invalid("fractions", text, "must be three shares TRAIN,VALIDATION,TEST such as 70,10,20",
                                  shown=repr(text))
    if shares[0] <= 0:
        raise OptionError(Arg("fractions", text), ": train needs a share above 0")
    total = sum(shares)
    return shares[0] / total, shares[1] / total, shares[2] / total


def split_folders(config: SplitConfig) -> SplitResult:
    """Lays out ``config.source``'s class folders as ``config.out``/{train,validation,test}/<class>/.

    Everything about SOURCE and the options is checked before OUT is touched.

    Raises:
        OptionError: bad --fractions / --seed. DataError: SOURCE is not a folder of 2+ class folders
            (or already holds split folders), or a class too small for the shares.
        RunDirError: OUT inside SOURCE (or SOURCE inside OUT), or OUT not empty and not this split
            (without --overwrite). OutputError: OUT cannot be written.
    """
    check_config("split", config)
    _, validation, test = parse_fractions(config.fractions)
    root, out = _source_root(config.source), Path(config.out).absolute()
    if out.resolve() == root or root in out.resolve().parents or out.resolve() in root.parents:
        raise RunDirError(Arg("out", config.out), f" overlaps SOURCE {config.source}; choose a folder outside it")
    check_class_folders(root, config.source)  # one class, or loose images: the words every command uses
    listing = list_class_folders(root, config.source, validation_fraction=0, test_fraction=0)
    if listing.layout == "explicit":
        raise DataError(f"{config.source}: already split into {', '.join(listing.split_names)}/ folders; "
                        f"give the folder of class folders")
    skipped = {**listing.loops, **listing.not_regular}
    files = [(key, listing.class_names[label]) for key, label in listing.items["train"] if key not in skipped]
    notes = [f"warning: skipped {len(skipped)} entr(ies) that are not files (e.g. {printable(next(iter(skipped)))}: "
             f"{skipped[next(iter(skipped))]})"] if skipped else []
    chosen, duplicates = _assign(root, files, validation, test, config, notes)
    counts = {s: dict(sorted(Counter(cls for key, cls in files if chosen[key] == s).items()))
              for s in SPLIT_FOLDERS if s in chosen.values()}
    mode = "copy" if config.copy else "symlink"
    result = SplitResult(str(config.out), listing.class_names, counts, duplicates, mode, notes=notes)
    wanted = {"source": str(root), "fractions": [round(f, 6) for f in parse_fractions(config.fractions)],
              "seed": config.seed, "copy": config.copy}
    with claim(out, command="split", what="split layout", section="split", wanted=wanted,
               read_recorded=lambda: _recorded(out), overwrite=config.overwrite) as state:
        if state == REUSE:
            return dataclasses.replace(result, already_done=True)
        _write(out, root, files, chosen, wanted, result, config.copy)
    return result


def _source_root(source: str) -> Path:
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataError(f"{source}: not a folder of class folders (SOURCE/<class>/<image>)")
    return root.resolve()


def _assign(root: Path, files: list[tuple[str, str]], validation: float, test: float, config: SplitConfig,
            notes: list[str]) -> tuple[dict[str, str], int]:
    """key → split, files with the same bytes together; and how many files followed a twin.

    Each group of identical files is one item of its first file's class (sorted keys), ranked by that
    file's key (salted by a non-zero seed), so a class's shares count distinct images.
    """
    groups: dict[str, list[str]] = {}
    for key, _ in files:
        try:
            groups.setdefault(sha256_file(root / key), []).append(key)
        except OSError as exc:
            raise DataError(f"{root / key}: cannot read ({exc.strerror})") from None
    cls = dict(files)
    firsts = {min(keys): sorted(keys) for keys in groups.values()}
    salt = f"{config.seed}:" if config.seed else ""
    needed = 1 + (validation > 0) + (test > 0)
    for name, n in sorted(Counter(cls[first] for first in firsts).items()):
        if n < needed:
            raise DataError(f"{config.source}: class '{name}' has {n} distinct image(s); ",
                            Arg("fractions", config.fractions), f" needs at least {needed} (one per split): add "
                            "images, or give a share of 0 to validation or test")
    ranked = assign_stratified([(salt + first, cls[first]) for first in firsts], validation_fraction=validation,
                               test_fraction=test, spec=config.source, notes=notes)
    chosen = {key: ranked[salt + first] for first, keys in firsts.items() for key in keys}
    mixed = [keys for keys in firsts.values() if len({cls[k] for k in keys}) > 1]
    if mixed:
        notes.append(f"warning: {len(mixed)} group(s) of identical files under different classes (e.g. "
                     f"{printable(' = '.join(mixed[0][:2]))}): check their labels")
    return chosen, sum(len(keys) - 1 for keys in firsts.values())


def _recorded(out: Path) -> tuple[dict | None, bool]:
    """(the options split.json recorded, whether it is complete); (None, False) without one."""
    import json

    try:
        record = json.loads((out / SPLIT_RECORD).read_text(encoding="utf-8"))
        return {k: record[k] for k in ("source", "fractions", "seed", "copy")}, bool(record.get("complete"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, False


def _write(out: Path, root: Path, files: list[tuple[str, str]], chosen: dict[str, str], wanted: dict,
           result: SplitResult, copy: bool) -> None:
    """Replaces OUT's split folders with the links (or copies); split.json first unfinished, then complete."""
    record = {**wanted, "counts": result.counts, "duplicates": result.duplicates}
    try:
        write_json_atomic(out / SPLIT_RECORD, {**record, "complete": False})
        for split in SPLIT_FOLDERS:
            shutil.rmtree(out / split, ignore_errors=True)
        for key, _ in files:
            target = out / chosen[key] / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / key, target) if copy else os.symlink(root / key, target)
        write_json_atomic(out / SPLIT_RECORD, {**record, "complete": True})
    except OSError as exc:
        raise OutputError(Arg("out", out), f": cannot write there ({exc.strerror or exc})") from None
