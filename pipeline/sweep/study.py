"""``headstart sweep``: an Optuna study over head configurations on one or several caches.

The study lives in ``DIR/study.db`` (SQLite) or any database Optuna supports (``--storage URL``),
with Optuna's heartbeat on: a process killed mid-sweep leaves RUNNING trials whose heartbeat goes
stale; the next process fails them and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues each
again with the same parameters, so an interrupted trial is rerun. ``--trials N`` is the total of
finished (complete or pruned) trials: every process asks only for what is missing, and a trial
asked beyond N in a race (the first N live trials by number are kept) is told FAIL, marked
``surplus``, and never trained. Several processes, on one machine or many, share one study this way.

Each round asks up to ``parallel`` trials (TPE with ``constant_liar``, so asked-but-running trials
steer the sampler away from each other), groups them by (cache, batch size, views) and trains each
group in one compiled step (``headstart.pipeline.training.head_group``), telling Optuna as each trial stops.
Selection uses validation only: the objective is the trial's best value of the ``--monitor`` measure
(validation loss by default, minimised; balanced accuracy, macro-F1 or a multi-label cache's mAP,
maximised: ``training.objective``), which the pruner and each trial's early stopping watch too. The
test split is scored once, when ``DIR/best`` is written from the best trial's own weights (kept
under ``DIR/trials/``) by ``train-head``'s writer: no retraining.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from headstart.features.reporter import QUIET, Reporter
from headstart.pipeline.config import SweepConfig
from headstart.pipeline.errors import OptionError
from headstart.pipeline.training.head_params import SweepCache
from headstart.pipeline.sweep.orphans import adopt_silent_trials, remove_dead_best_dirs
from headstart.pipeline.sweep.pruning import StragglerMedianPruner
from headstart.pipeline.sweep.setup import SweepSetup
from headstart.pipeline.sweep.storage import check_sqlite_file, check_storage_url, storage_errors, \
    storage_write_errors
from headstart.pipeline.sweep.space import SearchSpace, TrialParams, params_from_record, suggest_params
from headstart.pipeline.sweep.teller import FINISHED, Teller, trial_state
from headstart.pipeline.sweep.trial_weights import TRIALS_DIR

STUDY_NAME = "headstart-sweep"


@dataclass
class SweepResult:
    """What ``run_sweep`` produced.

    The best trial is the best complete one by ``monitor`` on validation; ``best`` is its
    leaderboard row (``leaderboard.COLUMNS``: "number", "cache", "val_loss", "val_accuracy", the
    monitored column, every parameter …), empty when no trial completed.
    """

    out: str
    storage: str
    finished: int
    trained_here: int
    best: dict[str, Any] = field(default_factory=dict)   # the best trial's leaderboard row
    best_test_accuracy: float | None = None
    seconds: float = 0.0
    table: str = ""                                       # the top ten, for the terminal
    trial_epochs: int = 0                                 # epochs trained over every finished trial
    monitor: str = "val_loss"                             # the column trials are ranked by, e.g. "val_map"
    best_test: dict[str, Any] = field(default_factory=dict)  # best/metrics.json's "test" (scored once)

    @property
    def best_value(self) -> float | None:
        """The best trial's monitored validation value (what Optuna was told)."""
        return self.best.get(self.monitor)

    @property
    def best_val_accuracy(self) -> float | None:
        """The best trial's validation accuracy (multi-label: exact match at its thresholds)."""
        return self.best.get("val_accuracy")

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's cache and head parameters (``TrialParams``' fields)."""
        from headstart.pipeline.sweep.leaderboard import PARAMS

        return {k: self.best[k] for k in ("cache", *PARAMS)} if self.best else {}

    @property
    def best_dir(self) -> str | None:
        """``DIR/best``, the best trial's own head as a train-head run; None when no trial completed."""
        return str(Path(self.out) / "best") if self.best else None


def storage_url(config: SweepConfig) -> str:
    """``--storage`` if given, else ``sqlite:///DIR/study.db``."""
    return config.storage or f"sqlite:///{Path(config.out).resolve() / 'study.db'}"


