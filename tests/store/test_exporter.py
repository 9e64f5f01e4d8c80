"""SqlSpanExporter behind the real BatchSpanProcessor, on SQLite and on the real PostgreSQL.

Spans are made by a real SDK TracerProvider with compactobs' attribute names. Costs are worked by hand from
the list prices of claude-opus-4-8 ($5 input, $25 output, $0.50 cache read, $6.25 5-minute cache write,
per million tokens); the store keeps what the spans say, and these are the numbers it must give back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import Engine, func, select, text

from compactobs import semconv as t
from compactobs import store
from compactobs.store import SqlSpanExporter, StoreSpanProcessor, calls, iterations

MODEL = "claude-opus-4-8"
START_NS = 1_767_225_600_123_456_789  # 2026-01-01 00:00:00.123456789 UTC
END_NS = START_NS + 2_500_000_000  # 2.5 s later

# The hand-worked call: a compaction iteration, then the message iteration.
#   compaction: 180,000 in x $5/M = $0.9     + 3,500 out x $25/M = $0.0875                      = $0.9875
#   message:     23,000 in x $5/M = $0.115   + 1,000 out x $25/M = $0.025
#                40,000 cache read x $0.50/M = $0.02 + 2,000 cache write 5m x $6.25/M = $0.0125   = $0.1725
#   call: $1.16; billed tokens 203,000 in, 4,500 out, 40,000 cache read, 2,000 cache write 5m.
COMPACTION = {
    "type": "compaction", "input": 180_000, "output": 3_500, "cache_read": 0, "write_5m": 0,
    "cost": 0.9875, "cost_input": 0.9, "cost_output": 0.0875, "cost_read": 0.0, "cost_5m": 0.0,
}  # fmt: skip
MESSAGE = {
    "type": "message", "input": 23_000, "output": 1_000, "cache_read": 40_000, "write_5m": 2_000,
    "cost": 0.1725, "cost_input": 0.115, "cost_output": 0.025, "cost_read": 0.02, "cost_5m": 0.0125,
}  # fmt: skip

# The store's tests run on SQLite and on PostgreSQL through each driver compactobs supports.
@pytest.fixture
def postgres_url(postgres_url_by_driver: str) -> str:
    return postgres_url_by_driver


@pytest.fixture
def database_url(database_url_by_driver: str) -> str:
    return database_url_by_driver



def emit_call(
    tracer: trace.Tracer,
    *,
    conversation: str = "ticket-42",
    entries: tuple[dict[str, Any], ...] = (COMPACTION, MESSAGE),
    priced: bool = True,
    error: str | None = None,
    start_ns: int = START_NS,
    end_ns: int = END_NS,
    extra: dict[str, Any] | None = None,
) -> str:
    """One call as compactobs emits it: a `chat` CLIENT span with its iteration spans. Returns the call id."""
    attributes: dict[str, Any] = {
        t.SPAN_KIND: t.SPAN_KIND_CALL,
        t.PROVIDER_NAME: "anthropic",
        t.OPERATION_NAME: "chat",
        t.REQUEST_MODEL: MODEL,
        t.CONVERSATION_ID: conversation,
        t.HTTP_RESEND_COUNT: 0,
    }
    if error is None:
        tokens = {key: sum(e[key] for e in entries) for key in ("input", "output", "cache_read", "write_5m")}
        attributes |= {
            t.RESPONSE_MODEL: MODEL,
            t.RESPONSE_ID: "msg_01",
            t.RESPONSE_FINISH_REASONS: ("end_turn",),
            t.STOP_REASON: "end_turn",
            t.ANTHROPIC_REQUEST_ID: "req_01",
            t.HTTP_STATUS_CODE: 200,
            t.TOKENS_INPUT: tokens["input"],
            t.TOKENS_OUTPUT: tokens["output"],
            t.TOKENS_CACHE_READ: tokens["cache_read"],
            t.TOKENS_CACHE_WRITE_5M: tokens["write_5m"],
            t.TOKENS_CACHE_WRITE_1H: 0,
            t.WEB_SEARCH_REQUESTS: 0,
            t.COST_PRICED: priced,
            t.ITERATIONS_COUNT: len(entries),
            t.COMPACTIONS_COUNT: sum(1 for entry in entries if entry["type"] == "compaction"),
        }
        if priced:
            attributes[t.COST_USD] = round(sum(entry["cost"] for entry in entries), 10)
    else:
        attributes |= {t.ERROR_TYPE: error, t.HTTP_STATUS_CODE: 529}
    attributes |= extra or {}
    span = tracer.start_span(
        f"chat {MODEL}", kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    else:
        parent = trace.set_span_in_context(span)
        for index, entry in enumerate(entries):
            iteration = {
                t.SPAN_KIND: t.SPAN_KIND_ITERATION,
                t.PROVIDER_NAME: "anthropic",
                t.ITERATION_INDEX: index,
                t.ITERATION_TYPE: entry["type"],
                t.ITERATION_KNOWN_TYPE: True,
                t.ITERATION_DECLINED: False,
                t.RESPONSE_MODEL: MODEL,
                t.TOKENS_INPUT: entry["input"],
                t.TOKENS_OUTPUT: entry["output"],
                t.TOKENS_CACHE_READ: entry["cache_read"],
                t.TOKENS_CACHE_WRITE_5M: entry["write_5m"],
                t.TOKENS_CACHE_WRITE_1H: 0,
                t.COST_PRICED: priced,
            }
            if priced:
                iteration |= {
                    t.COST_USD: entry["cost"],
                    t.COST_INPUT: entry["cost_input"],
                    t.COST_OUTPUT: entry["cost_output"],
                    t.COST_CACHE_READ: entry["cost_read"],
                    t.COST_CACHE_WRITE_5M: entry["cost_5m"],
                    t.COST_CACHE_WRITE_1H: 0.0,
                }
            tracer.start_span(
                f"{entry['type']} {MODEL}", context=parent, attributes=iteration, start_time=end_ns
            ).end(end_time=end_ns)
    span.end(end_time=end_ns)
    return format(span.get_span_context().span_id, "016x")


def collected_spans(emit: int = 1, conversation: str | None = None, **kwargs: Any) -> list[ReadableSpan]:
    """`emit` calls' spans, collected (not exported) from a real provider."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    for i in range(emit):
        emit_call(tracer, conversation=conversation or f"conversation-{i}", **kwargs)
    return list(memory.get_finished_spans())


