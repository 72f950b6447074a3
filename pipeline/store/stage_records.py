"""Typed records of ``headstart run``'s stages, as summary.json keeps them and its readers read them.

stages.json keeps what each stage needs to be reused (its key, output digests, paths); summary.json
keeps, per stage, the ``StageSummary`` below. The run's table (``run.runner.format_table``),
``headstart inspect RUN`` and report.html read these fields by name instead of string keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Which kind of record summary.json keeps under each stage name, in the order the table prints them.
STAGE_NAMES = ("extract", "head", "finetune", "evaluate")


@dataclass
class StageSummary:
    """One stage of a ``headstart run`` as summary.json records it (None: the stage has no such measure).

    Attributes:
        status: "ran" or "reused".
        seconds: the stage's wall time (this run's, or the run that made a reused stage).
        images: images read (extract: decoded; evaluate: the split's).
        images_per_second: images (head: cached rows) per second.
        accuracy, balanced_accuracy, macro_f1: the stage's test measures (extract: none).
        val_accuracy: the validation accuracy of the stage's model.
        loss: the test loss (evaluate).
        best_epoch, epochs_run: the epoch kept (1-based) and the epochs run (head, finetune).
        kept: finetune's stage gate: "finetuned", or "seeded" when the head's model was kept.
        split, rows, skipped: evaluate's split, its images scored and the unreadable ones skipped.
        image_size: the image size the stage ran at (auto's extract and head).
        sweep: the head's sweep (trials, best trial, its parameters, the leaderboard).
        exports, checks: the export step's files and their checks.
    """

    status: str | None = None
    seconds: float = 0.0
    images: int | None = None
    images_per_second: float | None = None
    accuracy: float | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    val_accuracy: float | None = None
    loss: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    kept: str | None = None
    split: str | None = None
    rows: int | None = None
    skipped: int | None = None
    image_size: int | None = None
    sweep: dict | None = None
    exports: dict | None = None
    checks: Any = None

    @classmethod
    def from_record(cls, record: dict) -> "StageSummary":
        """The summary's fields of a stage record (stages.json's, or summary.json's); the rest is left."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names and v is not None})

    def to_dict(self) -> dict:
        """summary.json's form: the fields the stage has (None left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @property
    def ran_epochs(self) -> bool:
        """Whether the stage trained any epoch (a fine-tune skipped by its probes ran none)."""
        return bool(self.epochs_run)
