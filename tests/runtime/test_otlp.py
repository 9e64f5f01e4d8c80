"""Live export: spans and metrics reach a real OTLP receiver, over gRPC or HTTP/protobuf as the standard
OTEL_* variables say, through the official exporters, with billed totals, and agree with the stored rows."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from sqlalchemy import create_engine, select

import compactobs
from compactobs import otlp
from compactobs import semconv as t
from compactobs.store import calls, iterations
from compactobs.testing import Reply, Simulator, message
from tests.otlp_receiver import OtlpReceiver

PROTOCOLS = ["http/protobuf", "grpc"]

COMPACTED_USAGE = {
    "input_tokens": 2000,
    "output_tokens": 100,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 100000,
            "output_tokens": 3000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 2000,
            "output_tokens": 100,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ],
}
"""billed: 102,000 input, 3,100 output; $ = 102,000 x 5/M + 3,100 x 25/M = 0.51 + 0.0775 = 0.5875"""


def _compacting_call(sim: Simulator) -> None:
    client = anthropic.Anthropic(
        base_url=sim.base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
    )
    sim.enqueue(
        Reply(
            message(
                model="claude-opus-4-8",
                content=[{"type": "compaction", "content": "s"}, {"type": "text", "text": "ok"}],
                usage=COMPACTED_USAGE,
            )
        )
    )
    client.beta.messages.create(
        model="claude-opus-4-8",
        max_tokens=10,
        messages=[{"role": "user", "content": "x"}],
        betas=["compact-2026-01-12"],
    )
    # A plain call: not compacted, so no gen_ai.conversation.compacted at all (never false).
    sim.enqueue(Reply(message(model="claude-opus-4-8", usage={"input_tokens": 10, "output_tokens": 5})))
    client.messages.create(
        model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "y"}]
    )


def _stored(url: str) -> tuple[list[Any], list[Any]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            call_rows = connection.execute(select(calls).order_by(calls.c.start_ms)).all()
            iteration_rows = connection.execute(select(iterations)).all()
    finally:
        engine.dispose()
    return call_rows, iteration_rows


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_billed_spans_and_metrics_over_otlp(
    protocol: str, sqlite_url: str, data_home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpReceiver(protocol) as receiver, Simulator() as sim:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=billing,authorization=Bearer%20t0k")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "otlp-test")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci,team=billing")
        compactobs.configure(sqlite_url)
        try:
            _compacting_call(sim)
        finally:
            compactobs.shutdown()  # flushes both exporters and the store

    # The standard variables reached the official exporter: headers (URL-decoded), compression (HTTP says).
    assert receiver.requests and all(r.get("x-team") == "billing" for r in receiver.requests)
    assert all(r.get("authorization") == "Bearer t0k" for r in receiver.requests)
    if protocol == "http/protobuf":
        assert all(r.get("content-encoding") == "gzip" for r in receiver.requests)
    by_id = {s["span_id"]: s for s in receiver.spans}
    calls_sent = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_CALL]
    iterations_sent = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_ITERATION]
    assert len(calls_sent) == 2 and len(iterations_sent) == 3  # 2 iterations + the plain call's one

    call_rows, iteration_rows = _stored(sqlite_url)
    assert len(call_rows) == 2 and len(iteration_rows) == 3
    compacted_row, plain_row = call_rows
    call = by_id[compacted_row.call_id]
    plain = by_id[plain_row.call_id]
    for row, span in ((compacted_row, call), (plain_row, plain)):
        assert span["trace_id"] == row.trace_id
        assert span["start_ns"] // 1_000_000 == row.start_ms and span["end_ns"] // 1_000_000 == row.end_ms
        assert span["kind"] == ProtoSpan.SPAN_KIND_CLIENT
        assert span["resource"]["service.name"] == row.service_name == "otlp-test"
        assert span["resource"]["deployment.environment.name"] == "ci"
        assert span["resource"]["team"] == "billing"
        assert span["scope"] == t.INSTRUMENTATION_SCOPE
        assert span["attributes"][t.COST_USD] == pytest.approx(float(row.cost_usd), abs=1e-9)
    assert call["name"] == "chat claude-opus-4-8"
    assert call["attributes"][t.USAGE_INPUT_TOKENS] == 102000 == compacted_row.input_tokens
    assert call["attributes"][t.USAGE_OUTPUT_TOKENS] == 3100 == compacted_row.output_tokens
    assert call["attributes"][t.COST_USD] == pytest.approx(0.5875, abs=1e-9)
    assert call["attributes"][t.CONVERSATION_COMPACTED] is True
    assert t.CONVERSATION_COMPACTED not in plain["attributes"]
    mine = [s for s in iterations_sent if s["parent_span_id"] == call["span_id"]]
    assert sorted(s["name"] for s in mine) == ["compaction claude-opus-4-8", "message claude-opus-4-8"]
    for span in mine:
        row = next(r for r in iteration_rows if r.idx == span["attributes"][t.ITERATION_INDEX])
        assert row.call_id == call["span_id"] and span["kind"] == ProtoSpan.SPAN_KIND_INTERNAL
        assert span["attributes"][t.TOKENS_INPUT] == row.input_tokens

    for name in (
        t.METRIC_COST,
        t.METRIC_TOKENS,
        t.METRIC_TOKEN_USAGE,
        t.METRIC_OPERATION_DURATION,
        t.METRIC_COMPACTIONS,
    ):
        assert name in receiver.metrics, name
    # Counters are cumulative and a shutdown may export more than once: the last export holds the totals.
    last_cost = receiver.metrics[t.METRIC_COST][-1]
    assert last_cost.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    # 0.5875 + the plain call: 10 x 5/M + 5 x 25/M = 0.00005 + 0.000125 = 0.000175
    assert sum(p.as_double for p in last_cost.sum.data_points) == pytest.approx(0.587675, abs=1e-9)


def test_per_signal_protocols_and_endpoints(data_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL wins over OTEL_EXPORTER_OTLP_PROTOCOL, for traces only."""
    with (
        OtlpReceiver("grpc") as traces_receiver,
        OtlpReceiver("http/protobuf") as metrics_receiver,
        Simulator() as sim,
    ):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces_receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", metrics_receiver.endpoint + "/v1/metrics")
        compactobs.configure(store=False)
        try:
            _compacting_call(sim)
        finally:
            compactobs.shutdown()
    assert len(traces_receiver.spans) == 5 and not traces_receiver.metrics
    assert t.METRIC_COST in metrics_receiver.metrics and not metrics_receiver.spans


