"""The store under faults, with the real SDK, real PostgreSQL and real SQLite files: a held table lock, a
server that stops answering, SQLite locked by another process, SIGTERM under load, out-of-range values.
Each asserts 0 lost, 0 doubled, every call stored with all its iterations (see tests/faults.py)."""

from __future__ import annotations

import contextlib
import signal
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import make_url, select

from compactobs import store
from compactobs.store import calls, iterations
from tests.faults import (
    FreezingProxy,
    outcome,
    postgres_table_lock,
    run_fault,
    sigterm_under_load,
    sqlite_locked_by_another_process,
)

ROOT = Path(__file__).resolve().parent.parent.parent


# The store's tests run on SQLite and on PostgreSQL through each driver compactobs supports.
@pytest.fixture
def postgres_url(postgres_url_by_driver: str) -> str:
    return postgres_url_by_driver


@pytest.fixture
def database_url(database_url_by_driver: str) -> str:
    return database_url_by_driver


def assert_whole(result: object) -> None:
    assert (result.lost, result.doubled, result.incomplete) == (0, 0, 0), result  # type: ignore[attr-defined]


def test_a_held_table_lock_spools_then_everything_is_stored(postgres_url: str, tmp_path: Path) -> None:
    store.upgrade_database(postgres_url)
    result = run_fault(
        postgres_url,
        tmp_path / "spool",
        lambda: postgres_table_lock(postgres_url),
        rate=100,
        before_s=0.3,
        during_s=1.5,
        after_s=0.3,
        write_timeout_s=0.3,
    )
    assert_whole(result)
    assert result.spooled > 0  # the lock timed the writes out: they went to the spool, not nowhere


def test_a_server_that_stops_answering_spools_then_everything_is_stored(
    postgres_url: str, tmp_path: Path
) -> None:
    store.upgrade_database(postgres_url)
    direct = make_url(postgres_url)
    proxy = FreezingProxy((direct.host or "127.0.0.1", direct.port or 5432))

    @contextlib.contextmanager
    def frozen():  # type: ignore[no-untyped-def]
        proxy.freeze()
        try:
            yield
        finally:
            proxy.thaw()

    try:
        result = run_fault(
            proxy.url(postgres_url),
            tmp_path / "spool",
            frozen,
            rate=100,
            before_s=0.3,
            # Past the next export (<= 1 s), its cut (bound 2 x 0.3 s + 1 s) and the reconnect's 2 s timeout.
            during_s=4.8,
            after_s=0.3,
            write_timeout_s=0.3,
        )
    finally:
        proxy.close()
    assert_whole(result)
    assert result.spooled > 0


def test_sqlite_locked_by_another_process_spools_then_everything_is_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    store.upgrade_database(sqlite_url)
    result = run_fault(
        sqlite_url,
        tmp_path / "spool",
        lambda: sqlite_locked_by_another_process(sqlite_url),
        rate=200,
        before_s=0.3,
        during_s=1.5,
        after_s=0.3,
        write_timeout_s=0.2,
    )
    assert_whole(result)
    assert result.spooled > 0


