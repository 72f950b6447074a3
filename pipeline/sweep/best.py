"""``DIR/best``: the sweep's winning trial itself, as a standard ``train-head`` run directory.

The best trial (the best monitored validation value: ``training.objective``) is not trained again:
its own kept weights (``DIR/trials/``, ``sweep.trial_weights``) go through ``train_head``'s
writer as a ``KeptHead``, with the trial's configuration, the sweep's seed, ``--monitor`` and
``--class-weight``. So best/ holds exactly the head the leaderboard measured (its validation
figures are the trial's, to float32 rounding), it scores the test split — the only time a sweep
looks at it — and it leaves what ``finetune --head``, ``evaluate`` and ``inspect`` expect: head.keras,
metrics.json, history.csv (the trial's), curves.png and run.json (with its class weights and, for a
multi-label cache, the per-class thresholds chosen on validation, as train-head writes them), to
which a "sweep" record is added (the trial, its parameters, the search space, the caches and the
leaderboard).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from headstart.features.reporter import Reporter
from headstart.pipeline.config import SweepConfig
from headstart.pipeline.sweep.setup import SweepSetup
from headstart.pipeline.sweep.space import SearchSpace, params_from_record


def write_best(study: Any, best_row: dict[str, Any], out: Path, setup: SweepSetup, space: SearchSpace,
               config: SweepConfig, rows: list[dict[str, Any]], reporter: Reporter) -> dict[str, Any]:
    """Writes ``out/best`` from the trial of ``best_row``'s own weights unless it is there already.

    Returns:
        The best head's test measures (metrics.json's "test"; {} without a test split).
    """
    from headstart.pipeline.store.rundir import RunDir
    from headstart.pipeline.commands.head_training import train_head
    from headstart.pipeline.sweep.trial_weights import remove_other_trials

    best_dir = out / "best"
    number = int(best_row["number"])
    if _trial_of(RunDir(best_dir)) == number:
        remove_other_trials(out, number, [int(r["number"]) for r in rows])
        return RunDir(best_dir).metrics().get("test") or {}
    trial = study.trials[number]
    kept = _kept_head(out, number, trial.user_attrs["result"], setup.objective.history_key)
    if kept is None:
        reporter.warning(f"best: trial {number}'s weights are not in {out / 'trials'} (trained by an older sweep, or "
                         f"under another --out): no DIR/best")
        return {}
    params = params_from_record(trial.user_attrs["result"]["params"])
    cache = setup.caches[params.cache]
    key = setup.objective.history_key
    # Built beside best/ and moved into place at the end: a kill leaves the old best/ (or none).
    tmp = out / f".best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    result = train_head(params.head_config(features=cache.path, out=str(tmp), epochs=space.epochs,
                                           patience=space.patience, seed=config.seed, overwrite=True,
                                           monitor=config.monitor, class_weight=setup.class_weight),
                        kept=kept)
    RunDir(tmp).update_record(sweep={
        "trial": number, "params": trial.user_attrs["result"]["params"], "val_loss": best_row["val_loss"],
        "monitor": key, "value": best_row[key], "storage": config.storage or str(out / "study.db"),
        "study": study.study_name, "finished_trials": len(rows), "space": space.to_dict(), "seed": config.seed,
        "caches": [c.info["path"] for c in setup.caches.values()], "leaderboard": str(out / "leaderboard.csv"),
        "top": [{k: r[k] for k in ("rank", "number", "cache", "val_loss", "val_accuracy", key)} for r in rows[:10]],
    })
    _move_into_place(tmp, best_dir, number)
    remove_other_trials(out, number, [int(r["number"]) for r in rows])
    if config.tensorboard:  # the best head's history at the log root, where train-head's would be
        from headstart.pipeline.report.tensorboard_logs import write_history

        write_history(result.history, Path(config.tensorboard))
    test = result.metrics.get("test") or {}
    scored = (f"test mAP {_fmt(test.get('map'))}" if setup.multi_label
              else f"test accuracy {_fmt(test.get('accuracy'))}")
    reporter.line(f"best: trial {number} on {params.cache}: {key} {best_row[key]:.4f}, {scored} (scored once) "
                  f"-> {best_dir}")
    return test


def _kept_head(out: Path, number: int, result: dict[str, Any], monitor: str) -> Any:
    """Trial ``number``'s weights and course as a ``KeptHead``; None when its weights are not here."""
    from headstart.pipeline.sweep.trial_weights import load_trial_weights
    from headstart.pipeline.training.head_fit import HeadFit, KeptHead

    weights = load_trial_weights(out, number)
    if weights is None:
        return None
    epochs = int(result["epochs"])
    # The trial's wall time is its share of its group's; spread evenly over its epochs.
    fit = HeadFit(history=result["history"], best_epoch=int(result["best_epoch"]),
                  epoch_seconds=[float(result["seconds"]) / epochs] * epochs, monitor=monitor)
    return KeptHead(weights=weights, fit=fit)


def _move_into_place(tmp: Path, best_dir: Path, number: int) -> None:
    """Replaces ``best_dir`` by ``tmp``. Processes sharing a study finish together and may each
    write the same best trial: when another one's best/ lands between our removal and our move,
    theirs is the same run and ours is dropped (only a best/ of another trial is an error)."""
    from headstart.pipeline.store.rundir import RunDir

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
    """The trial a finished best/ holds; None when there is none (or it is damaged)."""
    from headstart.pipeline.errors import RunDirError

    try:
        return best.record.get("sweep", {}).get("trial") if best.complete else None
    except RunDirError:
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