def test_exporter_variables_say_none_or_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not otlp.export_requested("TRACES")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert otlp.export_requested("TRACES")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not otlp.export_requested("TRACES")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console, otlp")
    assert otlp.export_requested("TRACES")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(otlp.OtlpConfigError, match="use grpc or http/protobuf"):
        otlp.protocol("TRACES")
    with pytest.raises(otlp.OtlpConfigError):
        compactobs.configure(store=False)


def test_latest_semconv_metric_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: the gen_ai.client.inference.* metrics
    replace gen_ai.client.token.usage and gen_ai.client.operation.duration; compactobs.* stay."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    with OtlpReceiver("grpc") as receiver, Simulator() as sim:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        compactobs.configure(store=False)
        try:
            _compacting_call(sim)
        finally:
            compactobs.shutdown()
    names = set(receiver.metrics)
    assert t.METRIC_TOKEN_USAGE not in names and t.METRIC_OPERATION_DURATION not in names
    assert {t.METRIC_COST, t.METRIC_TOKENS, t.METRIC_COMPACTIONS} <= names

    def last_sum(name: str) -> int:
        points = receiver.metrics[name][-1].sum.data_points
        assert all(
            {kv.key: kv.value.string_value for kv in p.attributes}[t.TOKEN_MODALITY] == "unknown"
            for p in points
        )
        return sum(p.as_int for p in points)

    # Both calls: input 102,000 + 10 (cache included; none here), output 3,100 + 5.
    assert last_sum(t.METRIC_INFERENCE_INPUT_TOKENS) == 102010
    assert last_sum(t.METRIC_INFERENCE_OUTPUT_TOKENS) == 3105
    assert last_sum(t.METRIC_INFERENCE_CACHE_READ_TOKENS) == 0
    assert last_sum(t.METRIC_INFERENCE_CACHE_WRITE_TOKENS) == 0
    assert t.METRIC_INFERENCE_REASONING_TOKENS not in names  # the usage reported no thinking tokens
    histogram = receiver.metrics[t.METRIC_INFERENCE_OPERATION_INPUT_TOKENS][-1].histogram
    assert sum(p.count for p in histogram.data_points) == 2
    assert sum(p.sum for p in histogram.data_points) == 102010
    for point in histogram.data_points:
        assert t.TOKEN_TYPE not in {kv.key for kv in point.attributes}
    duration = receiver.metrics[t.METRIC_INFERENCE_DURATION][-1].histogram
    assert sum(p.count for p in duration.data_points) == 2
