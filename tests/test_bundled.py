"""The bundled digit scans are laid out as real class folders the input path reads."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_digit_scans_are_split_70_10_20_per_class_as_8x8_grey_pngs(digits_folders):
    counts = {split: {d.name: len(list(d.glob("*.png"))) for d in (digits_folders / split).iterdir()}
              for split in ("train", "validation", "test")}
    assert sum(sum(c.values()) for c in counts.values()) == 1797
    assert all(len(c) == 10 for c in counts.values())
    for digit in map(str, range(10)):
        n = sum(counts[s][digit] for s in counts)
        assert abs(counts["train"][digit] - 0.7 * n) <= 1 and abs(counts["validation"][digit] - 0.1 * n) <= 1
    one = next((digits_folders / "test" / "0").glob("*.png"))
    pixels = np.asarray(Image.open(one))
    assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
    assert pixels.max() == 255 and pixels.min() < 128  # white paper, dark ink


def test_a_second_layout_is_identical(digits_folders, tmp_path):
    from headstart.pipeline.data.bundled import write_digits_folders

    again = write_digits_folders(tmp_path / "again")
    first = sorted(p.relative_to(digits_folders).as_posix() for p in digits_folders.rglob("*.png"))
    second = sorted(p.relative_to(again).as_posix() for p in again.rglob("*.png"))
    assert first == second
