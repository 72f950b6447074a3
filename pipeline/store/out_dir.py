"""``--out``: the one policy for a directory a command writes, and the lock that keeps it to one writer.

Every command that writes a directory (``run``, ``train-head``, ``finetune``, ``sweep``, ``diagnose``;
``extract-features`` writes one file and its cache has its own lock) claims it the same way:

1. **Lock.** ``OutDir.locked`` takes an exclusive ``flock`` on ``DIR/.headstart.lock`` (created with
   the directory when it is missing) and writes the holder's PID and command into it. The operating
   system releases the lock when the process ends, however it ends (SIGKILL included), so a stale
   file never blocks anyone. A second writer is refused at once in one line naming the holder
   (``RunDirBusyError``, exit code 75, EX_TEMPFAIL: try again once the other has finished). Sweep
   processes that share one study take the lock shared (``shared=True``): they cooperate, and only
   an exclusive writer (``sweep --overwrite`` or any other command) is kept out. The lock file is
   removed when the lock is released, and a directory the claim created is removed again when the
   command is refused before writing anything into it.
2. **Policy** (``settle``), decided under the lock from what the directory records of the options
   it was made with:

   - missing or empty: a fresh start; so is a directory holding only the files that record how it
     was started (``record_files``: ``run``'s config.toml) once they read as this command's, because
     nothing was computed there (a first run that failed, e.g. on weights that would not load, never
     blocks the corrected command);
   - ``--overwrite``: replace (nothing is deleted up front; the command writes over its own files);
   - made with the same options: finished → ``"reuse"`` (the command says "already done" and
     returns the recorded result), unfinished → ``"resume"`` (the command continues or redoes it);
   - anything else (other options, another command's files, files that are not headstart's):
     refused with ``RunDirError`` naming the first differing option with both values (or, with
     ``describe``, the differences in the command's own words).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping

from headstart.pipeline.errors import OutputError, RunDirBusyError, RunDirError
from headstart.pipeline.store.provenance import utc_timestamp
from headstart.pipeline.store.rundir import RunDir

LOCK_FILE = ".headstart.lock"
#: What ``settle`` decides.
FRESH, REUSE, RESUME, REPLACE = "fresh", "reuse", "resume", "replace"
#: Words the differences between a directory's recorded options and this call's (None: they agree).
Describe = Callable[[Mapping[str, Any], Mapping[str, Any]], "str | None"]


def is_empty(path: str | os.PathLike, besides: Collection[str] = ()) -> bool:
    """Whether a directory is missing or holds nothing but the lock file (and the files named ``besides``)."""
    path = Path(path)
    return not path.is_dir() or all(p.name == LOCK_FILE or p.name in besides for p in path.iterdir())


def check_out_path(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuses an output path that is a file (before any work, before TensorFlow starts).

    Raises:
        RunDirError: the path exists and is not a directory.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path} is a file; give a directory for the run")
    return path


def first_difference(recorded: Mapping[str, Any], wanted: Mapping[str, Any],
                     label: Callable[[str], str] = str) -> str | None:
    """``"LABEL OLD there, NEW now"`` for the first key (in ``wanted``'s order, then ``recorded``'s)
    whose values differ; None when they agree. Lists and tuples of the same items are equal."""
    for key in dict.fromkeys([*wanted, *recorded]):
        old, new = _plain(recorded.get(key)), _plain(wanted.get(key))
        if old != new:
            return f"{label(key)} {old!r} there, {new!r} now"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def settle(path: str | os.PathLike, *, what: str, wanted: Mapping[str, Any], recorded: Mapping[str, Any] | None,
           finished: bool, overwrite: bool, label: Callable[[str], str] = str, option: str = "--out",
           foreign: str | None = None, overwrite_hint: str = "pass --overwrite to replace it",
           record_files: Collection[str] = (), describe: Describe | None = None) -> str:
    """Decides what to do with an output directory (see the module docstring).

    Args:
        path: the directory (call under ``OutDir.locked``).
        what: what the command makes, for messages ("train-head run", "diagnose report").
        wanted: the options of this call that shape the result, by name.
        recorded: the same options as the directory recorded them; None when it records none
            (not such a directory, or one too damaged to say).
        finished: whether the directory holds a finished result.
        overwrite: ``--overwrite`` was given.
        label: how a key is named in the refusal (e.g. "--epochs").
        option: the option that named the directory.
        foreign: how the refusal of a directory with no record says so (default "holds no WHAT").
        overwrite_hint: what ``--overwrite`` would do, for the refusal.
        record_files: names of files that only record how the directory was started; holding
            nothing else (and a record read back), it computed nothing and is a fresh start.
        describe: words the differences of (recorded, wanted), None when they agree; default:
            ``first_difference`` with ``label``.

    Returns:
        FRESH, REUSE, RESUME or REPLACE.

    Raises:
        RunDirError: a non-empty directory made with other options, or holding no ``command`` run.
    """
    path = check_out_path(path, option)
    if is_empty(path) or (recorded is not None and record_files and is_empty(path, besides=record_files)):
        return FRESH
    if overwrite:
        return REPLACE
    if recorded is None:
        raise RunDirError(f"{option} {_shown(path)} is not empty and {foreign or 'holds no ' + what}; choose another "
                          f"{option}, or pass --overwrite to replace its files")
    difference = describe(recorded, wanted) if describe else first_difference(recorded, wanted, label)
    if difference:
        raise RunDirError(f"{option} {_shown(path)} holds a {what} with another configuration ({difference}); "
                          f"{overwrite_hint}, or choose another {option}")
    return REUSE if finished else RESUME


def _shown(path: Path) -> str:
    # Paths below the working directory print relative to it, as the user typed them.
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


class OutDir:
    """An output directory claimed by one command (see the module docstring).

    Args:
        path: the directory.
        command: the command writing it, named to a second writer.
        option: the option that named it, for messages.
    """

    def __init__(self, path: str | os.PathLike, command: str, option: str = "--out"):
        self.path, self.command, self.option = Path(path), command, option

    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[Path]:
        """Holds the directory's lock for the block (creating the directory when missing).

        Raises:
            RunDirBusyError: another process holds it (naming its PID and command).
            RunDirError: the path is a file, or the directory cannot be created.
            OutputError: the directory cannot be written.
        """
        check_out_path(self.path, self.option)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.option} {self.path}: cannot create the directory ({exc.strerror})") from None
        fd = None
        try:
            fd = self._acquire(shared)
            yield self.path
        finally:
            self._release(fd)
            if created and is_empty(self.path):  # refused, or done before writing anything: leave nothing
                with contextlib.suppress(OSError):
                    os.rmdir(self.path)

    def _acquire(self, shared: bool) -> int:
        lock = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # a read-only or forbidden directory fails before any work
                raise OutputError(f"{self.option} {self.path}: cannot write there ({exc.strerror})") from None
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirBusyError(f"{self.option} {self.path} is in use by {_holder(lock)}; wait for it to "
                                      f"finish, or choose another {self.option}") from None
            # The holder before us may have removed the file between our open and our lock; a lock
            # on a removed file guards nothing, so take the one now at the path.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                    if not shared or os.fstat(fd).st_size == 0:
                        _write_holder(fd, self.command)
                    return fd
            os.close(fd)

    def _release(self, fd: int | None) -> None:
        if fd is None:
            return
        try:
            # Removed while still locked, so no other process can lock the old file after us.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # shared holders: only the last one removes it
                os.unlink(self.path / LOCK_FILE)
        finally:
            os.close(fd)


def _write_holder(fd: int, command: str) -> None:
    holder = {"pid": os.getpid(), "command": command, "argv": sys.argv[1:],
              "since": utc_timestamp()}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)


def _holder(lock: Path) -> str:
    """"PID 1234 (headstart train-head, since …)" from the lock file, as far as it says."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or not holder.get("pid"):
        return "another process"
    return f"PID {holder['pid']} (headstart {holder.get('command', '?')}, since {holder.get('since', '?')})"


