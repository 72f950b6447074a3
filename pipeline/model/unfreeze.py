"""``--unfreeze all|top:N|from:LAYER``: which backbone layers fine-tuning trains.

Parsed without TensorFlow, so a bad value fails before TensorFlow starts; applied to a model by
``headstart.pipeline.model.assembly.unfreeze_backbone``.
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.features.errors import Arg
from headstart.pipeline.errors import OptionError


@dataclass(frozen=True)
class Unfreeze:
    """A parsed ``--unfreeze`` value.

    Attributes:
        mode: "all" (every backbone layer), "top" (the last ``count`` layers of the backbone, in
            ``backbone.layers`` order as the Keras guide counts them) or "from" (layer ``layer`` and
            every layer after it).
        count: N of "top:N".
        layer: LAYER of "from:LAYER".
    """

    mode: str
    count: int | None = None
    layer: str | None = None

    def __str__(self) -> str:
        if self.mode == "top":
            return f"top:{self.count}"
        if self.mode == "from":
            return f"from:{self.layer}"
        return "all"


def parse_unfreeze(spec: str) -> Unfreeze:
    """Parses ``--unfreeze all|top:N|from:LAYER``.

    Raises:
        OptionError: anything else, or N that is not a whole number ≥ 1.
    """
    text = (spec or "").strip()
    if text == "all":
        return Unfreeze("all")
    mode, sep, value = text.partition(":")
    if sep and mode == "top":
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1:
            raise OptionError(Arg("unfreeze", placeholder="top:N"), f" needs a whole number N ≥ 1, got '{text}'",
                                  value=spec)
        return Unfreeze("top", count=count)
    if sep and mode == "from" and value:
        return Unfreeze("from", layer=value)
    raise OptionError.invalid("unfreeze", spec, "must be all, top:N or from:LAYER", shown=f"'{spec}'")
