"""Schema revisions: where the database stands against the code, and the Alembic upgrades that move it.

The Alembic scripts ship inside the package (`compactobs/_migrations/`), and the configuration is built
here in code, so `compactobs db upgrade` works from an installed wheel without an `alembic.ini`.

compactobs keeps its revision in a version table of its own, `compactobs_alembic_version`, so that it can
share a database (or a PostgreSQL schema) with an application that uses Alembic itself: the
application's `alembic_version` is never read as compactobs', nor changed. A store made before that
(its revision in `alembic_version`, beside a `calls` table) is moved to the new table by `db upgrade`.

Reading where a database stands needs no Alembic (its import, with mako and pygments, costs more than
a report on a small store): the revisions are read from the scripts' source, the current one with a
SELECT. Alembic is imported to migrate.
"""

from __future__ import annotations

import ast
import functools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import URL, Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from compactobs.store.engine import default_database_url, display_url, explain_error, is_sqlite, make_engine
from compactobs.store.errors import StoreError

# Alembic is imported where it is used: `compactobs.instrument()` imports this module, and should not pay
# for Alembic (~120 ms) in the application's start-up; the exporter needs it later, on its own thread.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "LEGACY_VERSION_TABLE",
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
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
VERSION_TABLE: Final = "compactobs_alembic_version"
"""Where compactobs' Alembic revision is kept (the migrations' `env.py` configures Alembic with it)."""
LEGACY_VERSION_TABLE: Final = "alembic_version"
"""Alembic's default table: compactobs' revision was there before it had a table of its own."""

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


def _assigned(module: ast.Module, name: str) -> str | None:
    for node in module.body:
        target: ast.expr | None = None
        value_node: ast.expr | None = None
        if isinstance(node, ast.AnnAssign):
            target, value_node = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value_node = node.targets[0], node.value
        if isinstance(target, ast.Name) and target.id == name and value_node is not None:
            value = ast.literal_eval(value_node)
            return value if isinstance(value, str) else None
    return None


_REVISION_LINE: Final = re.compile(r"^(?:down_)?revision\b[^\n]*\n", re.MULTILINE)
"""A script's `revision = ...` or `down_revision = ...` line, at the top level (column 0)."""


def _revision_lines(text: str) -> ast.Module:
    found = _REVISION_LINE.findall(text)
    if len(found) == 2:
        try:
            return ast.parse("".join(found))
        except SyntaxError:
            pass  # a line of a docstring that starts with "revision"
    return ast.parse(text)


@functools.cache
def revision_graph() -> dict[str, str | None]:
    """Every revision the packaged scripts define, with the one it follows, read from their source (as
    Alembic reads them, without importing Alembic). compactobs' history is one line, no branches."""
    graph: dict[str, str | None] = {}
    for script in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        # Only the two assignments parsed (every command that opens the store asks for the head: parsing
        # whole scripts cost ~30 ms of each start-up); the whole script when they are not one line each.
        module = _revision_lines(text)
        revision = _assigned(module, "revision")
        if revision is not None:
            graph[revision] = _assigned(module, "down_revision")
    return graph


def head_revision() -> str:
    """The revision this code expects."""
    graph = revision_graph()
    heads = set(graph) - set(graph.values())
    assert len(heads) == 1, f"compactobs' revisions have one head, not {sorted(heads)}"
    return heads.pop()


def _known(revision: str) -> bool:
    return revision in revision_graph()


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
    other_tables: tuple[str, ...] = ()
    """For an `empty` database: the tables it holds that are not compactobs' (it is no store of ours)."""

    @property
    def ok(self) -> bool:
        return self.state == "current"


def _versions(connection: Connection, table: str) -> list[str]:
    """The revisions in an Alembic version table; [] when it does not exist."""
    if not inspect(connection).has_table(table):
        return []
    return [row[0] for row in connection.execute(text(f"SELECT version_num FROM {table}"))]


def current_revision(connection: Connection) -> str | None:
    """compactobs' revision in this database: its own version table's, else (a store made before it had
    one) a compactobs revision in `alembic_version` beside compactobs' `calls` table. None: no store."""
    versions = _versions(connection, VERSION_TABLE)
    if versions:
        return versions[0]
    return _legacy_revision(connection)


