"""Label files (.csv / .jsonl) as sources, their bad rows, and stratified hashed splits (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_class_folders, write_image
from headstart.pipeline.cli import main
from headstart.pipeline.data.source_spec import SourceSpec
from headstart.pipeline.data.sources import open_source, resolve_source
from headstart.pipeline.errors import DataError, OptionError

FAST = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
        "--batch-size", "4"]
COLOURS = {"cat": (220, 40, 40), "dog": (40, 40, 220), "bird": (40, 200, 40)}


def flat_images(folder: Path, counts: dict[str, int], *, suffix=".jpg", seed=0) -> list[tuple[str, str]]:
    """One flat folder of generated images; returns [(file name, label)] in writing order."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in counts.items():
        for i in range(n):
            name = f"{label}_{i:03d}{suffix}"
            write_image(folder / name, rng, colour=COLOURS[label])
            rows.append((name, label))
    return rows


def write_csv(path: Path, header: str, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def elements(source, split, size=8):
    return [(e["key"].decode(), e["label"].tolist(), e["error"].decode())
            for e in source.dataset(split, size).as_numpy_iterator()]


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_cache(path):
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["config_json"])
        splits = {s: (f[s]["features"][:], f[s]["labels"][:], [k.decode() for k in f[s]["keys"][:]])
                  for s in ("train", "validation", "test") if s in f}
    return config, splits


# ── reading ──────────────────────────────────────────────────────────────────────────────────


def test_csv_with_a_split_column_is_used_as_given(tmp_path):
    rows = flat_images(tmp_path / "photos", {"dog": 4, "cat": 4})
    split_of = ["train", "train", "validation", "test"] * 2
    csv = write_csv(tmp_path / "labels.csv", "filename,label,split",
                    [f"photos/{name},{label},{split.upper() if i == 0 else split}"
                     for i, ((name, label), split) in enumerate(zip(rows, split_of))])
    source = resolve_source(str(csv))
    assert source.kind == "label_file" and not source.multi_label
    assert source.class_names == ["cat", "dog"]  # sorted labels, not file order
    assert source.split_names == ["train", "validation", "test"]
    assert elements(source, "test") == [("photos/cat_003.jpg", 0, ""), ("photos/dog_003.jpg", 1, "")]
    assert source.keys("train") == ["photos/cat_000.jpg", "photos/cat_001.jpg", "photos/dog_000.jpg",
                                     "photos/dog_001.jpg"]
    described = source.describe()
    assert described["file"] == str(csv.resolve()) and described["root"] == str(tmp_path.resolve())
    assert len(described["sha256"]) == 64 and described["task"] == "single_label"
    assert described["path_column"] == "filename" and described["splits"]["test"] == "column split=test"


def test_csv_without_a_split_column_is_split_per_class_by_hash(tmp_path):
    rows = flat_images(tmp_path, {"cat": 40, "bird": 3})  # a rare class of 3: one image per split
    csv = write_csv(tmp_path / "labels.csv", "path,label", [f"{name},{label}" for name, label in rows])
    source = resolve_source(str(csv), validation_fraction=0.2, test_fraction=0.1)
    split_of = {k: s for s in source.split_names for k in source.keys(s)}
    birds = sorted(split_of[k] for k in split_of if k.startswith("bird"))
    assert birds == ["test", "train", "validation"]
    assert sum(1 for k, s in split_of.items() if k.startswith("cat") and s == "test") == 4
    assert sum(1 for k, s in split_of.items() if k.startswith("cat") and s == "validation") == 8
    assert source.describe()["splits"] == {"train": "sha1-stratified[0.3:1]",
                                           "validation": "sha1-stratified[0.1:0.3]",
                                           "test": "sha1-stratified[0:0.1]"}


