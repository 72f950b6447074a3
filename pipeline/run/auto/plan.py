"""The budget of ``--recipe auto``: what it will try, sized to the data and to measured speeds.

After the first cache is written, its extraction speed and split sizes are known; everything else
auto may do is estimated from them (a forward pass costs ∝ image area, a training step about
``TRAIN_COST`` forward passes), the plan is printed ("will try …, about N min"), and the search is
cut to fit the budget: ``--budget MINUTES`` when given, else ``DEFAULT_BUDGET_FACTOR`` times what
the guide's fixed recipe would take on the same data (at least ``MIN_BUDGET``). The cuts, in order: fewer sweep trials,
no depth probe, shorter fine-tuning probes (never under half an epoch), one cached view per image in
the augmentation trials instead of two, no second image size, no augmentation trials, no probes at
all. The final fine-tune is not part of the search budget: it runs as the guide's would, at the
chosen settings.

The augmentation trials run at the chosen image size, which is not known when the plan is made: the
first plan prices them at the first size, and once the size is chosen ``plan_augmentation`` prices
them again at that size against what the budget has left after what the sizes measurably cost (fewer
views, then none). Pricing them at the larger size up front cut the second size on the photos so
that trials could run that the first size then did not need (README: 0.9300 at 150 px where the
earlier 224 px run reached 0.9625).

The estimates are deliberately simple (AutoGluon's ``time_limit`` works the same way: plan from
what was measured, then re-measure); each step's real cost is recorded beside the estimate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from headstart.pipeline.config import FinetuneConfig

#: Seconds of training on an image relative to extracting it (the first cache's measured rate,
#: decoding included, which training pays too): 1.0–1.5 measured for MobileNetV2 0.35 at 150–224 px
#: on the photos and the digit scans here.
TRAIN_COST = 1.5
#: Fixed seconds per fine-tuning run (building the model, tracing the step), measured 8–12 s.
RUN_OVERHEAD = 10.0
#: Seconds per sweep trial per thousand training rows (batched heads on CPU; 32 trials on 1,258
#: rows took 30–65 s depending on load), and the sweep's fixed cost (sampling, plots, best head).
TRIAL_SECONDS_PER_1K_ROWS = 1.2
SWEEP_OVERHEAD = 8.0
#: Without --budget, the search may take this many times the guide's estimated run, and at least
#: MIN_BUDGET seconds (on a small dataset the fixed costs, tracing and plotting, dominate). The
#: search plus the final fine-tune should stay within 3× the guide's wall time (issue 20); at 1.5 an
#: idle machine's small budget cut the probes to a quarter epoch, too short to tell rates apart.
DEFAULT_BUDGET_FACTOR = 2.0
MIN_BUDGET = 180.0
#: Sweep trials: one per this many validation rows (more trials than validation can tell apart
#: only over-fit the validation split), within [MIN_TRIALS, MAX_TRIALS].
ROWS_PER_TRIAL, MIN_TRIALS, MAX_TRIALS = 8, 12, 48
#: Fine-tuning probes: learning rates (with every backbone layer trainable), then the top blocks at
#: the best rate; each probe trains one epoch, at most PROBE_MAX_STEPS steps, and a cut budget
#: shortens it to no less than half an epoch or PROBE_MIN_STEPS: after fewer steps every rate has
#: barely moved the weights, and the smallest one wins by doing nothing (measured: a quarter epoch,
#: 10–11 steps, chose 1e-5 on the digit scans where 44 steps chose 1e-4).
PROBE_LRS = (1e-5, 1e-4, 1e-3)
PROBE_MAX_STEPS, PROBE_MIN_STEPS = 300, 20
#: A fine-tuning epoch on cached activations, as a share of the estimate of one end to end at the
#: same size, and the epochs the on-cache rates run to early stopping in all: on the README photos
#: (MobileNetV2 0.35 top:30, 150 px) the three rates ran 21 + 5 + 4 epochs in 135 s where an
#: end-to-end epoch is estimated at 31.5 s (0.11 each, beside 10 s per rate to build and trace);
#: on the digits 9 + 7 + 12 epochs.
ON_CACHE_EPOCH_SHARE, ON_CACHE_EPOCHS = 0.15, 30
#: Cached views per training image in each augmentation trial (``finetune --trial-views``'s default).
VIEWS = FinetuneConfig.trial_views


@dataclass(frozen=True)
class Speeds:
    """What the first extraction measured.

    Attributes:
        image_size: the size it ran at.
        images_per_second: its forward rate (decoding included).
        rows: split → rows of the cache.
        batch_size: fine-tuning batch size.
        epochs: fine-tuning epochs at most (the guide's 10).
    """

    image_size: int
    images_per_second: float
    rows: dict[str, int]
    batch_size: int = 32
    epochs: int = 10

    def forward_seconds(self, images: int, image_size: int) -> float:
        return images / self.images_per_second * (image_size / self.image_size) ** 2

    def epoch_seconds(self, image_size: int) -> float:
        """One fine-tuning epoch: train steps plus the validation pass."""
        return (TRAIN_COST * self.forward_seconds(self.rows.get("train", 0), image_size)
                + self.forward_seconds(self.rows.get("validation", 0), image_size))


@dataclass
class RecipePlan:
    """What auto will try, and what it expects each part to cost (seconds).

    Attributes:
        image_sizes: sizes to compare (the first is already extracted).
        trials: sweep trials per cache (0: the head's options were all set, train-head runs).
        audit: whether the invariance audit runs.
        audit_candidates: how many items it scores.
        probes: (lr, unfreeze) of the learning-rate probes ("top" = the top blocks).
        depth_probe: whether the top blocks are probed at the best rate.
        probe_steps: training steps per probe.
        budget_seconds: the search budget.
        estimates: part → seconds.
        cuts: what was cut to fit the budget, in words.
        views: cached views per training image in each augmentation trial.
        on_cache: the fine-tune runs on cached activations (priced as ``ON_CACHE_EPOCHS`` cheap epochs).
        augment_size: the image size the augmentation trials were priced at (None: the first size;
            ``plan_augmentation`` sets the chosen one).
    """

    image_sizes: list[int]
    trials: int
    audit: bool
    audit_candidates: int
    probes: list[tuple[float, str]]
    depth_probe: bool
    probe_steps: int
    budget_seconds: float
    guide_seconds: float
    estimates: dict[str, float] = field(default_factory=dict)
    cuts: list[str] = field(default_factory=list)
    trials_given: bool = False
    on_cache: bool = False
    views: int = VIEWS
    augment_size: int | None = None

    def trials_at(self, image_size: int) -> int:
        """Sweep trials at an image size: the second size gets half (at least ``MIN_TRIALS``) unless
        the user set the trials. Fewer trials can only make its best head look worse, so a tie
        still goes to the first, cheaper size."""
        if image_size == self.image_sizes[0] or self.trials_given:
            return self.trials
        return max(min(MIN_TRIALS, self.trials), self.trials // 2)

    @property
    def search_seconds(self) -> float:
        return sum(v for k, v in self.estimates.items() if k != "finetune")

    def describe(self) -> str:
        """One paragraph: "will try …, about N min"."""
        parts = []
        if len(self.image_sizes) > 1:
            parts.append(f"image sizes {' and '.join(map(str, self.image_sizes))}")
        if self.trials:
            each = " on each" if len(self.image_sizes) > 1 else ""
            parts.append(f"a {self.trials}-trial head sweep{each}")
        if self.audit:
            parts.append(f"{self.audit_candidates} augmentations tried on {self.views} cached "
                         f"view{'s' if self.views > 1 else ''} per image")
        if self.probes or self.depth_probe:
            what = [f"{lr:g}" for lr, _ in self.probes]
            probes = f"fine-tuning probes of {self.probe_steps} steps"
            probes += f" at rates {', '.join(what)}" if what else ""
            probes += " and with the top blocks only" if self.depth_probe else ""
            parts.append(probes)
        minutes = (self.search_seconds + self.estimates.get("finetune", 0.0)) / 60
        text = "will try " + (", ".join(parts) if parts else "nothing: every choice was made explicitly")
        text += f"; then fine-tune{' on the cache' if self.on_cache else ''}; about {minutes:.0f} min in all (the guide's recipe: about " \
                f"{self.guide_seconds / 60:.0f} min)"
        if self.cuts:
            text += f"; to fit the budget of {self.budget_seconds / 60:.1f} min: " + ", ".join(self.cuts)
        return text

    @classmethod
    def from_dict(cls, record: dict) -> "RecipePlan":
        """Reads ``to_dict``'s form back (a resumed run keeps the plan it printed)."""
        return cls(image_sizes=list(record["image_sizes"]), trials=int(record["trials"]), audit=bool(record["audit"]),
                   audit_candidates=int(record.get("audit_candidates", 0)),
                   probes=[(float(p["lr"]), str(p["unfreeze"])) for p in record["probes"]],
                   depth_probe=bool(record["depth_probe"]), probe_steps=int(record["probe_steps"]),
                   budget_seconds=float(record["budget_seconds"]), guide_seconds=float(record["guide_seconds"]),
                   estimates=dict(record.get("estimates") or {}), cuts=list(record.get("cuts") or []),
                   trials_given=bool(record.get("trials_given")), on_cache=bool(record.get("on_cache")), views=int(record.get("views", VIEWS)),
                   augment_size=record.get("augment_size"))

    def to_dict(self) -> dict:
        return {"image_sizes": self.image_sizes, "trials": self.trials, "audit": self.audit,
                "audit_candidates": self.audit_candidates,
                "probes": [{"lr": lr, "unfreeze": u} for lr, u in self.probes], "depth_probe": self.depth_probe,
                "probe_steps": self.probe_steps, "budget_seconds": self.budget_seconds,
                "guide_seconds": self.guide_seconds, "estimates": self.estimates, "cuts": self.cuts,
                "trials_given": self.trials_given, "on_cache": self.on_cache, "views": self.views, "augment_size": self.augment_size,
                "text": self.describe()}


def sweep_trials(validation_rows: int) -> int:
    """Trials a sweep gets for a validation split of this size."""
    return max(MIN_TRIALS, min(MAX_TRIALS, round(validation_rows / ROWS_PER_TRIAL)))


def plan_recipe(speeds: Speeds, *, native_size: int | None, search_head: bool, audit_candidates: int,
                probe_lrs: Sequence[float], probe_depth: bool, budget_minutes: float | None,
                trials: int | None = None, on_cache: bool = False) -> RecipePlan:
    """Sizes the search to the data and cuts it to the budget.

    Args:
        speeds: what the first extraction measured.
        native_size: a second image size to try (the backbone's native one), or None.
        search_head: sweep the head (False when every head option was set explicitly).
        audit_candidates: augmentation items to audit (0: ``--augment`` was set).
        probe_lrs: learning rates to probe (empty: ``--lr`` was set).
        probe_depth: probe the top blocks too (False: ``--unfreeze`` was set).
        budget_minutes: ``--budget``; None plans ``DEFAULT_BUDGET_FACTOR`` × the guide's run.
        trials: sweep trials the user set (``[sweep] trials``); kept as given, never cut.
        on_cache: the fine-tune trains on cached activations (its estimate, not part of the budget).

    Returns:
        The plan, with its estimates and what was cut.
    """
    guide = _guide_seconds(speeds)
    budget = budget_minutes * 60 if budget_minutes is not None else max(MIN_BUDGET, DEFAULT_BUDGET_FACTOR * guide)
    train = speeds.rows.get("train", 0)
    steps_per_epoch = max(1, -(-train // speeds.batch_size))
    plan = RecipePlan(
        image_sizes=[speeds.image_size] + ([native_size] if native_size and native_size != speeds.image_size else []),
        trials=(trials or sweep_trials(speeds.rows.get("validation", 0))) if search_head else 0,
        audit=audit_candidates > 0, audit_candidates=audit_candidates,
        probes=[(lr, "all") for lr in probe_lrs], depth_probe=probe_depth,
        probe_steps=min(PROBE_MAX_STEPS, steps_per_epoch), budget_seconds=budget, guide_seconds=guide,
        trials_given=bool(trials), on_cache=on_cache)
    _estimate(plan, speeds)
    for cut in (_fewer_trials, _no_depth_probe, _shorter_probes, _fewer_views, _one_size, _no_view_trials, _no_probes):
        if plan.search_seconds <= budget:
            break
        cut(plan, speeds, budget)
        _estimate(plan, speeds)
    return plan


def _guide_seconds(speeds: Speeds) -> float:
    """The guide's run on the same data: extraction, a head, the fine-tune, the test pass."""
    s = speeds.image_size
    total_rows = sum(speeds.rows.values())
    return (speeds.forward_seconds(total_rows, s) + 5.0 + RUN_OVERHEAD + speeds.epochs * speeds.epoch_seconds(s)
            + speeds.forward_seconds(speeds.rows.get("test", 0), s))


def _estimate(plan: RecipePlan, speeds: Speeds) -> None:
    """Fills ``plan.estimates`` for the search steps and the final fine-tune (at the larger size)."""
    train, validation = speeds.rows.get("train", 0), speeds.rows.get("validation", 0)
    total_rows = sum(speeds.rows.values())
    largest = plan.augment_size or max(plan.image_sizes)  # once the size is chosen, the one that runs

    def sweep(trials: int) -> float:
        return SWEEP_OVERHEAD + trials * TRIAL_SECONDS_PER_1K_ROWS * max(train, 1) / 1000 if trials else 5.0

    probe = RUN_OVERHEAD + (TRAIN_COST * speeds.forward_seconds(plan.probe_steps * speeds.batch_size, largest)
                            + speeds.forward_seconds(validation, largest))
    plan.estimates = {
        "extract": sum(speeds.forward_seconds(total_rows, s) for s in plan.image_sizes[1:]),
        "head": sum(sweep(plan.trials_at(s)) for s in plan.image_sizes),
        "audit": _augment_seconds(plan, speeds, plan.augment_size or plan.image_sizes[0]) if plan.audit else 0.0,
        "probes": probe * (len(plan.probes) + plan.depth_probe),
        "finetune": (3 * RUN_OVERHEAD + ON_CACHE_EPOCHS * ON_CACHE_EPOCH_SHARE * speeds.epoch_seconds(largest)
                     if plan.on_cache else RUN_OVERHEAD + speeds.epochs * speeds.epoch_seconds(largest))
        + speeds.forward_seconds(speeds.rows.get("test", 0), largest),
    }


def _augment_seconds(plan: RecipePlan, speeds: Speeds, size: int) -> float:
    """The audit (a validation pass per item and one untransformed) and the view trials: the training
    split through the backbone once per view for all items together (each item's views cover its part
    of the rows, ``evidence.view_parts``; the originals are copied from the head's cache), and per
    item SEEDS heads on the originals with its views, plus SEEDS heads on the originals. A head's epoch
    draws one version of each row, so its views do not lengthen it."""
    from headstart.pipeline.evidence.view_trials import SEEDS

    items, train = plan.audit_candidates, speeds.rows.get("train", 0)
    audit = (items + 1) * speeds.forward_seconds(speeds.rows.get("validation", 0), size)
    views = plan.views * speeds.forward_seconds(train, size)
    heads = (items + 1) * SEEDS * TRIAL_SECONDS_PER_1K_ROWS * max(train, 1) / 1000
    return audit + views + heads


def plan_augmentation(plan: RecipePlan, speeds: Speeds, size: int, spent_seconds: float) -> RecipePlan:
    """The augmentation trials priced again at the chosen image size, cut to what the budget has left.

    Args:
        plan: the plan as first made (its trials priced at the first size).
        speeds: what the first extraction measured.
        size: the chosen image size.
        spent_seconds: what the search has measurably spent so far (the second size's extraction,
            the sweeps).

    Returns:
        A copy with ``augment_size`` set and, when the trials do not fit what is left, one view per
        image, or no trials; each cut said in ``cuts``.
    """
    plan = dataclasses.replace(plan, augment_size=size, cuts=list(plan.cuts))
    _estimate(plan, speeds)
    left = plan.budget_seconds - spent_seconds - plan.estimates["probes"]
    for cut in (_fewer_views, _no_view_trials):
        if plan.estimates["audit"] <= left:
            break
        cut(plan, speeds, left)
        plan.cuts[-1] = f"at {size} px: {plan.cuts[-1]}"
        _estimate(plan, speeds)
    return plan


def _fewer_trials(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if plan.trials > MIN_TRIALS and not plan.trials_given:
        plan.trials = MIN_TRIALS
        plan.cuts.append(f"{MIN_TRIALS} sweep trials")


def _shorter_probes(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    steps_per_epoch = max(1, -(-speeds.rows.get("train", 0) // speeds.batch_size))
    shortest = min(plan.probe_steps, max(PROBE_MIN_STEPS, steps_per_epoch // 2))
    if plan.probe_steps > shortest and (plan.probes or plan.depth_probe):
        plan.probe_steps = shortest
        plan.cuts.append(f"probes of {shortest} steps")


def _no_depth_probe(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if plan.depth_probe:
        plan.depth_probe = False
        plan.cuts.append("no top-blocks probe")


def _one_size(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if len(plan.image_sizes) > 1:
        plan.cuts.append(f"no second image size ({plan.image_sizes[1]})")
        plan.image_sizes = plan.image_sizes[:1]


def _fewer_views(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if plan.audit and plan.views > 1:
        plan.views = 1
        plan.cuts.append("one view per image in the augmentation trials")


def _no_view_trials(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if plan.audit:
        plan.audit = False
        plan.cuts.append("no augmentation trials (fine-tuned on the original images' activations)")


def _no_probes(plan: RecipePlan, speeds: Speeds, budget: float) -> None:
    if plan.probes:
        plan.probes = []
        plan.cuts.append("no fine-tuning probes (the guide's rate)")
