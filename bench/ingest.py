"""Calls per second persisted through SqlSpanExporter, against raw SQLAlchemy Core in the same run.

Each call is one `chat` span and three iteration spans, made before any timing by a real SDK
TracerProvider (a collecting processor keeps the ReadableSpans). For each database, rounds interleave:
  exporter   SqlSpanExporter.export(batch) for every batch, then force_flush(): the spans are mapped to
             rows and upserted (INSERT ... ON CONFLICT DO NOTHING), one transaction per batch
  baseline   SQLAlchemy Core `connection.execute(insert(table), rows)` (executemany) of the same rows,
             already built as dicts before timing, one transaction per batch
Each round gets a fresh database (an SQLite file; a PostgreSQL schema), migrated before timing. The
figure is the median over rounds; `ratio` is exporter / baseline throughput (>= 0.5 is "within 2x").

Run: `python bench/ingest.py [--calls 20000] [--rounds 5] [--batch 2048] [--conversations 97]`; PostgreSQL is
COMPACTOBS_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test), skipped with
--no-postgres.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine, Numeric, create_engine, func, insert, select, text

from compactobs import semconv as t
from compactobs.store import SqlSpanExporter, calls, iterations, make_engine, upgrade_database
from compactobs.store.mapping import CALL_COLUMNS, ITERATION_COLUMNS, RowMapper

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGETS = {"sqlite": 20_000, "postgresql": 12_000}
"""Calls per second on 2 cores (issue 29)."""
ITERATION_TYPES = ("compaction", "message", "message")


class Collect(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def make_spans(count: int, conversations: int) -> list[ReadableSpan]:
    """`count` calls as compactobs emits them, a call span then its three iteration spans, taking turns
    among `conversations` conversations."""
    collect = Collect()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(collect)
    tracer = provider.get_tracer(t.INSTRUMENTATION_SCOPE)
    model = "claude-opus-4-8"
    for i in range(count):
        call = tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                t.SPAN_KIND: t.SPAN_KIND_CALL,
                t.PROVIDER_NAME: "anthropic",
                t.OPERATION_NAME: "chat",
                t.REQUEST_MODEL: model,
                t.RESPONSE_MODEL: model,
                t.RESPONSE_ID: f"msg_{i:012d}",
                t.RESPONSE_FINISH_REASONS: ("end_turn",),
                t.STOP_REASON: "end_turn",
                t.CONVERSATION_ID: f"conversation-{i % conversations}",
                t.REQUEST_STREAM: i % 2 == 0,
                t.RESPONSE_TIME_TO_FIRST_CHUNK: 0.42,
                t.ANTHROPIC_REQUEST_ID: f"req_{i:012d}",
                t.HTTP_RESEND_COUNT: 0,
                t.HTTP_STATUS_CODE: 200,
                t.COMPACTION_TRIGGER: 150_000,
                t.COMPACTION_PAUSE_AFTER: False,
                t.SERVICE_TIER: "standard",
                t.TOKENS_INPUT: 226_000,
                t.TOKENS_OUTPUT: 5_500,
                t.TOKENS_CACHE_READ: 40_000,
                t.TOKENS_CACHE_WRITE_5M: 1_000,
                t.TOKENS_CACHE_WRITE_1H: 0,
                t.WEB_SEARCH_REQUESTS: 0,
                t.WEB_FETCH_REQUESTS: 0,
                t.USAGE_REASONING: 300,
                t.TOKENS_TOP_LEVEL_INPUT: 23_000,
                t.TOKENS_TOP_LEVEL_OUTPUT: 1_000,
                t.COST_USD: 1.28875,
                t.COST_PRICED: True,
                t.PRICING_VERSION: "genai-prices 0.0.30",
                t.COST_INPUT: 1.13,
                t.COST_OUTPUT: 0.1375,
                t.COST_CACHE_READ: 0.02,
                t.COST_CACHE_WRITE_5M: 0.00625,
                t.COST_CACHE_WRITE_1H: 0.0,
                t.COST_SERVER_TOOLS: 0.0,
                t.ITERATIONS_COUNT: 3,
                t.COMPACTIONS_COUNT: 1,
                t.COMPACTIONS_FAILED: 0,
                t.CONTEXT_TOKENS: 24_000,
                t.STREAM_END: "read",
            },
        )
        parent = trace.set_span_in_context(call)
        for index, kind in enumerate(ITERATION_TYPES):
            tracer.start_span(
                f"{kind} {model}",
                context=parent,
                attributes={
                    t.SPAN_KIND: t.SPAN_KIND_ITERATION,
                    t.PROVIDER_NAME: "anthropic",
                    t.ITERATION_INDEX: index,
                    t.ITERATION_TYPE: kind,
                    t.ITERATION_KNOWN_TYPE: True,
                    t.ITERATION_DECLINED: False,
                    t.RESPONSE_MODEL: model,
                    t.TOKENS_INPUT: 180_000 if kind == "compaction" else 23_000,
                    t.TOKENS_OUTPUT: 3_500 if kind == "compaction" else 1_000,
                    t.TOKENS_CACHE_READ: 20_000,
                    t.TOKENS_CACHE_WRITE_5M: 500,
                    t.TOKENS_CACHE_WRITE_1H: 0,
                    t.COST_USD: 0.9975 if kind == "compaction" else 0.1456,
                    t.COST_PRICED: True,
                    t.COST_INPUT: 0.9 if kind == "compaction" else 0.115,
                    t.COST_OUTPUT: 0.0875 if kind == "compaction" else 0.025,
                    t.COST_CACHE_READ: 0.01,
                    t.COST_CACHE_WRITE_5M: 0.003125,
                    t.COST_CACHE_WRITE_1H: 0.0,
                },
            ).end()
        call.end()
    return collect.spans


def batches(spans: Sequence[ReadableSpan], size: int) -> list[Sequence[ReadableSpan]]:
    return [spans[i : i + size] for i in range(0, len(spans), size)]


@contextmanager
def fresh_database(kind: str, postgres_url: str, tmp: Path) -> Iterator[str]:
    """A URL to an empty database at head: a new SQLite file, or a new PostgreSQL schema (dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"
        upgrade_database(url)
        yield url
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def count_calls(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return (
            connection.execute(select(func.count()).select_from(calls)).scalar_one(),
            connection.execute(select(func.count()).select_from(iterations)).scalar_one(),
        )


def run_exporter(url: str, span_batches: list[Sequence[ReadableSpan]], tmp: Path) -> float:
    exporter = SqlSpanExporter(url, spool_dir=tmp / f"spool-{uuid.uuid4().hex}")
    exporter.check()  # connect and check the schema before the clock starts
    start = time.perf_counter()
    for batch in span_batches:
        exporter.export(batch)
    exporter.force_flush()
    elapsed = time.perf_counter() - start
    stats = exporter.stats
    exporter.shutdown()
    assert stats.spooled == 0 and stats.dropped == 0, stats
    return elapsed


def run_baseline(url: str, row_batches: list[tuple[Rows, Rows]]) -> float:
    engine = make_engine(url)
    with engine.connect():
        pass  # open the pool's connection before the clock starts
    call_insert, iteration_insert = insert(calls), insert(iterations)
    start = time.perf_counter()
    for call_rows, iteration_rows in row_batches:
        with engine.begin() as connection:
            connection.execute(call_insert, call_rows)
            connection.execute(iteration_insert, iteration_rows)
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed


Rows = list[dict[str, Any]]


def dict_rows(span_batches: list[Sequence[ReadableSpan]]) -> list[tuple[Rows, Rows]]:
    """The exporter's rows as the Python values Core expects for these columns (datetime, Decimal)."""
    mapper = RowMapper("postgresql")
    usd = {c.name for table in (calls, iterations) for c in table.columns if isinstance(c.type, Numeric)}
    usd -= {"duration_ms", "ttft_ms"}  # Float columns

    def typed(columns: Sequence[str], row: list[Any]) -> dict[str, Any]:
        values = dict(zip(columns, row, strict=True))
        for name in usd.intersection(values):
            if values[name] is not None:
                values[name] = Decimal(repr(values[name]))
        if "start_time" in values:
            values["start_time"] = datetime.fromisoformat(values["start_time"])
        return values

    out = []
    for batch in span_batches:
        call_rows, iteration_rows = mapper.map(batch)
        out.append(
            (
                [typed(CALL_COLUMNS, row) for row in call_rows],
                [typed(ITERATION_COLUMNS, row) for row in iteration_rows],
            )
        )
    return out


def measure(
    kind: str,
    postgres_url: str,
    span_batches: list[Sequence[ReadableSpan]],
    n_calls: int,
    rounds: int,
    tmp: Path,
) -> tuple[float, float]:
    rows = dict_rows(span_batches)
    runs: dict[str, list[float]] = {"exporter": [], "baseline": []}
    jobs: dict[str, Callable[[str], float]] = {
        "exporter": lambda url: run_exporter(url, span_batches, tmp),
        "baseline": lambda url: run_baseline(url, rows),
    }
    for _ in range(rounds):
        for name, job in jobs.items():
            with fresh_database(kind, postgres_url, tmp) as url:
                elapsed = job(url)
                engine = make_engine(url)
                stored = count_calls(engine)
                engine.dispose()
                assert stored == (n_calls, 3 * n_calls), (name, stored)
                runs[name].append(n_calls / elapsed)
    return statistics.median(runs["exporter"]), statistics.median(runs["baseline"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--batch", type=int, default=2048, help="spans per export (StoreSpanProcessor's default batch)"
    )
    parser.add_argument(
        "--conversations",
        type=int,
        default=97,
        help="conversations the calls take turns in (1: one long conversation, as an agent's)",
    )
    parser.add_argument("--no-postgres", action="store_true")
    options = parser.parse_args()
    if options.conversations < 1:
        parser.error("--conversations must be at least 1")
    postgres_url = os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES)

    spans = make_spans(options.calls, options.conversations)
    span_batches = batches(spans, options.batch)
    # The pre-built spans are millions of objects no application holds at once: keep them out of the
    # collector's full passes, which would otherwise time the benchmark's heap instead of the store.
    gc.collect()
    gc.freeze()
    kinds = ["sqlite"] + ([] if options.no_postgres else ["postgresql"])
    print(
        f"{options.calls} calls x (1 call + 3 iteration spans), {len(span_batches)} batches of "
        f"{options.batch} spans, {options.conversations} conversations, median of {options.rounds} rounds, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as directory:
        for kind in kinds:
            exporter, baseline = measure(
                kind, postgres_url, span_batches, options.calls, options.rounds, Path(directory)
            )
            target = TARGETS[kind]
            print(
                f"  {kind:<10} exporter {exporter:8.0f} calls/s   "
                f"baseline (Core executemany) {baseline:8.0f} calls/s   "
                f"ratio {exporter / baseline:5.2f}   target {target} calls/s: "
                f"{'met' if exporter >= target else 'NOT met'}"
            )


if __name__ == "__main__":
    import _harness

    _harness.run(main)
