"""Message Batches results through the real SDK over real HTTP against the simulator's batch routes.

Costs are worked by hand from claude-opus-4-8's batch rates (genai-prices, in force from 2026-10-14): $2.50
input, $12.50 output, $0.25 cache read, $3.125 5-minute cache write per MTok (half of $5 / $25 / $0.50 /
$6.25).

The batch every test makes (custom_id: what the simulator answers):
- "compacted": succeeded; iterations [compaction 180,000 in / 3,500 out, message 23,000 in / 1,000 out /
  40,000 cache read / 8,000 5m write]:
    compaction 180,000 x 2.50 / M = 0.45     + 3,500 x 12.50 / M = 0.04375 -> 0.49375
    message     23,000 x 2.50 / M = 0.0575   + 1,000 x 12.50 / M = 0.0125
              + 40,000 x 0.25 / M = 0.01     + 8,000 x 3.125 / M = 0.025   -> 0.105
    call 0.49375 + 0.105 = 0.59875 (at standard rates it would be twice that, 1.1975)
- "plain": succeeded, usage without `service_tier` (priced at batch rates all the same):
    10,000 x 2.50 / M = 0.025 + 2,000 x 12.50 / M = 0.025 -> 0.05
- "refused": errored (invalid_request_error); "late": expired; "stopped": canceled: error calls, no cost.
Batch total: 0.59875 + 0.05 = 0.64875.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

import compactobs
from compactobs import semconv as t
from compactobs import store
from compactobs.store import calls, iterations
from compactobs.testing import ErrorReply, Reply, Simulator, message
from compactobs.usage import CallObservation, RequestFacts, observe_batch_result
from tests.cli import run
from tests.instrument.test_properties import junk, models, usage_shapes

D = Decimal
MODEL = "claude-opus-4-8"
COMPACTED_COST = D("0.59875")
PLAIN_COST = D("0.05")
BATCH_TOTAL = D("0.64875")
CUSTOM_IDS = ("compacted", "plain", "refused", "late", "stopped")


def plan_batch(sim: Simulator) -> None:
    sim.batches.plan(
        "compacted",
        Reply(
            message(
                model=MODEL,
                content=[
                    {"type": "compaction", "content": "Summary so far."},
                    {"type": "text", "text": "Done."},
                ],
                usage={
                    "input_tokens": 23000,
                    "output_tokens": 1000,
                    "cache_read_input_tokens": 40000,
                    "cache_creation_input_tokens": 8000,
                    "service_tier": "batch",
                    "iterations": [
                        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
                        {
                            "type": "message",
                            "input_tokens": 23000,
                            "output_tokens": 1000,
                            "cache_read_input_tokens": 40000,
                            "cache_creation_input_tokens": 8000,
                        },
                    ],
                },
            )
        ),
    )
    sim.batches.plan(
        "plain", Reply(message(model=MODEL, usage={"input_tokens": 10000, "output_tokens": 2000}))
    )
    sim.batches.plan("refused", ErrorReply(400, message="max_tokens: too large (simulated)"))
    sim.batches.plan("late", "expired")
    sim.batches.plan("stopped", "canceled")


def batch_requests() -> list[dict[str, Any]]:
    params = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": "hello"}]}
    return [{"custom_id": custom_id, "params": params} for custom_id in CUSTOM_IDS]


def read_results(client: Any, batch_id: str, *, beta: bool = False) -> list[str]:
    """The custom_ids read through `results()`, as an application reads them (sync or async client)."""
    batches = client.beta.messages.batches if beta else client.messages.batches
    if isinstance(client, anthropic.AsyncAnthropic):

        async def read() -> list[str]:
            results = await batches.results(batch_id)
            return [result.custom_id async for result in results]

        return asyncio.run(read())
    return [result.custom_id for result in batches.results(batch_id)]


def make_batch(sim: Simulator, *, beta: bool = False) -> str:
    """The batch above, made through the SDK (sync client)."""
    plan_batch(sim)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    batches = client.beta.messages.batches if beta else client.messages.batches
    return batches.create(requests=batch_requests()).id  # type: ignore[arg-type]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@contextmanager
def recording(
    database_url: str | None = None, *, instrument: bool = True, service: str | None = None
) -> Iterator[InMemorySpanExporter]:
    """compactobs recording to an in-memory exporter (and the store at `database_url`, if given), with
    every client instrumented, or (`instrument=False`) only those given `compactobs.Middleware()`."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service} if service else {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setup = compactobs.instrument if instrument else compactobs.configure
    setup(database_url, tracer_provider=provider, store=database_url is not None)
    try:
        yield exporter
    finally:
        if instrument:
            compactobs.uninstrument()
        compactobs.shutdown()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


@pytest.fixture
def configured() -> Iterator[InMemorySpanExporter]:
    with recording(instrument=False) as exporter:
        yield exporter


