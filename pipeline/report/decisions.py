"""What ``--recipe auto`` decided, on which evidence, at what cost: the record and its table.

Every choice auto makes is one ``Decision``: its candidates with their validation scores and the
seconds each cost, the chosen value, and why. A choice the user made explicitly (a flag or a TOML
key) is recorded too, as ``explicit`` with no candidates, so the table says which values were the
user's. The record goes into summary.json and the final model's run.json (``"recipe"``), and
``inspect`` prints the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

#: The decisions in the order auto makes them (and the table prints them).
DECISION_ORDER = ("image_size", "head", "augment", "lr", "unfreeze", "finetune", "other")
#: The row of the time no decision spent, so that the costs add up to the run's wall time.
OTHER = "other"
#: How the table names each decision.
DECISION_LABELS = {"image_size": "image size", "head": "head", "augment": "augmentation",
                   "lr": "fine-tuning rate", "unfreeze": "unfreeze", "finetune": "fine-tuning",
                   OTHER: "extract / evaluate / other"}


@dataclass
class Candidate:
    """One value tried for a decision.

    Attributes:
        value: the value as the option spells it (e.g. 224, "flip", 1e-4, "top:39").
        score: its validation score (the decision's ``measure``), or None when it was not scored.
        seconds: what trying it cost.
        kept: for the audit, whether the item stays; otherwise whether it was chosen.
        note: a few words when the score alone does not say it (e.g. "diverged").
    """

    value: Any
    score: float | None = None
    seconds: float = 0.0
    kept: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "score": self.score, "seconds": self.seconds, "kept": self.kept,
                **({"note": self.note} if self.note else {})}


@dataclass
class Decision:
    """One choice of the recipe.

    Attributes:
        name: one of ``DECISION_ORDER``.
        chosen: the value used.
        explicit: the user set it; nothing was tried.
        measure: what the candidates were compared on (e.g. "val_loss", "accuracy").
        candidates: the values tried.
        seconds: what the decision cost in all.
        why: one line on how the choice was made.
    """

    name: str
    chosen: Any
    explicit: bool = False
    measure: str = ""
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    why: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "chosen": self.chosen, "explicit": self.explicit, "measure": self.measure,
                "candidates": [c.to_dict() for c in self.candidates], "seconds": self.seconds, "why": self.why}

    @classmethod
    def from_dict(cls, record: dict) -> "Decision":
        return cls(name=record["name"], chosen=record.get("chosen"), explicit=bool(record.get("explicit")),
                   measure=record.get("measure", ""), seconds=float(record.get("seconds") or 0.0),
                   why=record.get("why", ""),
                   candidates=[Candidate(**{k: c[k] for k in ("value", "score", "seconds", "kept", "note") if k in c})
                               for c in record.get("candidates") or []])


def explicit_decision(name: str, value: Any) -> Decision:
    """A value the user set: recorded, never searched."""
    return Decision(name=name, chosen=value, explicit=True, why="set by you")


def format_decisions(decisions: Sequence[Decision | dict], width: int = 100) -> str:
    """The decisions as a short table: decision, chosen value and cost on one line, then the
    candidates with their validation scores (✓ kept) wrapped beneath the chosen value."""
    import textwrap

    ordered = sorted((d if isinstance(d, Decision) else Decision.from_dict(d) for d in decisions),
                     key=lambda d: DECISION_ORDER.index(d.name) if d.name in DECISION_ORDER else len(DECISION_ORDER))
    label_width = max([len("decision"), *(len(DECISION_LABELS.get(d.name, d.name)) for d in ordered)])
    chosen_width = max([len("chosen"), *(min(CHOSEN_WIDTH, len(_value_text(d.chosen))) for d in ordered)])
    indent = " " * (label_width + 2)
    lines = [f"{'decision'.ljust(label_width)}  {'chosen'.ljust(chosen_width)}  cost",
             f"{'-' * label_width}  {'-' * chosen_width}  ----"]
    for d in ordered:
        # A long value (a head's parameters) wraps within the column: never cut.
        chosen = _wrap_value(_value_text(d.chosen), CHOSEN_WIDTH)
        cost = "-" if d.explicit else f"{d.seconds:.0f} s"
        lines.append(f"{DECISION_LABELS.get(d.name, d.name).ljust(label_width)}  {chosen[0].ljust(chosen_width)}  {cost}")
        lines += [f"{indent}{part}" for part in chosen[1:]]
        detail = "set by you" if d.explicit else (
            (f"{d.measure}: " if d.measure else "") + " · ".join(_candidate_text(c) for c in d.candidates)
            + (f" ({d.why})" if d.why and d.candidates else "") if d.candidates else d.why)
        lines += textwrap.wrap(detail, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                               break_on_hyphens=False) if detail else []
    return "\n".join(line.rstrip() for line in lines)


#: The chosen column's width; longer values (a head's parameters) wrap onto the next lines.
CHOSEN_WIDTH = 48


def _wrap_value(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``, broken after its commas (an option value such as
    ``flip,rotate=0.05,zoom=0.1`` has no spaces to break at); a part longer than ``width`` stays whole."""
    import re

    lines = [""]
    for part in re.findall(r"[^,]+,?", text) or [""]:
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part.lstrip() if not lines[-1] else part
    return lines


def _candidate_text(candidate: Candidate) -> str:
    score = "-" if candidate.score is None else f"{candidate.score:.4f}"
    mark = " ✓" if candidate.kept else ""
    note = f" ({candidate.note})" if candidate.note else ""
    return f"{_value_text(candidate.value)} {score}{mark}{note}"


def _value_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
    return str(value)
