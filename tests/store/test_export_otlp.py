"""`compactobs export otlp`: stored calls replayed through the official exporters to a real OTLP receiver
(gRPC and HTTP/protobuf), with the live spans' ids, times and attributes, the same ids on every run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, select

import compactobs
from compactobs import semconv as t
from compactobs.store import calls, iterations, upgrade_database
from compactobs.store.replay import iteration_span_id
from compactobs.testing import ErrorReply, Reply, Simulator, message
from tests.cli import one_line_error, run
from tests.otlp_receiver import OtlpReceiver
from tests.runtime.test_otlp import COMPACTED_USAGE

NOT_STORED: frozenset[str] = frozenset({t.ANTHROPIC_BETA, t.SERVER_ADDRESS, t.REQUEST_MAX_TOKENS})
"""Live call attributes the store has no column for, so a replay cannot send them (see store/replay.py)."""


def _record_workload(url: str, sim: Simulator) -> list[Any]:
    """Calls of every shape through the real SDK into the store at `url`; returns the live spans."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    compactobs.configure(url, tracer_provider=provider, service_name="replay-test")
    try:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
        )
        with compactobs.conversation("conv-a"):
            sim.enqueue(
                Reply(message(content=[{"type": "compaction", "content": "s"}], usage=COMPACTED_USAGE))
            )
            client.beta.messages.create(
                model="claude-opus-4-8",
                max_tokens=10,
                messages=[{"role": "user", "content": "x"}],
                betas=["compact-2026-01-12"],
            )
            # Streamed, with cache reads and a 1-hour write; retried once after a 529.
            sim.enqueue(ErrorReply(529, retry_after=0.01))
            sim.enqueue(
                Reply(
                    message(
                        usage={
                            "input_tokens": 50,
                            "output_tokens": 20,
                            "cache_read_input_tokens": 4000,
                            "cache_creation_input_tokens": 1000,
                            "cache_creation": {
                                "ephemeral_5m_input_tokens": 0,
                                "ephemeral_1h_input_tokens": 1000,
                            },
                        }
                    )
                )
            )
            with client.messages.stream(
                model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "y"}]
            ) as stream:
                stream.get_final_message()
        with compactobs.conversation("conv-b"):
            sim.enqueue(ErrorReply(400))
            with pytest.raises(anthropic.BadRequestError):
                client.messages.create(
                    model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "z"}]
                )
            sim.enqueue(
                Reply(message(model="claude-unknown-9", usage={"input_tokens": 7, "output_tokens": 3}))
            )
            client.messages.create(
                model="claude-unknown-9", max_tokens=10, messages=[{"role": "user", "content": "w"}]
            )
    finally:
        compactobs.shutdown()
    return list(memory.get_finished_spans())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Any]]]:
    """A SQLite store of the workload, shared by the tests that only read it, and the live spans."""
    directory: Path = tmp_path_factory.mktemp("replay")
    url = f"sqlite:///{directory / 'store.db'}"
    with pytest.MonkeyPatch.context() as patch, Simulator() as sim:
        patch.setenv("XDG_DATA_HOME", str(directory / "xdg"))
        yield url, _record_workload(url, sim)