@pytest.fixture
def provider(data_home: Path) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    yield provider
    provider.shutdown()


def engine_for(url: str) -> Engine:
    return store.make_engine(url, create=False)


def count(url: str) -> tuple[int, int]:
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(select(func.count()).select_from(calls)).scalar_one(),
                connection.execute(select(func.count()).select_from(iterations)).scalar_one(),
            )
    finally:
        engine.dispose()


def usd(value: Any) -> Decimal:
    """Money read back, to the store's 10 places (SQLite returns it through a float)."""
    return Decimal(value).quantize(Decimal("1e-10"))


def prepare(url: str) -> None:
    """PostgreSQL is never migrated by the exporter: do what `compactobs db upgrade` does."""
    store.upgrade_database(url)


# --- rows ---------------------------------------------------------------------------------------------


def test_a_call_and_its_iterations_become_rows(
    database_url: str, provider: TracerProvider, tmp_path: Path
) -> None:
    prepare(database_url)
    processor = store.install(provider, database_url, spool_dir=tmp_path / "spool")
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    call_id = emit_call(
        tracer,
        extra={
            t.REQUEST_STREAM: True,
            t.RESPONSE_TIME_TO_FIRST_CHUNK: 0.25,
            t.STREAM_END: "read",
            t.HTTP_RESEND_COUNT: 2,
            t.COMPACTION_TRIGGER: 150_000,
            t.COMPACTION_PAUSE_AFTER: False,
            t.SERVICE_TIER: "standard",
            t.SPEED: "fast",
            t.INFERENCE_GEO: "us",
            t.PRICING_VERSION: "genai-prices 0.0.30",
            t.COST_INPUT: 1.015,
            t.COST_OUTPUT: 0.1125,
            t.COST_CACHE_READ: 0.02,
            t.COST_CACHE_WRITE_5M: 0.0125,
            t.COST_CACHE_WRITE_1H: 0.0,
            t.COST_SERVER_TOOLS: 0.0,
            t.TOKENS_TOP_LEVEL_INPUT: 23_000,
            t.TOKENS_TOP_LEVEL_OUTPUT: 1_000,
            t.USAGE_REASONING: 300,
            t.COMPACTIONS_FAILED: 0,
            t.CONTEXT_TOKENS: 65_000,
            t.BUDGET_USD: 5.0,
        },
    )
    assert processor.force_flush()

    engine = engine_for(database_url)
    with engine.connect() as connection:
        row = connection.execute(select(calls)).one()._mapping
        its = [r._mapping for r in connection.execute(select(iterations).order_by(iterations.c.idx))]
        summed = connection.execute(
            select(func.sum(iterations.c.cost_usd), func.sum(iterations.c.input_tokens))
        ).one()
    engine.dispose()

    assert row["call_id"] == call_id and len(row["trace_id"]) == 32
    assert row["service_name"] == "support-bot" and row["conversation_id"] == "ticket-42"
    assert row["start_time"].replace(tzinfo=None).isoformat() == "2026-01-01T00:00:00.123456"
    assert row["start_ms"] == 1_767_225_600_123
    assert row["end_ms"] == 1_767_225_602_623
    assert row["duration_ms"] == pytest.approx(2500.0)
    assert (row["request_model"], row["response_model"]) == (MODEL, MODEL)
    assert (row["stop_reason"], row["status"], row["error_type"]) == ("end_turn", "UNSET", None)
    assert (row["http_status"], row["attempts"]) == (200, 3)
    assert (row["stream"], row["ttft_ms"], row["stream_end"]) == (True, pytest.approx(250.0), "read")
    assert (row["compaction_trigger"], row["compaction_pause_after"]) == (150_000, False)
    assert (row["service_tier"], row["speed"], row["inference_geo"]) == ("standard", "fast", "us")
    assert (row["input_tokens"], row["output_tokens"]) == (203_000, 4_500)
    assert (row["cache_read_tokens"], row["cache_write_5m_tokens"]) == (40_000, 2_000)
    assert row["cache_write_1h_tokens"] == 0
    assert (row["top_level_input_tokens"], row["top_level_output_tokens"]) == (23_000, 1_000)
    assert (row["reasoning_tokens"], row["web_search_requests"], row["context_tokens"]) == (300, 0, 65_000)
    assert (row["iterations_count"], row["compactions_count"], row["compactions_failed"]) == (2, 1, 0)
    assert usd(row["cost_usd"]) == Decimal("1.16") and row["priced"] is True
    assert row["pricing_version"] == "genai-prices 0.0.30"
    assert usd(row["cost_input_usd"]) + usd(row["cost_output_usd"]) == Decimal("1.1275")
    assert usd(row["budget_usd"]) == Decimal("5")

    assert [(r["idx"], r["type"], r["model"]) for r in its] == [
        (0, "compaction", MODEL),
        (1, "message", MODEL),
    ]
    assert [usd(r["cost_usd"]) for r in its] == [Decimal("0.9875"), Decimal("0.1725")]
    assert [r["start_ms"] for r in its] == [row["end_ms"]] * 2
    assert (its[1]["cache_read_tokens"], its[1]["cache_write_5m_tokens"]) == (40_000, 2_000)
    assert usd(its[1]["cost_cache_read_usd"]) == Decimal("0.02")
    # The iterations are the bill: in SQL they sum to the call's totals.
    assert usd(summed[0]) == Decimal("1.16") and summed[1] == 203_000


