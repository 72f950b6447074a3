"""Short fine-tunes that choose the learning rate and the depth on validation (``finetune --probe``).

fastai's ``lr_find`` and Lightning's tuner judge a rate by the training loss of a short run; these
probes are short fine-tunes judged by the validation measure the stage gate uses (``--monitor``),
from the same seeded weights, on the same first training batches. In order:

1. the rates ``PROBE_LRS`` with the backbone unfrozen as ``--unfreeze`` says (all, unless the depth
   is probed too): one compiled model, its weights and Adam's state reset between rates (no retrace);
2. with ``unfreeze`` probed: the top blocks only (the last quarter of the backbone's layers,
   ``top_blocks``) at the best rate of step 1.

The best probe gives the fine-tune its rate and depth. When no probe improves on the seeded model
(the head on the frozen backbone), fine-tuning is not worth its time at these settings: the caller
keeps the seeded model, as the stage gate would after a full fine-tune. Each finished probe is saved
through ``save`` so a killed run resumes after it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TYPE_CHECKING

from headstart.features.reporter import Reporter

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

#: The rates step 1 tries.
PROBE_LRS = (1e-5, 1e-4, 1e-3)
#: What ``--probe`` may name.
PROBE_CHOICES = ("lr", "unfreeze")
#: "The top blocks": this share of the backbone's layers, counted from its end.
TOP_FRACTION = 0.25
#: A probe trains this many steps at most (and one epoch at most).
MAX_PROBE_STEPS = 300


def parse_probe(spec: str) -> tuple[str, ...]:
    """Parses ``--probe none|lr|unfreeze|lr,unfreeze`` without TensorFlow.

    Raises:
        OptionError: anything else.
    """
    from headstart.pipeline.errors import OptionError

    text = (spec or "none").strip().lower()
    if text == "none":
        return ()
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [i for i in items if i not in PROBE_CHOICES]
    if unknown or not items:
        raise OptionError.invalid("probe", spec, "must be none, lr, unfreeze or lr,unfreeze", shown=repr(spec))
    return tuple(i for i in PROBE_CHOICES if i in items)


@dataclass
class Probe:
    """One short fine-tune.

    Attributes:
        lr: its learning rate. unfreeze: its ``--unfreeze`` value.
        score: the validation measure after ``steps`` steps (NaN when the loss diverged).
        steps: training steps taken. seconds: its wall time, the validation pass included.
    """

    lr: float
    unfreeze: str
    score: float
    steps: int
    seconds: float

    @property
    def name(self) -> str:
        return f"lr={self.lr:g},unfreeze={self.unfreeze}"

    def to_dict(self) -> dict:
        return {"lr": self.lr, "unfreeze": self.unfreeze, "score": None if math.isnan(self.score) else self.score,
                "steps": self.steps, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, record: dict) -> "Probe":
        score = record.get("score")
        return cls(lr=float(record["lr"]), unfreeze=str(record["unfreeze"]),
                   score=float("nan") if score is None else float(score), steps=int(record["steps"]),
                   seconds=float(record["seconds"]))


@dataclass
class ProbeResult:
    """What the probes decided.

    Attributes:
        probes: every probe, in the order run.
        measure: the validation measure they were judged on ("loss", "balanced_accuracy", …).
        seeded: the seeded model's value of it.
        lr, unfreeze: the best probe's settings (the given ones when not probed).
        finetune: whether the best probe improved on the seeded model.
    """

    probes: list[Probe] = field(default_factory=list)
    measure: str = "loss"
    seeded: float | None = None
    lr: float = 0.0
    unfreeze: str = "all"
    finetune: bool = True

    def to_dict(self) -> dict:
        return {"probes": [p.to_dict() for p in self.probes], "measure": self.measure, "seeded": self.seeded,
                "lr": self.lr, "unfreeze": self.unfreeze, "finetune": self.finetune,
                "seconds": sum(p.seconds for p in self.probes)}


def top_blocks(model: keras.Model) -> str:
    """``--unfreeze top:N`` for the last ``TOP_FRACTION`` of the backbone's layers."""
    import keras

    count = sum(not isinstance(layer, keras.layers.InputLayer) for layer in model.get_layer("backbone").layers)
    return f"top:{max(1, math.ceil(count * TOP_FRACTION))}"