def _rows(url: str) -> tuple[list[Any], list[Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(select(calls).order_by(calls.c.start_ms)).all(),
                connection.execute(select(iterations)).all(),
            )
    finally:
        engine.dispose()


def _export(url: str, receiver: OtlpReceiver, *args: str, path: str = "") -> tuple[int, str, str]:
    protocol = "grpc" if receiver.protocol == "grpc" else "http"
    endpoint = receiver.endpoint + path
    return run("--db", url, "export", "otlp", "--endpoint", endpoint, "--protocol", protocol, *args)


def _check_against_store(url: str, sent: list[dict[str, Any]], live: list[Any] | None = None) -> None:
    """Every stored call and iteration arrived once, with the stored ids, times and values (and, given the
    live spans, every attribute they had that the store keeps)."""
    call_rows, iteration_rows = _rows(url)
    assert len(sent) == len(call_rows) + len(iteration_rows)
    by_id = {s["span_id"]: s for s in sent}
    assert len(by_id) == len(sent)
    live_by_id = {format(s.context.span_id, "016x"): s for s in live or ()}
    for row in call_rows:
        span = by_id[row.call_id]
        assert span["trace_id"] == row.trace_id and span["parent_span_id"] == ""
        assert span["name"] == f"chat {row.request_model}" and span["kind"] == ProtoSpan.SPAN_KIND_CLIENT
        assert span["start_ns"] // 1_000_000 == row.start_ms
        assert span["end_ns"] - span["start_ns"] == round(row.duration_ms * 1_000_000)
        assert span["resource"] == {"service.name": row.service_name}
        assert span["scope"] == t.INSTRUMENTATION_SCOPE
        attributes = span["attributes"]
        assert attributes[t.CONVERSATION_ID] == row.conversation_id
        assert attributes[t.HTTP_RESEND_COUNT] == row.attempts - 1
        if row.status == "ERROR":
            assert span["status_code"] == ProtoStatus.STATUS_CODE_ERROR
            assert span["status_message"] == row.error_type == attributes[t.ERROR_TYPE]
        if row.cost_usd is None:
            assert t.COST_USD not in attributes
        else:
            assert attributes[t.COST_USD] == pytest.approx(float(row.cost_usd), abs=1e-12)
        if row.call_id in live_by_id:
            original = live_by_id[row.call_id]
            assert span["trace_id"] == format(original.context.trace_id, "032x")
            # To the microsecond the store keeps.
            assert span["start_ns"] // 1000 == original.start_time // 1000
            expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in original.attributes.items()}
            missing = set(expected) - set(attributes)
            assert missing <= NOT_STORED, missing
            for key, value in attributes.items():
                assert key in expected, key
                assert (
                    value == pytest.approx(expected[key])
                    if isinstance(value, float)
                    else value == expected[key]
                )
    calls_by_id = {row.call_id: row for row in call_rows}
    for row in iteration_rows:
        span = by_id[iteration_span_id(row.call_id, row.idx).to_bytes(8, "big").hex()]
        call = by_id[row.call_id]
        assert span["parent_span_id"] == row.call_id and span["trace_id"] == calls_by_id[row.call_id].trace_id
        assert span["kind"] == ProtoSpan.SPAN_KIND_INTERNAL
        assert span["start_ns"] == span["end_ns"] == call["end_ns"]
        assert span["name"] == f"{row.type} {row.model}"
        assert span["attributes"][t.ITERATION_INDEX] == row.idx
        assert span["attributes"][t.TOKENS_INPUT] == row.input_tokens
        assert span["attributes"][t.TOKENS_CACHE_WRITE_1H] == row.cache_write_1h_tokens
        if live:
            original = next(
                s
                for s in live
                if s.parent is not None
                and format(s.parent.span_id, "016x") == row.call_id
                and s.attributes[t.ITERATION_INDEX] == row.idx
            )
            assert span["name"] == original.name
            assert span["attributes"] == dict(original.attributes)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_replay_sends_the_stored_spans_with_their_ids(protocol: str, store: tuple[str, list[Any]]) -> None:
    url, live = store
    with OtlpReceiver(protocol) as receiver:
        code, out, err = _export(url, receiver)
        assert code == 0, err
        first = list(receiver.spans)
        # The second run names the HTTP endpoint with its signal path, as OTEL_..._TRACES_ENDPOINT does.
        code, out, err = _export(url, receiver, path="" if protocol == "grpc" else "/v1/traces/")
        assert code == 0, err
    # 4 calls; iterations: compaction + message, the stream's message, the unpriced call's message (the
    # failed call has none).
    assert out.startswith("exported 4 calls and 4 iteration spans over " + protocol), out
    _check_against_store(url, first, live)
    second = receiver.spans[len(first) :]
    key = ("trace_id", "span_id", "parent_span_id", "start_ns", "end_ns", "attributes")
    assert sorted(tuple(map(str, (s[k] for k in key))) for s in second) == sorted(
        tuple(map(str, (s[k] for k in key))) for s in first
    )
    compacted = [s for s in first if s["attributes"].get(t.CONVERSATION_COMPACTED)]
    assert [s["attributes"][t.CONVERSATION_ID] for s in compacted] == ["conv-a"]


