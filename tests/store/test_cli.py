"""`compactobs db upgrade | db status`, as a user types them: right answers, and one-line errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from compactobs import store
from tests.cli import one_line_error, run


# The store's tests run on SQLite and on PostgreSQL through each driver compactobs supports.
@pytest.fixture
def postgres_url(postgres_url_by_driver: str) -> str:
    return postgres_url_by_driver


@pytest.fixture
def database_url(database_url_by_driver: str) -> str:
    return database_url_by_driver



def test_upgrade_then_status(database_url: str) -> None:
    head = store.head_revision()
    code, out, _ = run("--db", database_url, "db", "upgrade")
    assert code == 0 and f"to revision {head}" in out
    code, out, _ = run("--db", database_url, "db", "upgrade")
    assert code == 0 and f"already at revision {head}" in out
    code, out, _ = run("--db", database_url, "db", "status")
    assert code == 0
    assert f"schema:   {head} (this compactobs: {head}) - current" in out
    assert "spool:    empty" in out
    assert "rollups:  current" in out

    # Two calls in the 09:00 and 09:15 slots: two slots to recompute, until a cost report does it.
    engine = store.make_engine(database_url, writer=True)
    with engine.begin() as connection:
        for call_id, at_ms in (("a", 1_748_768_400_000), ("b", 1_748_769_300_000)):  # 2025-06-01 09:00, 09:15
            connection.execute(
                store.calls.insert(),
                {
                    "call_id": call_id,
                    "trace_id": call_id * 32,
                    "start_time": datetime.fromtimestamp(at_ms / 1000, timezone.utc),
                    "start_ms": at_ms,
                    "end_ms": at_ms + 1000,
                    "duration_ms": 1000.0,
                    "status": "OK",
                    "attempts": 1,
                },
            )
    engine.dispose()
    code, out, _ = run("--db", database_url, "db", "status")
    assert code == 0 and "rollups:  2 slot(s) of 15 minutes to recompute" in out
    code, out, _ = run("--db", database_url, "report", "cost", "--format", "json")
    assert code == 0 and '"calls": 2' in out
    code, out, _ = run("--db", database_url, "db", "status")
    assert code == 0 and "rollups:  current" in out


def test_default_database_is_the_embedded_sqlite_file(data_home: Path) -> None:
    code, out, err = run("db", "status")
    assert "no database file yet" in out
    assert "created on first use, or run `compactobs db upgrade`" in one_line_error(code, err)
    assert not data_home.exists()  # status created nothing
    code, out, _ = run("db", "upgrade")
    assert code == 0 and str(data_home / "compactobs.db") in out


def test_empty_postgres_says_exactly_what_to_run(postgres_url: str) -> None:
    code, out, err = run("--db", postgres_url, "db", "status")
    assert "- empty" in out
    driver = postgres_url.split("://")[0]
    assert f"compactobs --db '{driver}://postgres@" in one_line_error(code, err)
    assert "db upgrade`" in err


def test_schema_newer_than_the_code(sqlite_url: str) -> None:
    store.upgrade_database(sqlite_url)
    engine = store.make_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE compactobs_alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    for command in ("status", "upgrade"):
        code, _, err = run("--db", sqlite_url, "db", command)
        assert "upgrade compactobs" in one_line_error(code, err)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "malformed database URL 'not a url': use e.g. sqlite:////"),
        ("postgresql://u:secret@h:port/db", "malformed database URL 'postgresql://u:***@h:port/db'"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("postgresql+pg8000://u@h/db", "cannot write through the PostgreSQL driver 'pg8000'"),
        ("notaurl", "malformed database URL 'notaurl'"),
        ("postgresql+nope://u@h/db", "unknown database driver 'postgresql+nope'"),
        ("postgresql+psycopg://postgres@127.0.0.1:1/test", "cannot connect to PostgreSQL at 127.0.0.1:1"),
        ("postgresql+psycopg://no_such_role@127.0.0.1:5432/test", "refused the credentials of no_such_role"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db", "createdb no_such_db"),
        ("sqlite:////proc/compactobs/x.db", "cannot create the SQLite file /proc/compactobs/x.db"),
    ],
)
def test_bad_input_is_one_line_with_the_fix(url: str, expected: str) -> None:
    code, _, err = run("--db", url, "db", "upgrade")
    assert expected in one_line_error(code, err)
    assert "secret" not in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["db", "upgrade", "--revison", "head"], "No such option '--revison'"),
        (["--bogus"], "No such option '--bogus'. (see `compactobs --help`)"),
        (["nosuch"], "No such command 'nosuch'"),
        (["pricing", "show"], "Missing argument 'MODEL'. (see `compactobs pricing show --help`)"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    code, _, err = run(*args)
    assert expected in one_line_error(code, err)


def test_a_group_without_a_command_shows_its_help() -> None:
    code, out, err = run("report")
    assert code == 2 and "Usage: compactobs report" in out + err and "Error:" not in out + err


def test_python_dash_m_is_the_same_cli(sqlite_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compactobs", "--db", sqlite_url, "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "to revision" in result.stdout


def test_a_report_on_a_missing_sqlite_file_is_an_error(tmp_path: Path, data_home: Path) -> None:
    missing = tmp_path / "typo" / "compactobs.db"
    code, _, err = run("--db", f"sqlite:///{missing}", "report", "cost")
    assert f"no database at {missing}" in one_line_error(code, err)
    assert not missing.parent.exists()
    # The embedded default store is another matter: created empty, so a fresh machine gets an empty report.
    code, out, _ = run("report", "cost")
    assert code == 0 and "No calls recorded" in out
    assert (data_home / "compactobs.db").exists()


def test_ctrl_c_during_a_report_exits_130(postgres_url: str) -> None:
    """SIGINT while a report waits on the database: "Interrupted", exit code 130 (128 + SIGINT, what shells
    expect), no traceback. The report is held on a real lock: another transaction holds `calls` exclusively
    until the signal has been sent (psycopg2 waits in libpq, so its interrupt lands when the wait ends)."""
    import signal
    import time
    import uuid

    from sqlalchemy import create_engine, make_url

    assert run("--db", postgres_url, "db", "upgrade")[0] == 0
    name = f"compactobs-sigint-{uuid.uuid4().hex[:8]}"
    reporter_url = make_url(postgres_url).update_query_dict({"application_name": name})
    holder = create_engine(postgres_url)
    try:
        with holder.connect() as locker, holder.connect() as watcher:
            locker.execute(text("LOCK TABLE calls IN ACCESS EXCLUSIVE MODE"))
            command = ["compactobs", "--db", reporter_url.render_as_string(False), "report", "cost"]
            report = subprocess.Popen(
                [sys.executable, "-m", *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = :name AND wait_event_type = 'Lock'"
            )
            deadline = time.monotonic() + 60
            while not watcher.execute(waiting, {"name": name}).scalar() and report.poll() is None:
                watcher.rollback()  # pg_stat_activity is read once per transaction
                assert time.monotonic() < deadline, "the report never waited on the lock"
                time.sleep(0.05)
            assert report.poll() is None, report.communicate()
            report.send_signal(signal.SIGINT)
            time.sleep(0.5)
            locker.rollback()
            out, err = report.communicate(timeout=60)
    finally:
        holder.dispose()
    assert report.returncode == 130, (out, err)
    assert err.strip().endswith("Interrupted"), err
    assert "Traceback" not in err