def lower_is_better(measure: str) -> bool:
    return measure == "loss"


def probe_rates(model: keras.Model, *, probe: Sequence[str], lr: float, unfreeze: str, steps: int,
                train: tf.data.Dataset,
                score: Callable[[], float], measure: str, seeded: float | None,
                prepare: Callable[[str], None], seeded_weights: list, done: dict[str, dict],
                save: Callable[[Probe], None], reporter: Reporter) -> ProbeResult:
    """Runs the probes ``probe`` asks for and returns the choice.

    Args:
        model: the compiled chain (augmentation → … → head), at its seeded weights.
        probe: ``parse_probe``'s items.
        lr, unfreeze: the configured rate and depth (kept where they are not probed).
        steps: training steps per probe.
        train: the training batches (each probe starts again from their beginning).
        score: the validation measure of the model as it is.
        measure: its name; "loss" is lower-is-better, the rest higher-is-better.
        seeded: the seeded model's value of it (None: unknown, fine-tuning then always goes ahead).
        prepare: unfreezes as an ``--unfreeze`` value says and recompiles (a new optimizer).
        seeded_weights: ``model.get_weights()`` of the seeded model, restored before each probe and
            at the end.
        done: probes already run (a resumed run), by name.
        save: called with each probe as it finishes.
        reporter: one line per probe.
    """
    depth = "all" if "unfreeze" in probe else unfreeze
    rates = list(PROBE_LRS) if "lr" in probe else [lr]
    probes = _run_depth(model, depth, rates, steps, train, score, prepare, seeded_weights, done, save, reporter)
    if "unfreeze" in probe:
        best_rate = _best(probes, measure).lr
        probes += _run_depth(model, top_blocks(model), [best_rate], steps, train, score, prepare, seeded_weights,
                             done, save, reporter)
    model.set_weights(seeded_weights)
    best = _best(probes, measure)
    improves = seeded is None or (not math.isnan(best.score) and (
        best.score < seeded if lower_is_better(measure) else best.score > seeded))
    return ProbeResult(probes=probes, measure=measure, seeded=seeded, lr=best.lr, unfreeze=best.unfreeze,
                       finetune=improves)


def _run_depth(model: keras.Model, unfreeze: str, rates: list[float], steps: int, train: tf.data.Dataset, score: Callable[[], float],
               prepare: Callable[[str], None], seeded_weights: list, done: dict[str, dict],
               save: Callable[[Probe], None], reporter: Reporter) -> list[Probe]:
    """The probes at one depth: compiled once, reset for each rate."""
    probes, prepared = [], False
    for rate in rates:
        key = Probe(rate, unfreeze, 0.0, 0, 0.0).name
        if key in done:
            probes.append(Probe.from_dict(done[key]))
            continue
        if not prepared:
            prepare(unfreeze)
            prepared = True
        start = time.perf_counter()
        _reset(model, seeded_weights, rate)
        history = model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        losses = history.history.get("loss") or [float("nan")]
        value = score() if math.isfinite(losses[-1]) else float("nan")
        probe = Probe(rate, unfreeze, float(value), steps, time.perf_counter() - start)
        probes.append(probe)
        save(probe)
        reporter.line(f"probe lr {rate:g}, --unfreeze {unfreeze}: validation {probe.score:.4f} after {steps} steps "
            f"({probe.seconds:.1f} s)" + ("" if math.isfinite(losses[-1]) else "; the loss diverged"))
    return probes


def _reset(model: keras.Model, seeded_weights: list, lr: float) -> None:
    """The seeded weights and a fresh Adam at ``lr``, without recompiling (the traced step stays)."""
    model.set_weights(seeded_weights)
    # Under mixed precision Keras wraps Adam in a LossScaleOptimizer, whose own scale must survive.
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    for variable in optimizer.variables:
        variable.assign(variable.numpy() * 0)
    optimizer.learning_rate.assign(lr)


def _best(probes: list[Probe], measure: str) -> Probe:
    """The probe with the best finite score (the first on ties); a diverged one only when all did."""
    finite = [p for p in probes if not math.isnan(p.score)]
    if not finite:
        return probes[0]
    return (min if lower_is_better(measure) else max)(finite, key=lambda p: p.score)
