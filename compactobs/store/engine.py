"""Database URLs and engines: where the store lives, how it is opened, and what a failure means to a user."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from compactobs.store.errors import StoreError

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = [
    "ENV_DATABASE_URL",
    "data_dir",
    "default_database_url",
    "display_url",
    "explain_error",
    "is_sqlite",
    "make_engine",
    "parse_url",
    "private_dir",
    "sqlite_path",
]

ENV_DATABASE_URL: Final = "COMPACTOBS_DATABASE_URL"
DEFAULT_BUSY_TIMEOUT_S: Final = 10.0
"""How long an SQLite writer waits for another writer's lock before the batch goes to the spool."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 5
"""PostgreSQL connect timeout unless the URL sets one."""
EXPORT_CONNECT_TIMEOUT_S: Final = 2
"""The exporter's: while it waits on a host that does not answer, spans pile up in the processor's queue
(libpq's minimum is 2 s)."""

_EXAMPLES = "e.g. sqlite:////path/to/compactobs.db or postgresql+psycopg://user@host:5432/dbname"


def data_dir() -> Path:
    """compactobs' data directory: `$XDG_DATA_HOME/compactobs`, else `~/.local/share/compactobs`."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says to ignore a relative value.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "compactobs"


def default_database_url() -> str:
    """`COMPACTOBS_DATABASE_URL`, else the embedded SQLite file in the data directory."""
    return os.environ.get(ENV_DATABASE_URL) or f"sqlite:///{data_dir() / 'compactobs.db'}"


def _mask_raw(url: str) -> str:
    """Hide a password in a URL string that may not even parse."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def display_url(url: URL | str) -> str:
    """The URL as it may be shown or logged: password hidden."""
    if isinstance(url, str):
        return _mask_raw(url)
    return url.render_as_string(hide_password=True)


_PG_DRIVERS: Final = ("psycopg", "psycopg2")
"""The PostgreSQL drivers compactobs writes through, in order of preference."""


def _installed_pg_driver() -> str | None:
    """The preferred PostgreSQL driver that imports here, if any."""
    import importlib.util

    for driver in _PG_DRIVERS:
        if importlib.util.find_spec(driver) is not None:
            return driver
    return None


def _looks_like_path(text: str) -> bool:
    """A plain filesystem path (`store.db`, `./data/obs.sqlite`, `/var/lib/x.db`, `~/obs.db`), not a URL.
    A bare word without a directory or a suffix (`notaurl`) is neither: a mistake, reported as one."""
    if "://" in text or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text):
        return False
    return "/" in text or text.startswith(("~", ".")) or Path(text).suffix != ""


def parse_url(url: URL | str) -> URL:
    """A database URL compactobs can use. Raises StoreError (malformed, unsupported, driver missing).

    A plain filesystem path is an SQLite file. `postgresql://` and `postgres://` mean whichever supported
    driver is installed, psycopg 3 first, else psycopg2; `postgresql+psycopg://` and
    `postgresql+psycopg2://` name one.
    """
    if isinstance(url, URL):
        parsed = url
    else:
        text = url.strip()
        if text and _looks_like_path(text):
            return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
        try:
            parsed = make_url(text)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise StoreError(f"malformed database URL {_mask_raw(url)!r}: use {_EXAMPLES}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        driver = _installed_pg_driver()
        if driver is None:
            raise StoreError(
                f"no PostgreSQL driver is installed for {display_url(parsed)}: "
                "pip install 'compactobs[postgres]'"
            )
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"unsupported database {backend!r} in {display_url(parsed)}: compactobs stores to SQLite or "
            f"PostgreSQL, {_EXAMPLES}"
        )
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise StoreError(
            f"unknown database driver {parsed.drivername!r}: use sqlite:// or postgresql+psycopg://"
        ) from None
    if getattr(dialect, "is_async", False):
        raise StoreError(f"{parsed.drivername!r} is an asyncio driver: use postgresql+psycopg:// instead")
    if backend == "postgresql" and parsed.get_driver_name() not in _PG_DRIVERS:
        raise StoreError(
            f"compactobs cannot write through the PostgreSQL driver {parsed.get_driver_name()!r}: use "
            "postgresql+psycopg:// (psycopg 3) or postgresql+psycopg2://"
        )
    if backend == "sqlite" and parsed.get_driver_name() != "pysqlite":
        raise StoreError(
            f"compactobs cannot write through the SQLite driver {parsed.get_driver_name()!r}: use sqlite:///PATH"
        )
    try:
        dialect.import_dbapi()
    except ImportError:
        if backend == "postgresql":
            hint = (
                "pip install 'compactobs[postgres]'"
                if parsed.get_driver_name() == "psycopg"
                else "pip install psycopg2-binary, or use postgresql+psycopg://"
            )
            raise StoreError(
                f"the PostgreSQL driver for {parsed.drivername!r} is not installed: {hint}"
            ) from None
        raise StoreError(f"the driver for {parsed.drivername!r} is not installed") from None
    return parsed


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> Path | None:
    """The file of an SQLite URL, absolute; None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    return Path(database).expanduser().absolute()


def private_dir(path: Path) -> Path:
    """Create `path` and each missing parent readable by its owner only (0700, as the XDG base directory
    spec asks of a data directory it creates). An existing directory keeps its mode: the user chose it.
    Raises OSError (a parent that is a file, permission denied, a read-only file system)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
        path = directory
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def _create_private_file(path: Path) -> None:
    """An SQLite file made by compactobs is the owner's only (0600): it holds what the team spends.
    SQLite gives its -wal and -shm files the same mode."""
    try:
        private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as err:
        raise StoreError(
            f"cannot create the SQLite file {path}: {err.strerror}: point --db or {ENV_DATABASE_URL} at a "
            "writable place"
        ) from None


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
    # SQLAlchemy's documented pysqlite recipe: the driver's own implicit BEGIN is switched off and the
    # "begin" listener issues one, so writers can take the write lock up front (BEGIN IMMEDIATE).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() != "wal":
            # WAL: readers (reports, Grafana) never block the writer, and writers queue on the busy timeout.
            cursor.execute("PRAGMA journal_mode=WAL")
        # Durable across an application crash; only an OS crash can drop the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoint every ~40 MB of WAL rather than 4 MB: each checkpoint costs two fsyncs, and under a
        # steady stream of batches fewer, larger ones measured ~15% more rows/s. The limit gives the disk
        # space back once a checkpoint has run.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA journal_size_limit=67108864")
    finally:
        cursor.close()


