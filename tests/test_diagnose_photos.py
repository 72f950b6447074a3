"""`headstart diagnose` on real photos: a planted variant of a few hundred of the 2,000 photos.

The planted set (symlinks, so little is copied): label flips (files moved to the other class
folder), re-encoded copies of train photos placed in test (JPEG quality 60, slightly resized: other
bytes, the same picture), byte-identical copies within train, and blank images. Extracted with the
shared MobileNetV2 0.35 ImageNet weights at 128 px, as ``real_photo_cache`` does. Skips without
../shared/assets. The audit of the 2,000 photos themselves is in benchmarks/diagnose_speed.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ASSETS, MNV2_035, layout_cats_vs_dogs_2k

PER_CLASS = {"train": 110, "validation": 15, "test": 30}


def _planted_folder(root: Path) -> dict:
    from PIL import Image

    full = layout_cats_vs_dogs_2k(ASSETS, root / "all")
    images = root / "images"
    planted = {"flips": [], "leaks": [], "byte_copies": [], "blank": []}
    for split, n in PER_CLASS.items():
        for cls in ("cats", "dogs"):
            other = "dogs" if cls == "cats" else "cats"
            files = sorted((full / split / cls).iterdir())[:n]
            flips = {"train": 7, "validation": 1}.get(split, 0)
            for i, f in enumerate(files):
                folder = other if i < flips else cls  # the first few are filed under the wrong class
                dest = images / split / folder / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.symlink_to(os.path.realpath(f))
                if i < flips:
                    planted["flips"].append(f"{split}/{folder}/{f.name}")
            if split == "train":
                (images / "test" / cls).mkdir(parents=True, exist_ok=True)
                for j, f in enumerate(files[20:22]):  # re-encoded into test: a leak
                    with Image.open(f) as img:
                        w, h = img.size
                        img.convert("RGB").resize((w * 9 // 10, h * 9 // 10)).save(
                            images / "test" / cls / f"reencoded_{j}.jpg", quality=60)
                    planted["leaks"].append((f"train/{cls}/{f.name}", f"test/{cls}/reencoded_{j}.jpg"))
                f = files[30]
                shutil.copyfile(os.path.realpath(f), images / "train" / cls / f"copy_{f.name}")
                planted["byte_copies"].append((f"train/{cls}/{f.name}", f"train/{cls}/copy_{f.name}"))
    for name, colour in (("white", (255, 255, 255)), ("black", (0, 0, 0)), ("grey", (128, 128, 128))):
        Image.new("RGB", (200, 150), colour).save(images / "train" / "cats" / f"blank_{name}.jpg")
        planted["blank"].append(f"train/cats/blank_{name}.jpg")
    return {"images": images, "planted": planted}


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.assets
def test_planted_issues_in_real_photos_are_found(tmp_path, capsys):
    weights = ASSETS / "weights" / MNV2_035
    if not (ASSETS / "cats_vs_dogs_2k").is_dir() or not weights.is_file():
        pytest.skip("../shared/assets is absent")
    from click.testing import CliRunner

    from headstart.pipeline.cli import main
    from headstart.pipeline.config import ExtractConfig
    from headstart.pipeline.commands.extraction import extract_features

    made = _planted_folder(tmp_path)
    cache = tmp_path / "features.h5"
    extract_features(ExtractConfig(source=str(made["images"]), out=str(cache), backbone="mobilenet_v2", alpha=0.35,
                                   weights=str(weights), image_size=128))
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["diagnose", str(cache), "--out", str(tmp_path / "report"), "--quiet"])
    seconds = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    out, planted = tmp_path / "report", made["planted"]

    ranked = [r["key"] for r in _read(out / "label_issues.csv")]
    flips = planted["flips"]
    recall = {m: len(set(ranked[:m * len(flips)]) & set(flips)) / len(flips) for m in (1, 2)}
    pairs = {frozenset((r["key_a"], r["key_b"])): r for r in _read(out / "duplicates.csv")}
    for a, b in planted["leaks"]:
        assert pairs[frozenset((a, b))]["leak"] == "True", (a, b)
    for a, b in planted["byte_copies"]:
        assert pairs[frozenset((a, b))]["exact"] == "True", (a, b)
    # Nothing else: each pair above the class thresholds that is not the same picture was rejected.
    assert set(pairs) == {frozenset(p) for p in planted["leaks"] + planted["byte_copies"]}
    constant = {r["key"] for r in _read(out / "outliers.csv") if r["kind"] == "near_constant"}
    assert constant == set(planted["blank"])
    report = json.loads((out / "report.json").read_text())
    with capsys.disabled():
        print(f"\nplanted real photos: {report['counts']['rows']} rows, flip recall at 1x {recall[1]:.2f}, "
              f"at 2x {recall[2]:.2f} ({len(flips)} flips); leaks {report['counts']['leaks']}; "
              f"diagnose {seconds:.1f} s ({json.dumps({k: round(v, 1) for k, v in report['seconds'].items()})})")
    # Measured 0.50-0.56 at 1x and 0.75-0.81 at 2x (16 flips in 319 rows; CPU thread timing varies
    # the fold heads slightly); a random ranking gets ~0.10 at 2x.
    assert recall[2] >= 0.6, (recall, ranked[:2 * len(flips)])
