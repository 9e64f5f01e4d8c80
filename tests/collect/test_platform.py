"""Server-side telemetry: the spans the Claude API exports to a telemetry destination (the simulator's
`telemetry`, in the documented shape) reach `compactobs collect` over real OTLP/HTTP and are kept as the
requests the API saw, never as spend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from sqlalchemy import select

from compactobs import store
from compactobs.collect import Collector
from compactobs.store import calls
from compactobs.store.models import api_requests
from compactobs.testing import Reply, Simulator, message
from tests.collect.test_collect import post, prepared

ASK: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]}
USAGE = {
    "input_tokens": 100,
    "output_tokens": 20,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 50,
}


def stored(url: str) -> tuple[list[dict[str, Any]], int]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(select(api_requests).order_by("start_ms"))]
            count = len(connection.execute(select(calls.c.call_id)).all())
    finally:
        engine.dispose()
    return rows, count


def test_request_spans_are_kept_as_requests_the_api_saw_and_never_as_spend(
    database_url: str, tmp_path: Path
) -> None:
    with Simulator() as sim:
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        sim.enqueue(Reply(message(model="claude-sonnet-4-5", usage=USAGE)))
        client.messages.create(model="claude-sonnet-4-5", **ASK)
        searched = message(
            model="claude-opus-4-8",
            content=[
                {
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                    "input": {"query": "q"},
                },
                {"type": "text", "text": "found"},
            ],
            usage={"input_tokens": 7, "output_tokens": 3},
        )
        sim.enqueue(Reply(searched))
        client.messages.create(model="claude-opus-4-8", **ASK)
        with Collector(prepared(database_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
            request = sim.telemetry.request().SerializeToString()
            for _ in range(2):  # resent: kept once
                status, _, answer = post(
                    collector.endpoint, request, {"Content-Type": "application/x-protobuf"}
                )
                assert status == 200
                partial = ExportTraceServiceResponse.FromString(answer).partial_success
                # The tool span (anthropic.tool_use web_search) is read and not kept.
                assert partial.rejected_spans == 1 and "only request spans" in partial.error_message
            assert collector.stats.api_requests_stored == 4 and collector.stats.spans_stored == 0
    rows, call_count = stored(database_url)
    assert call_count == 0  # no spend of their own
    assert [r["request_id"] for r in rows] == ["req_sim_1", "req_sim_2"]
    first, second = rows
    assert (first["name"], first["model"], first["status"]) == (
        "anthropic.messages.create",
        "claude-sonnet-4-5",
        "OK",
    )
    # input as the GenAI conventions count it for Anthropic: 100 uncached + 1,000 read + 50 written = 1,150.
    assert (first["input_tokens"], first["output_tokens"]) == (1150, 20)
    assert (first["cache_read_tokens"], first["cache_write_tokens"]) == (1000, 50)
    assert (second["model"], second["input_tokens"], second["output_tokens"]) == ("claude-opus-4-8", 7, 3)
    assert first["response_id"] and first["response_id"] != second["response_id"]
    assert first["start_ms"] <= first["end_ms"] and first["parent_span_id"] is None
