"""``DIR/best``: the sweep's winner as a standard ``train-head`` run directory.

The best trial (lowest validation loss) is trained again by ``train_head`` itself, with the trial's
configuration and the sweep's seed. That run is bit-identical to the trial (the batched trainer
makes the same calls; tests/test_sweep.py checks it), it scores the test split — the only time a
sweep looks at it — and it leaves exactly what ``finetune --head``, ``evaluate`` and ``inspect``
expect: head.keras, metrics.json, history.csv, curves.png and run.json, to which a "sweep" record is
added (the trial, its parameters, the search space, the caches and the leaderboard).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from headstart.pipeline.config import SweepConfig
from headstart.pipeline.sweep.caches import SweepCache
from headstart.pipeline.sweep.space import SearchSpace, params_from_record


def write_best(study: Any, best_row: dict[str, Any], out: Path, caches: dict[str, SweepCache], space: SearchSpace,
               config: SweepConfig, rows: list[dict[str, Any]], log: Callable[[str], None]) -> float | None:
    """Writes ``out/best`` for the trial of ``best_row`` unless it is there already.

    Returns:
        The best head's test accuracy (None without a test split).
    """
    from headstart.pipeline.report.rundir import RunDir
    from headstart.pipeline.stages.head_training import train_head

    best_dir = out / "best"
    number = int(best_row["number"])
    if _trial_of(RunDir(best_dir)) == number:
        return (RunDir(best_dir).metrics().get("test") or {}).get("accuracy")
    trial = study.trials[number]
    params = params_from_record(trial.user_attrs["result"]["params"])
    cache = caches[params.cache]
    # Built beside best/ and moved into place at the end: a kill leaves the old best/ (or none).
    tmp = out / f".best-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    result = train_head(params.head_config(features=cache.path, out=str(tmp), epochs=space.epochs,
                                           patience=space.patience, seed=config.seed, overwrite=True,
                                           tensorboard=config.tensorboard),
                        log=lambda line: None)
    RunDir(tmp).update_record(sweep={
        "trial": number, "params": trial.user_attrs["result"]["params"], "val_loss": best_row["val_loss"],
        "retrained_val_loss": result.val_loss, "storage": config.storage or str(out / "study.db"),
        "study": study.study_name, "finished_trials": len(rows), "space": space.to_dict(), "seed": config.seed,
        "caches": [c.info["path"] for c in caches.values()], "leaderboard": str(out / "leaderboard.csv"),
        "top": [{k: r[k] for k in ("rank", "number", "cache", "val_loss", "val_accuracy")} for r in rows[:10]],
    })
    shutil.rmtree(best_dir, ignore_errors=True)
    os.replace(tmp, best_dir)
    log(f"best: trial {number} on {params.cache}: val_loss {best_row['val_loss']:.4f}, "
        f"test accuracy {_fmt(result.test_accuracy)} (scored once) -> {best_dir}")
    return result.test_accuracy


def _trial_of(best: Any) -> int | None:
    """The trial a finished best/ was retrained from; None when there is none (or it is damaged)."""
    from headstart.pipeline.errors import RunDirError

    try:
        return best.record.get("sweep", {}).get("trial") if best.complete else None
    except RunDirError:
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
