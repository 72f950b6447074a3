"""The sweep's study storage (``--storage URL``, else ``sqlite:///DIR/study.db``), checked before use.

Every problem of the storage is one line naming it, never a SQLAlchemy traceback: a URL that does
not parse, an unknown database, a driver that is not installed, an SQLite path whose folder is
missing, that is a device or a folder (``sqlite:////dev/null`` used to create ``/dev/null-journal``
beside the device), a file that is not an SQLite database (a text file, a damaged ``study.db``),
and whatever the database says when the study is opened.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from headstart.features.regular_file import not_regular_reason
from headstart.pipeline.errors import OptionError, OutputError, environment_reason

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_storage_url(url: str, where: str) -> None:
    """Checks a storage URL without connecting: syntax, database kind, driver, an SQLite path.

    Args:
        url: the SQLAlchemy URL.
        where: how to name it in messages, e.g. "--storage sqlite:///x.db".

    Raises:
        OptionError: naming ``where`` and the problem.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError: first
        raise OptionError(f"{where}: unknown database '{url.split(':', 1)[0]}' "
                          f"(e.g. sqlite, postgresql, mysql)") from None
    except ArgumentError:
        raise OptionError(f"{where}: not a database URL (e.g. sqlite:///study.db or "
                          f"postgresql://user@host/db)") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise OptionError(f"{where}: its driver is not installed ({exc}); pip install it, "
                          f"or use sqlite:///PATH") from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database, where)


def _check_sqlite_path(database: str | None, where: str) -> None:
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise OptionError(f"{where}: a study in memory cannot be resumed or shared; give a file, "
                          f"e.g. sqlite:///study.db")
    path = Path(database).expanduser()
    if path.exists():
        reason = not_regular_reason(path)
        if reason:
            raise OptionError(f"{where}: {path} is {reason}; give a database file")
    elif not path.parent.is_dir():
        raise OptionError(f"{where}: folder {path.parent} does not exist")


def check_sqlite_file(url: str, where: str, remedy: str) -> None:
    """Refuses an existing SQLite file that is not a database, before SQLite touches it.

    Args:
        url: the SQLAlchemy URL (other databases pass unchecked).
        where: how to name the storage in messages.
        remedy: what the user can do about a damaged file.

    Raises:
        OptionError: naming ``where``.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    try:
        with open(Path(parsed.database).expanduser(), "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OptionError(f"{where}: cannot read the study ({exc.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise OptionError(f"{where}: not an SQLite database (damaged, or another kind of file); {remedy}")


@contextlib.contextmanager
def storage_errors(where: str) -> Iterator[None]:
    """Turns what the database says while the study is opened into one ``OptionError`` line.

    SQLAlchemy's errors, Optuna's storage errors, and the RuntimeError Optuna raises for a database
    whose tables it does not recognise (another program's, or another Optuna's schema).
    """
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, StorageInternalError, RuntimeError) as exc:
        if environment_reason(exc):  # a full or read-only disk is the machine's failure: exit 1
            raise OutputError(f"{where}: cannot write the study ({environment_reason(exc)})") from None
        reason = getattr(exc, "orig", None) or exc
        first = (str(reason).strip().splitlines() or [type(reason).__name__])[0]
        raise OptionError(f"{where}: cannot open the study ({first})") from None


@contextlib.contextmanager
def storage_write_errors(where: str) -> Iterator[None]:
    """While trials run: a database that fills the disk or turns read-only is one ``OutputError``
    line naming it (exit 1), not Optuna's ``StorageInternalError`` traceback. What was committed
    stays; a rerun with more space resumes the study.
    """
    try:
        yield
    except Exception as exc:
        reason = environment_reason(exc)
        if reason is None or isinstance(exc, OutputError):
            raise
        raise OutputError(f"{where}: cannot write the study ({reason}); free some space and run the same "
                          f"command again to resume") from None
