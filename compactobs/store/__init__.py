"""The SQL store: SQLAlchemy models, engines, schema revisions, and SqlSpanExporter with its spool.

```python
from compactobs import store
processor = store.install(tracer_provider)          # StoreSpanProcessor(SqlSpanExporter(default URL))
store.shutdown_all()                                # the hook for interpreter exit and SIGTERM
engine = store.open_database()                      # for readers: checked against the schema
store.upgrade_database("postgresql+psycopg://...")  # what `compactobs db upgrade` does
```

Readers: the tables are `store.calls` and `store.iterations` (see `compactobs.store.models`); filter time
on `start_ms` (indexed), group on `start_time`; money columns are NUMERIC, NULL when unpriced.

The default database is `COMPACTOBS_DATABASE_URL`, else SQLite at `$XDG_DATA_HOME/compactobs/compactobs.db`
(`~/.local/share/compactobs/compactobs.db`). Problems a user can fix raise `StoreError`, whose message is
one line saying what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from compactobs.store.engine import (
    ENV_DATABASE_URL,
    data_dir,
    default_database_url,
    display_url,
    make_engine,
    parse_url,
    sqlite_path,
)
from compactobs.store.errors import StoreError

if TYPE_CHECKING:
    from compactobs.store.exporter import (
        ExporterStats,
        SqlSpanExporter,
        StoreSpanProcessor,
        install,
        shutdown_all,
        spool_for,
    )
from compactobs.store.models import (
    alert_state,
    calls,
    guard_spend,
    iterations,
    metadata,
    rollup_dirty,
    rollup_open_calls,
    rollups,
)
from compactobs.store.schema import (
    SchemaStatus,
    downgrade,
    ensure_schema,
    head_revision,
    schema_status,
    upgrade,
)

__all__ = [
    "ENV_DATABASE_URL",
    "ExporterStats",
    "SchemaStatus",
    "SqlSpanExporter",
    "StoreError",
    "StoreSpanProcessor",
    "alert_state",
    "calls",
    "data_dir",
    "database_status",
    "default_database_url",
    "display_url",
    "downgrade",
    "ensure_schema",
    "guard_spend",
    "head_revision",
    "install",
    "iterations",
    "make_engine",
    "metadata",
    "open_database",
    "parse_url",
    "rollup_dirty",
    "rollup_open_calls",
    "rollups",
    "schema_status",
    "shutdown_all",
    "spool_for",
    "spool_status",
    "upgrade",
    "upgrade_database",
]

_EXPORTER_NAMES = frozenset(
    {"ExporterStats", "SqlSpanExporter", "StoreSpanProcessor", "install", "shutdown_all", "spool_for"}
)


def __getattr__(name: str) -> object:
    # The exporter brings the OpenTelemetry SDK: loaded when recording, not by a report or `db status`.
    if name in _EXPORTER_NAMES:
        from compactobs.store import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_database(database_url: str | None = None, *, create: bool = True) -> Engine:
    """An Engine for reading the store (reports), checked against this code's schema.

    An SQLite store is created and brought to the current schema when missing or empty (no tables at all),
    so a report on a fresh machine shows an empty result rather than an error; with `create=False` a
    missing SQLite file is an error instead (the CLI's choice for a --db path, most likely mistyped), and
    so is one without compactobs' tables: a reader never makes tables. A file that holds another
    application's tables is never made a store but by `db upgrade`. Raises StoreError.
    """
    url = parse_url(database_url or default_database_url())
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is not None and not create and not path.exists():
        raise StoreError(
            f"no database at {path}: check --db (or COMPACTOBS_DATABASE_URL), or record calls into it first"
        )
    engine = make_engine(url)
    try:
        ensure_schema(engine, create=create)
    except BaseException:
        engine.dispose()
        raise
    return engine


def upgrade_database(
    database_url: str | None = None, revision: str = "head"
) -> tuple[str | None, str | None]:
    """Migrate the database to `revision` (default: this code's head); returns (before, after) revisions.
    Raises StoreError (unreachable, credentials, a schema newer than this code...)."""
    engine = make_engine(database_url, writer=True)
    try:
        return upgrade(engine, revision)
    finally:
        engine.dispose()


def database_status(database_url: str | None = None) -> SchemaStatus | None:
    """The schema status of the database, without creating or changing anything; None for an SQLite file
    that does not exist yet. Raises StoreError when the database cannot be reached."""
    url = parse_url(database_url or default_database_url())
    path = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is not None and not path.exists():
        return None
    engine = make_engine(url, create=False)
    try:
        return schema_status(engine)
    finally:
        engine.dispose()


def spool_status(
    database_url: str | None = None, spool_dir: str | Path | None = None
) -> tuple[Path, int, int]:
    """(spool directory, segments, bytes) waiting for this database in this user's data directory."""
    from compactobs.store.exporter import spool_for

    spool = spool_for(database_url, spool_dir)
    return spool.directory, len(spool.segments()), spool.size()
