"""ImageNet weights shipped inside the package, so headstart learns on a machine without network.

``--weights shipped`` (every command) and ``weights="shipped"`` (the Python API) name them; ``headstart
demo`` falls back to them when Keras has no ImageNet weights cached and cannot download them.

One file only: MobileNetV2 alpha 0.35, no top, exactly as the Keras applications publish it
(``keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights="imagenet")`` at 224 px
downloads the same bytes; Apache License 2.0, credited in the README). It loads at any input size
from 32 px up: no-top weights hold only convolutions. Its SHA-256 is recorded here and checked
before every use, so a truncated or altered copy is refused rather than trained on.

No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from headstart.features.errors import Arg, WeightsError
from headstart.features.file_hash import sha256_file


@dataclass(frozen=True)
class ShippedWeights:
    """One weights file that ships with the package.

    Attributes:
        backbone: registry key.
        alpha: width multiplier the file is for.
        filename: the file's name, as Keras names it (under ``headstart/features/weights/``).
        sha256: hex digest of the published file.
        size: bytes.
        origin: where Keras downloads the same file.
        license: the file's license.
    """

    backbone: str
    alpha: float
    filename: str
    sha256: str
    size: int
    origin: str
    license: str = "Apache-2.0"


MOBILENET_V2_035 = ShippedWeights(
    backbone="mobilenet_v2",
    alpha=0.35,
    filename="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    sha256="df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f",
    size=2_019_640,
    origin="https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
)
#: (backbone, alpha) → the shipped file.
SHIPPED: dict[tuple[str, float], ShippedWeights] = {(MOBILENET_V2_035.backbone, MOBILENET_V2_035.alpha): MOBILENET_V2_035}


def shipped_weights_path(backbone: str, alpha: float | None) -> Path:
    """The shipped weights file of ``backbone`` at ``alpha``, after checking its size and SHA-256.

    Raises:
        WeightsError: nothing is shipped for this backbone and alpha, the file is missing from the
            installation, or its bytes are not the recorded ones.
    """
    refuse_unshipped(backbone, alpha)
    entry = SHIPPED[(backbone, alpha)]  # type: ignore[index]
    path = _location(entry)
    if not path.is_file():
        raise WeightsError(f"{path}: the shipped weights file is missing from this installation")
    if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
        raise WeightsError(f"{path}: the shipped weights file does not match its recorded SHA-256 "
                           f"{entry.sha256[:12]}…; reinstall headstart")
    return path


def refuse_unshipped(backbone: str, alpha: float | None) -> None:
    """Refuses ``--weights shipped`` for a backbone and alpha that no shipped file is for.

    Raises:
        WeightsError: naming what ships.
    """
    if (backbone, alpha) not in SHIPPED:
        offered = [piece for i, (b, a) in enumerate(SHIPPED)
                   for piece in (", " if i else "", f"{b} alpha {a:g} (", Arg("backbone", b), " ", Arg("alpha", a), ")")]
        what = f"{backbone} alpha {alpha:g}" if isinstance(alpha, (int, float)) else str(backbone)
        raise WeightsError(Arg("weights", "shipped"), ": the weights inside headstart are ", *offered,
                           f", not {what}; use ", Arg("weights", "imagenet"), " or a local .h5 file for other backbones")


def is_shipped(path: str | Path) -> bool:
    """True when ``path`` is one of the shipped files' places in this installation."""
    try:
        return any(Path(path).resolve() == _location(entry).resolve() for entry in SHIPPED.values())
    except (OSError, ValueError):
        return False


def _location(entry: ShippedWeights) -> Path:
    return Path(str(resources.files("headstart.features").joinpath("weights", entry.filename)))