def test_jsonl_and_path_and_label_column_overrides(tmp_path):
    rows = flat_images(tmp_path / "img", {"cat": 3, "dog": 3})
    lines = [json.dumps({"picture": f"img/{name}", "kind": label, "note": "x"}) for name, label in rows]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    with pytest.raises(DataError) as missing:
        resolve_source(str(tmp_path / "labels.jsonl"))
    assert str(missing.value).count("\n") == 0
    assert "no path column" in str(missing.value) and "no label column" in str(missing.value)
    assert "columns found: picture, kind, note" in str(missing.value)
    spec = SourceSpec(str(tmp_path / "labels.jsonl"), path_column="picture", label_column="KIND",
                      validation_fraction=0.0, test_fraction=0.0)
    source = open_source(spec)
    assert source.class_names == ["cat", "dog"] and source.count("train") == 6
    assert source.describe()["label_column"] == "kind"
    with pytest.raises(DataError, match=r"no column 'species' \(label_column\); columns found: picture, kind"):
        open_source(SourceSpec(spec.source, path_column="picture", label_column="species"))


def test_bare_ids_resolve_against_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "train_images"
    for i, ext in enumerate((".jpg", ".png", ".JPEG", ".jpg")):
        write_image(folder / f"id{i}{ext}", rng, colour=(200, 40 * i, 40))
    (folder / "id4").write_bytes((folder / "id0.jpg").read_bytes())  # a file without extension, as given
    csv = write_csv(tmp_path / "meta" / "train.csv", "id,label",
                    ["id0,a", "id1,b", "id2,a", "id3.jpg,b", "id4,a", "id5,b"])
    source = open_source(SourceSpec(str(csv), images=str(folder), validation_fraction=0.0, test_fraction=0.0))
    got = {k: (label, err) for k, label, err in elements(source, "train")}
    assert {k: v for k, v in got.items() if not v[1]} == {"id0.jpg": (0, ""), "id1.png": (1, ""),
                                                          "id2.JPEG": (0, ""), "id3.jpg": (1, ""),
                                                          "id4": (0, "")}
    assert got["id5"][1].startswith("missing file (train.csv row 7)")
    with pytest.raises(DataError, match=r"^images='.*nowhere': no such directory$"):
        open_source(SourceSpec(str(csv), images=str(tmp_path / "nowhere")))


