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
group in one compiled step (``headstart.pipeline.sweep.trainer``), telling Optuna as each trial stops.
Selection uses validation only: the objective is the trial's best validation loss. The test split is
scored once, when ``DIR/best`` is written by retraining the best trial with ``train-head`` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from headstart.pipeline.config import SweepConfig
from headstart.pipeline.errors import OptionError, RunDirError
from headstart.pipeline.sweep.caches import SweepCache
from headstart.pipeline.sweep.space import SearchSpace, TrialParams, params_from_record, suggest_params

STUDY_NAME = "headstart-sweep"
FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class SweepResult:
    """What ``run_sweep`` produced."""

    out: str
    storage: str
    finished: int
    trained_here: int
    best: dict[str, Any] = field(default_factory=dict)   # the best trial's leaderboard row
    best_test_accuracy: float | None = None
    seconds: float = 0.0
    table: str = ""                                       # the top ten, for the terminal


def validate_sweep_config(config: SweepConfig) -> None:
    """Checks option values before anything is opened.

    Raises:
        OptionError: naming the option at fault.
    """
    if not config.caches:
        raise OptionError("give at least one CACHE")
    if not config.out:
        raise OptionError("--out is required")
    if config.trials < 1:
        raise OptionError(f"--trials must be at least 1, got {config.trials}")
    if config.heartbeat < 1:
        raise OptionError(f"heartbeat must be at least 1 second, got {config.heartbeat}")


def storage_url(config: SweepConfig) -> str:
    """``--storage`` if given, else ``sqlite:///DIR/study.db``."""
    return config.storage or f"sqlite:///{Path(config.out).resolve() / 'study.db'}"


def run_sweep(config: SweepConfig, space: SearchSpace | None = None, *, log: Callable[[str], None] = print,
              on_trial: Callable[[int, int, float], None] | None = None) -> SweepResult:
    """Runs (or resumes, or joins) the sweep until ``config.trials`` trials are finished.

    Args:
        config: caches, output directory, total trials, seed, storage.
        space: the search space (defaults: ``SearchSpace()``).
        log: receives one line per finished trial and status messages.
        on_trial: called as ``on_trial(finished, total, trials_per_second)`` for a progress bar.

    Returns:
        A SweepResult; ``table`` is the top ten for the CLI to print.

    Raises:
        OptionError: bad options, or a study in the storage that was started with other caches or
            another search space. RunDirError: DIR holds something that is not a sweep.
        DataError / StoreError: unusable or mismatched caches (``load_caches``).
    """
    from headstart.pipeline.sweep.caches import load_caches

    validate_sweep_config(config)
    space = space or SearchSpace()
    start = time.perf_counter()
    caches = {c.name: c for c in load_caches(config.caches)}
    out = _prepare_out(Path(config.out), config)
    with _creation_lock(out):
        study, storage = _open_study(config, space, caches)
    trained = 0
    heads: dict[str, Any] = {}  # cache name → its BatchedHeads, traced once for the whole sweep
    with _heartbeats(storage, config.heartbeat) as running:
        while True:
            asked = _ask_round(study, storage, config, space, caches)
            if asked is None:
                break
            if not asked:
                time.sleep(config.heartbeat)  # others (or stale trials) hold the rest; wait for them
                continue
            trained += _train_round(study, asked, caches, heads, space, config, running, log, start, on_trial)
    from headstart.pipeline.sweep.leaderboard import write_outputs

    best = write_outputs(study, out, caches, space, config, log)
    result = SweepResult(out=str(out), storage=storage_url(config), finished=_count(study, FINISHED),
                         trained_here=trained, seconds=time.perf_counter() - start, **best)
    return result


