"""``headstart demo``: the whole pipeline on a dataset the project draws itself, offline.

The dataset is three classes of shapes — ``circle``, ``square``, ``triangle`` — drawn with NumPy on
gradient backgrounds, with random position, size, rotation, colours, image size, noise and a
distractor line, and written as PNG and JPEG through ``tf.io.encode_*``. The same seed always gives
the same files, so a second ``demo`` reuses every finished stage.

Weights: ImageNet when Keras has them cached or can fetch them; otherwise the MobileNetV2 0.35 ImageNet
file that ships inside the package (``--weights shipped``, ``headstart.features.shipped_weights``,
SHA-256 checked), said in one short line (the download's error with ``--verbose``). A randomly initialised backbone only if that file is missing or altered:
its pooled features do not separate the shapes (test accuracy stays at chance, 1/3, even with
BatchNorm statistics calibrated on the images), while ImageNet features reach about 0.95 on the cached
features alone. ``--weights PATH`` and ``--data DIR`` point the demo at real material instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from headstart.features.reporter import QUIET, Reporter
from headstart.features.errors import Arg
from headstart.pipeline.config import DemoConfig
from headstart.pipeline.errors import DataError, OptionError, RunDirError
from headstart.pipeline.options.naming import CLI_NAMES

if TYPE_CHECKING:  # numpy and TensorFlow load inside the functions: `headstart --help` imports this module
    import numpy as np

    from headstart.pipeline.run.console import Console
    from headstart.pipeline.run.runner import RunResult

#: The classes of the generated dataset, in label order (sorted, as folder sources sort them).
SHAPES = ("circle", "square", "triangle")
#: Bumped whenever the drawing changes, so an old generated folder is never taken for a new one.
GENERATOR_VERSION = 1
#: Share of each class in train / validation / test, as the guide-style split in the assets README.
SPLIT_SHARES = (("train", 0.7), ("validation", 0.1), ("test", 0.2))
MANIFEST = ".headstart-demo.json"


def split_counts(images_per_class: int) -> dict[str, int]:
    """Images per class in each split; every split gets at least one."""
    if images_per_class < 3:
        raise OptionError.invalid("images_per_class", images_per_class, "must be at least 3")
    val = max(1, round(images_per_class * SPLIT_SHARES[1][1]))
    test = max(1, round(images_per_class * SPLIT_SHARES[2][1]))
    return {"train": images_per_class - val - test, "validation": val, "test": test}


def draw_shape(rng: np.random.Generator, shape: str) -> np.ndarray:
    """Draws one image of ``shape``: uint8 (H, W, 3), H and W between 80 and 144 pixels.

    Background: a linear gradient between two random colours in a random direction. Foreground: the
    shape in a colour far from the background, at a random place, size (radius 15–35 % of the short
    side) and rotation, edges anti-aliased from a signed distance. Then Gaussian noise of a random
    strength and a random thin line as a distractor.
    """
    import numpy as np

    h, w = (int(v) for v in rng.integers(80, 145, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = ((xx - w / 2) * math.cos(theta) + (yy - h / 2) * math.sin(theta)) / max(h, w) + 0.5
    image = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    mean_bg = image.reshape(-1, 3).mean(axis=0)
    fg = rng.uniform(0, 255, 3).astype(np.float32)
    for _ in range(50):  # a colour that stands out from the background
        if np.linalg.norm(fg - mean_bg) > 110:
            break
        fg = rng.uniform(0, 255, 3).astype(np.float32)

    radius = rng.uniform(0.15, 0.35) * min(h, w)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        inside = radius - np.hypot(dx, dy)
    else:
        sides = {"square": 4, "triangle": 3}[shape]
        big = radius * (1.15 if sides == 4 else 1.3)  # circumradius, so areas stay comparable
        angle = rng.uniform(0, 2 * math.pi)
        inradius = big * math.cos(math.pi / sides)
        # Distance inside a convex polygon: the smallest distance to any edge's line.
        normals = angle + math.pi / sides + 2 * math.pi * np.arange(sides) / sides
        inside = np.min([inradius - (dx * math.cos(a) + dy * math.sin(a)) for a in normals], axis=0)
    alpha = np.clip(inside + 0.5, 0, 1)[..., None]
    image = image * (1 - alpha) + fg * alpha

    # A thin distractor line crossing the image, in the background's second colour.
    p, q = rng.uniform(0, 1, 2) * (w, h), rng.uniform(0, 1, 2) * (w, h)
    direction = (q - p) / (np.linalg.norm(q - p) + 1e-6)
    dist = np.abs((xx - p[0]) * direction[1] - (yy - p[1]) * direction[0])
    line = np.clip(1.2 - dist, 0, 1)[..., None] * 0.6
    image = image * (1 - line) + c1[::-1] * line
    image = image + rng.normal(0, rng.uniform(2, 18), image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def generate_dataset(root: str | os.PathLike, *, images_per_class: int, seed: int = 0,
                     reporter: Reporter = QUIET) -> Path:
    """Writes ``root/{train,validation,test}/{circle,square,triangle}/*`` unless already there.

    Every image has its own generator seeded by (seed, class, split, index), so the files are the
    same on every machine and run. Even indices are PNG, odd ones JPEG (quality 90). A manifest
    (``.headstart-demo.json``, hidden from sources) is written last; a folder with a matching
    manifest is reused as it is.

    Args:
        root: the dataset folder.
        images_per_class: images per class over all splits (70/10/20 %).
        seed: dataset seed.
        reporter: one-line status messages.

    Returns:
        The folder.

    Raises:
        OptionError: ``images_per_class`` below 3.
        DataError: ``root`` exists with other content.
    """
    import numpy as np
    import tensorflow as tf

    counts = split_counts(images_per_class)
    root = Path(root)
    manifest = {"generator": GENERATOR_VERSION, "classes": list(SHAPES), "seed": seed, "splits": counts}
    path = root / MANIFEST
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == manifest:
                return root
        except ValueError:
            pass
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: exists and is not this demo's generated dataset; remove it or pick another ",
                        Arg("out"))
    reporter.line(f"demo: drawing {images_per_class * len(SHAPES)} images of {', '.join(SHAPES)} into {root}")
    for s, (split, n) in enumerate(counts.items()):
        for c, shape in enumerate(SHAPES):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = draw_shape(np.random.default_rng([seed, c, s, i]), shape)
                if i % 2 == 0:
                    data, name = tf.io.encode_png(pixels), f"{shape}_{i:04d}.png"
                else:
                    data, name = tf.io.encode_jpeg(pixels, quality=90), f"{shape}_{i:04d}.jpg"
                (folder / name).write_bytes(data.numpy())
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return root


#: The demo's recipe: small enough to finish in minutes on two CPU cores.
DEMO_BACKBONE = {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 96}
#: The demo's other flags; the epochs of both stages and the images per class are ``DemoConfig``'s. It
#: runs a fixed recipe (``--recipe guide`` with these settings), so the tour takes seconds, not minutes.
DEMO_FLAGS = {"recipe": "guide", "head_lr": 1e-3, "head_batch_size": 32, "head_patience": 5, "lr": 1e-4, "batch_size": 32,
              "patience": 2, "extract_batch_size": 32}


def probe_imagenet(reporter: Reporter, *, shipped: bool = False,
                   debug: Callable[[str], None] | None = None) -> str:
    """Picks the demo backbone's weights: Keras' own ImageNet weights when it has them cached or can
    fetch them ("imagenet"); otherwise, with ``shipped``, the copy that ships with headstart
    ("shipped", after its SHA-256 is checked); otherwise "none". Says in one short line which,
    whenever it is not "imagenet"; why Keras' weights were not to be had goes to ``debug`` (--verbose)."""
    from headstart.features.backbones import build_base
    from headstart.features.errors import WeightsError
    from headstart.features.shipped_weights import shipped_weights_path

    b = DEMO_BACKBONE
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints "Downloading data from …"
            build_base(b["backbone"], weights="imagenet", image_size=b["image_size"], alpha=b["alpha"])
        return "imagenet"
    except WeightsError as exc:
        reason = str(exc).split("(", 1)[-1].rsplit(")", 1)[0] if "(" in str(exc) else str(exc)
        (debug or (lambda m: None))(f"demo: Keras' ImageNet weights: {reason}")
    unavailable = "none in Keras' cache, and no network to download them"
    if shipped:
        try:
            shipped_weights_path(b["backbone"], b["alpha"])
        except WeightsError as exc:
            unavailable += f", and {exc.render(CLI_NAMES)}"  # a line of `headstart demo`: the CLI's words
        else:
            reporter.line(f"demo: using the ImageNet weights shipped with headstart ({unavailable})")
            return "shipped"
    reporter.warning(f"demo: randomly initialised backbone (ImageNet weights: {unavailable}); expect accuracy near chance, "
        "or pass --weights PATH")
    return "none"


def describe_weights(weights: str) -> str:
    """How the demo's last line names its weights."""
    from headstart.features.shipped_weights import is_shipped

    if weights == "imagenet":
        return "ImageNet (keras.applications, from Keras' cache or download)"
    if weights == "none":
        return "random initialisation"
    if weights == "shipped":
        return "ImageNet, the copy shipped with headstart"
    if is_shipped(weights):
        return f"ImageNet, the copy shipped with headstart ({weights})"
    return weights


def demo_source(options: DemoConfig) -> Path:
    """The folder the demo trains on: ``--data`` or its generated dataset's path."""
    if options.data:
        return Path(options.data).resolve()
    return (Path(options.out) / "data" / f"shapes-{options.images_per_class}-seed{options.seed}").resolve()


def demo_config(options: DemoConfig, weights: str) -> Any:
    """The RunConfig of the demo: its recipe, the chosen weights, ``OUT/run`` as run directory."""
    from headstart.pipeline.run.toml_config import resolve_run_config

    flags: dict[str, Any] = {**DEMO_BACKBONE, **DEMO_FLAGS, "weights": weights, "seed": options.seed,
                             "head_epochs": options.head_epochs, "epochs": options.epochs,
                             "tensorboard": options.tensorboard or None}
    return resolve_run_config(str(demo_source(options)), str(Path(options.out) / "run"), flags=flags)


def run_demo(options: DemoConfig, *, console: Console) -> tuple[RunResult, str]:
    """Generates the dataset (unless ``--data``), picks the weights and runs the whole pipeline.

    Returns:
        (the runner's RunResult, a one-line description of the weights used).

    Raises:
        OptionError, DataError, RunDirError: bad options, a foreign ``--out``, a run directory
        made with another configuration (unless ``overwrite``); as ``headstart run`` otherwise.
    """
    from headstart.features.registry import check_weights_option
    from headstart.pipeline.options.checks import check_config
    from headstart.pipeline.run.runner import check_run_dir, run_pipeline

    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise RunDirError(Arg("out", out), " is a file; give a folder for the demo")
    if options.data and not Path(options.data).is_dir():
        raise DataError(Arg("data", options.data), ": no such directory (give a folder of class folders)")
    check_config("demo", options)
    check_weights_option(options.weights)
    # Refuse a run directory of another configuration before anything is drawn or downloaded.
    if options.weights is not None:
        check_run_dir(demo_config(options, options.weights), options.overwrite)
    if not options.data:
        generate_dataset(demo_source(options), images_per_class=options.images_per_class, seed=options.seed,
                         reporter=console)
    weights = options.weights or probe_imagenet(console, shipped=True, debug=console.debug)
    if options.weights == "none":
        console.line("demo: randomly initialised backbone (--weights none); expect accuracy near chance")
    result = run_pipeline(demo_config(options, weights), overwrite=options.overwrite, console=console)
    return result, f"recipe guide (fixed settings; `headstart run` chooses its own on validation), " \
                   f"{DEMO_BACKBONE['backbone']} alpha {DEMO_BACKBONE['alpha']}, {DEMO_BACKBONE['image_size']} px, " \
                   f"weights: {describe_weights(weights)}"
