"""Augmentation chosen by what training with it does: heads trained on cached views, with and without.

The invariance audit (``headstart.pipeline.evidence.audit``) asks whether a head trained WITHOUT a
transform still reads transformed validation images; that judges the head, not the label (it
dropped harmless flips of cats because the head never saw one, and kept a harmful flip of
handwritten digits because ImageNet features are nearly mirror-invariant). Here each candidate is
judged by what training with it does:

1. The training rows are shared out among the M candidates the pre-filter leaves
   (``evidence.view_parts``: a stable 1/M each), and each candidate's part is extracted once more
   with ``--augment-views K --augment ITEM --shard j/M`` (``commands.extraction.extract_features``,
   train split only; the caller passes it in, as the recipe sits below the stages), into a small
   cache of its own under the work folder; its originals are copied by key from the head's cache
   (``originals_from``), so all candidates together cost K backbone passes over the split, not
   M × K. One cache per transform
   rather than one cache with views grouped by transform: the extractor draws every view from one
   augment spec, so grouping would need a second extraction path; a cache per item
   is resumable by the extractor as it is, and is deleted once its trial is recorded —
   unless ``keep_views`` (``finetune --on-cache``): then the extraction carries the head cache's tap
   (``base.tap``) and a kept item's cache stays, its views' activations being what the on-cache
   fine-tune trains on (``finetuning.on_cache.views_from``), with no second backbone pass.
2. Heads are trained with train-head's recipe by the sweep's batched trainer (``training.head_group.train_group``:
   an arm's seeds as one group, one compiled step for all of them) on the originals only ("without",
   once for all candidates) and on every original plus the item's views of its part ("with"), for
   each of several seeds.
3. Each head scores every validation row (correct 1 / wrong 0; the mean over labels for a
   multi-label head). The comparison is paired twice over: the same seed, and the same rows. Its
   difference is the mean over seeds of (with − without); its standard error is the larger of the
   spread over seeds (what training noise does) and the spread over rows of each row's
   seed-averaged difference (what the choice of validation images does, as McNemar's test sees it).
4. An item is kept when the difference is not significantly below zero (difference + 2 SE ≥ 0):
   it helps or is neutral; otherwise it hurts and is dropped.

The audit stays a pre-filter only for gross drops (``PREFILTER_DROP``): a flip of digits that falls
from 0.95 to 0.5 needs no training to be told apart. Every other item is judged here.

Not done: k folds over train + validation when validation is small. The cached views exist for the
training split only (views of validation images would mean another extraction per item); the
per-row standard error above carries the uncertainty of a small validation split instead.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import FinetuneConfig

#: Augmented views per training image in each item's cache (``finetune --trial-views``'s default).
VIEWS = FinetuneConfig.trial_views
#: Seeds per arm (with / without): each seed sets the head's initial weights and batch order.
SEEDS = 3
#: An audit drop larger than this drops an item without training (flipped digits: 0.47–0.85 drops).
PREFILTER_DROP = 0.15
#: Standard errors below zero that make a difference "hurts".
NOISE_Z = 2.0
#: Most epochs of a trial head (early stopping usually ends it first).
MAX_EPOCHS = 40


@dataclass
class PairedDifference:
    """(with − without) on validation, paired by seed and by row.

    Attributes:
        mean: mean over seeds of the difference of the measure (accuracy: share of rows correct).
        se: the standard error used to judge: max(se_seeds, se_rows).
        se_seeds: standard error of the per-seed differences (0 with one seed).
        se_rows: standard error of the per-row differences averaged over seeds.
        seeds: seeds compared. rows: validation rows compared.
    """

    mean: float
    se: float
    se_seeds: float
    se_rows: float
    seeds: int
    rows: int

    @property
    def hurts(self) -> bool:
        """The difference is significantly below zero (more than ``NOISE_Z`` standard errors)."""
        return self.mean + NOISE_Z * self.se < 0


def paired_difference(with_scores: np.ndarray, without_scores: np.ndarray) -> PairedDifference:
    """Compares two arms scored on the same rows with the same seeds.

    Args:
        with_scores: float (S, N): seed s's score of validation row n (1/0 correct, or a mean over labels).
        without_scores: float (S, N), the same seeds and rows.

    Returns:
        A PairedDifference.
    """
    a, b = np.asarray(with_scores, np.float64), np.asarray(without_scores, np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired scores must be two equal (seeds, rows) arrays, not {a.shape} and {b.shape}")
    seeds, rows = a.shape
    per_seed = (a - b).mean(axis=1)
    per_row = (a - b).mean(axis=0)
    se_seeds = float(per_seed.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0
    se_rows = float(per_row.std(ddof=1) / np.sqrt(rows)) if rows > 1 else 0.0
    return PairedDifference(mean=float(per_seed.mean()), se=max(se_seeds, se_rows), se_seeds=se_seeds,
                            se_rows=se_rows, seeds=seeds, rows=rows)


@dataclass
class ViewTrial:
    """One candidate's figures.

    Attributes:
        item: as ``--augment`` spells it. kept: whether it stays in the augmentation.
        judged_by: "views" (trained with and without), or "audit" (dropped by the pre-filter).
        with_measure, without_measure: mean validation accuracy over seeds (None when not trained).
        difference, se, se_seeds, se_rows: the paired comparison (``PairedDifference``).
        seeds: seeds per arm. audit_drop: the audit's drop for the item (None without an audit).
        seconds: wall time of the trial, extraction of its views included. extract_seconds: of which extraction.
        view_rows: training rows with views of the item (its part of the split, ``evidence.view_parts``).
        views_cache: the item's cache, kept for ``finetune --on-cache`` to train on (``keep_views``), or None
            (deleted once recorded).
    """

    item: str
    kept: bool
    judged_by: str
    with_measure: float | None = None
    without_measure: float | None = None
    difference: float | None = None
    se: float | None = None
    se_seeds: float | None = None
    se_rows: float | None = None
    seeds: int = 0
    audit_drop: float | None = None
    seconds: float = 0.0
    extract_seconds: float = 0.0
    view_rows: int = 0
    views_cache: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ViewTrialsResult:
    """The verdict, as run.json and the decisions table record it.

    Attributes:
        augment: the kept items as one ``--augment`` spec ("none" when none is kept).
        views: views per training image. seeds: seeds per arm.
        rows: validation rows compared (as the audit's "rows"). train_rows: training rows the heads trained on.
        trials: one per candidate, in order. seconds: wall time of the whole choice.
    """

    augment: str
    views: int
    seeds: int
    rows: int
    train_rows: int
    trials: list[ViewTrial] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"augment": self.augment, "measure": "accuracy", "views": self.views, "seeds": self.seeds,
                "rows": self.rows, "train_rows": self.train_rows, "seconds": self.seconds, "candidates": [t.to_dict() for t in self.trials],
                "rule": f"heads trained on every original with and without each item's cached views of its share of "
                        f"the training rows ({self.seeds} seeds, paired by "
                        f"seed and row); an item is dropped when with − without + {NOISE_Z:g} SE < 0, or when "
                        f"the invariance audit's drop exceeds {PREFILTER_DROP:g}"}


def trial_config(head: Any) -> Any:
    """The HeadConfig a trial head trains with: the head run's recipe, without its side effects.

    Args:
        head: a head run's ``RunDir`` (its "config" holds train-head's resolved options).
    """
    from headstart.pipeline.config import HeadConfig

    known = {f.name for f in dataclasses.fields(HeadConfig)}
    recorded = {k: v for k, v in (head.config or {}).items() if k in known}
    config = dataclasses.replace(HeadConfig(), **recorded)
    epochs = MAX_EPOCHS if config.epochs <= 0 else min(config.epochs, MAX_EPOCHS)
    # One process, no logs to disk, no class weights or exclusions: both arms see the same rows.
    return dataclasses.replace(config, epochs=epochs, views=True, strategy="auto", tensorboard=None, exclude=None,
                               class_weight="none", mixed_precision=False, overwrite=False)


def view_cache_config(base: Any, item: str, out: Path, views: int = VIEWS, part: str | None = None) -> Any:
    """The ExtractConfig of one item's cache: ``base``'s backbone, source and tap, train split only, ``views`` views.

    With ``base.tap`` the views' activations at the tap are cached too, so a kept item's cache is what
    ``finetune --on-cache`` trains its top layers on (no second pass of the backbone over the views).
    ``part`` (``view_parts.part_spec``: "j/M") extracts only the item's part of the training rows.
    """
    return dataclasses.replace(base, out=str(out), splits=("train",), augment_views=views, augment=item,
                               overwrite=False, shard=part, strict=False)


def _slug(item: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", item).strip("-")


def run_view_trials(head: Any, extract: Any, work_dir: Path, *, extract_features: Callable[..., Any],
                    candidates: Sequence[str], audit: Any = None, resume_record: dict, save: Callable[[], None],
                    reporter: Reporter = QUIET, views: int = VIEWS, seeds: int = SEEDS,
                    keep_views: bool = False) -> ViewTrialsResult:
    """Judges each candidate item by training heads with and without its cached views.

    Resumable: each finished candidate is recorded in ``resume_record["candidates"]`` and ``save`` is
    called; a killed run started again skips those, and the extractor resumes a half-written
    item cache from its last committed batch.

    Args:
        head: the head run's ``RunDir`` (its cache gives the validation features; its config the recipe).
        extract: an ``ExtractConfig`` with the head cache's backbone, weights, size and source.
        extract_features: ``commands.extraction.extract_features`` (config, …): writes (or resumes) a cache.
        work_dir: where the items' caches are written (and deleted once their trial is recorded).
        candidates: items as ``--augment`` spells them.
        audit: an ``AuditResult`` whose drops pre-filter gross drops, or None.
        resume_record: the dict this step records into (mutated); save: persists it.
        reporter: gets one line per candidate (default: none).
        views: views per training image. seeds: seeds per arm.
        keep_views: keep a kept item's cache (its path in ``ViewTrial.views_cache``) instead of deleting it.

    Returns:
        A ViewTrialsResult; ``augment`` joins the kept items.
    """
    from headstart.pipeline.evidence.audit import combine_items
    from headstart.pipeline.evidence.view_parts import part_spec

    start = time.perf_counter() - float(resume_record.get("seconds_before", 0.0))
    drops = {s.item: s.drop for s in audit.scores} if audit is not None else {}
    done = resume_record.setdefault("candidates", {})
    work_dir.mkdir(parents=True, exist_ok=True)
    judge = _Trials(head, trial_config(head), seeds, extract_features, keep_views)
    trained = [item for item in candidates if not _prefiltered(drops.get(item))]
    for item in candidates:
        if item in done:
            continue
        drop = drops.get(item)
        if _prefiltered(drop):
            trial = ViewTrial(item, kept=False, judged_by="audit", audit_drop=float(drop))
        else:
            part = part_spec(trained.index(item), len(trained))
            trial = judge.trial(item, view_cache_config(extract, item, work_dir / f"views-{_slug(item)}.h5", views,
                                                        part))
            trial.audit_drop = None if drop is None else float(drop)
        done[item] = trial.to_dict()
        resume_record["rows"] = judge.rows or resume_record.get("rows", {})
        resume_record["seconds_before"] = time.perf_counter() - start
        save()
        reporter.line(_line(trial))
    trials = [ViewTrial(**done[item]) for item in candidates]
    return ViewTrialsResult(augment=combine_items([t.item for t in trials if t.kept]), views=views, seeds=seeds,
                            rows=int(resume_record.get("rows", {}).get("validation", 0)),
                            train_rows=int(resume_record.get("rows", {}).get("train", 0)), trials=trials,
                            seconds=time.perf_counter() - start)


def _prefiltered(drop: float | None) -> bool:
    return drop is not None and drop > PREFILTER_DROP


def _line(t: ViewTrial) -> str:
    if t.judged_by == "audit":
        return f"  {t.item}: dropped by the audit (validation falls {t.audit_drop:.3f} under it), not trained"
    return (f"  {t.item}: with {t.with_measure:.4f}, without {t.without_measure:.4f}, "
            f"difference {t.difference:+.4f} ± {t.se:.4f} ({t.seeds} seeds, views of {t.view_rows} rows, "
            f"{t.seconds:.1f} s)"
            f"{'' if t.kept else ' ✗'}")


class _Trials:
    """The head cache's validation rows, the "without" arm (trained once), and one trial per item."""

    def __init__(self, head: Any, config: Any, seeds: int, extract_features: Callable[..., Any], keep_views: bool):
        self.head, self.config, self.seeds, self.extract_features = head, config, seeds, extract_features
        self.keep_views = keep_views
        self._without: np.ndarray | None = None
        self._originals: np.ndarray | None = None  # the head cache's training features, read once for every item
        self.rows: dict[str, int] = {}

    def trial(self, item: str, extract: Any) -> ViewTrial:
        """Extracts the item's views of its part (resuming), trains both arms, deletes the item's cache
        (unless kept)."""
        from headstart.features.cache import open_cache

        start = time.perf_counter()
        # the originals are the head cache's rows (same backbone, size, tap, source): copied, not recomputed
        self.extract_features(extract, originals_from=self.head.cache["path"])
        extract_seconds = time.perf_counter() - start
        with open_cache(self.head.cache["path"]) as base, open_cache(extract.out) as cache:
            if "validation" not in base.splits or not len(base.split("validation")):
                from headstart.pipeline.errors import DataError

                raise DataError(f"{self.head.cache['path']}: the head's cache has no validation rows to judge "
                                "augmentations on; extract it with --splits train,validation")
            # a part can be empty on a tiny split shared among many items: its arm is then the originals'
            val, train = base.split("validation"), base.split("train")
            part = cache.split("train") if "train" in cache.splits else None
            self.rows = {"train": len(train), "validation": len(val)}
            if self._without is None:
                self._without = self._scores(train, val, with_views=False, multi_label=base.multi_label)
            if self._originals is None:
                self._originals = np.asarray(train.features[...])
            with_scores = self._scores(_with_part(train, self._originals, part), val, with_views=True,
                                       multi_label=base.multi_label)
            view_rows = len(part) if part is not None else 0
        diff = paired_difference(with_scores, self._without)
        keep = self.keep_views and not diff.hurts and view_rows > 0  # an empty part's cache holds nothing to train on
        if not keep:
            Path(extract.out).unlink(missing_ok=True)  # recorded below; the next item needs the disk, not this
        return ViewTrial(item, kept=not diff.hurts, judged_by="views", views_cache=str(extract.out) if keep else None,
                         with_measure=float(with_scores.mean()), without_measure=float(self._without.mean()),
                         difference=diff.mean, se=diff.se, se_seeds=diff.se_seeds, se_rows=diff.se_rows,
                         seeds=diff.seeds, seconds=time.perf_counter() - start, extract_seconds=extract_seconds,
                         view_rows=view_rows)

    def _scores(self, train: Any, val: Any, *, with_views: bool, multi_label: bool) -> np.ndarray:
        """float (seeds, N_val): each seed's head's score of each validation row.

        The seeds of an arm train as one group of the sweep's batched trainer (``training.head_group``):
        seed s starts from ``train-head --seed (seed + s)``'s initial weights, and the group shares
        one batch plan and dropout stream drawn from the run's seed. Shared rather than per seed
        because a group takes one batch per step; it keeps the pairing exact (arm "with" seed s and
        arm "without" seed s differ only by the views), and the seeds then differ by their initial
        weights alone, so the spread over seeds is a lower bound of training noise: the per-row
        standard error, which does not depend on it, usually decides (``paired_difference``).
        """
        from headstart.pipeline.model.head import predict_classes
        from headstart.pipeline.training.head_params import TrialParams
        from headstart.pipeline.training.head_group import train_group

        cache = _arm_cache(train, val, self.head.class_names, with_views, multi_label)
        params = TrialParams.from_head_config(self.config, cache.name, with_views)
        seeds = [self.config.seed + s for s in range(self.seeds)]
        runs = train_group(cache, [params] * self.seeds, seed=self.config.seed, epochs=self.config.epochs,
                           patience=self.config.patience, monitor=self.config.monitor,
                           jit_compile=self.config.jit_compile, trial_seeds=seeds)
        val_labels = cache.labels["validation"]
        scores = [(predict_classes(run.logits, len(cache.class_names), multi_label) == val_labels)
                  .reshape(len(val_labels), -1).mean(axis=1) for run in runs]
        return np.stack(scores).astype(np.float64)


