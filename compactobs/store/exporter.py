"""SqlSpanExporter: the SQL store as an OpenTelemetry span exporter, behind StoreSpanProcessor.

A batch is mapped to rows, then either committed in one transaction or, when the database is unreachable,
locked, or not at this code's schema, appended to the on-disk spool. While rows wait in the spool, new
batches queue behind them, so replay keeps the order they were exported in. The database is tried again
after a growing pause (0.5 s doubling to 30 s), and at every flush; `shutdown` flushes too.

Every wait on the database is bounded (`write_timeout_s`: SQLite's busy timeout, PostgreSQL's statement
and lock timeouts; a watchdog for a PostgreSQL server that stops answering): a write that exceeds its
bound is an outage like any other, and its rows are spooled.

Nothing here raises into the caller: the processor runs it on its own thread, and problems are logged
once per outage, as the one-line StoreError message that says what to do.

What a hard kill (SIGKILL) can lose is what only memory holds: the spans queued in the processor (it
exports as soon as a batch of 2,048 spans is queued, and at least every second) and the batch whose
transaction the kill cuts. Committed and spooled rows survive; what is stored has no holes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from sqlalchemy import URL, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from compactobs.errors import CompactobsError
from compactobs.store.engine import (
    EXPORT_CONNECT_TIMEOUT_S,
    data_dir,
    default_database_url,
    display_url,
    explain_error,
    is_sqlite,
    make_engine,
    parse_url,
    sqlite_path,
)
from compactobs.store.errors import StoreError
from compactobs.store.mapping import Row, RowMapper, group_by_call, sanitize
from compactobs.store.models import calls, iterations
from compactobs.store.processor import (
    DEFAULT_MAX_EXPORT_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SCHEDULE_DELAY_MS,
    StoreSpanProcessor,
)
from compactobs.store.schema import ensure_schema, head_revision
from compactobs.store.spool import (
    ENV_SPOOL_DIR,
    ENV_SPOOL_MAX_BYTES,
    Spool,
    spool_key,
    spool_max_bytes,
    unwritable,
)
from compactobs.store.watchdog import SocketWatchdog
from compactobs.store.writer import supersede, writer_for
from compactobs.untrusted import escape

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import DBAPIModule

__all__ = [
    "DEFAULT_MAX_EXPORT_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_SCHEDULE_DELAY_MS",
    "DEFAULT_WRITE_TIMEOUT_S",
    "ENV_SPOOL_DIR",
    "ENV_SPOOL_MAX_BYTES",
    "ExporterStats",
    "SqlSpanExporter",
    "StoreSpanProcessor",
    "install",
    "shutdown_all",
    "spool_for",
    "spool_root",
]

log = logging.getLogger("compactobs.store")

RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
REPLAY_BUDGET_S: Final = 2.0
"""How long one export may spend replaying the spool before it returns to the processor's queue."""
RESCAN_S: Final = 30.0
"""How often a healthy exporter looks for segments left by a process that died."""
DEFAULT_WRITE_TIMEOUT_S: Final = 2.0
"""How long one write may wait on the database before its rows go to the spool: SQLite's busy timeout,
PostgreSQL's statement and lock timeouts. A healthy batch takes a few tens of milliseconds; the processor's
queue (8,192 spans) holds about 2 s of 1,000 calls/s, and what would overflow it goes to the spool too."""


