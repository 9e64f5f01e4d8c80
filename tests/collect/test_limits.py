"""`compactobs collect`'s bounds on data: one unreadable record in a batch (a data error, not a store stall:
rejected alone, never a retryable 503 for the whole batch). Connections held open: test_slow_clients.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from compactobs.collect import Collector, decode, wire
from compactobs.collect.claude_code import ClaudeCodeEvents
from compactobs.collect.decode import LogRecord
from tests.collect.test_claude_code import _event, logs_request
from tests.collect.test_collect import CALL_ID, ITERATION_ID, contract_request, post, prepared, rows


def test_a_record_whose_values_break_the_mapping_is_rejected_alone(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No event value found today makes the mapping raise (the infinite float that did is read as 0 since
    # e268ea5), so the fault is put in: a record marked "req_bad" raises as that OverflowError did.
    observation = ClaudeCodeEvents.observation

    def breaks_on_the_marked_record(record: LogRecord, kind: str) -> Any:
        if record.attributes.get("request_id") == "req_bad":
            raise OverflowError("cannot convert float infinity to integer")
        return observation(record, kind)

    monkeypatch.setattr(ClaudeCodeEvents, "observation", staticmethod(breaks_on_the_marked_record))
    common = {"model": "claude-sonnet-4-5", "cache_read_tokens": 0, "cache_creation_tokens": 0}
    body = logs_request(
        _event("api_request", 1, request_id="req_1", input_tokens=1000, output_tokens=200, **common),
        _event("api_request", 2, request_id="req_bad", input_tokens=1, output_tokens=1, **common),
        _event("api_request", 3, request_id="req_3", input_tokens=2000, output_tokens=100, **common),
    )
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, headers, answer = post(
            collector.endpoint, body, {"Content-Type": "application/json"}, path="/v1/logs"
        )
        assert status == 200 and "Retry-After" not in headers
        response = ExportLogsServiceResponse()
        json_format.Parse(answer, response)
        assert response.partial_success.rejected_log_records == 1
        assert "1 record(s) with values that cannot be read" in response.partial_success.error_message
        assert collector.stats.refused == 0 and collector.stats.events_stored == 2
    call_rows, _ = rows(sqlite_url)
    assert sorted(row["request_id"] for row in call_rows) == ["req_1", "req_3"]
    by_id = {row["request_id"]: row for row in call_rows}
    # claude-sonnet-4-5: $3 input, $15 output per million tokens.
    # req_1: 1,000 x $3/M + 200 x $15/M = $0.003 + $0.003 = $0.006.
    # req_3: 2,000 x $3/M + 100 x $15/M = $0.006 + $0.0015 = $0.0075.
    assert round(float(by_id["req_1"]["cost_usd"]), 10) == 0.006
    assert round(float(by_id["req_3"]["cost_usd"]), 10) == 0.0075


def test_an_unexpected_failure_is_not_answered_retryable(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a store that cannot keep a batch now answers 503: a fault of the request or of compactobs would
    # fail the same way when resent, so it is a 500, which OTLP clients do not retry.
    def fails(*_: object) -> list[LogRecord]:
        raise RuntimeError("a bug")

    monkeypatch.setattr("compactobs.collect.decode.log_records", fails)
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, headers, _ = post(
            collector.endpoint, logs_request(), {"Content-Type": "application/json"}, path="/v1/logs"
        )
    assert status == 500 and "Retry-After" not in headers


def test_a_span_whose_attributes_are_not_protobuf_is_rejected_alone(sqlite_url: str, tmp_path: Path) -> None:
    document = contract_request()
    request = decode.parse(json.dumps(document).encode(), ExportTraceServiceRequest, json_body=True)
    mirror = wire.trace_request(request.SerializeToString())
    (iteration,) = [
        span
        for span in mirror.resource_spans[0].scope_spans[0].spans  # type: ignore[attr-defined]
        if span.span_id.hex() == ITERATION_ID
    ]
    iteration.attributes.append(b"\x0a\x05ab")  # a key of 5 bytes, cut after 2
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, _, answer = post(
            collector.endpoint, mirror.SerializeToString(), {"Content-Type": "application/x-protobuf"}
        )
    assert status == 200
    response = ExportTraceServiceResponse.FromString(answer)
    assert response.partial_success.rejected_spans == 1
    assert "attributes that are not protobuf" in response.partial_success.error_message
    call_rows, iteration_rows = rows(sqlite_url)
    assert [row["call_id"] for row in call_rows] == [CALL_ID] and iteration_rows == []
