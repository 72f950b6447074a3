"""`headstart diagnose` and `--exclude` on synthetic caches whose rows point at real files.

Features are Gaussian blobs written with the store writer (no backbone runs), and every row has a
small PNG on disk, so content hashing and the grids work on real files. Planted: label flips,
near-copies across train and test (a resized copy: other bytes, nearly the same features),
byte-identical copies within train, and blank images (pixel_std ~0). The real-photo test is in
tests/test_diagnose_photos.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from headstart.features.store import create_or_resume
from headstart.pipeline.cli import main

CLASSES = ["ant", "bee", "cow"]
COUNTS = {"train": 150, "validation": 30, "test": 60}
DIM = 256


def _png(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    # A smooth picture (4×4 colours blown up bilinear), as photos are: resizing keeps its thumbnail.
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), "RGB")
    small.resize((64, 64), Image.Resampling.BILINEAR).save(path)


def _resized_copy(src: Path, dst: Path) -> None:
    """The same picture at 3/4 of the size: other bytes, nearly the same thumbnail."""
    from PIL import Image

    with Image.open(src) as img:
        img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.BILINEAR).save(dst)


def make_cache(tmp: Path, *, plant: bool, pixel_std: bool = True, confuse: int = 0) -> dict:
    """Writes images and a synthetic cache; returns what was planted (keys).

    ``confuse``: that many train rows (from 100 on) get features of the next class, labels unchanged,
    as a backbone that confuses them would (planted["confused"]).
    """
    rng = np.random.default_rng(7)
    root = tmp / "images"
    centres = rng.normal(0, 0.5, (len(CLASSES), DIM))
    rows = {}
    for split, n in COUNTS.items():
        labels = np.arange(n) % len(CLASSES)
        keys = [f"{split}/{CLASSES[c]}/{split}_{i:03d}.png" for i, c in enumerate(labels)]
        for key in keys:
            _png(root / key, rng)
        feats = centres[labels] + rng.normal(0, 0.5, (n, DIM))
        rows[split] = {"labels": labels.copy(), "keys": keys, "features": feats,
                       "std": rng.uniform(25, 70, n)}
    planted = {"flips": [], "leaks": [], "byte_copies": [], "blank": [], "confused": []}
    for i in range(100, 100 + confuse):
        tr = rows["train"]
        tr["features"][i] = centres[(tr["labels"][i] + 1) % len(CLASSES)] + rng.normal(0, 0.5, DIM)
        planted["confused"].append(tr["keys"][i])
    if plant:
        tr, te, va = rows["train"], rows["test"], rows["validation"]
        for split, idx in (("train", range(10, 18)), ("validation", range(3, 5))):
            for i in idx:
                r = rows[split]
                r["labels"][i] = (r["labels"][i] + 1) % len(CLASSES)
                planted["flips"].append(r["keys"][i])
        for j, i in ((0, 40), (1, 41), (2, 42)):  # resized: new bytes, same pixels, features barely moved
            _resized_copy(root / tr["keys"][i], root / te["keys"][j])
            te["features"][j] = tr["features"][i] + rng.normal(0, 0.02, DIM)
            te["labels"][j] = tr["labels"][i]
            planted["leaks"].append((tr["keys"][i], te["keys"][j]))
        for dst, src in ((60, 61), (62, 63)):  # byte-identical files within train
            shutil.copyfile(root / tr["keys"][src], root / tr["keys"][dst])
            tr["features"][dst] = tr["features"][src]
            tr["labels"][dst] = tr["labels"][src]
            planted["byte_copies"].append((tr["keys"][dst], tr["keys"][src]))
        for i in (90, 91):
            tr["std"][i] = 0.3
            planted["blank"].append(tr["keys"][i])
        va["std"][7] = 0.0
        planted["blank"].append(va["keys"][7])
    path = tmp / "features.h5"
    writer = create_or_resume(
        str(path), config={"source": {"kind": "dir", "root": str(root)}, "synthetic": True},
        provenance={"made_by": "tests/test_diagnose.py"}, class_names=CLASSES, splits=list(COUNTS),
        feature_shape=(DIM,), dtype="float32")
    for split, r in rows.items():
        writer.append(split, features=r["features"], labels=r["labels"], keys=r["keys"],
                      pixel_std=r["std"] if pixel_std else None, consumed=len(r["keys"]))
        writer.finish_split(split)
    writer.finalize()
    return {"path": path, "root": root, "planted": planted, "rows": rows}


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    made = make_cache(tmp, plant=True)
    result = run_cli("diagnose", made["path"], "--out", tmp / "report", "--folds", 3)
    assert result.exit_code == 0, result.output
    return {**made, "out": tmp / "report", "output": result.output}


@pytest.mark.slow
def test_planted_label_flips_rank_first(planted):
    flips = planted["planted"]["flips"]
    issues = read_csv(planted["out"] / "label_issues.csv")
    assert list(issues[0]) == ["key", "split", "given_label", "suggested_label", "score"]
    ranked = [r["key"] for r in issues]
    recall_1x = len(set(ranked[:len(flips)]) & set(flips)) / len(flips)
    recall_2x = len(set(ranked[:2 * len(flips)]) & set(flips)) / len(flips)
    assert recall_2x >= 0.9, (recall_1x, recall_2x, ranked[:20])
    scores = [float(r["score"]) for r in issues]
    assert scores == sorted(scores)
    by_key = {r["key"]: r for r in issues}
    first = by_key[flips[0]]
    # The suggestion is the class the features came from (the flip added 1).
    assert CLASSES.index(first["suggested_label"]) == (CLASSES.index(first["given_label"]) - 1) % 3


@pytest.mark.slow
def test_every_planted_copy_is_found_and_leaks_come_first(planted):
    pairs = read_csv(planted["out"] / "duplicates.csv")
    found = {frozenset((r["key_a"], r["key_b"])): r for r in pairs}
    for a, b in planted["planted"]["leaks"]:
        row = found[frozenset((a, b))]
        assert row["leak"] == "True" and row["exact"] == "False" and float(row["similarity"]) > 0.99
        assert row["found_by"] == "features+pixels" and float(row["pixel_difference"]) < 1
    for a, b in planted["planted"]["byte_copies"]:
        row = found[frozenset((a, b))]
        assert row["exact"] == "True" and row["leak"] == "False"
    leaks = [r["leak"] == "True" for r in pairs]
    assert leaks == sorted(leaks, reverse=True)  # every leak before any within-split pair
    report = json.loads((planted["out"] / "report.json").read_text())
    assert report["counts"]["leaks"] == 3 and report["counts"]["exact_duplicate_pairs"] == 2
    steps = report["duplicate_steps"]
    assert steps["bytes"]["pairs"] == 2 and steps["pixels"]["rejected"] == 0 and steps["reported"] == 5
    assert report["exact_duplicates"]["method"].startswith("sha256") and report["exact_duplicates"]["missing_files"] == 0


@pytest.mark.slow
def test_blank_images_are_outliers_and_the_report_is_complete(planted):
    outliers = read_csv(planted["out"] / "outliers.csv")
    constant = [r["key"] for r in outliers if r["kind"] == "near_constant"]
    assert sorted(constant) == sorted(planted["planted"]["blank"])
    report = json.loads((planted["out"] / "report.json").read_text())
    assert report["near_constant_measured"] is True and report["counts"]["near_constant"] == 3
    assert report["cache"]["fingerprint"] and report["versions"]["cleanlab"]
    chosen = report["thresholds"]["duplicate_cosine_similarity"]
    assert chosen["mode"] == "from the data" and report["config"]["duplicate_threshold"] is None
    assert [c["class"] for c in chosen["per_class"]] == CLASSES
    assert all(c["median_nearest_similarity"] < c["threshold"] < 1 for c in chosen["per_class"])
    train = report["class_balance"]["train"]
    counts = train["class_counts"]  # the flips moved rows between classes
    assert sum(counts.values()) == 150 and train["imbalance_ratio"] == pytest.approx(max(counts.values()) / min(counts.values()))
    assert train["imbalance_ratio"] > 1
    from PIL import Image

    for name in ("label_issues.png", "duplicates.png"):
        with Image.open(planted["out"] / name) as img:
            assert img.width > 500 and img.height > 150
    out = planted["output"]
    assert "label issues" in out and "LEAK" in out and "near-constant" in out
    assert "duplicate thresholds (cosine, per class from the data): ant 0." in out
    assert "byte-identical 2; reported 5" in out


@pytest.mark.slow
def test_clean_set_has_no_leaks_or_duplicates(tmp_path):
    made = make_cache(tmp_path, plant=False, pixel_std=False)
    result = run_cli("diagnose", made["path"], "--out", tmp_path / "report", "--folds", 2, "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["counts"]["leaks"] == 0 and report["counts"]["duplicate_pairs"] == 0
    assert read_csv(tmp_path / "report" / "duplicates.csv") == []
    # A cache written before pixel_std existed still reads; the check says it was not measured.
    assert report["near_constant_measured"] is False and report["counts"]["near_constant"] is None
    assert "not measured" in result.output


@pytest.mark.slow
def test_diagnose_refuses_bad_options_in_one_line(planted, tmp_path):
    one_line_error(run_cli("diagnose", planted["path"], "--out", tmp_path / "r", "--folds", 1), "--folds")
    one_line_error(run_cli("diagnose", planted["path"], "--out", tmp_path / "r", "--duplicate-threshold", 1.5),
                   "--duplicate-threshold must be in (0, 1]")
    one_line_error(run_cli("diagnose", tmp_path / "missing.h5", "--out", tmp_path / "r"), "missing.h5")
    one_line_error(run_cli("diagnose", planted["path"], "--out", planted["out"]), "--overwrite")
    assert (planted["out"] / "report.json").is_file()  # the refused run left the report alone


def _exclude_csv(path: Path, keys: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "note"])
        w.writerows([k, "x"] for k in keys)
    return path


@pytest.mark.slow
def test_exclude_removes_exactly_the_listed_keys(planted, tmp_path):
    rows = planted["rows"]
    listed = rows["train"]["keys"][:5] + rows["validation"]["keys"][:2] + rows["test"]["keys"][:1]
    csv_path = _exclude_csv(tmp_path / "drop.csv", listed + listed[:1])  # a repeat counts once
    result = run_cli("train-head", planted["path"], "--out", tmp_path / "head", "--epochs", 2,
                     "--exclude", csv_path, "--quiet")
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "head" / "run.json").read_text())
    assert run["exclude"]["removed"] == {"train": 5, "validation": 2}
    assert run["exclude"]["kept_in_test"] == 1 and run["exclude"]["listed"] == 8
    assert run["exclude"]["path"] == str(csv_path) and len(run["exclude"]["sha256"]) == 64
    assert run["config"]["exclude"] == str(csv_path)
    assert run["cache"]["splits"] == {"train": 145, "validation": 28, "test": 60}
    # diagnose's own CSV is accepted as it is.
    again = run_cli("train-head", planted["path"], "--out", tmp_path / "head2", "--epochs", 1,
                    "--exclude", planted["out"] / "label_issues.csv", "--quiet")
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_exclude_streamed_rows_are_the_kept_rows(planted):
    from headstart.features.cache import open_cache
    from headstart.pipeline.data.exclusion import SubsetSplit
    from headstart.pipeline.training.head_data import FeatureRows

    with open_cache(planted["path"]) as cache:
        split = cache.split("train")
        keep = np.ones(len(split), bool)
        keep[[0, 5, 6, 7, 149]] = False
        subset = SubsetSplit(split, keep)
        expected = split.features[...][keep]
        streamed = FeatureRows(subset, in_memory=False)
        got = np.concatenate([x for x, _ in streamed.eval_batches(16)])
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(FeatureRows(subset, in_memory=True).gather(np.arange(145)), expected)
        assert subset.keys == [k for k, m in zip(split.keys, keep) if m] and len(subset) == 145


@pytest.mark.slow
def test_foreign_or_stale_exclude_csv_is_a_one_line_error(planted, tmp_path):
    stale = _exclude_csv(tmp_path / "stale.csv", [planted["rows"]["train"]["keys"][0], "train/ant/gone.png"])
    result = run_cli("train-head", planted["path"], "--out", tmp_path / "head", "--exclude", stale)
    one_line_error(result, "1 of 2 keys are not in")
    assert not (tmp_path / "head").exists()
    (tmp_path / "nokey.csv").write_text("path\nx\n")
    one_line_error(run_cli("train-head", planted["path"], "--out", tmp_path / "head", "--exclude",
                           tmp_path / "nokey.csv"), "no 'key' column")
    one_line_error(run_cli("train-head", planted["path"], "--out", tmp_path / "head", "--exclude",
                           tmp_path / "absent.csv"), "absent.csv")


def test_excluding_source_drops_the_keys_before_finetune_sees_them(tmp_path):
    from conftest import make_class_folders
    from headstart.pipeline.data.sources import resolve_source
    from headstart.pipeline.data.exclusion import ExcludingSource
    from headstart.pipeline.errors import DataError

    folder = make_class_folders(tmp_path / "images", per_class=8)
    source = resolve_source(str(folder), validation_fraction=0.25, test_fraction=0.25)
    train = source.keys("train")
    test = source.keys("test")
    csv_path = _exclude_csv(tmp_path / "drop.csv", train[:2] + test[:1])
    wrapped = ExcludingSource.wrap(source, str(csv_path), data=str(folder))
    assert wrapped.keys("train") == train[2:] and wrapped.count("train") == len(train) - 2
    assert wrapped.keys("test") == test  # the test split is never changed
    seen = [k.decode() for k in (e["key"].numpy() for e in wrapped.dataset("train", 16))]
    assert seen == train[2:]
    assert wrapped.exclusion.record()["removed"]["train"] == 2
    with pytest.raises(DataError, match="not in"):
        ExcludingSource.wrap(source, str(_exclude_csv(tmp_path / "x.csv", ["elsewhere.jpg"])), data="x")


@pytest.mark.slow
def test_blocked_search_equals_the_full_matrix_and_faiss_finds_copies(monkeypatch):
    from headstart.pipeline.diagnose import neighbours as nb

    rng = np.random.default_rng(3)
    x = nb.normalise_features(rng.normal(size=(300, 24)))
    idx, sims = nb.top_k_neighbours(x, 5, block=64)  # several blocks, a short last one
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    pytest.importorskip("faiss")
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    base[:20] = base[20:40] + rng.normal(0, 0.01, (20, 64))
    x = nb.normalise_features(base)
    monkeypatch.setattr(nb, "EXACT_LIMIT", 1000)
    assert nb.search_method(len(x)) == "faiss-ivf-pca128"
    idx, sims = nb.top_k_neighbours(x, 5)
    pairs = {(p.a, p.b) for p in nb.near_duplicate_pairs(idx, sims, 0.95)}
    assert {(i, i + 20) for i in range(20)} <= pairs
    assert (idx != np.arange(len(x))[:, None]).all()  # never its own neighbour


@pytest.mark.slow
def test_run_diagnoses_before_the_head_and_excludes_in_both_training_stages(tmp_path):
    from conftest import make_class_folders

    for split, n, seed in (("train", 8, 0), ("validation", 4, 1), ("test", 4, 2)):
        make_class_folders(tmp_path / "images" / split, per_class=n, seed=seed)
    drop = _exclude_csv(tmp_path / "drop.csv", ["train/cats/cats_000.jpg", "train/dogs/dogs_001.jpg",
                                                 "test/cats/cats_000.jpg"])
    flags = ["--recipe", "guide", "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32",
             "--weights", "none", "--extract-batch-size", "8", "--head-epochs", "2", "--head-batch-size", "8", "--epochs", "1",
             "--batch-size", "8", "--diagnose", "--exclude", drop]
    result = run_cli("run", tmp_path / "images", "--out", tmp_path / "run", *flags)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "diagnose" / "report.json").read_text())
    assert report["counts"]["rows"] == 32 and report["near_constant_measured"] is True
    assert result.output.index("[diagnose]") < result.output.index("[2/4]")
    for stage in ("head", "finetune"):
        run = json.loads((run_dir / stage / "run.json").read_text())
        assert run["exclude"]["removed"] == {"train": 2, "validation": 0}, stage
        assert run["exclude"]["kept_in_test"] == 1 and run["exclude"]["path"] == str(drop)
    again = run_cli("run", tmp_path / "images", "--out", tmp_path / "run", *flags)
    assert again.exit_code == 0 and "reused: same features" in again.output