@pytest.fixture
def stored(database_url: str, data_home: Any) -> Iterator[tuple[str, InMemorySpanExporter]]:
    """Recording into the store at `database_url` (SQLite, then PostgreSQL), spans also kept in memory;
    the spool under the test's own directory."""
    store.upgrade_database(database_url)
    with recording(database_url, service="batch-reader") as exporter:
        yield database_url, exporter


def kind_spans(exporter: InMemorySpanExporter, kind: str) -> list[ReadableSpan]:
    compactobs.flush()  # spans are emitted on compactobs' recording thread
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == kind]


def stored_rows(url: str, statement: Any) -> list[Any]:
    compactobs.flush()
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            return list(connection.execute(statement).mappings().all())
    finally:
        engine.dispose()


def stored_calls(url: str) -> dict[str, Any]:
    """The stored calls by custom_id."""
    return {row["custom_id"]: row for row in stored_rows(url, select(calls))}


def stored_iterations(url: str) -> list[Any]:
    return stored_rows(url, select(iterations).order_by(iterations.c.idx))


def usd(value: Any) -> Decimal:
    """Money read back, to the store's 10 places (SQLite returns it through a float)."""
    return D(str(value)).quantize(D("1e-10"))


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
@pytest.mark.parametrize(
    "client_class", [anthropic.Anthropic, anthropic.AsyncAnthropic], ids=["sync", "async"]
)
def test_results_are_stored_as_calls_at_batch_rates(
    stored: tuple[str, InMemorySpanExporter], sim: Simulator, beta: bool, client_class: type[Any]
) -> None:
    url, _ = stored
    batch_id = make_batch(sim, beta=beta)
    client = client_class(base_url=sim.base_url, api_key="k")
    # Read inside a conversation block: a result's request is not in its result, so no conversation.
    with compactobs.conversation("the-reader"):
        assert read_results(client, batch_id, beta=beta) == list(CUSTOM_IDS)

    rows = stored_calls(url)
    assert sorted(rows) == sorted(CUSTOM_IDS)
    assert {row["batch_id"] for row in rows.values()} == {batch_id}
    assert {row["conversation_id"] for row in rows.values()} == {None}
    assert {row["service_name"] for row in rows.values()} == {"batch-reader"}

    compacted, plain = rows["compacted"], rows["plain"]
    assert usd(compacted["cost_usd"]) == COMPACTED_COST
    assert (compacted["service_tier"], compacted["priced"], compacted["error_type"]) == ("batch", True, None)
    assert (compacted["iterations_count"], compacted["compactions_count"]) == (2, 1)
    # Tokens billed over both iterations: 180,000 + 23,000 in, 3,500 + 1,000 out.
    assert (compacted["input_tokens"], compacted["output_tokens"]) == (203000, 4500)
    assert (compacted["cache_read_tokens"], compacted["cache_write_5m_tokens"]) == (40000, 8000)
    assert usd(plain["cost_usd"]) == PLAIN_COST
    assert plain["service_tier"] == "batch"  # the usage did not say; a batch result is a batch request

    # The compaction iteration is its own row, at its own cost: 0.49375; the message 0.105.
    own = [row for row in stored_iterations(url) if row["call_id"] == compacted["call_id"]]
    assert [(row["type"], usd(row["cost_usd"])) for row in own] == [
        ("compaction", D("0.49375")),
        ("message", D("0.105")),
    ]

    for custom_id, error_type in (
        ("refused", "invalid_request_error"),
        ("late", "expired"),
        ("stopped", "canceled"),
    ):
        row = rows[custom_id]
        assert (row["status"], row["error_type"]) == ("ERROR", error_type), custom_id
        # No usage, so no cost: NULL, never a priced $0.
        assert (row["cost_usd"], row["priced"], row["input_tokens"]) == (None, None, None), custom_id


def test_results_read_twice_are_stored_once(stored: tuple[str, InMemorySpanExporter], sim: Simulator) -> None:
    url, exporter = stored
    batch_id = make_batch(sim)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    read_results(client, batch_id)
    read_results(client, batch_id)
    read_results(client, batch_id, beta=True)

    # Each read emits the same spans, ids included: 5 calls and 3 iterations (2 + 1), three times.
    call_spans = kind_spans(exporter, t.SPAN_KIND_CALL)
    iteration_spans = kind_spans(exporter, t.SPAN_KIND_ITERATION)
    assert len(call_spans) == 15 and len(iteration_spans) == 9
    ids = {(s.context.trace_id, s.context.span_id) for s in call_spans + iteration_spans}
    assert len(ids) == 8
    assert len(stored_calls(url)) == 5
    assert len(stored_iterations(url)) == 3

    code, out, err = run("--db", url, "report", "cost", "--format", "json")
    assert code == 0, err
    totals = json.loads(out)["totals"]
    assert (totals["calls"], totals["error_calls"], totals["iterations"], totals["compactions"]) == (
        5,
        3,
        3,
        1,
    )
    assert usd(totals["cost_usd"]) == BATCH_TOTAL
    assert totals["unpriced_calls"] == 0
    # In 180,000 + 23,000 + 10,000; out 3,500 + 1,000 + 2,000.
    assert (totals["input_tokens"], totals["output_tokens"]) == (213000, 6500)