def _legacy_revision(connection: Connection) -> str | None:
    """compactobs' revision still kept in `alembic_version`. A revision there counts as compactobs' only
    when compactobs knows it and its tables are there: an application's own revisions are not ours."""
    if inspect(connection).has_table(VERSION_TABLE):
        return None
    legacy = [v for v in _versions(connection, LEGACY_VERSION_TABLE) if _known(v)]
    if legacy and inspect(connection).has_table("calls"):
        return legacy[0]
    return None


def _other_tables(connection: Connection) -> tuple[str, ...]:
    """Tables in the database (or the PostgreSQL schema the connection works in) that are not
    compactobs'."""
    from compactobs.store.models import metadata

    ours = {*metadata.tables, VERSION_TABLE}
    return tuple(sorted(name for name in inspect(connection).get_table_names() if name not in ours))


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
        others = _other_tables(connection)
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            return SchemaStatus(
                shown,
                "empty",
                None,
                head,
                f"{shown} is not a compactobs store (it holds other tables: {listed}): point --db at a "
                f"compactobs store, or add compactobs' tables to it with `{_fix_command(url)}`",
                others,
            )
        return SchemaStatus(
            shown,
            "empty",
            None,
            head,
            f"{shown} has no compactobs tables yet: create them with `{_fix_command(url)}`",
        )
    if _known(current) and not inspect(connection).has_table(VERSION_TABLE):
        return SchemaStatus(
            shown,
            "behind",
            current,
            head,
            f"{shown} keeps compactobs' schema revision in alembic_version, from before compactobs had a "
            f"version table of its own: run `{_fix_command(url)}` to move it (no data changes)",
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
                _create_search_path_schema(connection)
            before = current_revision(connection)
            if before is not None and not _known(before):
                raise StoreError(_status(connection, engine.url).fix or "schema newer than this compactobs")
            legacy = _legacy_revision(connection)
            if legacy is not None:
                _move_legacy_revision(connection, legacy)
            with _command_lock:
                command.upgrade(alembic_config(connection), revision)
            return before, current_revision(connection)
    except SQLAlchemyError as err:
        raise explain_error(err, engine.url) from None
    except CommandError as err:
        raise StoreError(f"cannot upgrade to {revision!r}: {err}") from None


def _move_legacy_revision(connection: Connection, revision: str) -> None:
    """Move compactobs' revision from `alembic_version` to its own table, in the upgrade's transaction.
    Other rows of `alembic_version` (an application's) stay; the table goes only if compactobs' row was
    all it held. The DDL is Alembic's own for a version table."""
    connection.execute(
        text(
            f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
            f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:v)"), {"v": revision})
    connection.execute(text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :v"), {"v": revision})
    if not _versions(connection, LEGACY_VERSION_TABLE):
        connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))


def _create_search_path_schema(connection: Connection) -> None:
    """A PostgreSQL URL may name a schema of compactobs' own (`?options=-csearch_path=compactobs`): when no
    schema on the search path exists yet, `db upgrade` creates the first one, as it creates the tables."""
    if connection.execute(text("SELECT current_schema()")).scalar() is not None:
        return
    search_path = str(connection.execute(text("SHOW search_path")).scalar() or "")
    names = [part.strip().strip('"') for part in search_path.split(",")]
    name = next((n for n in names if n and n != "$user"), None)
    if name is not None:
        quoted = connection.dialect.identifier_preparer.quote_identifier(name)
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))


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


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Make sure the database is at this code's revision, or raise StoreError saying what to run.

    An empty SQLite database (no tables at all) is the embedded store: it is brought to head here, unless
    `create` is False (a reader that must not make tables). Anything else (an SQLite file with tables of
    another application, an empty PostgreSQL database, an older or newer schema) is never migrated unasked.
    """
    status = schema_status(engine)
    if status.ok:
        return
    # A file that holds other tables is not an empty store: it is someone else's (`db upgrade` may add to it).
    if status.state == "empty" and not status.other_tables and is_sqlite(engine.url) and create:
        # A writer engine: its BEGIN IMMEDIATE makes concurrent first users queue, and the second finds
        # the work done.
        writer = make_engine(engine.url, writer=True)
        try:
            upgrade(writer)
        finally:
            writer.dispose()
        return
    raise StoreError(status.fix or f"{status.url}: schema {status.state}")
