"""A database shared with the application: compactobs keeps its Alembic revision in a table of its own,
moves an older store's revision there without loss, leaves the application's `alembic_version` alone, and
works in a PostgreSQL schema of its own. Readers never make tables in a database that is not a store."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, text

from compactobs import store
from compactobs.store.schema import LEGACY_VERSION_TABLE, VERSION_TABLE
from tests.cli import one_line_error, run

AT_MS = 1_748_768_400_000  # 2025-06-01 09:00 UTC


def execute(url: str, *statements: str) -> None:
    engine = store.make_engine(url, writer=True)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def scalars(url: str, query: str) -> list[object]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(query)).scalars())
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def add_call(url: str, call_id: str, cost: str) -> None:
    engine = store.make_engine(url, writer=True)
    try:
        with engine.begin() as connection:
            connection.execute(
                store.calls.insert(),
                {
                    "call_id": call_id,
                    "trace_id": call_id * 32,
                    "start_time": datetime.fromtimestamp(AT_MS / 1000, timezone.utc),
                    "start_ms": AT_MS,
                    "end_ms": AT_MS + 1000,
                    "duration_ms": 1000.0,
                    "status": "OK",
                    "attempts": 1,
                    "request_model": "claude-opus-4-8",
                    "priced": True,
                    "cost_usd": cost,
                },
            )
    finally:
        engine.dispose()


APP_ALEMBIC = (
    "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('1f2e3d4c5b6a')",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY)",
)


def test_an_application_alembic_version_is_left_alone(database_url: str) -> None:
    execute(database_url, *APP_ALEMBIC)
    head = store.head_revision()
    code, out, err = run("--db", database_url, "db", "upgrade")
    assert code == 0, err
    assert f"upgraded from an empty database to revision {head}" in out
    assert scalars(database_url, "SELECT version_num FROM alembic_version") == ["1f2e3d4c5b6a"]
    assert scalars(database_url, f"SELECT version_num FROM {VERSION_TABLE}") == [head]
    code, out, err = run("--db", database_url, "db", "status")
    assert code == 0, err
    assert f"schema:   {head} (this compactobs: {head}) - current" in out
    code, out, err = run("--db", database_url, "report", "cost", "--format", "json")
    assert code == 0, err


def make_legacy_store(url: str) -> None:
    """A store made before compactobs had its own version table: its revision in alembic_version."""
    store.upgrade_database(url)
    head = store.head_revision()
    execute(
        url,
        f"DROP TABLE {VERSION_TABLE}",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        f"INSERT INTO alembic_version VALUES ('{head}')",
    )


def test_an_older_store_moves_its_revision_to_its_own_table_without_loss(database_url: str) -> None:
    make_legacy_store(database_url)
    add_call(database_url, "a", "1.25")
    add_call(database_url, "b", "0.5")
    head = store.head_revision()
    # Readable as it is (at head), until `db upgrade` moves the revision.
    engine = store.make_engine(database_url, create=False)
    try:
        status = store.schema_status(engine)
    finally:
        engine.dispose()
    assert (status.state, status.current) == ("current", head)

    code, out, err = run("--db", database_url, "db", "upgrade")
    assert code == 0, err
    assert LEGACY_VERSION_TABLE not in tables(database_url)  # it held compactobs' row only
    assert scalars(database_url, f"SELECT version_num FROM {VERSION_TABLE}") == [head]
    assert scalars(database_url, "SELECT call_id FROM calls ORDER BY call_id") == ["a", "b"]
    code, out, err = run("--db", database_url, "report", "cost", "--format", "json")
    assert code == 0, err
    assert '"calls": 2' in out and '"cost_usd": 1.75' in out  # 1.25 + 0.5


def test_an_older_store_sharing_alembic_version_keeps_the_application_row(sqlite_url: str) -> None:
    make_legacy_store(sqlite_url)
    execute(sqlite_url, "INSERT INTO alembic_version VALUES ('1f2e3d4c5b6a')")
    code, _, err = run("--db", sqlite_url, "db", "upgrade")
    assert code == 0, err
    assert scalars(sqlite_url, "SELECT version_num FROM alembic_version") == ["1f2e3d4c5b6a"]
    assert scalars(sqlite_url, f"SELECT version_num FROM {VERSION_TABLE}") == [store.head_revision()]


def test_a_postgresql_schema_of_its_own(postgres_url: str) -> None:
    """The application's tables and alembic_version in its schema; compactobs' in a schema named by the
    URL's search_path, which `db upgrade` creates."""
    execute(postgres_url, *APP_ALEMBIC)
    own = f"compactobs_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={own}"})
    ours = url.render_as_string(hide_password=False)
    admin = create_engine(make_url(postgres_url).set(query={}))
    try:
        code, out, err = run("--db", ours, "db", "upgrade")
        assert code == 0, err
        with admin.connect() as connection:
            inspector = inspect(connection)
            assert VERSION_TABLE in inspector.get_table_names(schema=own)
            assert "calls" in inspector.get_table_names(schema=own)
        assert tables(postgres_url) == {"alembic_version", "orders"}  # the application's, untouched
        assert scalars(postgres_url, "SELECT version_num FROM alembic_version") == ["1f2e3d4c5b6a"]
        add_call(ours, "a", "2.5")
        code, out, err = run("--db", ours, "report", "cost", "--format", "json")
        assert code == 0, err
        assert '"calls": 1' in out and '"cost_usd": 2.5' in out
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {own} CASCADE"))
        admin.dispose()


READ_ONLY_COMMANDS = (
    ("report", "cost"),
    ("report", "cache"),
    ("report", "anomalies"),
    ("report", "ops"),
    ("report", "conversation", "ticket-42"),
    ("pricing", "check"),
    ("reprice",),
)


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_readers_never_make_tables_in_a_file_that_is_not_a_store(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = tmp_path / "app.db"
    url = f"sqlite:///{path}"
    execute(url, "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "INSERT INTO orders VALUES (7)")
    code, _, err = run("--db", url, *command)
    assert "is not a compactobs store (it holds other tables: orders)" in one_line_error(code, err)
    assert "db upgrade" in err
    assert tables(url) == {"orders"}


def test_a_report_on_an_empty_file_refuses_and_db_upgrade_makes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    url = f"sqlite:///{path}"
    code, _, err = run("--db", url, "report", "cost")
    assert "has no compactobs tables yet" in one_line_error(code, err)
    assert tables(url) == set()
    code, _, err = run("--db", url, "db", "upgrade")
    assert code == 0, err
    code, _, err = run("--db", url, "report", "cost")
    assert code == 0, err


def test_the_library_does_not_make_a_store_of_an_application_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    execute(url, "CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    with pytest.raises(store.StoreError, match="not a compactobs store"):
        store.open_database(url)
    assert tables(url) == {"orders"}
