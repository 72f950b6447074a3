"""`headstart split` (issue 27): a folder of class folders laid out as OUT/{train,validation,test}/<class>/,
stratified per class by the one splitter (`data.splits.assign_stratified`), identical files kept in one
split, symlinks by default, and the `--out` policy. No TensorFlow: every test here takes well under a second."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_class_folders
from headstart.pipeline.cli import main
from headstart.pipeline.data.splits import list_class_folders


def cli(*args):
    return CliRunner().invoke(main, ["split", *map(str, args)])


def layout(out: Path) -> dict[str, Counter]:
    """split → Counter of class → files, as the folders hold them."""
    return {split.name: Counter(p.parent.name for p in split.rglob("*") if p.is_file() or p.is_symlink())
            for split in sorted(out.iterdir()) if split.is_dir()}


@pytest.fixture
def photos(tmp_path):
    root = make_class_folders(tmp_path / "photos", classes=("cats", "dogs", "owls"), per_class=20)
    make_class_folders(tmp_path / "extra", classes=("owls",), per_class=10, seed=5)
    for path in (tmp_path / "extra" / "owls").iterdir():  # a class of 30: the shares hold per class
        shutil.move(path, root / "owls" / f"x_{path.name}")
    return root


def test_stratified_counts_per_class_and_symlinks_by_default(photos, tmp_path):
    out = tmp_path / "split"
    result = cli(photos, "--out", out)
    assert result.exit_code == 0, result.output
    counts = layout(out)
    assert counts["train"] == {"cats": 14, "dogs": 14, "owls": 21}
    assert counts["validation"] == {"cats": 2, "dogs": 2, "owls": 3}
    assert counts["test"] == {"cats": 4, "dogs": 4, "owls": 6}
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert rows["owls"] == ["21", "3", "6", "30"] and rows["total"] == ["49", "7", "14", "70"]  # the table agrees
    linked = list((out / "train" / "cats").iterdir())
    assert linked and all(p.is_symlink() and p.resolve().parent == (photos / "cats").resolve() for p in linked)
    # --seed 0 is the split extract-features' hashed layout makes of SOURCE itself.
    hashed = list_class_folders(photos.resolve(), "photos", validation_fraction=0.1, test_fraction=0.2)
    assert {key for key, _ in hashed.items["test"]} == {p.relative_to(out / "test").as_posix()
                                                        for p in (out / "test").rglob("*.jpg")}
    # and extract-features reads OUT as the explicit layout
    assert list_class_folders(out, "split", validation_fraction=0, test_fraction=0).layout == "explicit"


def test_copy_seed_and_fractions(photos, tmp_path):
    result = cli(photos, "--out", tmp_path / "c", "--copy", "--fractions", "8,0,2", "--seed", "7")
    assert result.exit_code == 0, result.output
    counts = layout(tmp_path / "c")
    assert set(counts) == {"train", "test"} and counts["test"] == {"cats": 4, "dogs": 4, "owls": 6}
    files = list((tmp_path / "c" / "test").rglob("*.jpg"))
    assert files and not any(p.is_symlink() for p in files)
    default = cli(photos, "--out", tmp_path / "d", "--fractions", "8,0,2")
    salted = {p.name for p in files}
    assert salted != {p.name for p in (tmp_path / "d" / "test").rglob("*.jpg")}  # the seed salts the hash


def test_identical_files_land_in_one_split(photos, tmp_path):
    cats = sorted((photos / "cats").iterdir())
    for i, original in enumerate(cats[:8]):  # eight photos saved twice, one of them also under dogs
        shutil.copy(original, photos / "cats" / f"copy_{i}.jpg")
    shutil.copy(cats[0], photos / "dogs" / "same_as_a_cat.jpg")
    out = tmp_path / "split"
    result = cli(photos, "--out", out)
    assert result.exit_code == 0, result.output
    where = {p.relative_to(out / p.relative_to(out).parts[0]).as_posix(): p.relative_to(out).parts[0]
             for p in out.rglob("*.jpg")}
    for i, original in enumerate(cats[:8]):
        assert where[f"cats/copy_{i}.jpg"] == where[f"cats/{original.name}"]
    assert where["dogs/same_as_a_cat.jpg"] == where[f"cats/{cats[0].name}"]
    assert "9 identical file(s) kept in their twin's split" in result.output
    assert "under different classes" in result.output and "check their labels" in result.output


def test_out_policy_reuse_refusal_overwrite(photos, tmp_path):
    out = tmp_path / "split"
    assert cli(photos, "--out", out).exit_code == 0
    again = cli(photos, "--out", out)
    assert again.exit_code == 0 and "already laid out" in again.output
    other = cli(photos, "--out", out, "--fractions", "60,20,20")
    assert other.exit_code == 2 and "--fractions" in other.output and "--overwrite" in other.output, other.output
    assert json.loads((out / "split.json").read_text())["fractions"] == [0.7, 0.1, 0.2]  # nothing changed
    replaced = cli(photos, "--out", out, "--fractions", "60,20,20", "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert layout(out)["validation"] == {"cats": 4, "dogs": 4, "owls": 6}
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = cli(photos, "--out", foreign)
    assert refused.exit_code == 2 and "not empty" in refused.output
    assert (foreign / "notes.txt").read_text() == "keep me" and not (foreign / "train").exists()


@pytest.mark.parametrize("make, args, says", [
    (lambda t: make_class_folders(t / "one", classes=("cats",)), ["--out", "{t}/o"], "1 class folder ('cats'); a classifier needs 2"),
    (lambda t: t / "missing", ["--out", "{t}/o"], "not a folder of class folders"),
    (lambda t: make_class_folders(t / "tiny", per_class=2), ["--out", "{t}/o"], "class 'cats' has 2 distinct image(s)"),
    (lambda t: make_class_folders(t / "p"), ["--out", "{t}/o", "--fractions", "70,30"], "--fractions must be three"),
    (lambda t: make_class_folders(t / "p"), ["--out", "{t}/o", "--fractions", "0,5,5"], "train needs a share"),
    (lambda t: make_class_folders(t / "p"), ["--out", "{t}/p/inside"], "overlaps SOURCE"),
    (lambda t: make_class_folders(t / "s" / "train"), ["--out", "{t}/o"], "already split into train/"),
    (lambda t: make_class_folders(t / "p"), [], "Missing option '--out'"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, make, args, says):
    source = make(tmp_path)
    if source.name == "train":
        source = source.parent
    result = cli(source, *[a.format(t=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 or says.startswith("Missing"), result.output  # click's own usage error adds usage lines
    assert not (tmp_path / "o").exists()