def _prepare_out(out: Path, config: SweepConfig) -> Path:
    ours = {"study.db", "leaderboard.csv", "sweep.png", "best", "study.db-journal", "study.db-wal", "study.db-shm",
            ".study.lock"}
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and config.overwrite:
        for name in ours:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".best-"))
        if foreign:
            raise RunDirError(f"--out {out}: holds {foreign[0]}, which is not a sweep's; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _creation_lock(out: Path) -> Iterator[None]:
    """Serialises opening the study among processes on this machine.

    Two processes creating the same fresh database at once race in Optuna's schema set-up (one
    fails with "UNIQUE constraint failed: alembic_version"); once it exists, sharing is Optuna's.
    """
    import fcntl

    with open(out / ".study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _open_study(config: SweepConfig, space: SearchSpace, caches: dict[str, SweepCache]) -> tuple[Any, Any]:
    """The study and its RDBStorage (whose public ``record_heartbeat`` the heartbeat thread calls)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RetryHeartbeatStaleTrialCallback is marked experimental
        storage = RDBStorage(storage_url(config), engine_kwargs=_sqlite_engine(storage_url(config)),
                             heartbeat_interval=config.heartbeat,
                             grace_period=2 * config.heartbeat,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    # constant_liar: trials asked in one round (or by other processes) and still running count as
    # bad results for the sampler, so one round does not ask for the same region again and again.
    # The seed is offset by the trials already there, so a process joining a study draws anew.
    sampler = optuna.samplers.TPESampler(seed=config.seed, constant_liar=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=2) if space.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="minimize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    already = len(study.get_trials(deepcopy=False))
    if already:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.TPESampler(seed=config.seed + already, constant_liar=True))
    settings = {"caches": [{"name": c.name, "fingerprint": c.info["fingerprint"]} for c in caches.values()],
                "space": space.to_dict(), "seed": config.seed}
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif recorded != settings:
        what = next(k for k in settings if settings[k] != recorded.get(k))
        raise OptionError(f"{storage_url(config)}: the study was started with other {what}; give the same "
                          f"CACHEs and [sweep] settings to resume, or another --out (or --overwrite) to start anew")
    return study, storage


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
                study.set_trial_user_attr(trial._trial_id, "surplus", True)
                study.tell(trial, state=_state("FAIL"))
                continue
            asked.append((trial, suggest_params(trial, space, has_views)))
    return asked


def _surplus(study: Any, number: int, total: int) -> bool:
    """Whether trial ``number`` lies beyond the first ``total`` live trials (a race between processes)."""
    alive = [t for t in study.get_trials(deepcopy=False)
             if t.number < number and t.state.name != "FAIL" and not t.user_attrs.get("surplus")]
    return len(alive) >= total


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def _states(names: Sequence[str]) -> tuple:
    return tuple(_state(name) for name in names)


def _train_round(study: Any, asked: list[tuple[Any, TrialParams]], caches: dict[str, SweepCache],
                 heads: dict[str, Any], space: SearchSpace, config: SweepConfig, running: set[int],
                 log: Callable[[str], None], start: float,
                 on_trial: Callable[[int, int, float], None] | None) -> int:
    """Trains the asked trials group by group, telling Optuna as each stops; returns how many were told."""
    from headstart.pipeline.sweep.trainer import BatchedHeads, train_group

    teller = _Teller(study, config, running, log, start, on_trial)
    groups: dict[tuple, list[tuple[Any, TrialParams]]] = {}
    for trial, params in asked:
        groups.setdefault((params.cache, params.batch_size, params.views), []).append((trial, params))
        running.add(trial._trial_id)
    for (name, _, _), members in groups.items():
        if name not in heads:
            heads[name] = BatchedHeads(caches[name], config.seed, config.jit_compile)
        train_group(caches[name], [p for _, p in members], seed=config.seed, epochs=space.epochs,
                    patience=space.patience, on_epoch=lambda epoch, values, m=members: teller.epoch(m, epoch, values),
                    on_done=lambda i, run, m=members: teller.done(*m[i], run), heads=heads[name])
    return teller.told


class _Teller:
    """Reports a group's epochs to Optuna, prunes with the study's pruner, and tells finished trials.

    The study is read once per epoch of a group and once per told trial (``PrunerView``), never once
    per trial and epoch. A trial another process declared stale (its heartbeat was late: a starved
    CPU) is already FAIL and queued again; this process then drops it instead of telling it twice.
    """

    def __init__(self, study: Any, config: SweepConfig, running: set[int], log: Callable[[str], None],
                 start: float, on_trial: Callable[[int, int, float], None] | None) -> None:
        from headstart.pipeline.sweep.pruning import PrunerView

        self.study, self.config, self.running, self.log = study, config, running, log
        self.start, self.on_trial = start, on_trial
        self.view = PrunerView(study, max_age=config.heartbeat)
        self.reported: dict[int, dict[int, float]] = {}   # trial number → step → value
        self.lost: set[int] = set()
        self.told = 0

    def epoch(self, members: list[tuple[Any, TrialParams]], epoch: int, values: dict[int, float]) -> set[int]:
        """Reports ``values`` (index → val_loss) at ``epoch``; returns the indices to stop."""
        from optuna.exceptions import UpdateFinishedTrialError

        stop = set()
        for i, val_loss in values.items():
            trial = members[i][0]
            try:
                trial.report(val_loss, epoch)
            except UpdateFinishedTrialError:
                self.lost.add(trial.number)  # stop training it: its rerun is someone else's now
                stop.add(i)
                continue
            self.reported.setdefault(trial.number, {})[epoch] = val_loss
            if self.view.should_prune(trial, self.reported[trial.number]):
                stop.add(i)
        return stop

    def done(self, trial: Any, params: TrialParams, run: Any) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        self.running.discard(trial._trial_id)
        try:
            if trial.number in self.lost:
                raise UpdateFinishedTrialError(f"trial {trial.number}")
            _tell(self.study, trial, params, run)
        except UpdateFinishedTrialError:
            self.log(f"trial {trial.number:>3} was declared stale by another process (late heartbeat) and "
                     "queued again; dropped here")
            return
        self.told += 1
        if self.config.tensorboard:
            from headstart.pipeline.report.tensorboard_logs import write_history

            write_history(run.history, Path(self.config.tensorboard) / "trials" / f"trial_{trial.number:04d}")
        self.view.changed()
        trials = self.view.get_trials(states=_states(FINISHED))
        self.log(_trial_line(trials, trial.number, params, run, len(trials), self.config.trials))
        if self.on_trial is not None:
            self.on_trial(len(trials), self.config.trials, len(trials) / max(time.perf_counter() - self.start, 1e-9))


def _tell(study: Any, trial: Any, params: TrialParams, run: Any) -> None:
    record = {
        "params": dataclasses.asdict(params), "best_epoch": run.best_epoch, "epochs": run.epochs_run,
        "stopped": run.stopped, "seconds": run.seconds, "history": run.history,
        "validation": {k: run.validation[k] for k in ("loss", "accuracy", "balanced_accuracy", "macro_f1")},
    }
    trial.set_user_attr("result", record)
    if run.stopped == "pruned":
        study.tell(trial, state=_state("PRUNED"))
    else:
        study.tell(trial, run.validation["loss"])


def _trial_line(trials: list, number: int, params: TrialParams, run: Any, finished: int, total: int) -> str:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    best_text = f"best #{best.number} {best.value:.4f}" if best else "best -"  # none complete yet: all pruned
    v = run.validation
    return (f"trial {number:>3} {params.cache} {run.stopped:<6} val_loss {v['loss']:.4f} "
            f"val_acc {v['accuracy']:.4f}  epochs {run.epochs_run}  {run.seconds:.1f} s  | {best_text}  "
            f"[{finished}/{total}]")


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


__all__ = ["SweepResult", "run_sweep", "storage_url", "trial_params", "validate_sweep_config"]
