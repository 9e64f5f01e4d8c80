"""A stream that ends in an error is an error call with no cost; a compaction it showed still counts.

The real SDK reads the simulator's stream, which sends a compaction block, then an `error` event
(`error_after_events`), as the API does when a stream fails mid-way. Hand-worked: message_start carried
23,000 input tokens and a placeholder output token; at claude-opus-4-8 ($5/$25 per MTok) that would have
been 23,000 x 5e-6 + 1 x 25e-6 = $0.115025: none of it is billed, so none of it may be stored as cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, select

import compactobs
from compactobs import store
from compactobs.store.models import calls, iterations
from compactobs.testing import Reply, Simulator, message

BETAS = ["compact-2026-01-12"]
USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "iterations": [
        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
        {"type": "message", "input_tokens": 23000, "output_tokens": 1000},
    ],
}


def _reply(error_after: int, *, summary: str | None = "Summary so far.") -> Reply:
    body = message(
        model="claude-opus-4-8",
        content=[{"type": "compaction", "content": summary}, {"type": "text", "text": "Here you go."}],
        usage=USAGE,
    )
    # events: 1 message_start, 2 ping, 3 compaction start, 4 compaction delta (when there is a summary),
    # 5 compaction stop, ...: `error_after` 5 ends the stream right after the compaction block.
    return Reply(body, error_after_events=error_after)


def _args() -> dict[str, Any]:
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hello"}],
        "betas": BETAS,
        "context_management": {"edits": [{"type": "compact_20260112"}]},
    }


@pytest.fixture
def recording(database_url: str, data_home: Any) -> Iterator[tuple[Simulator, str]]:
    store.upgrade_database(database_url)
    compactobs.configure(database_url, tracer_provider=TracerProvider())
    try:
        with Simulator() as sim:
            yield sim, database_url
    finally:
        compactobs.shutdown()


def _stored(url: str) -> tuple[list[Any], int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(select(calls).order_by(calls.c.start_ms)))
            iteration_rows = len(list(connection.execute(select(iterations))))
    finally:
        engine.dispose()
    return rows, iteration_rows


@pytest.mark.parametrize("sdk_spans", [False, True], ids=["observer", "byte-scan"])
def test_a_stream_ending_in_an_error_event_is_an_error_call_with_no_cost(
    recording: tuple[Simulator, str], sdk_spans: bool
) -> None:
    sim, url = recording
    # With the SDK's own tracing on, its observer takes the stream's slot and compactobs reads the bytes.
    option: dict[str, Any] = {"traces": True, "tracer_provider": TracerProvider()} if sdk_spans else {}
    client = anthropic.Anthropic(
        base_url=sim.base_url,
        api_key="k",
        max_retries=0,
        middleware=[compactobs.Middleware()],
        **({"open_telemetry": option} if sdk_spans else {}),
    )
    sim.enqueue(_reply(5))
    with pytest.raises(anthropic.APIStatusError) as raised:
        for _ in client.beta.messages.create(**_args(), stream=True):
            pass
    assert "Overloaded" in str(raised.value)
    compactobs.flush()
    (row,), iteration_rows = _stored(url)
    assert row.status == "ERROR" and row.error_type == "overloaded_error"
    # no usage, no cost: not $0.115025, not $0, and not counted as unpriced either
    assert (row.cost_usd, row.priced) == (None, None)
    assert (row.input_tokens, row.output_tokens, row.iterations_count) == (None, None, None)
    assert iteration_rows == 0
    # the compaction block seen before the error: one compaction, cut off by the error, not a failed summary
    assert (row.compactions_count, row.compactions_errored, row.compactions_failed) == (1, 1, 0)


def test_a_failed_compaction_before_the_error_stays_failed(recording: tuple[Simulator, str]) -> None:
    sim, url = recording
    client = anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
    )
    sim.enqueue(_reply(4, summary=None))  # no delta: 1 start, 2 ping, 3 compaction start, 4 its stop
    with pytest.raises(anthropic.APIStatusError), client.beta.messages.stream(**_args()) as stream:
        for _ in stream:
            pass
    compactobs.flush()
    (row,), _ = _stored(url)
    assert (row.status, row.cost_usd) == ("ERROR", None)
    assert (row.compactions_count, row.compactions_errored, row.compactions_failed) == (1, 1, 1)


def test_a_stream_that_completes_is_still_billed_whole(recording: tuple[Simulator, str]) -> None:
    sim, url = recording
    client = anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
    )
    sim.enqueue(Reply(_reply(5).body))
    for _ in client.beta.messages.create(**_args(), stream=True):
        pass
    compactobs.flush()
    (row,), iteration_rows = _stored(url)
    # compaction 180,000 x 5e-6 + 3,500 x 25e-6 = 0.9 + 0.0875 = 0.9875; message 23,000 x 5e-6 + 1,000 x
    # 25e-6 = 0.115 + 0.025 = 0.14; the bill 1.1275
    assert row.status != "ERROR" and float(row.cost_usd) == pytest.approx(1.1275, abs=1e-9)
    assert (row.compactions_count, row.compactions_errored, iteration_rows) == (1, None, 2)


def test_an_async_stream_ending_in_an_error_event_is_an_error_call(recording: tuple[Simulator, str]) -> None:
    sim, url = recording

    async def read() -> None:
        client = anthropic.AsyncAnthropic(
            base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
        )
        stream = await client.beta.messages.create(**_args(), stream=True)
        async for _ in stream:
            pass

    sim.enqueue(_reply(5))
    with pytest.raises(anthropic.APIStatusError):
        asyncio.run(read())
    compactobs.flush()
    (row,), _ = _stored(url)
    assert (row.status, row.error_type) == ("ERROR", "overloaded_error")
    assert (row.cost_usd, row.input_tokens) == (None, None)
    assert (row.compactions_count, row.compactions_errored) == (1, 1)


def test_the_compactions_metric_counts_a_compaction_cut_off_by_an_error(data_home: Any) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider([reader])
    compactobs.configure(tracer_provider=TracerProvider(), meter_provider=meters, store=False)
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
            )
            sim.enqueue(_reply(5))  # a compaction block, then the error event
            with pytest.raises(anthropic.APIStatusError):
                for _ in client.beta.messages.create(**_args(), stream=True):
                    pass
            sim.enqueue(Reply(_reply(5).body))  # the retry the application makes: it compacts and completes
            for _ in client.beta.messages.create(**_args(), stream=True):
                pass
        compactobs.flush()
        data = reader.get_metrics_data()
        points = [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "compactobs.compactions"
            for point in metric.data.data_points
        ]
        # one compaction in the failed call, one in the completed call: both on claude-opus-4-8's series
        assert sum(p.value for p in points) == 2
        assert {(p.attributes or {}).get("gen_ai.response.model") for p in points} == {"claude-opus-4-8"}
    finally:
        compactobs.shutdown()
