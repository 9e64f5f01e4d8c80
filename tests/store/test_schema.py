"""Schema revisions on SQLite and the real PostgreSQL: empty to head and back, no drift, who migrates what."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from compactobs import store
from compactobs.store.schema import VERSION_TABLE


# The store's tests run on SQLite and on PostgreSQL through each driver compactobs supports.
@pytest.fixture
def postgres_url(postgres_url_by_driver: str) -> str:
    return postgres_url_by_driver


@pytest.fixture
def database_url(database_url_by_driver: str) -> str:
    return database_url_by_driver



def table_names(url: str) -> set[str]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_empty_to_head_and_back_down(database_url: str) -> None:
    head = store.head_revision()
    assert store.upgrade_database(database_url) == (None, head)
    assert table_names(database_url) == {
        "compactobs_alembic_version",
        "calls",
        "iterations",
        "rollups",
        "rollup_dirty",
        "rollup_open_calls",
        "guard_spend",
        "alert_state",
        "api_requests",
    }
    assert store.upgrade_database(database_url) == (head, head)  # idempotent

    engine = store.make_engine(database_url, writer=True)
    try:
        assert store.downgrade(engine, "base") == (head, None)
        assert table_names(database_url) == {"compactobs_alembic_version"}
        status = store.schema_status(engine)
        assert (status.state, status.current) == ("empty", None)
    finally:
        engine.dispose()


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    """What autogenerate would write for a new revision: nothing."""
    store.upgrade_database(database_url)
    engine = store.make_engine(database_url)
    try:
        with engine.connect() as connection:
            opts = {"compare_type": True, "version_table": VERSION_TABLE}
            context = MigrationContext.configure(connection, opts=opts)
            assert compare_metadata(context, store.metadata) == []
    finally:
        engine.dispose()


def test_an_empty_sqlite_file_is_brought_to_head_by_the_library(sqlite_url: str) -> None:
    engine = store.open_database(sqlite_url)
    try:
        status = store.schema_status(engine)
        assert (status.state, status.current) == ("current", store.head_revision())
    finally:
        engine.dispose()


def test_postgres_is_never_migrated_unasked(postgres_url: str) -> None:
    with pytest.raises(store.StoreError) as raised:
        store.open_database(postgres_url)
    message = str(raised.value)
    assert "no compactobs tables yet" in message and "db upgrade" in message and "\n" not in message
    assert postgres_url.split("://")[0] + "://postgres@" in message  # the exact command names this database
    assert table_names(postgres_url) == set()


def test_a_schema_newer_than_the_code_is_refused_not_touched(database_url: str) -> None:
    store.upgrade_database(database_url)
    engine = store.make_engine(database_url, writer=True)
    with engine.begin() as connection:
        connection.execute(text("UPDATE compactobs_alembic_version SET version_num = '9999_future'"))
    try:
        with pytest.raises(store.StoreError, match="9999_future, newer than this compactobs knows"):
            store.open_database(database_url)
        with pytest.raises(store.StoreError, match="newer than this compactobs"):
            store.upgrade_database(database_url)
        with engine.connect() as connection:
            version = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        assert version == "9999_future"
    finally:
        engine.dispose()


def test_tables_not_made_by_the_migrations_are_left_alone(sqlite_url: str) -> None:
    engine = store.make_engine(sqlite_url, writer=True)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE calls (id INTEGER)"))
    engine.dispose()
    with pytest.raises(store.StoreError, match="did not make"):
        store.open_database(sqlite_url)


def test_status_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'compactobs.db'}"
    assert store.database_status(url) is None
    assert not (tmp_path / "missing").exists()


def test_migrations_ship_inside_the_package() -> None:
    """`compactobs db upgrade` runs from an installed wheel: the scripts are package modules, and the
    configuration is built in code (no alembic.ini needed)."""
    from compactobs.store.schema import MIGRATIONS_DIR

    assert MIGRATIONS_DIR.parent.name == "compactobs" and (MIGRATIONS_DIR / "__init__.py").exists()
    assert (MIGRATIONS_DIR / "versions" / "__init__.py").exists()
    assert list((MIGRATIONS_DIR / "versions").glob(f"{store.head_revision()}_*.py"))


def test_revisions_read_from_the_scripts_agree_with_alembic() -> None:
    """The schema status reads the revisions from the scripts' source, without Alembic: the same graph."""
    from alembic.script import ScriptDirectory

    from compactobs.store.schema import alembic_config, revision_graph

    scripts = ScriptDirectory.from_config(alembic_config())
    assert revision_graph() == {s.revision: s.down_revision for s in scripts.walk_revisions()}
    assert store.head_revision() == scripts.get_current_head()
