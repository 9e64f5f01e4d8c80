"""Schema revisions: where the database stands against the code, and the Alembic upgrades that move it.

The Alembic scripts ship inside the package (`compactobs/_migrations/`), and the configuration is built
here in code, so `compactobs db upgrade` works from an installed wheel without an `alembic.ini`.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import URL, Connection, Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from compactobs.store.engine import default_database_url, display_url, explain_error, is_sqlite, make_engine
from compactobs.store.errors import StoreError

# Alembic is imported where it is used: `compactobs.instrument()` imports this module, and should not pay
# for Alembic (~120 ms) in the application's start-up; the exporter needs it later, on its own thread.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "MIGRATIONS_DIR",
    "SchemaState",
    "SchemaStatus",
    "alembic_config",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "schema_status",
    "upgrade",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "_migrations"

_import_lock = threading.Lock()
_command_lock = threading.Lock()
"""Alembic runs a migration through a process-wide `context`: one migration at a time per process. Taken
after the database's own lock, and held only while Alembic runs, so it never waits on a database."""


def _import_alembic() -> None:
    """Import Alembic once, under a lock. Its modules import one another, and two threads importing it for
    the first time at once (several exporters starting together) can each see the other's half-initialised
    module and fail."""
    with _import_lock:
        import alembic.command
        import alembic.config
        import alembic.runtime.migration
        import alembic.script
        import alembic.util  # noqa: F401


SchemaState = Literal["empty", "behind", "current", "ahead", "unmanaged"]
# Any key will do, as long as every compactobs agrees on it: serialises concurrent upgrades.
_PG_LOCK_KEY: Final = 0x636F6D7061637462  # "compactb"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the packaged scripts, and the connection to migrate if given."""
    _import_alembic()
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    _import_alembic()
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision this code expects."""
    head = _scripts().get_current_head()
    assert head is not None, "compactobs ships at least one revision"
    return head


def _known(revision: str) -> bool:
    return revision in {script.revision for script in _scripts().walk_revisions()}


def _fix_command(url: URL) -> str:
    """The exact command that upgrades this database (the default one needs no --db)."""
    shown = display_url(url)
    if shown == display_url(default_database_url()):
        return "compactobs db upgrade"
    return f"compactobs --db '{shown}' db upgrade"


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands against this code's revisions."""

    url: str
    """Password hidden."""
    state: SchemaState
    current: str | None
    head: str
    fix: str | None
    """One line: what to do when the state is not `current`."""

    @property
    def ok(self) -> bool:
        return self.state == "current"


def current_revision(connection: Connection) -> str | None:
    _import_alembic()
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _status(connection: Connection, url: URL) -> SchemaStatus:
    current = current_revision(connection)
    head = head_revision()
    shown = display_url(url)
    if current == head:
        return SchemaStatus(shown, "current", current, head, None)
    if current is None:
        if inspect(connection).has_table("calls"):
            return SchemaStatus(
                shown,
                "unmanaged",
                None,
                head,
                f"{shown} has a `calls` table that compactobs' migrations did not make (no alembic_version): "
                "use another database or schema",
            )
        return SchemaStatus(
            shown,
            "empty",
            None,
            head,
            f"{shown} has no compactobs tables yet: create them with `{_fix_command(url)}`",
        )
    if _known(current):
        return SchemaStatus(
            shown,
            "behind",
            current,
            head,
            f"{shown} is at schema revision {current}, this compactobs needs {head}: "
            f"run `{_fix_command(url)}`",
        )
    return SchemaStatus(
        shown,
        "ahead",
        current,
        head,
        f"{shown} is at schema revision {current}, newer than this compactobs knows (up to {head}): "
        "upgrade compactobs (pip install -U compactobs)",
    )


def schema_status(engine: Engine) -> SchemaStatus:
    """Read the database's revision. Raises StoreError when it cannot be reached."""
    try:
        with engine.connect() as connection:
            return _status(connection, engine.url)
    except SQLAlchemyError as err:
        raise explain_error(err, engine.url) from None


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply the migrations up to `revision` in one transaction; returns (before, after).

    Concurrent upgraders queue: on SQLite the writer engine's BEGIN IMMEDIATE holds the write lock for the
    whole check-and-migrate, on PostgreSQL a transaction-scoped advisory lock does. Raises StoreError.
    """
    _import_alembic()
    from alembic import command
    from alembic.util import CommandError

    try:
        with engine.begin() as connection:
            if not is_sqlite(engine.url):
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            before = current_revision(connection)
            if before is not None and not _known(before):
                raise StoreError(_status(connection, engine.url).fix or "schema newer than this compactobs")
            with _command_lock:
                command.upgrade(alembic_config(connection), revision)
            return before, current_revision(connection)
    except SQLAlchemyError as err:
        raise explain_error(err, engine.url) from None
    except CommandError as err:
        raise StoreError(f"cannot upgrade to {revision!r}: {err}") from None


def downgrade(engine: Engine, revision: str) -> tuple[str | None, str | None]:
    """Undo migrations down to `revision` (`base` empties the database of compactobs' tables)."""
    _import_alembic()
    from alembic import command
    from alembic.util import CommandError

    try:
        with engine.begin() as connection:
            before = current_revision(connection)
            with _command_lock:
                command.downgrade(alembic_config(connection), revision)
            return before, current_revision(connection)
    except SQLAlchemyError as err:
        raise explain_error(err, engine.url) from None
    except CommandError as err:
        raise StoreError(f"cannot downgrade to {revision!r}: {err}") from None


def ensure_schema(engine: Engine) -> None:
    """Make sure the database is at this code's revision, or raise StoreError saying what to run.

    An empty SQLite database is the embedded store: it is brought to head here. Anything else (an empty
    PostgreSQL database, an older or newer schema) is never migrated unasked.
    """
    status = schema_status(engine)
    if status.ok:
        return
    if status.state == "empty" and is_sqlite(engine.url):
        # A writer engine: its BEGIN IMMEDIATE makes concurrent first users queue, and the second finds
        # the work done.
        writer = make_engine(engine.url, writer=True)
        try:
            upgrade(writer)
        finally:
            writer.dispose()
        return
    raise StoreError(status.fix or f"{status.url}: schema {status.state}")