def test_replay_filters_batches_paces_and_retries(store: tuple[str, list[Any]]) -> None:
    url, _ = store
    rate = 10.0
    with OtlpReceiver("http/protobuf", refuse=1) as receiver:
        started = time.monotonic()
        code, out, err = _export(
            url, receiver, "--conversation", "conv-b", "--batch", "1", "--rate", str(rate)
        )
        assert code == 0, err
    # The 503 (Retry-After: 0) was retried; nothing was kept from it, nothing doubled.
    assert (
        receiver.refused == 1 and len(receiver.requests) == 3 and "2 requests (the exporter retried" in out
    ), out
    names = sorted(s["name"] for s in receiver.spans)
    assert names == ["chat claude-opus-4-8", "chat claude-unknown-9", "message claude-unknown-9"]
    assert {s["attributes"][t.CONVERSATION_ID] for s in receiver.spans if "chat" in s["name"]} == {"conv-b"}
    # Two requests of one call each: the second is not sent before the first call has had its 1/rate s.
    assert receiver.arrivals[-1] - started >= 1 / rate


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_endpoint_gone_mid_way(protocol: str, store: tuple[str, list[Any]]) -> None:
    """The endpoint takes one request, then refuses (retryably) every one: the export stops after the
    exporter's six attempts, says how many calls went, and what went arrived once."""
    url, _ = store
    with OtlpReceiver(protocol, accept=1) as receiver:
        code, _, err = _export(url, receiver, "--batch", "3")
    message = one_line_error(code, err)
    assert "after retries" in message and "3 of 4 calls were sent before" in message, message
    assert receiver.accepted == 1 and receiver.refused == 6
    assert len([s for s in receiver.spans if s["name"].startswith("chat ")]) == 3
    assert len({s["span_id"] for s in receiver.spans}) == len(receiver.spans)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_endpoint_is_one_line(protocol: str, store: tuple[str, list[Any]]) -> None:
    url, _ = store
    code, _, err = run(
        "--db",
        url,
        "export",
        "otlp",
        "--endpoint",
        "http://127.0.0.1:9",
        "--protocol",
        protocol,
        "--timeout",
        "1",
    )
    message = one_line_error(code, err)
    assert "did not take the calls" in message and "0 of 4 calls were sent before" in message


def test_bad_input_is_one_line(
    store: tuple[str, list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = store
    one_line_error(*run("--db", url, "export", "otlp", "--protocol", "json")[::2])
    one_line_error(*run("--db", url, "export", "otlp", "--since", "yesterday-ish")[::2])
    one_line_error(*run("--db", f"sqlite:///{tmp_path / 'nope.db'}", "export", "otlp")[::2])
    code, out, _ = run("--db", url, "export", "otlp", "--conversation", "nobody")
    assert code == 0 and out.startswith("no stored calls to export"), out
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert "or pass --protocol" in one_line_error(*run("--db", url, "export", "otlp")[::2])


def test_replay_from_postgresql_over_grpc(postgres_url: str, data_home: Any) -> None:
    upgrade_database(postgres_url)
    with Simulator() as sim:
        live = _record_workload(postgres_url, sim)
    with OtlpReceiver("grpc") as receiver:
        code, _, err = _export(postgres_url, receiver)
        assert code == 0, err
    _check_against_store(postgres_url, receiver.spans, live)
