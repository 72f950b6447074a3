"""Real data of another nature that can be laid out offline: scikit-learn's bundled digit scans.

The cat and dog photos are the only real images the project's machines hold, and a recipe tuned on
them can fail on data of another nature (small grey scans where a mirror image is another symbol).
scikit-learn ships 1,797 real 8×8 scans of handwritten digits inside its wheel (a dependency of
cleanlab), so benchmarks and tests can judge a change on a second real dataset without a network.
"""

from __future__ import annotations

from pathlib import Path

SPLIT_FRACTIONS = (("train", 0.7), ("validation", 0.1), ("test", 0.2))


def write_digits_folders(root: str | Path, *, seed: int = 0) -> Path:
    """Writes scikit-learn's digit scans as PNG class folders split 70/10/20 per class.

    Each scan is written at its native 8×8 pixels as a grey PNG, dark ink on white (the data set
    stores ink as 0–16), so the images go through the same input path as any user's folder. The
    split is a seeded permutation within each class, so every class reaches every split in the
    same proportion and the layout is identical on every machine. Files already there are kept, so
    a second call is cheap.

    Args:
        root: folder to write; gets ``{train,validation,test}/<digit>/digit_NNNN.png``.
        seed: permutation seed of the per-class split.

    Returns:
        ``root`` as a Path.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == label))
        for split, part in _split_rows(rows):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for row in part:
                path = folder / f"digit_{row:04d}.png"
                if not path.exists():
                    ink = digits.images[row] / 16.0
                    pixels = np.rint(255.0 * (1.0 - ink)).astype(np.uint8)
                    Image.fromarray(pixels, "L").save(path)
    return root


def _split_rows(rows):
    """Cuts one class's permuted rows into the train/validation/test shares of SPLIT_FRACTIONS."""
    n = len(rows)
    cut_train = int(round(n * SPLIT_FRACTIONS[0][1]))
    cut_validation = cut_train + int(round(n * SPLIT_FRACTIONS[1][1]))
    return (("train", rows[:cut_train]), ("validation", rows[cut_train:cut_validation]),
            ("test", rows[cut_validation:]))