def run_sweep(config: SweepConfig, space: SearchSpace | None = None, *, reporter: Reporter = QUIET,
              on_trial: Callable[[int, int, float], None] | None = None) -> SweepResult:
    """Runs (or resumes, or joins) the sweep until ``config.trials`` trials are finished.

    Args:
        config: caches, output directory, total trials, seed, storage, monitor, class weights.
        space: the search space (defaults: ``SearchSpace()``); a range with lo == hi and a single
            choice are fixed (never asked of the sampler): ``SearchSpace.with_values`` fixes some.
        reporter: gets one line per finished trial and status messages (default: none).
        on_trial: called as ``on_trial(finished, total, trials_per_second)`` for a progress bar.

    Returns:
        A SweepResult; ``table`` is the top ten for the CLI to print.

    Raises:
        OptionError: bad options (a monitor the caches' task does not allow, class weights on a
            multi-label cache …), or a study in the storage that was started with other caches or
            another search space. RunDirError: DIR holds something that is not a sweep.
        DataError / StoreError: unusable or mismatched caches (``load_caches``).
    """
    from headstart.pipeline.options.checks import check_config
    from headstart.pipeline.sweep.leaderboard import write_outputs
    from headstart.pipeline.sweep.setup import prepare_sweep

    check_config("sweep", config)
    if config.heartbeat < 1:
        raise OptionError(f"heartbeat must be at least 1 second, got {config.heartbeat}")
    if config.storage is not None:  # before the caches are read: a mistyped URL costs nothing
        check_storage_url(config.storage, f"--storage {config.storage}")
    space = space or SearchSpace()
    start = time.perf_counter()
    setup = prepare_sweep(config, reporter)
    with claim_sweep_dir(Path(config.out), config.overwrite) as out:
        where = f"--storage {config.storage}" if config.storage else str(out / "study.db")
        with storage_errors(where):
            check_sqlite_file(storage_url(config), where, "move it away, or pass --overwrite to start a new study"
                              if config.storage is None else "move it away, or give another --storage")
            study, storage = _open_study(config, space, setup)
        with storage_write_errors(where):
            trained = _run_trials(study, storage, config, space, setup, reporter, start, on_trial)
            best = write_outputs(study, out, setup, space, config, reporter)
    return SweepResult(out=str(out), storage=storage_url(config), finished=_count(study, FINISHED),
                       trained_here=trained, seconds=time.perf_counter() - start,
                       monitor=setup.objective.history_key, **best)


def _run_trials(study: Any, storage: Any, config: SweepConfig, space: SearchSpace, setup: SweepSetup,
                reporter: Reporter, start: float, on_trial: Callable[[int, int, float], None] | None) -> int:
    """Asks and trains rounds of trials until ``config.trials`` are finished; returns how many were trained here."""
    trained = 0
    heads: dict[str, Any] = {}  # cache name → its BatchedHeads, traced once for the whole sweep
    with _heartbeats(storage, config.heartbeat) as running:
        while True:
            asked = _ask_round(study, storage, config, space, setup.caches)
            if asked is None:
                return trained
            if not asked:
                time.sleep(config.heartbeat)  # others (or stale trials) hold the rest; wait for them
                continue
            trained += _train_round(study, asked, setup, heads, space, config, running, reporter, start, on_trial)


#: What a sweep directory holds; anything else makes it another tool's directory.
SWEEP_FILES = frozenset({"study.db", "leaderboard.csv", "sweep.png", "best", TRIALS_DIR, "study.db-journal",
                         "study.db-wal", "study.db-shm", ".study.lock"})