def test_what_would_overflow_the_queue_goes_to_the_spool_and_is_counted(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A queue of 30 spans (10 calls) against a locked database: the rest is spooled by the ending thread."""
    from tests.faults import App

    store.upgrade_database(sqlite_url)
    app = App(sqlite_url, tmp_path / "spool", write_timeout_s=1.0, calls=200)
    app.processor.max_queue_size = 30
    app.processor.max_export_batch_size = 30
    try:
        with sqlite_locked_by_another_process(sqlite_url):
            app.traffic(1.0, 150, "overflow")
        app.drain()
        overflowed = app.processor.exporter.stats.overflowed
        result = outcome(sqlite_url, app.conversations, app.spooled)
    finally:
        app.close()
    assert overflowed > 0
    assert_whole(result)


def test_sigterm_under_load_keeps_every_call_that_returned(sqlite_url: str, tmp_path: Path) -> None:
    store.upgrade_database(sqlite_url)
    run = sigterm_under_load(sqlite_url, tmp_path, after_calls=300)
    assert run.returncode == -signal.SIGTERM, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.returned) >= 300
    result = outcome(sqlite_url, run.returned, 0)
    assert_whole(result)


# --- out-of-range values --------------------------------------------------------------------------------


def test_out_of_range_values_are_cleared_and_flagged_alike_on_both_databases(
    database_url: str, tmp_path: Path
) -> None:
    """Worked by hand, claude-opus-4-8 at $5/M input, $25/M output:
    - 10^16 input tokens: $5 x 10^10, beyond NUMERIC(20,10) (< 10^10): costs cleared, the tokens kept;
    - 2^63 input tokens: beyond BIGINT (2^63 - 1): the count and the costs cleared;
    - 1,000 in, 100 out: $0.005 + $0.0025 = $0.0075, stored as it is."""
    import anthropic
    from opentelemetry.sdk.trace import TracerProvider

    import compactobs
    from compactobs.testing import Reply, Simulator, message

    store.upgrade_database(database_url)
    provider = TracerProvider()
    compactobs.configure(tracer_provider=provider, store=False)
    processor = store.install(provider, database_url, spool_dir=tmp_path / "spool")
    usages = {
        "huge-cost": {"input_tokens": 10**16, "output_tokens": 0},
        "huge-count": {"input_tokens": 2**63, "output_tokens": 0},
        "normal": {"input_tokens": 1000, "output_tokens": 100},
    }
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            for name, usage in usages.items():
                sim.enqueue(Reply(message(usage=usage)))
                with compactobs.conversation(name):
                    client.messages.create(
                        model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                    )
            compactobs.flush()
        assert processor.exporter.stats.rejected == 0 and processor.exporter.stats.spooled == 0
    finally:
        compactobs.shutdown()
        provider.shutdown()
    engine = store.make_engine(database_url, create=False)
    with engine.connect() as connection:
        rows = {
            r.conversation_id: r
            for r in connection.execute(
                select(
                    calls.c.conversation_id,
                    calls.c.call_id,
                    calls.c.input_tokens,
                    calls.c.cost_usd,
                    calls.c.out_of_range,
                )
            )
        }
        its = {
            r.call_id: r
            for r in connection.execute(
                select(iterations.c.call_id, iterations.c.input_tokens, iterations.c.out_of_range)
            )
        }
    engine.dispose()
    assert set(rows) == set(usages) and len(its) == 3  # every call, each with its one iteration
    cost, count, normal = rows["huge-cost"], rows["huge-count"], rows["normal"]
    assert (cost.input_tokens, cost.cost_usd) == (10**16, None)
    assert cost.out_of_range.split(",") == ["cost_usd", "cost_input_usd"]
    assert (count.input_tokens, count.cost_usd) == (None, None)
    # The billed input, the top-level input and the context after the call are all 2^63.
    assert count.out_of_range.split(",") == [
        "input_tokens",
        "top_level_input_tokens",
        "context_tokens",
        "cost_usd",
        "cost_input_usd",
    ]
    assert its[count.call_id].input_tokens is None and "input_tokens" in its[count.call_id].out_of_range
    assert its[cost.call_id].input_tokens == 10**16
    assert Decimal(str(normal.cost_usd)).quantize(Decimal("1e-10")) == Decimal("0.0075")
    assert normal.out_of_range is None and its[normal.call_id].out_of_range is None


# --- rows the database refuses, and the spool commands ---------------------------------------------------


def _refuse(url: str, conversation: str) -> None:
    """A rule of the database (a DBA's trigger) that refuses one conversation's calls."""
    engine = store.make_engine(url, create=False)
    with engine.begin() as connection:
        if url.startswith("sqlite"):
            connection.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE INSERT ON calls WHEN NEW.conversation_id = '{conversation}' "
                "BEGIN SELECT RAISE(ABORT, 'refused by policy'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.conversation_id = "
                f"'{conversation}' THEN RAISE EXCEPTION 'refused by policy'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
    engine.dispose()


def _allow(url: str) -> None:
    engine = store.make_engine(url, create=False)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER refuse" + ("" if url.startswith("sqlite") else " ON calls"))
    engine.dispose()


def test_a_refused_call_is_set_aside_whole_shown_and_replayed_once_fixed(
    database_url: str, data_home: Path
) -> None:
    from tests.cli import run
    from tests.store.test_exporter import collected_spans, count

    store.upgrade_database(database_url)
    _refuse(database_url, "bad")
    exporter = store.SqlSpanExporter(database_url)
    exporter.export(collected_spans(emit=3) + collected_spans(conversation="bad"))
    exporter.shutdown()
    assert exporter.stats.rejected == 1
    assert count(database_url) == (3, 6)  # the refused call's iterations are set aside with it, not stored

    code, out, err = run("--db", database_url, "db", "status")
    assert code == 0, err
    assert "set aside: 1 call(s) the database refused" in out and "refused by policy" in out, out
    code, out, _ = run("--db", database_url, "spool", "show")
    assert "1 calls, 2 iterations: " in out and "refused by policy" in out, out

    code, out, _ = run("--db", database_url, "spool", "replay")  # waiting rows only: the set-aside stay
    assert code == 0 and count(database_url) == (3, 6)
    _allow(database_url)
    code, out, err = run("--db", database_url, "spool", "replay", "--rejected")
    assert code == 0, err
    assert "1 call(s) written" in out
    assert count(database_url) == (4, 8)
    code, out, _ = run("--db", database_url, "spool", "status")
    assert out.splitlines() == [f"spool:    empty ({store.spool_for(database_url).directory})"]


def test_spool_bound_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from compactobs.store.spool import DEFAULT_SPOOL_MAX_BYTES, spool_max_bytes

    monkeypatch.setenv("COMPACTOBS_SPOOL_MAX_BYTES", "64M")
    assert spool_max_bytes() == 64 * 1024 * 1024
    exporter = store.SqlSpanExporter(f"sqlite:///{tmp_path / 'x.db'}", spool_dir=tmp_path / "spool")
    assert exporter.spool.max_bytes == 64 * 1024 * 1024
    exporter.shutdown()
    assert spool_max_bytes(1000) == 1000  # instrument(spool_max_bytes=...) wins
    monkeypatch.setenv("COMPACTOBS_SPOOL_MAX_BYTES", "lots")
    assert spool_max_bytes() == DEFAULT_SPOOL_MAX_BYTES == 256 * 1024 * 1024