def test_label_file_options_need_a_label_file(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", per_class=3)
    with pytest.raises(OptionError, match=r"^path_column applies to label-file sources"):
        SourceSpec(str(folder), path_column="file")
    with pytest.raises(OptionError, match=r"^multi_label applies to label-file sources"):
        SourceSpec(str(folder), multi_label=True)
    with pytest.raises(DataError, match="no such label file"):
        resolve_source(str(tmp_path / "absent.csv"))
    # What a cache of a folder recorded before label files existed reads back as the same spec.
    old = {"source": str(folder), "split_specs": {}, "validation_fraction": 0.1, "test_fraction": 0.1}
    assert SourceSpec.from_record(old) == SourceSpec(str(folder))
    assert SourceSpec(str(folder)).to_dict() == old
    assert SourceSpec.from_record({**old, "source": "x.csv", "images": "/data"}).images == "/data"


# ── bad rows ─────────────────────────────────────────────────────────────────────────────────


def bad_rows_csv(tmp_path: Path) -> Path:
    rows = flat_images(tmp_path / "p", {"cat": 5, "dog": 5})
    lines = [f"p/{name},{label},train" for name, label in rows]
    rng = np.random.default_rng(5)
    for name in ("multi.jpg", "unlabelled.jpg", "elsewhere.jpg"):
        write_image(tmp_path / "p" / name, rng)
    lines += ["p/gone.jpg,cat,train",                     # a missing file
              "p/cat_000.jpg,cat,train",                  # the same row again: kept once
              "p/dog_000.jpg,cat,train",                  # the same path, another label: both dropped
              "p/multi.jpg,cat|dog,train",                # several labels in a single-label column
              ",cat,train",                               # no path
              "p/unlabelled.jpg,,train",                  # an empty label
              "p/elsewhere.jpg,cat,holdout"]              # an unknown split
    return write_csv(tmp_path / "labels.csv", "path,label,split", lines)


def test_each_bad_row_is_skipped_with_its_reason_at_the_source(tmp_path):
    source = resolve_source(str(bad_rows_csv(tmp_path)))
    assert source.table.duplicates == 1
    bad = {k: err for s in source.split_names for k, _, err in elements(source, s) if err}
    assert bad == {
        "p/gone.jpg": "missing file (labels.csv row 12)",
        "p/dog_000.jpg": "duplicate path with conflicting rows: labels.csv row 7: dog in train; "
                         "labels.csv row 14: cat in train",
        "p/multi.jpg": "several labels 'cat|dog' in the single-label column 'label' (name the column "
                       "'labels' or pass --multi-label) (labels.csv row 15)",
        "labels.csv row 16": "empty path",
        "p/unlabelled.jpg": "empty label (labels.csv row 17)",
        "p/elsewhere.jpg": "unknown split 'holdout' (expected train, validation, test) (labels.csv row 18)",
    }
    # A split that only bad rows name is a split too, found empty and refused by extract-features
    # (tests/test_faults_round2.py); here every row names train.
    assert source.split_names == ["train"] and source.count("train") == 9 + len(bad)


@pytest.mark.slow
def test_bad_rows_are_skipped_counted_and_refused_like_bad_images(tmp_path):
    csv, out = bad_rows_csv(tmp_path), tmp_path / "f.h5"
    strict = run_cli("extract-features", csv, "--out", out, *FAST, "--strict")
    assert strict.exit_code == 1 and "(--strict; 6 bad in split 'train')" in strict.output, strict.output
    assert not out.exists() and not Path(f"{out}.partial").exists()
    limited = run_cli("extract-features", csv, "--out", out, *FAST, "--max-bad", "5")
    assert limited.exit_code == 1 and "--max-bad 5" in limited.output, limited.output
    out = tmp_path / "g.h5"  # (the failed run left f.h5.partial to resume from)
    result = run_cli("extract-features", csv, "--out", out, *FAST, "--max-bad", "6")
    assert result.exit_code == 0, result.output
    assert "train: 9 rows, 6 skipped" in result.output
    assert "labels.csv: 1 row(s) repeat an earlier row exactly" in result.output
    assert "skipped [train] p/gone.jpg: missing file (labels.csv row 12)" in result.output
    config, splits = read_cache(out)
    assert config["source"]["kind"] == "label_file" and config["class_names"] == ["cat", "dog"]
    assert splits["train"][2] == [f"p/cat_00{i}.jpg" for i in range(5)] + [f"p/dog_00{i}.jpg" for i in range(1, 5)]
    assert splits["train"][1].tolist() == [0] * 5 + [1] * 4


@pytest.mark.slow
def test_a_changed_label_file_is_another_cache(tmp_path):
    rows = flat_images(tmp_path, {"cat": 4, "dog": 4})
    lines = [f"{name},{label},{'validation' if name.endswith('3.jpg') else 'train'}" for name, label in rows]
    csv, out = write_csv(tmp_path / "labels.csv", "path,label,split", lines), tmp_path / "f.h5"
    assert run_cli("extract-features", csv, "--out", out, *FAST).exit_code == 0
    before = out.read_bytes()
    assert run_cli("extract-features", csv, "--out", out, *FAST).output.strip().endswith("already complete")
    write_csv(csv, "path,label,split", [lines[0].replace(",cat,", ",dog,"), *lines[1:]])  # one label fixed
    refused = run_cli("extract-features", csv, "--out", out, *FAST)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    # Issue 22, item 10: how many rows differ, not two SHA-256 digests.
    assert refused.output.strip() == f"Error: labels.csv changed since {out} was written (1 row differs); use " \
                                     "--overwrite to replace it"
    assert out.read_bytes() == before  # nothing written, nothing mixed
    moved = [line.replace(",train", ",test") if "dog_001" in line else line for line in lines]
    write_csv(csv, "path,label,split", moved[1:])
    refused = run_cli("extract-features", csv, "--out", out, *FAST)  # one row moved to test, one removed
    assert "labels.csv changed since" in refused.output and "(2 rows differ)" in refused.output, refused.output
    write_csv(csv, "path,label,split", [lines[0].replace(",cat,", ",dog,"), *lines[1:]])
    redone = run_cli("extract-features", csv, "--out", out, *FAST, "--overwrite")
    assert redone.exit_code == 0, redone.output
    _, splits = read_cache(out)
    assert splits["train"][1].tolist() == [1, 0, 0, 1, 1, 1]  # cat_000 is a dog now


# ── stratified hashed splits ─────────────────────────────────────────────────────────────────


def test_a_class_with_fewer_than_three_images_is_a_one_line_error(tmp_path):
    folder = make_class_folders(tmp_path / "imgs", classes=("common", "rare"), per_class=3)
    (folder / "rare" / "rare_000.jpg").unlink()
    with pytest.raises(DataError) as err:
        resolve_source(str(folder))
    assert str(err.value).count("\n") == 0
    assert "class 'rare' has 2 image(s); a stratified split needs at least 3" in str(err.value)
    assert len(resolve_source(str(folder), test_fraction=0.0).keys("validation")) == 2  # 2 are enough for 2 splits
    csv = write_csv(tmp_path / "l.csv", "path,label", ["imgs/common/common_000.jpg,a", "imgs/common/common_001.jpg,b",
                                                       "imgs/common/common_002.jpg,b"])
    with pytest.raises(DataError, match=r"class 'a' has 1 image\(s\)"):
        resolve_source(str(csv))


def test_stratified_split_keeps_a_rare_class_in_validation_and_test(tmp_path):
    root = tmp_path / "imgs"
    for cls, n in (("common", 300), ("rare", 4)):
        for i in range(n):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{i}.jpg").write_bytes(b"")
    source = resolve_source(str(root))
    rare = {s: [k for k in source.keys(s) if k.startswith("rare/")] for s in source.split_names}
    assert {s: len(v) for s, v in rare.items()} == {"train": 2, "validation": 1, "test": 1}
    common = {s: sum(k.startswith("common/") for k in source.keys(s)) for s in source.split_names}
    assert common == {"train": 240, "validation": 30, "test": 30}


# ── multi-label on the source side ───────────────────────────────────────────────────────────


def test_a_labels_column_gives_multi_hot_elements(tmp_path):
    rows = flat_images(tmp_path, {"cat": 3, "dog": 3, "bird": 3})
    sets = ["cat", "cat|dog", "cat bird", "dog", "dog | cat", "dog", "bird", "bird|cat", "bird"]
    csv = write_csv(tmp_path / "tags.csv", "image,labels,split",
                    [f"{name},{tags},{'test' if i % 3 == 2 else 'train'}" for i, ((name, _), tags) in
                     enumerate(zip(rows, sets))])
    source = resolve_source(str(csv))
    assert source.multi_label and source.class_names == ["bird", "cat", "dog"]
    assert source.describe()["task"] == "multi_label"
    spec = source.dataset("test", 8).element_spec
    assert spec["label"].shape == (3,) and spec["label"].dtype.name == "int64"
    assert elements(source, "test") == [("bird_002.jpg", [1, 0, 0], ""), ("cat_002.jpg", [1, 1, 0], ""),
                                        ("dog_002.jpg", [0, 0, 1], "")]
    # --multi-label reads a plain label column as label sets; a JSONL list is a label set too.
    plain = write_csv(tmp_path / "plain.csv", "path,label", [f"{n},{t}" for (n, _), t in zip(rows, sets)])
    forced = open_source(SourceSpec(str(plain), multi_label=True, validation_fraction=0, test_fraction=0))
    assert forced.multi_label and elements(forced, "train")[2] == ("bird_002.jpg", [1, 0, 0], "")
    jsonl = tmp_path / "tags.jsonl"
    jsonl.write_text("\n".join(json.dumps({"path": n, "labels": t.replace("|", " ").split()})
                               for (n, _), t in zip(rows, sets)), encoding="utf-8")
    assert elements(open_source(SourceSpec(str(jsonl), validation_fraction=0, test_fraction=0)), "train") == \
        elements(forced, "train")


def test_multi_label_rows_are_stratified_on_their_rarest_label(tmp_path):
    # "rare" appears on 3 rows, always beside "common": stratified on "common", the three could all
    # land in train; on their rarest label they are one per split.
    rows = flat_images(tmp_path, {"cat": 30})
    sets = ["common rare" if i < 3 else "common" for i in range(30)]
    csv = write_csv(tmp_path / "tags.csv", "path,labels", [f"{n},{t}" for (n, _), t in zip(rows, sets)])
    source = resolve_source(str(csv))
    rare = sorted(s for s in source.split_names for k in source.keys(s) if k in {r[0] for r in rows[:3]})
    assert rare == ["test", "train", "validation"]


@pytest.mark.slow
def test_extract_a_multi_label_csv_into_a_multi_hot_cache(tmp_path):
    rows = flat_images(tmp_path, {"cat": 4, "dog": 4})
    sets = ["cat", "cat dog", "cat", "cat|dog", "dog", "dog", "dog cat", "dog"]
    csv = write_csv(tmp_path / "tags.csv", "path,labels,split",
                    [f"{n},{t},{'validation' if i % 4 == 3 else 'train'}" for i, ((n, _), t) in enumerate(zip(rows, sets))])
    out = tmp_path / "f.h5"
    result = run_cli("extract-features", csv, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    config, splits = read_cache(out)
    assert config["class_names"] == ["cat", "dog"] and config["source"]["task"] == "multi_label"
    assert splits["train"][2] == ["cat_000.jpg", "cat_001.jpg", "cat_002.jpg", "dog_000.jpg", "dog_001.jpg",
                                  "dog_002.jpg"]
    assert splits["train"][1].tolist() == [[1, 0], [1, 1], [1, 0], [0, 1], [0, 1], [1, 1]]
    assert splits["validation"][1].tolist() == [[1, 1], [0, 1]]
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["provenance_json"])["task"] == "multi_label"


# ── the other commands ───────────────────────────────────────────────────────────────────────


def test_run_and_evaluate_read_the_label_file_options(tmp_path):
    from headstart.pipeline.run.runner import load_run_config
    from headstart.pipeline.run.toml_config import to_toml
    from headstart.pipeline.commands.evaluation import _resolve

    rows = flat_images(tmp_path / "pics", {"cat": 3, "dog": 3})
    csv = write_csv(tmp_path / "labels.csv", "picture,kind", [f"{n},{lab}" for n, lab in rows])
    toml = tmp_path / "run.toml"
    toml.write_text('[extract]\npath_column = "picture"\nlabel_column = "kind"\n', encoding="utf-8")
    config = load_run_config(str(csv), str(tmp_path / "run"), config_file=str(toml),
                             flags={"images": str(tmp_path / "pics"), "multi_label": True})
    spec = SourceSpec.from_config(config.extract, source=config.source)
    assert (spec.path_column, spec.label_column, spec.images, spec.multi_label) == \
        ("picture", "kind", str(tmp_path / "pics"), True)
    assert 'path_column = "picture"' in to_toml(config) and "multi_label = true" in to_toml(config)
    from headstart.pipeline.store.rundir import RunDir

    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "run.json").write_text(json.dumps({"kind": "finetune",
                                                          "source": {**spec.to_dict(), "path": str(csv)}}))
    source = _resolve(str(csv), RunDir(tmp_path / "ft"), None, None, None, {"multi_label": False})
    assert source.multi_label and source.describe()["path_column"] == "picture"
    for command in ("evaluate", "finetune", "extract-features", "run"):
        help_text = run_cli(command, "--help").output
        assert all(flag in help_text for flag in ("--path-column", "--label-column", "--images", "--multi-label"))


