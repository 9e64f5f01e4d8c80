"""Spans and metrics reach a real OTLP receiver through the official exporter, with billed totals."""

from __future__ import annotations

import anthropic
import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

import compactobs
from compactobs import telemetry as t
from compactobs.testing import Reply, Simulator, message

from .otlp_receiver import OtlpReceiver


def test_billed_spans_and_metrics_over_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver, Simulator() as sim:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "otlp-test")
        compactobs.configure(store=False)
        try:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            )
            sim.enqueue(
                Reply(
                    message(
                        model="claude-opus-4-8",
                        content=[{"type": "compaction", "content": "s"}, {"type": "text", "text": "ok"}],
                        usage={
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
                        },
                    )
                )
            )
            client.beta.messages.create(
                model="claude-opus-4-8",
                max_tokens=10,
                messages=[{"role": "user", "content": "x"}],
                betas=["compact-2026-01-12"],
            )
        finally:
            compactobs.shutdown()  # flushes both exporters

    calls = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_CALL]
    iterations = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_ITERATION]
    (call,) = calls
    assert call["scope"] == t.INSTRUMENTATION_SCOPE
    # billed: 102,000 input, 3,100 output; $ = 102,000 x 5/M + 3,100 x 25/M = 0.51 + 0.0775 = 0.5875
    assert call["attributes"][t.USAGE_INPUT_TOKENS] == 102000
    assert call["attributes"][t.USAGE_OUTPUT_TOKENS] == 3100
    assert call["attributes"][t.COST_USD] == pytest.approx(0.5875, abs=1e-9)
    assert sorted(s["name"] for s in iterations) == ["compaction claude-opus-4-8", "message claude-opus-4-8"]
    assert all(s["parent_span_id"] == call["span_id"] for s in iterations)
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
    assert sum(p.as_double for p in last_cost.sum.data_points) == pytest.approx(0.5875, abs=1e-9)