class _Unavailable(CompactobsError):
    """The database cannot take rows now (connection, lock, schema): they go to the spool."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _transient(err: BaseException, dbapi: DBAPIModule) -> bool:
    """A failure a later retry can cure: connection lost or refused, database locked, pool exhausted.
    `err` may come from SQLAlchemy or, on the row writers' raw connection, from the driver itself."""
    if isinstance(err, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    if isinstance(err, DBAPIError):
        return err.connection_invalidated
    kinds = [getattr(dbapi, "OperationalError", None)]
    if getattr(dbapi, "__name__", "") != "sqlite3":
        # sqlite3 (Python 3.10) raises InterfaceError for a value it cannot bind: that is the row's fault,
        # and retrying it would hold every later row behind it. For psycopg it means a lost connection.
        kinds.append(getattr(dbapi, "InterfaceError", None))
    return isinstance(err, tuple(kind for kind in kinds if kind is not None))


def _spool(
    url: URL | None,
    shown: str,
    spool_dir: str | os.PathLike[str] | None,
    max_bytes: int | None = None,
) -> Spool:
    path = sqlite_path(url) if url is not None and is_sqlite(url) else None
    # An SQLite file is named by its absolute path, so the same file gets one spool from any directory.
    key = spool_key(f"sqlite:///{path}" if path is not None else shown)
    return Spool(spool_root(spool_dir) / key, max_bytes=spool_max_bytes(max_bytes), label=shown)


def spool_root(spool_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where spools live (each database's in a subdirectory): `spool_dir`, else `COMPACTOBS_SPOOL_DIR`,
    else `spool/` in the data directory. Absolute, so a later chdir does not move it."""
    given = spool_dir if spool_dir is not None else os.environ.get(ENV_SPOOL_DIR) or None
    if given is None:
        return data_dir() / "spool"
    return Path(given).expanduser().absolute()


def spool_for(database_url: str | None = None, spool_dir: str | os.PathLike[str] | None = None) -> Spool:
    """The spool where rows for this database wait (what an exporter for it would use). Raises StoreError
    for a URL that does not parse."""
    url = parse_url(database_url or default_database_url())
    return _spool(url, display_url(url), spool_dir)


@dataclass
class ExporterStats:
    """Counts of calls (not spans) since the exporter started."""

    written: int = 0
    """Committed straight from an export."""
    spooled: int = 0
    """Appended to the spool."""
    replayed: int = 0
    """Committed from the spool (this process's or a dead one's)."""
    overflowed: int = 0
    """Spooled by the processor because its queue was full (the database slow), or after shutdown."""
    dropped: int = 0
    """Lost because the spool was full (or not writable): said in the log."""
    rejected: int = 0
    """Refused by the database for their values; kept in the spool's `rejected/` directory."""


class SqlSpanExporter(SpanExporter):
    """Writes compactobs' call and iteration spans to the SQL store; every other span is ignored.

    `database_url`: default `COMPACTOBS_DATABASE_URL`, else SQLite in the data directory. An empty SQLite
    database is brought to the current schema; PostgreSQL must be upgraded with `compactobs db upgrade`
    (until then rows wait in the spool, and the log says what to run). Construction never raises, so an
    application with a bad URL keeps running: the problem is logged and rows are spooled.

    `spool_dir`: where spools live (default `COMPACTOBS_SPOOL_DIR`, else `<data dir>/spool`; each database
    gets its own subdirectory).
    `spool_max_bytes`: the spool's bound (default `COMPACTOBS_SPOOL_MAX_BYTES`, else 256 MiB).
    `write_timeout_s`: how long a write may wait (a lock, a slow or silent server) before its rows are
    spooled; `busy_timeout_s` overrides it for SQLite's busy timeout alone.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        busy_timeout_s: float | None = None,
    ) -> None:
        raw = database_url or default_database_url()
        self._lock = threading.RLock()
        self._engine: Engine | None = None
        self._url: URL | None = None
        self._config_error: StoreError | None = None
        self._watchdog: SocketWatchdog | None = None
        self.write_timeout_s = write_timeout_s
        # The whole of one transaction once connected (connecting has its own bound, connect_timeout): its
        # statements, each bounded by the server while it runs, and their round trips.
        self._transaction_bound_s = 2 * write_timeout_s + 1.0
        try:
            self._url = parse_url(raw)
            self._engine = make_engine(
                self._url,
                writer=True,
                busy_timeout_s=write_timeout_s if busy_timeout_s is None else busy_timeout_s,
                connect_timeout_s=EXPORT_CONNECT_TIMEOUT_S,
                statement_timeout_s=write_timeout_s,
            )
            if not is_sqlite(self._url):
                self._watchdog = SocketWatchdog(self._engine)
        except StoreError as err:
            self._config_error = err
            log.error("compactobs: %s (rows are kept in the spool until this is fixed)", err)
        self.database_url: str = display_url(self._url or raw)
        """The URL, password hidden."""
        # Rows for a URL that does not parse are kept in PostgreSQL's form (an explicit UTC offset).
        backend = self._url.get_backend_name() if self._url is not None else "postgresql"
        self._mapper = RowMapper(backend)
        driver = self._url.get_driver_name() if self._url is not None else "psycopg"
        self._writer = writer_for(backend, driver)
        self.spool = _spool(self._url, self.database_url, spool_dir, spool_max_bytes)
        self.stats = ExporterStats()
        self._spill_lock = threading.Lock()
        self._schema_ok = False
        self._replay_pending: bool | None = None  # None: not looked yet (done on the export thread)
        self._next_scan = 0.0
        if hasattr(os, "register_at_fork"):
            forked = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (method := forked()) and method())
        self._retry_at = 0.0
        self._delay = RETRY_FIRST_S
        self._outage = False
        self._closed = False
        self._unwritable: str | None = None
        """What is wrong with the spool while it cannot be written (logged once)."""
        self._lost_to_unwritable = 0

    def _after_fork_in_child(self) -> None:
        """A forked child must not use its parent's pooled connections (two processes on one socket):
        it opens its own (SQLAlchemy's documented pattern), with a fresh lock."""
        self._lock = threading.RLock()
        if self._engine is not None:
            self._engine.dispose(close=False)

    # --- SpanExporter -------------------------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Commit or spool the batch. SUCCESS once the rows are in the database or the spool."""
        if self._closed:
            return SpanExportResult.FAILURE
        try:
            call_rows, iteration_rows = self._mapper.map(spans)
        except Exception:
            log.exception("compactobs: could not read a batch of %d spans", len(spans))
            return SpanExportResult.FAILURE
        if not call_rows and not iteration_rows:
            return SpanExportResult.SUCCESS
        with self._lock:
            return self._deliver(call_rows, iteration_rows)

    def spill(self, spans: Sequence[ReadableSpan]) -> None:
        """Write the spans' rows straight to the spool, on the calling thread: what the processor's queue
        has no room for, or what ends after shutdown. Counted in `stats.overflowed`. Never raises."""
        try:
            call_rows, iteration_rows = self._mapper.map(spans)
            if not call_rows and not iteration_rows:
                return
            with self._spill_lock:
                if self._append_or_count(call_rows, iteration_rows):
                    self.stats.overflowed += len(call_rows)
        except Exception:
            log.warning("compactobs: could not spool %d spans", len(spans), exc_info=True)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Replay the spool now, whatever the retry pause. True when nothing is left waiting."""
        with self._lock:
            if self._closed:
                return True
            try:
                if not self.spool.has_replayable():
                    self._replay_pending = False
                    return True
                return self._replay(time.monotonic() + timeout_millis / 1000)
            except OSError:
                log.warning("compactobs: cannot read the spool %s", self.spool.directory, exc_info=True)
                return False

    def shutdown(self) -> None:
        """Flush, then release the spool and the connections. Later exports fail."""
        with self._lock:
            if self._closed:
                return
            self.force_flush()
            if self._unwritable is not None:
                log.error(
                    "compactobs: %d call(s) for %s were lost: %s",
                    self._lost_to_unwritable,
                    self.database_url,
                    self._unwritable,
                )
            if self._safe_has_replayable():
                log.warning(
                    "compactobs: %s is unavailable; rows wait in %s and are written by the next compactobs "
                    "that reaches it",
                    self.database_url,
                    self.spool.directory,
                )
            self.spool.close()
            if self._engine is not None:
                self._engine.dispose()
            self._closed = True

    def prepare(self) -> None:
        """Load the migrations and check (or, for an empty SQLite file, create) the schema ahead of the first
        export, off the caller's thread: otherwise the first batch waits ~0.3 s for it while spans queue
        up. Never raises; an unreachable database is logged and retried as at an export."""
        try:
            head_revision()
            with self._lock:
                if not self._closed and self._config_error is None:
                    self._ensure_ready()
        except _Unavailable as err:
            with self._lock:
                self._unavailable(err.cause)
        except Exception:
            log.warning("compactobs: preparing the SQL store failed", exc_info=True)

    def check(self) -> None:
        """Connect and bring the schema up (an empty SQLite file) or check it, now: for an application that
        wants a bad database reported at start-up. Raises StoreError; exports never do."""
        with self._lock:
            try:
                self._ensure_ready()
            except _Unavailable as err:
                cause = err.cause
                if self._url is not None and not isinstance(cause, StoreError):
                    cause = explain_error(cause, self._url)
                raise (cause if isinstance(cause, StoreError) else StoreError(str(cause))) from None

    # --- delivery ----------------------------------------------------------------------------------

    def _deliver(self, call_rows: list[Row], iteration_rows: list[Row]) -> SpanExportResult:
        now = time.monotonic()
        if self._replay_pending is None or (not self._replay_pending and now >= self._next_scan):
            self._next_scan = now + RESCAN_S
            self._replay_pending = self._safe_has_replayable()
        if now >= self._retry_at:
            if self._replay_pending:
                self._replay(now + REPLAY_BUDGET_S)  # earlier rows first
            if not self._replay_pending and time.monotonic() >= self._retry_at:
                try:
                    self._commit(call_rows, iteration_rows)
                    self.stats.written += len(call_rows)
                    self._available()
                    return SpanExportResult.SUCCESS
                except _Unavailable as err:
                    self._unavailable(err.cause)
        # The database is away, or earlier rows are still waiting: queue behind them, on disk.
        if not self._spool_append(call_rows, iteration_rows):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _safe_has_replayable(self) -> bool:
        try:
            return self.spool.has_replayable()
        except OSError:
            return False

    def _spool_append(self, call_rows: list[Row], iteration_rows: list[Row]) -> bool:
        kept = self._append_or_count(call_rows, iteration_rows)
        if kept:
            self.stats.spooled += len(call_rows)
        return kept

    def _append_or_count(self, call_rows: list[Row], iteration_rows: list[Row]) -> bool:
        """Append to the spool; rows it cannot keep (full, or not writable) are counted as dropped. An
        unwritable spool is logged once, with what is wrong and the fix, and again once it is fixed."""
        try:
            kept = self.spool.append(call_rows, iteration_rows)
        except OSError as err:
            self.stats.dropped += len(call_rows)
            self._lost_to_unwritable += len(call_rows)
            if self._unwritable is None:
                self._unwritable = unwritable(self.spool.directory, err)
                log.error(
                    "compactobs: %s; %d call(s) for %s lost so far, and every call the database cannot take "
                    "until then",
                    self._unwritable,
                    self._lost_to_unwritable,
                    self.database_url,
                )
            return False
        if kept:
            self._replay_pending = True
            if self._unwritable is not None:
                log.warning(
                    "compactobs: the spool %s is writable again; %d call(s) were lost while it was not",
                    self.spool.directory,
                    self._lost_to_unwritable,
                )
                self._unwritable, self._lost_to_unwritable = None, 0
        else:
            self.stats.dropped += len(call_rows)
        return kept

    def _replay(self, deadline: float) -> bool:
        """Replay what the spool holds. True when nothing this process can replay is left."""
        try:
            result = self.spool.replay(self._commit_replayed, deadline)
        except _Unavailable as err:
            self._unavailable(err.cause)
            return False
        except OSError:
            log.warning("compactobs: cannot read the spool %s", self.spool.directory, exc_info=True)
            return False
        self._available()
        if result.calls:
            log.info("compactobs: wrote %d spooled calls to %s", result.calls, self.database_url)
        self._replay_pending = result.stopped
        return not result.stopped

    def _commit_replayed(self, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        self._commit(call_rows, iteration_rows)
        self.stats.replayed += len(call_rows)

    def _commit(self, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        """Commit the rows in one transaction. Raises _Unavailable when the database cannot take them now;
        rows it refuses for their values are coerced, retried, and set aside if still refused."""
        self._ensure_ready()
        try:
            self._write(call_rows, iteration_rows)
            return
        except Exception as err:
            if self._transient(err):
                if "no such table" in str(err):  # SQLite's tables dropped under us
                    self._schema_ok = False
                raise _Unavailable(err) from err
            refusal = err
        # Not the connection: the schema may have been changed under us, else the values are at fault.
        self._schema_ok = False
        self._ensure_ready()
        call_rows, iteration_rows = sanitize(call_rows, calls), sanitize(iteration_rows, iterations)
        try:
            self._write(call_rows, iteration_rows)
        except Exception as err:
            if self._transient(err):
                raise _Unavailable(err) from err
            self._commit_each(call_rows, iteration_rows, refusal)

    def _transient(self, err: BaseException) -> bool:
        assert self._engine is not None
        return _transient(err, self._engine.dialect.loaded_dbapi)

    def _bounded(self) -> contextlib.AbstractContextManager[object]:
        """The client-side bound on one transaction (PostgreSQL: a server that stops answering)."""
        if self._watchdog is None:
            return contextlib.nullcontext()
        return self._watchdog.deadline(self._transaction_bound_s)

    def _write(self, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        assert self._engine is not None
        with self._bounded(), self._engine.begin() as connection:
            self._writer.write(connection, *supersede(connection, call_rows, iteration_rows))

    def _commit_each(self, call_rows: list[Row], iteration_rows: list[Row], refusal: BaseException) -> None:
        """One transaction per call with its iterations, so one bad row does not hold back the batch; a call
        still refused is set aside whole, iterations included, in the spool's `rejected/` directory: kept
        for a human, replayed by `compactobs spool replay --rejected`, never by itself."""
        assert self._engine is not None
        refused_calls: list[Row] = []
        refused_iterations: list[Row] = []
        reason = explain_error(refusal, self._engine.url).message
        for group_calls, group_iterations in group_by_call(call_rows, iteration_rows):
            try:
                self._write(group_calls, group_iterations)
            except Exception as err:
                if self._transient(err):
                    raise _Unavailable(err) from err
                refused_calls.extend(group_calls)
                refused_iterations.extend(group_iterations)
        if not refused_calls and not refused_iterations:
            return
        self.stats.rejected += len(refused_calls)
        try:
            where = str(self.spool.quarantine(refused_calls, refused_iterations, reason))
        except OSError:
            where = "nowhere (the spool is not writable)"
        log.error(
            "compactobs: %s refused %d calls and %d iterations (%s); they are kept in %s",
            self.database_url,
            len(refused_calls),
            len(refused_iterations),
            escape(reason),  # the database's words may quote a row's value
            where,
        )

    def _ensure_ready(self) -> None:
        if self._config_error is not None:
            raise _Unavailable(self._config_error)
        if self._schema_ok:
            return
        assert self._engine is not None
        try:
            with self._bounded():
                ensure_schema(self._engine)
        except StoreError as err:
            raise _Unavailable(err) from err
        except SQLAlchemyError as err:
            raise _Unavailable(explain_error(err, self._engine.url)) from err
        self._schema_ok = True

    def _unavailable(self, cause: BaseException) -> None:
        if self._url is not None and not isinstance(cause, StoreError):
            cause = explain_error(cause, self._url)
        if not self._outage:
            self._outage = True
            self._delay = RETRY_FIRST_S
            log.warning(
                "compactobs: %s; keeping rows in the spool %s and retrying", cause, self.spool.directory
            )
        else:
            self._delay = min(self._delay * 2, RETRY_MAX_S)
        self._retry_at = time.monotonic() + self._delay

    def _available(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("compactobs: %s is reachable again", self.database_url)
        self._delay = RETRY_FIRST_S
        self._retry_at = 0.0


_installed: weakref.WeakSet[StoreSpanProcessor] = weakref.WeakSet()


def install(
    tracer_provider: TracerProvider,
    database_url: str | None = None,
    *,
    spool_dir: str | os.PathLike[str] | None = None,
    spool_max_bytes: int | None = None,
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
) -> StoreSpanProcessor:
    """Add the SQL store to a TracerProvider: `StoreSpanProcessor(SqlSpanExporter(...))`. Never raises for
    a bad URL or an unreachable database (see SqlSpanExporter); returns the processor, whose `force_flush`
    and `shutdown` drain the spool. Register `shutdown_all` for interpreter exit and SIGTERM."""
    exporter = SqlSpanExporter(
        database_url, spool_dir=spool_dir, spool_max_bytes=spool_max_bytes, write_timeout_s=write_timeout_s
    )
    processor = StoreSpanProcessor(exporter)
    tracer_provider.add_span_processor(processor)
    _installed.add(processor)
    processor.preparing = threading.Thread(
        target=exporter.prepare, name="compactobs-store-prepare", daemon=True
    )
    processor.preparing.start()
    return processor


def shutdown_all() -> None:
    """Flush and close every store `install` added: the hook for atexit and SIGTERM. Never raises."""
    for processor in list(_installed):
        try:
            processor.shutdown()
        except Exception:
            log.warning("compactobs: closing the SQL store failed", exc_info=True)