def option_label(section: str) -> Callable[[str], str]:
    """How a refusal names a key of ``section``: its flag ("--epochs"), its argument ("FEATURES"), else
    the key itself (an input's identity, e.g. "FEATURES (fingerprint)")."""
    from headstart.pipeline.options.facts import FACTS, flag_of
    from headstart.pipeline.options.checks import POSITIONALS

    positional = dict([POSITIONALS[section]]) if section in POSITIONALS else {}
    return lambda key: flag_of(section, key) if key in FACTS.get(section, {}) else positional.get(key, key)


@contextlib.contextmanager
def claim(path: str | os.PathLike, *, command: str, what: str, section: str | None, wanted: Mapping[str, Any],
          read_recorded: Callable[[], tuple[Mapping[str, Any] | None, bool]], overwrite: bool, shared: bool = False,
          resume_free: tuple[str, ...] = (), label: Callable[[str], str] | None = None,
          foreign: str | None = None, overwrite_hint: str = "pass --overwrite to replace it",
          record_files: Collection[str] = (), describe: Describe | None = None) -> Iterator[str]:
    """Holds ``path`` for ``command`` (``OutDir.locked``) and decides, under the lock, what to do with it.

    Args:
        path: ``--out``.
        command, what: the command, and what it makes ("train-head run"), for messages.
        section: the option table's section: its ``shapes_result=False`` options are left out of
            the comparison, and its flags name the keys (unless ``label``); None: ``wanted`` and
            the record hold only what counts, named as they should be shown.
        wanted: this call's options (and input identities) by key.
        read_recorded: returns (the same as the directory recorded them, or None; whether it holds
            a finished result), read under the lock.
        overwrite, shared, foreign, overwrite_hint, record_files, describe: as ``settle`` and
            ``OutDir.locked`` (``describe`` sees the options left after ``resume_free``).
        resume_free: options an unfinished result may be resumed with other values of.

    Yields:
        FRESH, REUSE, RESUME or REPLACE.
    """
    from headstart.pipeline.options.facts import result_free

    with OutDir(path, command).locked(shared=shared):
        recorded, finished = read_recorded()
        free = (result_free(section) if section else set()) | (set() if finished else set(resume_free))
        yield settle(path, what=what, wanted=_without(wanted, free),
                     recorded=None if recorded is None else _without(recorded, free), finished=finished,
                     overwrite=overwrite, label=label or (option_label(section) if section else str),
                     foreign=foreign, overwrite_hint=overwrite_hint, record_files=record_files, describe=describe)