def _begin_immediate(connection: Connection) -> None:
    # Take the write lock when the transaction starts: a deferred transaction that reads first can fail at
    # once with SQLITE_BUSY when it later writes, without waiting on the busy timeout.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _begin_deferred(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def make_engine(
    url: URL | str | None = None,
    *,
    writer: bool = False,
    create: bool = True,
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S,
    statement_timeout_s: float | None = None,
) -> Engine:
    """An Engine for the store. Raises StoreError for a bad URL or a missing driver; never connects.

    `writer`: transactions take SQLite's write lock when they begin. `create`: make a missing SQLite file
    (and its directory) with private modes; without it, SQLite would make it with the umask's. The
    timeouts: SQLite's wait for another writer's lock; PostgreSQL's to connect (unless the URL sets one)
    and, when `statement_timeout_s` is given, PostgreSQL's `statement_timeout` and `lock_timeout`, so the
    server gives up on a statement that waits longer (a table lock held elsewhere, a stuck server process).
    """
    parsed = parse_url(url if url is not None else default_database_url())
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path is not None and create:
            _create_private_file(path)
        engine = create_engine(
            parsed,
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _begin_immediate if writer else _begin_deferred)
        return engine
    connect_args: dict[str, object] = {}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = connect_timeout_s
    if statement_timeout_s is not None:
        millis = max(1, int(statement_timeout_s * 1000))
        # libpq's `options` (both drivers pass it through), added to any the URL carries (a search_path).
        given = str(parsed.query.get("options", "")).strip()
        bounds = f"-c statement_timeout={millis} -c lock_timeout={millis}"
        connect_args["options"] = f"{given} {bounds}".strip()
    # pre_ping: after an outage the pool holds dead connections; test them before a batch uses one.
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def explain_error(err: BaseException, url: URL) -> StoreError:
    """A driver or connection error as one line saying what to do. Never raises."""
    if isinstance(err, StoreError):
        return err
    cause = getattr(err, "orig", None) or err
    text = _first_line(cause)
    low = str(cause).lower()
    if is_sqlite(url):
        path = sqlite_path(url) or ":memory:"
        if "locked" in low or "busy" in low:
            return StoreError(f"the SQLite file {path} is locked by another writer: retry in a moment")
        if "unable to open" in low:
            return StoreError(
                f"cannot open the SQLite file {path}: check that its directory exists and is writable"
            )
        if "not a database" in low or "malformed" in low:
            return StoreError(f"{path} is not a usable SQLite database ({text}): point --db at another file")
        if "readonly" in low or "read-only" in low:
            return StoreError(f"the SQLite file {path} is read-only: fix its permissions or use another file")
        return StoreError(f"SQLite error on {path}: {text}")
    host = f"{url.host or 'localhost'}:{url.port or 5432}"
    user = url.username or os.environ.get("PGUSER") or "the current user"
    if "connection refused" in low:
        return StoreError(
            f"cannot connect to PostgreSQL at {host} (connection refused): start the server, or fix the URL "
            f"(--db or {ENV_DATABASE_URL})"
        )
    if "password" in low or "authentication" in low or ("role" in low and "does not exist" in low):
        return StoreError(
            f"PostgreSQL at {host} refused the credentials of {user}: fix the user and password in the URL"
        )
    if "database" in low and "does not exist" in low:
        return StoreError(
            f"database {url.database!r} does not exist on {host}: create it (createdb {url.database}) "
            "or fix the URL"
        )
    if "translate host name" in low or "name or service not known" in low or "nodename nor servname" in low:
        return StoreError(f"unknown host {url.host!r} in the database URL: fix the URL")
    if "timeout" in low or "timed out" in low:
        return StoreError(f"PostgreSQL at {host} did not answer in time: check the host, port and network")
    return StoreError(f"PostgreSQL at {host}: {text}")