def test_postgres_keeps_the_cost_the_pricer_meant(
    postgres_url: str, provider: TracerProvider, tmp_path: Path
) -> None:
    """0.1 + 0.2 as floats is 0.30000000000000004; the shortest repr, 0.30000000000000004, rounds to 0.3 at
    10 places, and 1.1275 is 1.1275 exactly, not 1.12749999999999994671."""
    prepare(postgres_url)
    processor = store.install(provider, postgres_url, spool_dir=tmp_path / "spool")
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    emit_call(tracer, conversation="a", extra={t.COST_USD: 0.1 + 0.2})
    emit_call(tracer, conversation="b", extra={t.COST_USD: 1.1275})
    assert processor.force_flush()
    engine = engine_for(postgres_url)
    with engine.connect() as connection:
        costs = dict(connection.execute(select(calls.c.conversation_id, calls.c.cost_usd)).all())
        total = connection.execute(select(func.sum(calls.c.cost_usd))).scalar_one()
    engine.dispose()
    assert costs == {"a": Decimal("0.3000000000"), "b": Decimal("1.1275000000")}
    assert total == Decimal("1.4275")


def test_failed_and_unpriced_calls(database_url: str, provider: TracerProvider, tmp_path: Path) -> None:
    prepare(database_url)
    processor = store.install(provider, database_url, spool_dir=tmp_path / "spool")
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    failed = emit_call(tracer, conversation="failed", error="overloaded_error")
    unpriced = emit_call(tracer, conversation="unpriced", entries=(MESSAGE,), priced=False)
    assert processor.force_flush()
    engine = engine_for(database_url)
    with engine.connect() as connection:
        rows = {r.call_id: r for r in connection.execute(select(calls))}
        unpriced_iterations = connection.execute(
            select(iterations.c.priced, iterations.c.cost_usd).where(iterations.c.call_id == unpriced)
        ).all()
    engine.dispose()
    fail, unp = rows[failed], rows[unpriced]
    assert (fail.status, fail.error_type, fail.http_status) == ("ERROR", "overloaded_error", 529)
    assert (fail.input_tokens, fail.cost_usd, fail.priced) == (None, None, None)
    assert (unp.priced, unp.cost_usd, unp.input_tokens) == (False, None, 23_000)
    assert unpriced_iterations == [(False, None)]


