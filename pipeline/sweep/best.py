"""``DIR/best``: the sweep's winner as a standard ``train-head`` run directory.

The best trial (the best monitored validation value: ``sweep.objective``) is trained again by
``train_head`` itself, with the trial's configuration, the sweep's seed, ``--monitor`` and
``--class-weight``. That run is bit-identical to the trial (the batched trainer makes the same
calls; tests/test_sweep.py checks it), it scores the test split — the only time a sweep looks at
it — and it leaves exactly what ``finetune --head``, ``evaluate`` and ``inspect`` expect: head.keras,
metrics.json, history.csv, curves.png and run.json (with its class weights and, for a multi-label
cache, the per-class thresholds chosen on validation, as train-head writes them), to which a
"sweep" record is added (the trial, its parameters, the search space, the caches and the leaderboard).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from headstart.pipeline.config import SweepConfig
from headstart.pipeline.sweep.setup import SweepSetup
from headstart.pipeline.sweep.space import SearchSpace, params_from_record


def write_best(study: Any, best_row: dict[str, Any], out: Path, setup: SweepSetup, space: SearchSpace,
               config: SweepConfig, rows: list[dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """Writes ``out/best`` for the trial of ``best_row`` unless it is there already.

    Returns:
        The best head's test measures (metrics.json's "test"; {} without a test split).
    """
    from headstart.pipeline.report.rundir import RunDir
    from headstart.pipeline.stages.head_training import train_head

    best_dir = out / "best"
    number = int(best_row["number"])
    if _trial_of(RunDir(best_dir)) == number:
        return RunDir(best_dir).metrics().get("test") or {}
    trial = study.trials[number]
    params = params_from_record(trial.user_attrs["result"]["params"])
    cache = setup.caches[params.cache]
    key = setup.objective.history_key
    # Built beside best/ and moved into place at the end: a kill leaves the old best/ (or none).
    tmp = out / f".best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    result = train_head(params.head_config(features=cache.path, out=str(tmp), epochs=space.epochs,
                                           patience=space.patience, seed=config.seed, overwrite=True,
                                           tensorboard=config.tensorboard, monitor=config.monitor,
                                           class_weight=setup.class_weight),
                        log=lambda line: None)
    retrained = (result.metrics.get("validation") or {}).get(setup.objective.measure)
    RunDir(tmp).update_record(sweep={
        "trial": number, "params": trial.user_attrs["result"]["params"], "val_loss": best_row["val_loss"],
        "retrained_val_loss": result.val_loss, "monitor": key, "value": best_row[key], "retrained_value": retrained,
        "storage": config.storage or str(out / "study.db"),
        "study": study.study_name, "finished_trials": len(rows), "space": space.to_dict(), "seed": config.seed,
        "caches": [c.info["path"] for c in setup.caches.values()], "leaderboard": str(out / "leaderboard.csv"),
        "top": [{k: r[k] for k in ("rank", "number", "cache", "val_loss", "val_accuracy", key)} for r in rows[:10]],
    })
    _move_into_place(tmp, best_dir, number)
    test = result.metrics.get("test") or {}
    scored = (f"test mAP {_fmt(test.get('map'))}" if setup.multi_label
              else f"test accuracy {_fmt(test.get('accuracy'))}")
    log(f"best: trial {number} on {params.cache}: {key} {best_row[key]:.4f}, {scored} (scored once) -> {best_dir}")
    return test


def _move_into_place(tmp: Path, best_dir: Path, number: int) -> None:
    """Replaces ``best_dir`` by ``tmp``. Processes sharing a study finish together and may each
    retrain the same best trial: when another one's best/ lands between our removal and our move,
    theirs is the same run and ours is dropped (only a best/ of another trial is an error)."""
    from headstart.pipeline.report.rundir import RunDir

    for _ in range(3):  # another process's best/ may land (or be half removed) between the two steps
        shutil.rmtree(best_dir, ignore_errors=True)
        try:
            os.replace(tmp, best_dir)
            return
        except OSError:
            if _trial_of(RunDir(best_dir)) == number:
                shutil.rmtree(tmp, ignore_errors=True)
                return
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(tmp, best_dir)  # raises what keeps it from its place


def _trial_of(best: Any) -> int | None:
    """The trial a finished best/ was retrained from; None when there is none (or it is damaged)."""
    from headstart.pipeline.errors import RunDirError

    try:
        return best.record.get("sweep", {}).get("trial") if best.complete else None
    except RunDirError:
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