def test_a_result_span_has_its_batch_time_and_ids_of_its_own(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    sim.batches.hold = True
    batch_id = make_batch(sim)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    sim.batches.end(batch_id)
    ended = client.messages.batches.retrieve(batch_id).ended_at
    assert ended is not None
    ended_ns = int(ended.timestamp()) * 1_000_000_000 + ended.microsecond * 1000
    reader = TracerProvider().get_tracer("the-app")
    with reader.start_as_current_span("read results") as reading:
        read_results(client, batch_id)

    by_custom_id = {s.attributes[t.BATCH_CUSTOM_ID]: s for s in kind_spans(spans, t.SPAN_KIND_CALL)}
    assert sorted(by_custom_id) == sorted(CUSTOM_IDS)
    for custom_id, span in by_custom_id.items():
        # A result carries no time: its call is placed at its batch's end, with no duration.
        assert (span.start_time, span.end_time) == (ended_ns, ended_ns), custom_id
        assert span.attributes[t.BATCH_ID] == batch_id
        assert span.parent is None  # the root of a trace of its own, linked to the span that read it
        assert [link.context for link in span.links] == [reading.get_span_context()]
    trace_ids = {s.context.trace_id for s in by_custom_id.values()}
    assert len(trace_ids) == len(CUSTOM_IDS)
    assert by_custom_id["compacted"].attributes[t.COST_USD] == pytest.approx(float(COMPACTED_COST))
    assert by_custom_id["compacted"].attributes[t.COMPACTIONS_COUNT] == 1

    # Ordinary calls keep random ids: the same request twice is two spans.
    sim.enqueue(Reply(message(model=MODEL)), Reply(message(model=MODEL)))
    for _ in range(2):
        client.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    ordinary = [s for s in kind_spans(spans, t.SPAN_KIND_CALL) if t.BATCH_ID not in (s.attributes or {})]
    assert len({s.context.span_id for s in ordinary}) == 2


def test_results_are_recorded_as_they_are_read_not_after_the_body(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    count = 3000
    for n in range(count):
        sim.batches.plan(
            f"r{n}", Reply(message(model=MODEL, usage={"input_tokens": 1000, "output_tokens": 100}))
        )
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    batch = client.messages.batches.create(
        requests=[{"custom_id": f"r{n}", "params": params} for n in range(count)]
    )
    results = client.messages.batches.results(batch.id)
    first = next(iter(results))
    assert first.custom_id == "r0"
    # One result read: the body has been read only as far as the first chunks (about 1 MB in all).
    seen = len(kind_spans(spans, t.SPAN_KIND_CALL))
    assert 0 < seen < count
    assert sum(1 for _ in results) == count - 1
    recorded = kind_spans(spans, t.SPAN_KIND_CALL)
    assert len(recorded) == count
    # Each: 1,000 x 2.50 / M + 100 x 12.50 / M = 0.0025 + 0.00125 = 0.00375.
    assert [s.attributes[t.COST_USD] for s in recorded] == [pytest.approx(0.00375)] * count


def test_an_explicit_middleware_records_results(configured: InMemorySpanExporter, sim: Simulator) -> None:
    batch_id = make_batch(sim)
    client = anthropic.AsyncAnthropic(
        base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
    )
    read_results(client, batch_id, beta=True)
    costs = {
        s.attributes[t.BATCH_CUSTOM_ID]: s.attributes.get(t.COST_USD)
        for s in kind_spans(configured, t.SPAN_KIND_CALL)
    }
    assert costs == {
        "compacted": pytest.approx(float(COMPACTED_COST)),
        "plain": pytest.approx(float(PLAIN_COST)),
        "refused": None,
        "late": None,
        "stopped": None,
    }


def test_an_uninstrumented_client_records_nothing(spans: InMemorySpanExporter, sim: Simulator) -> None:
    batch_id = make_batch(sim)
    compactobs.uninstrument()
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    assert read_results(client, batch_id) == list(CUSTOM_IDS)
    assert kind_spans(spans, t.SPAN_KIND_CALL) == []


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_an_ordinary_response_whose_usage_says_batch_is_priced_at_batch_rates(
    spans: InMemorySpanExporter, sim: Simulator, stream: bool
) -> None:
    usage = {"input_tokens": 10000, "output_tokens": 2000, "service_tier": "batch"}
    sim.enqueue(Reply(message(model=MODEL, usage=usage)))
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    args: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "x"}],
    }
    if stream:
        with client.messages.stream(**args) as reply:
            reply.get_final_message()
    else:
        client.messages.create(**args)
    (span,) = kind_spans(spans, t.SPAN_KIND_CALL)
    # 10,000 x 2.50 / M + 2,000 x 12.50 / M = 0.025 + 0.025 = 0.05 (at standard rates: 0.10).
    assert span.attributes[t.COST_USD] == pytest.approx(0.05)
    assert span.attributes[t.SERVICE_TIER] == "batch"
    assert t.BATCH_ID not in span.attributes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=usage_shapes, model=models)