@dataclass
class _PartSplit:
    """The "with" arm's training split: every original, and each row's views of the item (or its original)."""

    features: np.ndarray  # (N, *feature_shape)
    views: np.ndarray     # (N, K, *feature_shape)
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


def _with_part(train: Any, features: np.ndarray, part: Any | None) -> _PartSplit:
    """The head cache's training split (``features``: its rows, already read) with the views an item's
    cache holds of its part of the rows."""
    from headstart.pipeline.evidence.view_parts import views_by_key

    parts = [(list(part.keys), np.asarray(part.views[...]))] if part is not None and len(part) else []
    views = views_by_key(features, list(train.keys), parts)
    return _PartSplit(features, views, np.asarray(train.labels))


def _arm_cache(train: Any, val: Any, class_names: Sequence[str], with_views: bool, multi_label: bool) -> Any:
    """The batched trainer's view of one arm: the head cache's training split (with an item's views of its
    part for "with", ``_with_part``) and its validation split."""
    from headstart.pipeline.training.head_params import SweepCache
    from headstart.pipeline.training.head_data import FeatureRows

    rows = {"train": FeatureRows(train, in_memory=True), "validation": FeatureRows(val, in_memory=True)}
    if with_views:
        rows["train_views"] = FeatureRows(train, in_memory=True, with_views=True)
    return SweepCache(name="views" if with_views else "originals", path="", rows=rows,
                      labels={"train": np.asarray(train.labels, np.int64), "validation": np.asarray(val.labels, np.int64)},
                      class_names=list(class_names), feature_shape=rows["train"].feature_shape,
                      views=rows["train_views"].views if with_views else 0, multi_label=multi_label)
