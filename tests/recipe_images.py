"""Generated image sets for the recipe's tests: classes that are mirror images, and symmetric ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The ImageNet MobileNetV2 0.35 that ships inside the package: features good enough to learn shapes.
SHIPPED = REPO / "features" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def _canvas(rng: np.random.Generator, size: int):
    from PIL import Image

    top, bottom = rng.integers(150, 256, 3), rng.integers(150, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp)[:, None, :].repeat(size, axis=1)
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels.reshape(size, size, 3), "RGB")


def draw(shape: str, rng: np.random.Generator, size: int = 64):
    """One image: an arrow pointing "left" or "right", or a "circle" or "square", dark on a light gradient."""
    from PIL import ImageDraw

    image = _canvas(rng, size)
    pen = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 90, 3))
    half = int(rng.integers(size // 4, size // 3))
    cx, cy = (int(c) for c in rng.integers(half + 2, size - half - 2, 2))
    if shape in ("left", "right"):
        d = 1 if shape == "right" else -1
        width = max(2, half // 3)
        pen.rectangle([cx - half, cy - width // 2, cx + half, cy + width // 2], fill=colour)
        tip = cx + d * half
        pen.polygon([(tip + d * 2, cy), (tip - d * half, cy - half), (tip - d * half, cy + half)], fill=colour)
    elif shape == "circle":
        pen.ellipse([cx - half, cy - half, cx + half, cy + half], fill=colour)
    else:
        pen.rectangle([cx - half, cy - half, cx + half, cy + half], fill=colour)
    return image


def write_set(root: Path, classes: tuple[str, ...], *, counts=(("train", 24), ("validation", 16)), seed: int = 0,
              size: int = 64) -> Path:
    """Writes ``root/{split}/{class}/NNN.png``; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in counts:
        for shape in classes:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw(shape, rng, size).save(folder / f"{i:03d}.png")
    return root