@contextlib.contextmanager
def claim_sweep_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Holds ``--out`` for the sweep (the ``--out`` policy of ``headstart.pipeline.store.out_dir``).

    Sweep processes that share a study take the directory's lock shared and work side by side;
    ``--overwrite`` takes it alone and deletes the sweep's files (and only those). Whether the
    directory's study was made with the same caches and settings is the study's to say
    (``_open_study``). A directory holding anything else is refused.
    """
    from headstart.pipeline.store.out_dir import OutDir, settle

    with OutDir(out, "sweep").locked(shared=not overwrite):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in SWEEP_FILES and not p.name.startswith("."))
        settle(out, what="sweep", wanted={}, recorded=None if foreign else {}, finished=False, overwrite=overwrite,
               foreign=f"holds {foreign[0]}, which is not a sweep's" if foreign else None)
        if overwrite:
            for name in SWEEP_FILES:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        remove_dead_best_dirs(out)  # a killed final write's half-written best/
        (out / ".study.lock").unlink(missing_ok=True)  # left by sweeps before issue 28; nothing locks it now
        yield out


def _open_study(config: SweepConfig, space: SearchSpace, setup: SweepSetup) -> tuple[Any, Any]:
    """The study and its RDBStorage (whose public ``record_heartbeat`` the heartbeat thread calls)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    def storage_now() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RetryHeartbeatStaleTrialCallback is marked experimental
            return RDBStorage(storage_url(config), engine_kwargs=_sqlite_engine(storage_url(config)),
                              heartbeat_interval=config.heartbeat, grace_period=2 * config.heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())

    storage = _created_once(storage_now)
    # constant_liar: trials asked in one round (or by other processes) and still running count as
    # bad results for the sampler, so one round does not ask for the same region again and again.
    # The seed is offset by the trials already there, so a process joining a study draws anew.
    sampler = optuna.samplers.TPESampler(seed=config.seed, constant_liar=True)
    pruner = StragglerMedianPruner() if space.pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=setup.objective.direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    already = len(study.get_trials(deepcopy=False))
    if already:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.TPESampler(seed=config.seed + already, constant_liar=True))
    settings = {"caches": [{"name": c.name, "fingerprint": c.info["fingerprint"]} for c in setup.caches.values()],
                "space": space.to_dict(), "seed": config.seed, **setup.settings()}
    recorded = study.user_attrs.get("settings")
    if recorded is None:  # the first process; one that raced it with other settings finds them now
        study.set_user_attr("settings", settings)
        recorded = study.user_attrs.get("settings")
    if recorded != settings:
        from headstart.pipeline.store.out_dir import first_difference

        difference = first_difference(_flat_settings(recorded), _flat_settings(settings))
        raise OptionError(f"{storage_url(config)}: the study was started with another configuration ({difference}); "
                          f"give the same CACHEs and [sweep] settings to resume, or another --out (or --overwrite) "
                          f"to start anew")
    return study, storage


#: How often, and how far apart, a new storage is tried again after losing the schema race.
CREATION_TRIES, CREATION_PAUSE = 10, 0.2
#: What losing that race says (SQLite, PostgreSQL and MySQL word it alike); anything else is not retried.
_RACE = re.compile(r"already exists|alembic_version|database is locked|duplicate key|Duplicate entry", re.I)


def _created_once(create: Callable[[], Any]) -> Any:
    """``create()``, tried again while another process is creating the same fresh database.

    Processes opening one fresh storage at once (several sweeps on one ``--storage``, or on one
    machine's DIR/study.db) race in Optuna's schema set-up: the losers fail with "table studies
    already exists" or "UNIQUE constraint failed: alembic_version.version_num". Once the winner
    is done the schema is there, and a second try finds and checks it; this works across machines,
    where a lock file beside the database would not (and no lock file is left behind).
    """
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(CREATION_TRIES):
        try:
            return create()
        except (IntegrityError, OperationalError) as exc:
            if attempt == CREATION_TRIES - 1 or not _RACE.search(str(exc)):
                raise  # not (or no longer) a race: storage_errors says what the database said
            time.sleep(CREATION_PAUSE * (1 + attempt))
    raise AssertionError("unreachable")


def _flat_settings(settings: dict) -> dict[str, Any]:
    """A study's settings by the option that sets each, for naming the first difference."""
    caches = settings.get("caches") or []
    return {"CACHE": [c.get("name") for c in caches], "CACHE (fingerprint)": [c.get("fingerprint") for c in caches],
            "--seed": settings.get("seed"), "--monitor": settings.get("monitor", "val_loss"),
            "--class-weight": (settings.get("class_weight") or {}).get("weights") or "none",
            **{f"[sweep] {k}": v for k, v in (settings.get("space") or {}).items()}}


def _sqlite_engine(url: str) -> dict[str, Any]:
    """SQLAlchemy options for a SQLite study: write-ahead log, no fsync per commit.

    A sweep commits once per trial and epoch (Optuna's ``report``); with SQLite's default rollback
    journal each commit waits for the disk, 1.7 ms on an idle machine and 10-30 ms when other jobs
    write. In WAL mode with ``synchronous=NORMAL`` a commit is written without waiting: still
    atomic, and still safe when the process is killed (only a power cut can lose the last commits).
    Every process on the machine shares the study as before; other databases are left as they are.
    """
    if not url.startswith("sqlite:///"):
        return {}
    path = url[len("sqlite:///"):]

    def connect() -> Any:
        import sqlite3

        connection = sqlite3.connect(path, timeout=60.0, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}