def test_every_other_span_is_ignored(sqlite_url: str, provider: TracerProvider, tmp_path: Path) -> None:
    processor = store.install(provider, sqlite_url, spool_dir=tmp_path / "spool")
    other = provider.get_tracer("my-app")
    with other.start_as_current_span("GET /"):
        # A span of another library that happens to carry the attribute, and a compactobs span without it.
        other.start_span("lookalike", attributes={t.SPAN_KIND: t.SPAN_KIND_CALL}).end()
        provider.get_tracer(t.INSTRUMENTATION_SCOPE).start_span("unrelated").end()
        emit_call(provider.get_tracer(t.INSTRUMENTATION_SCOPE))
    assert processor.force_flush()
    assert count(sqlite_url) == (1, 2)


def test_the_same_spans_exported_twice_are_stored_once(database_url: str, tmp_path: Path) -> None:
    prepare(database_url)
    spans = collected_spans(emit=3)
    first = SqlSpanExporter(database_url, spool_dir=tmp_path / "spool")
    first.export(spans)
    first.export(spans + spans)  # again, and twice within one batch
    first.shutdown()
    second = SqlSpanExporter(database_url, spool_dir=tmp_path / "spool")  # as another process would
    second.export(list(reversed(spans)))
    second.shutdown()
    assert count(database_url) == (3, 6)
    assert first.stats.written == 9 and first.stats.spooled == 0


# --- outages ------------------------------------------------------------------------------------------


