"""Shared fixtures: an SQLite file per test, a fresh PostgreSQL schema per test on the real server, and the
expensive recordings the tests only read, built once per session (once per xdist worker).

PostgreSQL is `COMPACTOBS_TEST_POSTGRES_URL` (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
When it cannot be reached the PostgreSQL tests are skipped, except in CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from tests.recording import DemoRecording

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """compactobs' data directory (default SQLite file, spools) moved under tmp_path; no database URL set."""
    home = tmp_path / "xdg-data"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv("COMPACTOBS_DATABASE_URL", raising=False)
    return home / "compactobs"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL to an SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'db' / 'compactobs.db'}"


@contextmanager
def postgres_schema(driver: str = "psycopg") -> Iterator[str]:
    """A URL (through `driver`) to an empty schema of its own on the real PostgreSQL server, dropped after."""
    base = make_url(os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    admin = create_engine(base)
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    except SQLAlchemyError as err:
        admin.dispose()
        reason = f"PostgreSQL at {base.render_as_string(hide_password=True)} is unavailable: {err.args[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
        pytest.skip(reason)
    # Every connection made with this URL works in the new schema (tables, and alembic_version).
    url = base.set(drivername=f"postgresql+{driver}")
    url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to an empty schema of its own on the real PostgreSQL server (dropped afterwards)."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """As `postgres_url`, one schema shared by a module's tests (a store they only read)."""
    with postgres_schema() as url:
        yield url


PG_DRIVERS = ("psycopg", "psycopg2")
"""The PostgreSQL drivers compactobs supports. The store's tests run on each: a module overrides
`postgres_url` and `database_url` with the two fixtures below (see tests/store/test_exporter.py)."""


@pytest.fixture(params=PG_DRIVERS)
def postgres_url_by_driver(request: pytest.FixtureRequest) -> Iterator[str]:
    with postgres_schema(request.param) as url:
        yield url


@pytest.fixture(params=["sqlite", *(f"postgresql+{driver}" for driver in PG_DRIVERS)])
def database_url_by_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'compactobs.db'}"
        return
    with postgres_schema(request.param.split("+")[1]) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.fixture(scope="session")
def session_postgres_url() -> Iterator[str]:
    """As `postgres_url`, one schema for the whole session (a store its tests only read)."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(scope="session")
def demo_recording(session_postgres_url: str) -> DemoRecording:
    """The demo's traffic (caching, compactions, 429/529 errors, an unpriced model) through the real SDK
    against the simulator, recorded once per session; the ClickHouse and dashboard tests read it."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from compactobs import store
    from compactobs.demo import run_demo

    store.upgrade_database(session_postgres_url)
    kept = InMemorySpanExporter()
    summary = run_demo(session_postgres_url, span_processors=[SimpleSpanProcessor(kept)])
    return DemoRecording(session_postgres_url, summary, tuple(kept.get_finished_spans()))