def _count(study: Any, states: Sequence[str]) -> int:
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def _ask_round(study: Any, storage: Any, config: SweepConfig, space: SearchSpace,
               caches: dict[str, SweepCache]) -> list[tuple[Any, TrialParams]] | None:
    """Asks for this round's trials: None when N are finished, [] when only others' are missing."""
    from optuna.storages import fail_stale_trials

    adopt_silent_trials(study, storage)  # killed before its first heartbeat: stale after the grace period too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # marked experimental
        fail_stale_trials(study)  # a killed process's trials: FAIL, then queued again with their params
    trials = study.get_trials(deepcopy=False)
    finished = sum(t.state.name in FINISHED for t in trials)
    if finished >= config.trials:
        return None
    running = sum(t.state.name == "RUNNING" for t in trials)
    room = min(space.parallel, config.trials - finished - running)
    asked = []
    has_views = {name: bool(c.views) for name, c in caches.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat ... supposed to be used with Study.optimize"
        for _ in range(max(0, room)):
            trial = study.ask()
            # At once: a trial without any heartbeat is never found stale, so a kill right
            # after the ask would leave it RUNNING for ever.
            storage.record_heartbeat(trial._trial_id)
            if _surplus(study, trial.number, config.trials):
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=trial_state("FAIL"))
                continue
            asked.append((trial, suggest_params(trial, space, has_views)))
    return asked


def _surplus(study: Any, number: int, total: int) -> bool:
    """Whether trial ``number`` lies beyond the first ``total`` live trials (a race between processes)."""
    alive = [t for t in study.get_trials(deepcopy=False)
             if t.number < number and t.state.name != "FAIL" and not t.user_attrs.get("surplus")]
    return len(alive) >= total


def _train_round(study: Any, asked: list[tuple[Any, TrialParams]], setup: SweepSetup,
                 heads: dict[str, Any], space: SearchSpace, config: SweepConfig, running: set[int],
                 reporter: Reporter, start: float,
                 on_trial: Callable[[int, int, float], None] | None) -> int:
    """Trains the asked trials group by group, telling Optuna as each stops; returns how many were told."""
    from headstart.pipeline.training.head_group import BatchedHeads, train_group

    teller = Teller(study, config, setup.objective, running, reporter, start, on_trial)
    groups: dict[tuple, list[tuple[Any, TrialParams]]] = {}
    for trial, params in asked:
        groups.setdefault((params.cache, params.batch_size, params.views), []).append((trial, params))
        running.add(trial._trial_id)
    for (name, _, _), members in groups.items():
        if name not in heads:
            heads[name] = BatchedHeads(setup.caches[name], config.seed, config.jit_compile)
        train_group(setup.caches[name], [p for _, p in members], seed=config.seed, epochs=space.epochs,
                    patience=space.patience, monitor=config.monitor, sample_weights=setup.sample_weights(name),
                    on_epoch=lambda epoch, values, m=members: teller.epoch(m, epoch, values),
                    on_done=lambda i, run, m=members: teller.done(*m[i], run), heads=heads[name])
    return teller.told


@contextlib.contextmanager
def _heartbeats(storage: Any, interval: int) -> Iterator[set[int]]:
    """Records a heartbeat for this process's running trials every ``interval`` seconds.

    ``study.optimize`` does this itself; ask-and-tell does not, and without it no process could
    tell a live trial from one whose process was killed.
    """
    running: set[int] = set()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval / 2):
            for trial_id in list(running):
                with contextlib.suppress(Exception):  # a trial told meanwhile, a busy database
                    storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield running
    finally:
        stop.set()
        thread.join()


def trial_params(trial: Any) -> TrialParams:
    """The TrialParams a finished trial recorded."""
    return params_from_record(trial.user_attrs["result"]["params"])


__all__ = ["SweepResult", "claim_sweep_dir", "run_sweep", "storage_url", "trial_params"]
