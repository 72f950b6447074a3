"""The recipe's cheap parts: baselines on a cache, the budget plan, the decisions table, native sizes."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import make_cache


def test_baselines_choose_on_validation_and_score_test(tmp_path):
    from headstart.pipeline.evidence.baselines import KNN_KS, LOGISTIC_CS, best_baseline, feature_baselines

    cache = make_cache(tmp_path / "f.h5", classes=3, shape=(8,), spread=0.8)
    knn, logistic = feature_baselines(str(cache))
    assert (knn.name, logistic.name) == ("knn", "logistic")
    assert set(knn.tried) == {str(k) for k in KNN_KS} and set(logistic.tried) == {str(c) for c in LOGISTIC_CS}
    assert knn.validation["accuracy"] == max(knn.tried.values()) > 0.9  # separable blobs
    assert logistic.test["rows"] == 48 and logistic.test["accuracy"] > 0.9
    assert set(knn.validation) == {"rows", "accuracy", "balanced_accuracy", "macro_f1"}
    assert best_baseline([knn, logistic]).validation_measure == max(knn.validation_measure,
                                                                    logistic.validation_measure)
    assert knn.to_dict()["label"].startswith("k-NN (cosine, k=")


def test_baselines_average_a_spatial_cache_and_subsample_a_large_one(tmp_path):
    from headstart.pipeline.evidence.baselines import feature_baselines

    cache = make_cache(tmp_path / "f.h5", classes=2, shape=(2, 2, 4))
    knn, _ = feature_baselines(str(cache), max_train_rows=40)
    assert knn.validation["rows"] == 48 and knn.test["accuracy"] > 0.9


def test_baselines_need_a_validation_split(tmp_path):
    from headstart.pipeline.errors import DataError
    from headstart.pipeline.evidence.baselines import feature_baselines

    cache = make_cache(tmp_path / "f.h5", counts={"train": 40, "test": 10})
    with pytest.raises(DataError, match="need a validation split"):
        feature_baselines(str(cache))


def _speeds(**rows):
    from headstart.pipeline.run.auto.plan import Speeds

    return Speeds(image_size=150, images_per_second=200.0,
                  rows=rows or {"train": 1400, "validation": 200, "test": 400})


def test_the_plan_sizes_the_sweep_to_validation_and_keeps_everything_within_a_generous_budget():
    from headstart.pipeline.run.auto.plan import MAX_TRIALS, MIN_TRIALS, plan_recipe, sweep_trials

    assert sweep_trials(200) == 25 and sweep_trials(10) == MIN_TRIALS and sweep_trials(10**6) == MAX_TRIALS
    plan = plan_recipe(_speeds(), native_size=224, search_head=True, audit_candidates=7,
                       probe_lrs=(1e-5, 1e-4, 1e-3), probe_depth=True, budget_minutes=600)
    assert plan.image_sizes == [150, 224] and plan.trials == 25 and plan.depth_probe and not plan.cuts
    assert plan.probe_steps == 44  # one epoch of 1,400 rows at batch 32
    assert "image sizes 150 and 224" in plan.describe() and "about" in plan.describe()
    # The second size costs (224/150)² of the first extraction's 2,000 images at 200/s.
    assert plan.estimates["extract"] == pytest.approx(2000 / 200 * (224 / 150) ** 2)


def test_a_tight_budget_cuts_the_search_in_order():
    from headstart.pipeline.run.auto.plan import MIN_TRIALS, plan_recipe

    kwargs = dict(native_size=224, search_head=True, audit_candidates=7, probe_lrs=(1e-5, 1e-4, 1e-3),
                  probe_depth=True)
    tight = plan_recipe(_speeds(), budget_minutes=0.01, **kwargs)
    assert tight.trials == MIN_TRIALS and tight.image_sizes == [150] and not tight.probes
    assert not tight.depth_probe and "to fit the budget" in tight.describe()
    # in order: what costs least accuracy goes first; fewer views before a size, a size before the trials
    assert [c.split(" ")[0] for c in tight.cuts] == ["12", "no", "probes", "one", "no", "no", "no"]
    assert tight.cuts.index("one view per image in the augmentation trials") < tight.cuts.index(
        "no second image size (224)") < [i for i, c in enumerate(tight.cuts) if "augmentation trials (" in c][0]
    assert not tight.audit and tight.views == 1
    explicit = plan_recipe(_speeds(), native_size=None, search_head=False, audit_candidates=0, probe_lrs=(),
                           probe_depth=False, budget_minutes=None)
    assert explicit.describe().startswith("will try nothing")


def test_a_fine_tune_on_the_cache_is_priced_as_cheap_epochs():
    from headstart.pipeline.run.auto.plan import plan_recipe

    kwargs = dict(native_size=None, search_head=True, audit_candidates=0, probe_lrs=(), probe_depth=False,
                  budget_minutes=None)
    images, cached = plan_recipe(_speeds(), **kwargs), plan_recipe(_speeds(), on_cache=True, **kwargs)
    assert cached.estimates["finetune"] < images.estimates["finetune"]
    assert "then fine-tune on the cache" in cached.describe() and "then fine-tune;" in images.describe()


def test_the_augmentation_trials_are_priced_again_at_the_chosen_size():
    from headstart.pipeline.run.auto.plan import RecipePlan, plan_augmentation, plan_recipe

    kwargs = dict(native_size=224, search_head=True, audit_candidates=7, probe_lrs=(), probe_depth=False)
    speeds = _speeds()
    plan = plan_recipe(speeds, budget_minutes=8, **kwargs)
    # the first plan prices the trials at the first size: both sizes fit the budget
    assert plan.image_sizes == [150, 224] and plan.audit and plan.views == 2 and not plan.cuts
    same = plan_augmentation(plan, speeds, 150, spent_seconds=60.0)
    assert same.views == 2 and same.audit and same.estimates["audit"] == pytest.approx(plan.estimates["audit"])
    # at 224 px each pass costs (224/150)² as much: one view fits what is left, then nothing does
    bigger = plan_augmentation(dataclasses.replace(plan, budget_seconds=1e9), speeds, 224, spent_seconds=60.0)
    assert bigger.views == 2 and bigger.audit
    assert bigger.estimates["audit"] > plan.estimates["audit"] and bigger.augment_size == 224
    one_view_cost = plan_augmentation(dataclasses.replace(plan, views=1), speeds, 224, 0.0).estimates["audit"]
    assert one_view_cost < bigger.estimates["audit"]
    one_view = plan_augmentation(plan, speeds, 224, spent_seconds=plan.budget_seconds - one_view_cost - 1.0)
    assert one_view.audit and one_view.views == 1 and one_view.cuts == ["at 224 px: one view per image in the augmentation trials"]
    broke = plan_augmentation(plan, speeds, 224, spent_seconds=plan.budget_seconds)
    assert not broke.audit and broke.cuts[-1].startswith("at 224 px: no augmentation trials")
    assert RecipePlan.from_dict(one_view.to_dict()) == one_view and plan.views == 2 and not plan.cuts  # a copy


def test_the_decisions_table_names_each_choice_and_the_users_own():
    from headstart.pipeline.report.decisions import Candidate, Decision, explicit_decision, format_decisions

    decisions = [
        Decision("augment", "flip,zoom=0.1", measure="accuracy", seconds=12.4,
                 candidates=[Candidate("flip", 0.95, kept=True), Candidate("flip=vertical", 0.71)]),
        Decision("image_size", 224, measure="val_loss", seconds=40.2,
                 candidates=[Candidate(150, 0.148), Candidate(224, 0.101, kept=True)]),
        explicit_decision("lr", 1e-4),
    ]
    table = format_decisions(decisions).splitlines()
    assert table[0].split() == ["decision", "chosen", "cost"]
    assert table[2].split() == ["image", "size", "224", "40", "s"]  # ordered by when auto decides
    assert table[3].strip() == "val_loss: 150 0.1480 · 224 0.1010 ✓"
    assert table[4].split()[:2] == ["augmentation", "flip,zoom=0.1"] and table[4].endswith("12 s")
    assert table[5].strip() == "accuracy: flip 0.9500 ✓ · flip=vertical 0.7100"
    assert table[6].split() == ["fine-tuning", "rate", "0.0001", "-"] and table[7].strip() == "set by you"
    long = Decision("head", "x" * 80, why="best of 22 trials")
    assert "x" * 80 in format_decisions([long]) and "…" not in format_decisions([long])  # shown whole, never cut
    listed = format_decisions([Decision("augment", ",".join(["brightness=0.2", "contrast=0.2", "smoothing=0.1"] * 3))])
    assert "…" not in listed and listed.count("brightness=0.2") == 3  # a long list wraps after its commas
    again = Decision.from_dict(decisions[0].to_dict())
    assert again == decisions[0]


def test_native_sizes_come_from_the_registry():
    from headstart.features.registry import backbone_rows, format_backbone_table, get_backbone_spec

    assert get_backbone_spec("xception").native_size == 299
    assert get_backbone_spec("mobilenet_v2").native_size == 224
    assert get_backbone_spec("efficientnet_b7").native_size == 600
    assert {r["name"]: r["native_size"] for r in backbone_rows()}["nasnet_large"] == 331
    assert " native " in format_backbone_table(backbone_rows()).splitlines()[0]


def test_the_fine_tuning_row_counts_only_what_its_stage_spent_outside_the_other_rows():
    """Auto on the cache: the view trials (augmentation row) and the fine-tunes at each rate (rate
    row) ran inside the finetune stage, so the fine-tuning row keeps only the rest (each second once)."""
    from headstart.pipeline.report.decisions import Decision
    from headstart.pipeline.run.auto.recipe import _counted_once

    rows = [Decision("augment", "flip", seconds=373.0), Decision("lr", 1e-5, seconds=135.0),
            Decision("unfreeze", "top:30", seconds=0.0), Decision("finetune", "fine-tuned", seconds=537.0)]
    record = {"seconds": 537.0, "kept": "finetuned", "recipe": {"augment": {"seconds": 353.9}}}
    counted = {d.name: d.seconds for d in _counted_once(rows, record)}
    assert counted == {"augment": 373.0, "lr": 135.0, "unfreeze": 0.0, "finetune": 29.0}
    assert sum(counted.values()) == 537.0