@pytest.mark.slow
def test_run_and_evaluate_on_a_csv_of_bare_ids_end_to_end(tmp_path):
    from conftest import make_weights_file

    folder = tmp_path / "train_images"
    rows = flat_images(folder, {"cat": 8, "dog": 8})
    split_of = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
    csv = write_csv(tmp_path / "meta" / "train.csv", "id,kind,split",
                    [f"{Path(n).stem},{lab},{split_of[i % 8]}" for i, (n, lab) in enumerate(rows)])
    weights = make_weights_file(tmp_path / "mobilenet_025.weights.h5")
    run_dir = tmp_path / "run"
    result = run_cli("run", csv, "--out", run_dir, "--recipe", "guide", "--images", folder, "--label-column", "kind",
                     "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--weights", weights,
                     "--head-epochs", "3", "--head-lr", "0.01", "--epochs", "1", "--batch-size", "8")
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["class_names"] == ["cat", "dog"]
    assert summary["stages"]["extract"]["rows"] == 16 and summary["stages"]["evaluate"]["rows"] == 4
    config = (run_dir / "config.toml").read_text()
    assert f'images = "{folder}"' in config and 'label_column = "kind"' in config
    # evaluate reads how the file was read from the run: same split, same images, same score.
    evaluated = run_cli("evaluate", run_dir / "finetune", csv, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output[evaluated.output.index("{"):])
    assert metrics["rows"] == 4 and metrics["accuracy"] == summary["stages"]["evaluate"]["accuracy"]