def _without(values: Mapping[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in keys}


@contextlib.contextmanager
def claim_run_dir(path: str | os.PathLike, *, section: str, command: str, resolved: Mapping[str, Any],
                  overwrite: bool, inputs: Mapping[str, Any] | None = None,
                  recorded_inputs: Callable[[RunDir], Mapping[str, Any]] | None = None,
                  resume_free: tuple[str, ...] = (), chief: bool = True) -> Iterator[tuple[str, RunDir]]:
    """``claim`` for a training command's run directory (``RunDir``).

    The options the directory recorded (a finished run's "config", an unfinished finetune's progress
    record) against ``resolved``, plus the ``inputs`` (e.g. the cache's fingerprint) against what
    ``recorded_inputs`` reads from the directory.

    Args:
        path: ``--out``.
        section: the option table's section ("head", "finetune").
        command: the command, for messages.
        resolved: this call's options as run.json's "config" records them.
        overwrite: ``--overwrite``.
        inputs: identities of this call's inputs, by name.
        recorded_inputs: the same, read from the directory.
        resume_free: options an unfinished run may be resumed with other values of.
        chief: False for a multi-worker task that is not the chief (it writes elsewhere: no claim).

    Yields:
        (FRESH | REUSE | RESUME | REPLACE, the RunDir). Under REPLACE, run.json is removed first,
        so a crash before the end leaves a directory marked unfinished.

    Raises:
        RunDirBusyError, RunDirError: as ``OutDir.locked`` and ``settle``.
    """
    run = RunDir(path)
    if not chief:
        yield FRESH, run
        return

    def read_recorded() -> tuple[Mapping[str, Any] | None, bool]:
        recorded = run.recorded_options(section)  # the sections are the kinds: "head", "finetune"
        if recorded is not None and recorded_inputs is not None:
            recorded = {**recorded, **recorded_inputs(run)}
        return recorded, run.complete

    with claim(path, command=command, what=f"{command} run", section=section, wanted={**resolved, **(inputs or {})},
               read_recorded=read_recorded, overwrite=overwrite, resume_free=resume_free) as state:
        if state == REPLACE:
            run.run_json.unlink(missing_ok=True)
        yield state, run
