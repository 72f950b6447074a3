"""``ChainConfig``: what a trained model chain is, so that it can be rebuilt from its description.

A model headstart trains is one chain (``headstart.features.chain``): raw image → preprocessing →
backbone → pooling → head [→ temperature]. ``ChainConfig`` names every part of it — the backbone
(registry name, weights word or file, width multiplier, the weights' fingerprint), the image size,
the pooling, the preprocessing, the tap of a top-block cache, the head's architecture, the classes,
the task, a multi-label model's thresholds and a calibrated model's temperature — in one typed,
frozen value. run.json holds it as its "chain" entry, a ``.keras`` file in its metadata.json, an
export in export.json and the ONNX metadata; ``finetune``, the audit, the parity check, export and
predict build from it.

No TensorFlow, Keras or h5py here, and nothing of ``pipeline/``: both packages read it.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from headstart.features.errors import ChainConfigError

#: What ``task`` may be.
TASKS = ("single_label", "multi_label")
#: Bump when a field changes meaning; ``from_dict`` refuses a version it does not know.
CHAIN_VERSION = 1


@dataclass(frozen=True)
class ChainBackbone:
    """The backbone of a chain.

    Attributes:
        name: registry key (``features.registry``), e.g. "mobilenet_v2", or "hub:PRESET".
        weights: "imagenet", "none", "shipped", "preset" (hub) or a weights file path.
        alpha: width multiplier as built (None where the backbone takes none).
        fingerprint: ``fingerprint_weights`` of the built backbone; None when not yet built (a
            finetune without a head run), which skips the check on rebuild.
    """

    name: str
    weights: str
    alpha: float | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class ChainHead:
    """The head's architecture: ``headstart.pipeline.model.head.build_head`` keyword arguments.

    Attributes:
        kind: "linear" or "mlp". hidden_units: width of an mlp's hidden layer. normalize: "none" or
        a normalisation of the features. dropout: the dropout rate before the logits.
    """

    kind: str = "linear"
    hidden_units: int = 256
    normalize: str = "none"
    dropout: float = 0.2


@dataclass(frozen=True)
class ChainConfig:
    """A model chain, described well enough to rebuild it (see the module docstring).

    Attributes:
        backbone: the ``ChainBackbone``.
        image_size: S, the side of the square (S, S, 3) raw 0–255 input.
        pooling: "avg", "max", "none" or "cls".
        preprocessing: the registry's preprocessing kind ("tf", "caffe", "torch", "none", "hub"),
            or None when not recorded.
        tap: a top-block cache's tap spec ("top:N" or a layer name), or None.
        head: the ``ChainHead``.
        class_names: the K class names, in logit order.
        task: "single_label" or "multi_label".
        thresholds: a multi-label model's (K,) per-class thresholds in ``class_names`` order, else None.
        temperature: a calibrated model's temperature(s) (one, or one per class), else None.
    """

    backbone: ChainBackbone
    image_size: int
    pooling: str
    class_names: tuple[str, ...]
    head: ChainHead = ChainHead()
    task: str = "single_label"
    preprocessing: str | None = None
    tap: str | None = None
    thresholds: tuple[float, ...] | None = None
    temperature: tuple[float, ...] | None = None

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def backbone_kwargs(self) -> dict[str, Any]:
        """``features.chain.build_backbone_parts`` keyword arguments (name first, positionally)."""
        return {"name": self.backbone.name, "weights": self.backbone.weights, "image_size": self.image_size,
                "alpha": self.backbone.alpha, "pooling": self.pooling,
                "expected_fingerprint": self.backbone.fingerprint}

    def head_kwargs(self) -> dict[str, Any]:
        """``build_head`` keyword arguments (after feature shape and class count)."""
        return {**dataclasses.asdict(self.head), "multi_label": self.multi_label}

    def replace(self, **changes: Any) -> "ChainConfig":
        """A copy with ``changes``; ``weights`` / ``fingerprint`` change the backbone's fields."""
        backbone = {k: changes.pop(k) for k in ("weights", "fingerprint", "alpha") if k in changes}
        if backbone:
            changes["backbone"] = dataclasses.replace(changes.get("backbone", self.backbone), **backbone)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (run.json's "chain"); thresholds as class → threshold."""
        out = {"version": CHAIN_VERSION, **dataclasses.asdict(self)}
        out["class_names"] = list(self.class_names)
        out["thresholds"] = (None if self.thresholds is None
                             else dict(zip(self.class_names, self.thresholds)))
        out["temperature"] = None if self.temperature is None else list(self.temperature)
        return out

    @classmethod
    def from_dict(cls, data: object, *, where: str = "chain") -> "ChainConfig":
        """The chain ``to_dict`` wrote, every field checked.

        Args:
            data: the dict.
            where: the file and entry it came from, for messages (e.g. "RUN/run.json: chain").

        Raises:
            ChainConfigError: naming ``where`` and the field that is missing or wrong.
        """
        read = _Reader(data, where)
        read.field("version", lambda v: v == CHAIN_VERSION, f"{CHAIN_VERSION} (written by this headstart)")
        names = tuple(read.field("class_names", _is_names, "a list of class names"))
        backbone = ChainBackbone(
            name=read.field("backbone.name", _is_text, "a backbone name"),
            weights=read.field("backbone.weights", _is_text, "a weights word or file"),
            alpha=read.field("backbone.alpha", _is_number_or_none, "a number or null"),
            fingerprint=read.field("backbone.fingerprint", _is_text_or_none, "a fingerprint or null"))
        head = ChainHead(kind=read.field("head.kind", _is_text, "a head kind"),
                         hidden_units=read.field("head.hidden_units", _is_count, "a whole number"),
                         normalize=read.field("head.normalize", _is_text, "a normalisation word"),
                         dropout=float(read.field("head.dropout", _is_fraction, "a rate in [0, 1)")))
        thresholds = read.field("thresholds", lambda v: v is None or _is_table(v, names), "null or class → threshold")
        temperature = read.field("temperature", lambda v: v is None or _is_numbers(v), "null or a list of numbers")
        return cls(backbone=backbone, image_size=read.field("image_size", _is_count, "a whole number of pixels"),
                   pooling=read.field("pooling", _is_text, "a pooling word"), class_names=names, head=head,
                   task=read.field("task", lambda v: v in TASKS, " or ".join(TASKS)),
                   preprocessing=read.field("preprocessing", _is_text_or_none, "a preprocessing word or null"),
                   tap=read.field("tap", _is_text_or_none, "a tap spec or null"),
                   thresholds=None if thresholds is None else tuple(float(thresholds[n]) for n in names),
                   temperature=None if temperature is None else tuple(float(t) for t in temperature))


class _Reader:
    """Reads dotted fields of one dict; a missing or wrong one is a ``ChainConfigError``."""

    def __init__(self, data: object, where: str):
        self.data, self.where = data, where
        if not isinstance(data, Mapping):
            raise ChainConfigError(f"{where} is damaged: not a table", field="", expected="a table", found=data)

    def field(self, name: str, ok: Callable[[Any], bool], expected: str) -> Any:
        value: Any = self.data
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise ChainConfigError(f"{self.where} is damaged: '{name}' is missing (should be {expected})",
                                       field=name, expected=expected, found=None)
            value = value[part]
        if not ok(value):
            raise ChainConfigError(f"{self.where} is damaged: '{name}' should be {expected}, not {value!r:.80}",
                                   field=name, expected=expected, found=value)
        return value


def _is_text(v: object) -> bool:
    return isinstance(v, str) and bool(v)


def _is_text_or_none(v: object) -> bool:
    return v is None or _is_text(v)


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_number_or_none(v: object) -> bool:
    return v is None or _is_number(v)


def _is_count(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def _is_fraction(v: Any) -> bool:
    return _is_number(v) and 0 <= v < 1


def _is_names(v: object) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(isinstance(n, str) for n in v)


def _is_numbers(v: object) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(_is_number(t) for t in v)


def _is_table(v: object, names: Sequence[str]) -> bool:
    return isinstance(v, Mapping) and set(v) == set(names) and all(_is_number(t) for t in v.values())
