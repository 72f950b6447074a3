"""The layout of a ``headstart run`` directory: the one module that knows where its files live.

``RunDir`` (``store/rundir.py``) is one stage's run directory (a train-head or finetune ``--out``);
``RunLayout`` is the whole ``headstart run --out RUN`` directory around them::

    RUN/config.toml, stages.json, summary.json, summary.png, report.html, samples.npz
    RUN/model.keras        the final model: a hard link to finetune/model.keras (the fine-tuned
                           model, or the chosen head's chain when fine-tuning was skipped)
    RUN/features.h5        the chosen image size's cache
    RUN/head/, RUN/sweep/  the chosen head (and the sweep that found it)
    RUN/finetune/          the final model's run directory (run.json, metrics, curves)
    RUN/candidates/size-N/ what a losing image size left: its features.h5, head/ and sweep/
    RUN/export/, RUN/diagnose/, RUN/tensorboard/STAGE/

The chosen size's files reach the top by renaming, never by copying a cache: a candidate size is
written under candidates/size-N/, and when validation chooses it the two sizes' folders swap
places (``promote``). stages.json remembers which size is at the top, so a resumed run finds each
size's files where the last run left them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CONFIG_FILE, STATE_FILE, SUMMARY_JSON = "config.toml", "stages.json", "summary.json"
SUMMARY_PNG, REPORT_HTML, SAMPLES, MISTAKES = "summary.png", "report.html", "samples.npz", "mistakes.npz"
#: Any of these files marks a directory as a ``headstart run`` directory.
RUN_MARKS = (CONFIG_FILE, STATE_FILE, SUMMARY_JSON)
#: The files and folders of one image size: what ``promote`` swaps between the top and candidates/.
SIZE_ENTRIES = ("features.h5", "head", "sweep")
#: stages.json's entry that records which image size's files are at the top.
LAYOUT_STATE = "layout"
MODEL_FILE = "model.keras"


class RunLayout:
    """Where each file of a ``headstart run`` directory lives.

    Args:
        path: the run directory (``--out``).
        top_size: the image size whose cache and head are at the top (None: the first one written).
    """

    def __init__(self, path: str | os.PathLike, top_size: int | None = None):
        self.path = Path(path)
        self.top_size = top_size

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a ``headstart run`` directory (config.toml, stages.json or summary.json)."""
        p = Path(path)
        return p.is_dir() and any((p / mark).is_file() for mark in RUN_MARKS)

    # ── the run's own files ──────────────────────────────────────────────────────────────────
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def stages(self) -> Path:
        return self.path / STATE_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_JSON

    @property
    def summary_png(self) -> Path:
        return self.path / SUMMARY_PNG

    @property
    def report(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def mistakes(self) -> Path:
        return self.path / MISTAKES

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def diagnose(self) -> Path:
        return self.path / "diagnose"

    def tensorboard(self, stage: str | None = None) -> Path:
        return self.path / "tensorboard" / stage if stage else self.path / "tensorboard"

    # ── the models ───────────────────────────────────────────────────────────────────────────
    @property
    def finetune(self) -> Path:
        """The final model's run directory (run.json, metrics.json, curves.png, model.keras)."""
        return self.path / "finetune"

    @property
    def model(self) -> Path:
        """RUN/model.keras: the final model."""
        return self.path / MODEL_FILE

    @property
    def head(self) -> Path:
        """The chosen head's run directory (what ``finetune --head RUN`` starts from)."""
        return self.path / "head"

    @property
    def logistic_head(self) -> Path:
        """Auto's logistic probe written as a head run, there only when it beat the sweep's head."""
        return self.path / "logistic-head"

    @property
    def chosen_head(self) -> Path:
        """The head the final model started from: the logistic probe's when it won, else ``head``."""
        return self.logistic_head if (self.logistic_head / "head.keras").is_file() else self.head

    @property
    def sweep(self) -> Path:
        """The sweep that found the chosen head (when the head was searched)."""
        return self.path / "sweep"

    @property
    def cache(self) -> Path:
        """The chosen image size's cache."""
        return self.path / "features.h5"

    def publish_model(self) -> Path:
        """RUN/model.keras made the final model: a hard link to finetune/model.keras (a copy where
        the file system has no links); the link is renamed into place, so a reader never sees half."""
        source, tmp = self.finetune / MODEL_FILE, self.path / f".{MODEL_FILE}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, self.model)
        return self.model

    # ── image sizes: the chosen one at the top, the others candidates ────────────────────────
    def size_dir(self, size: int) -> Path:
        """Where ``size``'s cache, head and sweep live: the top for the chosen (or first) size,
        candidates/size-N/ for another."""
        return self.path if self.top_size in (None, size) else self.candidate_dir(size)

    def candidate_dir(self, size: int) -> Path:
        return self.path / "candidates" / f"size-{size}"

    def size_cache(self, size: int) -> Path:
        return self.size_dir(size) / "features.h5"

    def size_head(self, size: int) -> Path:
        return self.size_dir(size) / "head"

    def size_sweep(self, size: int) -> Path:
        return self.size_dir(size) / "sweep"

    def promote(self, size: int) -> bool:
        """Puts ``size``'s cache, head and sweep at the top and the top's under candidates/size-N/,
        by renaming (a cache is never copied). Returns whether anything moved.

        The caller records ``top_size`` in stages.json right after (``LAYOUT_STATE``).
        """
        if self.top_size in (None, size):
            self.top_size = size
            return False
        old, new = self.candidate_dir(self.top_size), self.candidate_dir(size)
        old.mkdir(parents=True, exist_ok=True)
        for name in SIZE_ENTRIES:
            _move(self.path / name, old / name)
        for name in SIZE_ENTRIES:
            _move(new / name, self.path / name)
        if new.is_dir() and not any(new.iterdir()):
            new.rmdir()
        self.top_size = size
        return True

    def candidates(self) -> dict[int, Path]:
        """image size → its candidate folder, for every losing size this run left."""
        folder = self.path / "candidates"
        found = {}
        for p in sorted(folder.glob("size-*")) if folder.is_dir() else ():
            if p.name[5:].isdigit():
                found[int(p.name[5:])] = p
        return found


def _move(source: Path, target: Path) -> None:
    """Renames ``source`` to ``target``; a stale ``target`` of the same size (an interrupted swap) goes."""
    if not source.exists():
        return
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(source, target)


def final_model_dir(path: str | os.PathLike) -> Path | None:
    """The final model's run directory when ``path`` is a ``headstart run`` directory or its top-level
    model.keras; None otherwise (the path names a model or a stage's directory itself)."""
    p = Path(path)
    if p.name == MODEL_FILE and RunLayout.is_run(p.parent):
        p = p.parent
    return RunLayout(p).finetune if RunLayout.is_run(p) else None


def describe_model(path: str | os.PathLike) -> str | None:
    """One line saying which model a run directory resolves to (None: ``path`` is not one)."""
    folder = final_model_dir(path)
    if folder is None:
        return None
    from headstart.features.bounded_parse import loads_json

    try:  # run.json read here, not through RunDir (which asks this module where a run's model is)
        record = loads_json((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    probes = ((record.get("recipe") or {}).get("probes") or {}) if isinstance(record, dict) else {}
    skipped = probes.get("finetune") is False
    what = "the chosen head's model (fine-tuning was skipped)" if skipped else "the fine-tuned model"
    return f"{path}: using {RunLayout(folder.parent).model}, the run's final model: {what}"


def stage_dir(path: str | os.PathLike, kind: str | None) -> Path:
    """The stage directory a path names for a command wanting ``kind``: a ``headstart run`` directory
    gives its chosen head (``kind="head"``) or its final model's directory; another path is itself."""
    p = Path(path)
    if not RunLayout.is_run(p):
        return p
    return RunLayout(p).chosen_head if kind == "head" else RunLayout(p).finetune


def chosen_cache(path: str | os.PathLike) -> Path:
    """The cache a path names: a ``headstart run`` directory gives its chosen cache, another path is itself."""
    return RunLayout(path).cache if RunLayout.is_run(path) else Path(path)