def test_results_of_any_shape_read_as_they_would_uninstrumented(
    configured: InMemorySpanExporter, sim: Simulator, usage: dict[str, Any], model: str
) -> None:
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    requests = [{"custom_id": custom_id, "params": params} for custom_id in ("odd", "gone")]
    plain = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    instrumented = anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
    )
    body = message(model=model, usage=usage)
    recorded = len(kind_spans(configured, t.SPAN_KIND_CALL))
    seen = []
    for client in (plain, instrumented):
        sim.batches.plan("odd", Reply(body))
        sim.batches.plan("gone", "expired")
        batch_id = client.messages.batches.create(requests=requests).id  # type: ignore[arg-type]
        # warnings=False: the shapes are malformed on purpose, and pydantic would warn on each dump.
        seen.append([r.model_dump(warnings=False) for r in client.messages.batches.results(batch_id)])
    assert seen[0] == seen[1]
    assert len(kind_spans(configured, t.SPAN_KIND_CALL)) == recorded + 2  # the instrumented read only


@given(line=st.one_of(st.binary(max_size=64), junk.map(lambda value: json.dumps(value).encode())))
def test_a_result_line_of_any_shape_is_read_without_raising(line: bytes) -> None:
    observation = CallObservation(request=RequestFacts(), start_ns=0)
    observe_batch_result(observation, line)
    # Either a result with usage (succeeded) or an error call: never both, never neither.
    assert (observation.usage is None) == (observation.error_type is not None)


def test_the_simulator_batch_routes_as_the_sdk_uses_them(sim: Simulator) -> None:
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    requests: Any = [{"custom_id": c, "params": params} for c in ("kept", "open")]
    with pytest.raises(anthropic.BadRequestError, match="unique"):
        client.messages.batches.create(requests=[requests[0], requests[0]])

    sim.batches.hold = True
    sim.batches.plan("kept", "expired")
    held = client.beta.messages.batches.create(requests=requests)
    assert (held.processing_status, held.request_counts.processing, held.results_url) == (
        "in_progress",
        2,
        None,
    )
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(held.id)
    with pytest.raises(anthropic.BadRequestError, match="in progress"):
        client.messages.batches.delete(held.id)
    # Cancelling ends it: the unplanned request is canceled, the planned one keeps its plan.
    canceled = client.messages.batches.cancel(held.id)
    assert (canceled.processing_status, canceled.cancel_initiated_at is not None) == ("ended", True)
    assert {r.custom_id: r.result.type for r in client.messages.batches.results(held.id)} == {
        "kept": "expired",
        "open": "canceled",
    }

    sim.batches.hold = False
    ended = client.messages.batches.create(requests=requests)
    # Simulated conversation mode answers unplanned requests, at the batch tier.
    results = {r.custom_id: r.result for r in client.messages.batches.results(ended.id)}
    assert {custom_id: result.type for custom_id, result in results.items()} == {
        "kept": "succeeded",
        "open": "succeeded",
    }
    assert results["open"].message.usage.service_tier == "batch"  # type: ignore[union-attr]

    first = client.messages.batches.list(limit=1)
    assert ([b.id for b in first.data], first.has_more) == ([ended.id], True)
    assert [b.id for b in client.messages.batches.list()] == [ended.id, held.id]
    assert client.messages.batches.delete(held.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(held.id)


def test_results_read_as_a_raw_or_streaming_response_are_recorded(
    spans: InMemorySpanExporter, sim: Simulator
) -> None:
    batch_id = make_batch(sim)
    client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
    raw = client.messages.batches.with_raw_response.results(batch_id)
    assert [r.custom_id for r in raw.parse()] == list(CUSTOM_IDS)
    assert len(kind_spans(spans, t.SPAN_KIND_CALL)) == 5
    with client.beta.messages.batches.with_streaming_response.results(batch_id) as response:
        assert len(list(response.iter_lines())) == 5
    recorded = kind_spans(spans, t.SPAN_KIND_CALL)
    assert len(recorded) == 10
    assert len({s.context.span_id for s in recorded}) == 5  # the same five results, read twice