def test_finetune_reads_the_label_file_options_from_the_head_cache_or_its_own(tmp_path):
    from headstart.pipeline.config import ExtractConfig, FinetuneConfig, config_to_dict
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.finetuning.plan import source_spec_for

    csv = str(tmp_path / "labels.csv")
    recorded = config_to_dict(ExtractConfig(source=csv, path_column="picture", label_column="kind",
                                            images="/data/pics", validation_fraction=0.2))
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "run.json").write_text(json.dumps(
        {"kind": "head", "cache": {"config": {}, "provenance": {"command_config": recorded}}}))
    spec = source_spec_for(FinetuneConfig(source=csv, head="head"), RunDir(tmp_path / "head"))
    assert (spec.path_column, spec.label_column, spec.images, spec.validation_fraction) == \
        ("picture", "kind", "/data/pics", 0.2)
    alone = source_spec_for(FinetuneConfig(source=csv, path_column="picture", multi_label=True), None)
    assert alone.path_column == "picture" and alone.multi_label and alone.label_column is None


# ── acceptance on the real photos ────────────────────────────────────────────────────────────


@pytest.mark.slow
@pytest.mark.assets
def test_real_photos_as_a_flat_folder_and_a_csv_equal_the_class_folders(real_photo_cache, tmp_path):
    # The 2,000 photos of the session cache (split folders, 70/10/20 by number per class) laid out
    # again as one flat folder of symlinks plus path,label,split rows taken from that layout.
    from conftest import head_weights
    from headstart.pipeline.config import ExtractConfig, HeadConfig
    from headstart.pipeline.commands.extraction import extract_features
    from headstart.pipeline.commands.head_training import train_head

    tree, flat = real_photo_cache["images"], tmp_path / "photos"
    flat.mkdir()
    lines = []
    for image in sorted(tree.glob("*/*/*.jpg")):
        split, label = image.parts[-3], image.parts[-2]
        (flat / image.name).symlink_to(image.resolve())
        lines.append(f"photos/{image.name},{label},{split}")
    assert len(lines) == 2000
    csv = write_csv(tmp_path / "labels.csv", "path,label,split", lines[::-1])  # row order does not matter
    cache = tmp_path / "features.h5"
    extract_features(ExtractConfig(source=str(csv), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(real_photo_cache["weights"]), image_size=128))
    folder_config, folder_rows = read_cache(real_photo_cache["cache"])
    csv_config, csv_rows = read_cache(cache)
    assert csv_config["class_names"] == folder_config["class_names"] == ["cats", "dogs"]
    assert list(csv_rows) == list(folder_rows) == ["train", "validation", "test"]
    for split, (features, labels, keys) in folder_rows.items():
        csv_features, csv_labels, csv_keys = csv_rows[split]
        assert [Path(k).name for k in keys] == [Path(k).name for k in csv_keys], split  # the same images, in order
        assert np.array_equal(features, csv_features), split  # bit for bit
        assert np.array_equal(labels, csv_labels), split
    heads = []
    for name, features in (("folders", real_photo_cache["cache"]), ("csv", cache)):
        heads.append(train_head(HeadConfig(features=str(features), out=str(tmp_path / f"head_{name}"), epochs=5,
                                           seed=3)))
    first, second = heads
    assert all(np.array_equal(a, b) for a, b in zip(head_weights(first.run_dir), head_weights(second.run_dir)))
    assert (first.best_epoch, first.val_loss, first.val_accuracy, first.test_loss, first.test_accuracy) == \
        (second.best_epoch, second.val_loss, second.val_accuracy, second.test_loss, second.test_accuracy)
    assert first.history["val_loss"] == second.history["val_loss"]
    assert first.test_accuracy > 0.8