class Proxy:
    """A TCP forwarder on a fixed local port that can be cut and restored: a database that goes away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        with self._lock:
            # shutdown() before close(): a close alone leaves a thread blocked in accept() listening.
            for sock in [*([self._listener] if self._listener else []), *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._listener = None
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_postgres_unreachable_during_traffic_then_back(
    postgres_url: str, provider: TracerProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import make_url

    prepare(postgres_url)
    direct = make_url(postgres_url)
    proxy = Proxy((direct.host or "127.0.0.1", direct.port or 5432))
    proxy.start()
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    exporter = SqlSpanExporter(proxied, spool_dir=tmp_path / "spool")
    processor = StoreSpanProcessor(exporter, schedule_delay_millis=20)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    emitted = 0

    def traffic(seconds: float) -> None:
        nonlocal emitted
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            emit_call(tracer, conversation=f"c{emitted}")
            emitted += 1
            time.sleep(0.002)

    caplog.set_level(logging.WARNING, logger="compactobs.store")
    traffic(0.3)
    proxy.stop()
    traffic(0.6)  # the database is gone: rows go to the spool
    assert not processor.force_flush(2000)
    assert exporter.stats.spooled > 0
    assert count(postgres_url)[0] < emitted
    proxy.start()
    traffic(0.3)
    assert processor.force_flush()
    proxy.stop()

    assert count(postgres_url) == (emitted, 2 * emitted)
    assert exporter.stats.replayed == exporter.stats.spooled
    assert exporter.stats.written + exporter.stats.replayed == emitted
    assert exporter.spool.segments() == []
    # One warning for the whole outage, one line.
    outage = [r.getMessage() for r in caplog.records if "keeping rows in the spool" in r.getMessage()]
    assert len(outage) == 1 and "\n" not in outage[0], outage


def test_locked_sqlite_spools_then_replays(sqlite_url: str, tmp_path: Path) -> None:
    exporter = SqlSpanExporter(sqlite_url, spool_dir=tmp_path / "spool", busy_timeout_s=0.1)
    exporter.check()  # creates the file at head
    path = sqlite_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's long write
    exporter.export(collected_spans(emit=2))
    assert exporter.stats.spooled == 2 and len(exporter.spool.segments()) == 1
    holder.execute("ROLLBACK")
    holder.close()
    assert exporter.force_flush()
    assert count(sqlite_url) == (2, 4)
    exporter.shutdown()


def test_bad_url_keeps_the_app_running_and_rows_in_the_spool(
    provider: TracerProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="compactobs.store")
    bad = "postgresql+psycopg://u@host:notaport/db"
    processor = store.install(provider, bad, spool_dir=tmp_path / "spool")
    emit_call(provider.get_tracer(t.INSTRUMENTATION_SCOPE))
    assert not processor.force_flush()
    assert processor.exporter.stats.spooled == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("malformed database URL" in m and "\n" not in m for m in messages), messages
    with pytest.raises(store.StoreError, match="malformed database URL"):
        processor.exporter.check()


def test_empty_postgres_is_not_migrated_rows_wait_until_upgraded(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs.store")
    exporter = SqlSpanExporter(postgres_url, spool_dir=tmp_path / "spool")
    exporter.export(collected_spans(emit=2))
    assert exporter.stats.spooled == 2
    assert any("db upgrade" in r.getMessage() for r in caplog.records)
    with pytest.raises(store.StoreError, match="no compactobs tables yet"):
        exporter.check()
    store.upgrade_database(postgres_url)
    assert exporter.force_flush()
    assert count(postgres_url) == (2, 4)
    exporter.shutdown()


def test_schema_newer_than_the_code_spools(database_url: str, tmp_path: Path) -> None:
    prepare(database_url)
    engine = engine_for(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE compactobs_alembic_version SET version_num = 'ffff_from_the_future'"))
    engine.dispose()
    exporter = SqlSpanExporter(database_url, spool_dir=tmp_path / "spool")
    exporter.export(collected_spans())
    assert exporter.stats.spooled == 1 and exporter.stats.written == 0
    with pytest.raises(store.StoreError, match="newer than this compactobs"):
        exporter.check()
    exporter.shutdown()


def test_spool_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="compactobs.store")
    closed = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    exporter = SqlSpanExporter(closed, spool_dir=tmp_path / "spool", spool_max_bytes=20_000)
    spans = collected_spans()
    for _ in range(30):
        exporter.export(spans)
    assert exporter.stats.dropped > 0 and exporter.stats.spooled + exporter.stats.dropped == 30
    assert exporter.spool.size() <= 20_000
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1
    exporter.shutdown()


def test_values_a_driver_cannot_bind_are_coerced(database_url: str, tmp_path: Path) -> None:
    prepare(database_url)
    exporter = SqlSpanExporter(database_url, spool_dir=tmp_path / "spool")
    good = collected_spans(emit=2)
    # Values coerced to their column's type: a NUL in a string (PostgreSQL refuses it), a sequence where a
    # string belongs (no driver binds it). (Refused rows and out-of-range values: tests/store/test_faults.py.)
    nul = collected_spans(conversation="x\x00y")
    sequence = collected_spans(extra={t.CONVERSATION_ID: ("a", "b")})
    exporter.export(good + nul + sequence)
    assert exporter.stats.rejected == 0 and exporter.stats.spooled == 0
    assert count(database_url) == (4, 8)
    engine = engine_for(database_url)
    with engine.connect() as connection:
        conversations = set(connection.execute(select(calls.c.conversation_id)).scalars())
    engine.dispose()
    assert conversations == {"conversation-0", "conversation-1", "xy", "a,b"}
    exporter.shutdown()


# --- files --------------------------------------------------------------------------------------------


def test_sqlite_file_and_spool_are_private(data_home: Path) -> None:
    exporter = SqlSpanExporter("sqlite:///" + str(data_home / "new" / "compactobs.db"), busy_timeout_s=0.1)
    exporter.check()
    assert stat.S_IMODE((data_home / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_home / "new" / "compactobs.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((data_home / "new" / "compactobs.db-wal").stat().st_mode) == 0o600
    exporter.shutdown()

    down = SqlSpanExporter("postgresql+psycopg://postgres@127.0.0.1:1/test")
    down.export(collected_spans())
    assert down.spool.directory.parent == data_home / "spool"
    [segment] = down.spool.segments()
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE(down.spool.directory.stat().st_mode) == 0o700
    down.shutdown()


def test_default_url(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.default_database_url() == f"sqlite:///{data_home / 'compactobs.db'}"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/is/ignored")
    home = Path.home() / ".local/share/compactobs"
    assert store.default_database_url() == f"sqlite:///{home / 'compactobs.db'}"
    monkeypatch.setenv("COMPACTOBS_DATABASE_URL", "postgresql+psycopg://db.internal/obs")
    assert store.default_database_url() == "postgresql+psycopg://db.internal/obs"


def test_install_uses_the_default_database(data_home: Path, provider: TracerProvider) -> None:
    processor = store.install(provider)
    emit_call(provider.get_tracer(t.INSTRUMENTATION_SCOPE))
    assert processor.force_flush()
    assert count(f"sqlite:///{data_home / 'compactobs.db'}") == (1, 2)
    store.shutdown_all()
    assert processor.exporter.export(collected_spans()).name == "FAILURE"  # closed


def test_hook_runs_once_per_store(data_home: Path) -> None:
    providers = [TracerProvider() for _ in range(2)]
    processors = [store.install(p, spool_dir=data_home / "spool") for p in providers]
    for p in providers:
        emit_call(p.get_tracer(t.INSTRUMENTATION_SCOPE), conversation=str(id(p)))
    store.shutdown_all()  # what compactobs registers for interpreter exit and SIGTERM
    store.shutdown_all()
    assert count(f"sqlite:///{data_home / 'compactobs.db'}") == (2, 4)
    assert all(p.exporter.export([]).name == "FAILURE" for p in processors)


def test_a_full_spool_drains_through_exports_once_the_database_is_back(
    sqlite_url: str, tmp_path: Path
) -> None:
    exporter = SqlSpanExporter(
        sqlite_url, spool_dir=tmp_path / "spool", spool_max_bytes=8_000, busy_timeout_s=0.05
    )
    exporter.check()
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    for i in range(20):  # well within the first retry pause (0.5 s): one failed attempt only
        exporter.export(collected_spans(conversation=f"outage-{i}"))
    holder.execute("ROLLBACK")
    holder.close()
    assert exporter.stats.dropped > 0 and exporter.stats.spooled > 0
    time.sleep(0.6)
    exporter.export(collected_spans(conversation="after"))  # replays the spool, then writes its own rows
    assert exporter.stats.replayed == exporter.stats.spooled and exporter.stats.written == 1
    assert count(sqlite_url) == (exporter.stats.spooled + 1, 2 * (exporter.stats.spooled + 1))
    exporter.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_through_connections_of_its_own(database_url: str, tmp_path: Path) -> None:
    """A pre-fork server: the parent has written (its pool holds a connection), then forks a worker; both
    go on writing, nothing is spooled or lost. (Two processes on one pooled socket fail only when their
    writes interleave, which a test cannot arrange reliably: the exporter drops the inherited pool.)"""
    prepare(database_url)
    exporter = SqlSpanExporter(database_url, spool_dir=tmp_path / "spool")
    exporter.export(collected_spans(emit=2, conversation="parent"))
    pid = os.fork()
    if pid == 0:
        ok = exporter.export(collected_spans(emit=3, conversation="child")) == SpanExportResult.SUCCESS
        os._exit(0 if ok and exporter.stats.spooled == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's own pooled connection still works after its child used the database.
    assert exporter.export(collected_spans(emit=1, conversation="parent")) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert exporter.stats.spooled == 0
    assert count(database_url) == (6, 12)
