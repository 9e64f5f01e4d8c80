"""`compactobs collect`: compactobs' spans from another process, sent by the official OTLP exporter (or by
hand, as another language would) to a real receiver, land in the store as in-process recording writes them.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from sqlalchemy import select

import compactobs
from compactobs import store
from compactobs.collect import CollectError, Collector
from compactobs.store import calls, iterations
from compactobs.testing import Reply, Simulator, message
from tests.conftest import postgres_schema
from tests.faults import USAGE, sqlite_locked_by_another_process

# claude-opus-4-8 (genai-prices): $5 input, $25 output per million tokens. USAGE bills a compaction
# (1,000 in, 50 out) and the message (100 in, 10 out): 1,100 x $5/M + 60 x $25/M = $0.0055 + $0.0015.
CALL_COST = Decimal("0.007")


@contextlib.contextmanager
def application(
    endpoint: str,
    *,
    reference_url: str | None = None,
    headers: dict[str, str] | None = None,
    calls_: int = 3,
    simple: bool = False,
) -> Iterator[TracerProvider]:
    """A service configured with store=False whose spans the official OTLP/HTTP exporter sends to
    `endpoint`; with `reference_url`, the same spans are also stored in-process there."""
    provider = TracerProvider(resource=Resource({"service.name": "billing"}))
    exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers, timeout=60)
    provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    if reference_url is not None:
        store.install(provider, reference_url)
    compactobs.configure(tracer_provider=provider, store=False)
    with Simulator() as sim:
        sim.enqueue(*[Reply(message(usage=USAGE))] * calls_)
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()])
        try:
            for n in range(calls_):
                with compactobs.conversation(f"conv-{n}"):
                    client.messages.create(
                        model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                    )
            yield provider
        finally:
            compactobs.flush()
            provider.force_flush()
            compactobs.shutdown()
            provider.shutdown()


def rows(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = store.make_engine(url, create=False)
    try:
        with engine.connect() as connection:
            call_rows = [
                dict(r._mapping) for r in connection.execute(select(calls).order_by(calls.c.call_id))
            ]
            iteration_rows = [
                dict(r._mapping)
                for r in connection.execute(
                    select(iterations).order_by(iterations.c.call_id, iterations.c.idx)
                )
            ]
    finally:
        engine.dispose()
    return call_rows, iteration_rows


@pytest.fixture
def reference_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, empty store on the same backend as `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'reference.db'}"
    else:
        with postgres_schema() as url:
            store.upgrade_database(url)
            yield url


def prepared(url: str) -> str:
    store.upgrade_database(url)
    return url


def test_spans_sent_over_otlp_are_stored_as_the_in_process_store_stores_them(
    database_url: str, reference_url: str, tmp_path: Path
) -> None:
    with Collector(prepared(database_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        with application(collector.endpoint, reference_url=reference_url):
            pass
        assert collector.stats.spans_rejected == 0 and collector.stats.refused == 0
    collected, reference = rows(database_url), rows(reference_url)
    assert len(collected[0]) == 3 and len(collected[1]) == 6
    assert collected == reference  # every column of every row
    for row in collected[0]:
        assert row["service_name"] == "billing"
        assert (row["input_tokens"], row["output_tokens"]) == (1100, 60)
        assert Decimal(str(row["cost_usd"])) == CALL_COST
    assert sorted(r["conversation_id"] for r in collected[0]) == ["conv-0", "conv-1", "conv-2"]


# --- the contract, by hand: what a TypeScript or Go service sends (docs/semconv.md) ----------------------

TRACE_ID = "5b8efff798038103d269b633813fc60c"
CALL_ID = "eee19b7ec3c1b174"
ITERATION_ID = "eee19b7ec3c1b175"


def _attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, float):
            return {"doubleValue": v}
        return {"stringValue": v}

    return [{"key": k, "value": value(v)} for k, v in values.items()]


def contract_request(*, foreign: bool = False) -> dict[str, Any]:
    """One call with one iteration, as docs/semconv.md says to send it, in OTLP/JSON."""
    start, end = 1_767_225_600_000_000_000, 1_767_225_601_500_000_000  # 2026-01-01T00:00:00Z, + 1.5 s
    call = {
        "traceId": TRACE_ID,
        "spanId": CALL_ID,
        "name": "chat claude-opus-4-8",
        "kind": 3,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": _attrs(
            {
                "compactobs.span.kind": "call",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-opus-4-8",
                "gen_ai.response.model": "claude-opus-4-8",
                "gen_ai.conversation.id": "ticket-7",
                "anthropic.request.id": "req_011",
                "compactobs.usage.input_tokens": 2000,
                "compactobs.usage.output_tokens": 400,
                "compactobs.usage.cache_read_tokens": 0,
                "compactobs.usage.cache_write_5m_tokens": 0,
                "compactobs.usage.cache_write_1h_tokens": 0,
                "compactobs.cost.usd": 0.02,
                "compactobs.cost.priced": True,
                "compactobs.iterations.count": 1,
                "compactobs.compactions.count": 0,
            }
        ),
        "status": {"code": 1},
    }
    iteration = {
        "traceId": TRACE_ID,
        "spanId": ITERATION_ID,
        "parentSpanId": CALL_ID,
        "name": "message claude-opus-4-8",
        "kind": 1,
        "startTimeUnixNano": str(end),
        "endTimeUnixNano": str(end),
        "attributes": _attrs(
            {
                "compactobs.span.kind": "iteration",
                "compactobs.iteration.index": 0,
                "compactobs.iteration.type": "message",
                "gen_ai.response.model": "claude-opus-4-8",
                "compactobs.usage.input_tokens": 2000,
                "compactobs.usage.output_tokens": 400,
                "compactobs.cost.usd": 0.02,
                "compactobs.cost.priced": True,
            }
        ),
    }
    spans = [call, iteration]
    scopes = [{"scope": {"name": "compactobs", "version": "ts-0.1"}, "spans": spans}]
    if foreign:
        other = {
            "traceId": TRACE_ID,
            "spanId": "0000000000000abc",
            "name": "GET /",
            "kind": 2,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
        }
        scopes.append({"scope": {"name": "express"}, "spans": [other]})
    return {
        "resourceSpans": [
            {"resource": {"attributes": _attrs({"service.name": "checkout-ts"})}, "scopeSpans": scopes}
        ]
    }


def post(
    endpoint: str, body: bytes, headers: dict[str, str], path: str = "/v1/traces", chunked: bool = False
) -> tuple[int, dict[str, str], bytes]:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if chunked:
            pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
            connection.request("POST", path, body=iter(pieces), headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_otlp_json_gzip_and_chunked_from_another_language(sqlite_url: str, tmp_path: Path) -> None:
    body = gzip.compress(json.dumps(contract_request(foreign=True)).encode())
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, headers, answer = post(
            collector.endpoint,
            body,
            {"Content-Type": "application/json", "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"},
            chunked=True,
        )
    assert status == 200 and headers["Content-Type"] == "application/json"
    # The express span is not compactobs': one rejected, and the reason names the contract.
    partial = json.loads(answer)["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "docs/semconv.md" in partial["errorMessage"]
    (call,), (iteration,) = rows(sqlite_url)
    assert call["call_id"] == CALL_ID and call["trace_id"] == TRACE_ID
    assert call["service_name"] == "checkout-ts" and call["conversation_id"] == "ticket-7"
    assert (call["input_tokens"], call["output_tokens"], call["request_id"]) == (2000, 400, "req_011")
    # 2,000 x $5/M + 400 x $25/M = $0.01 + $0.01, as the sender priced it.
    assert Decimal(str(call["cost_usd"])) == Decimal("0.02")
    assert (call["start_ms"], call["duration_ms"], call["status"]) == (1_767_225_600_000, 1500.0, "OK")
    assert (iteration["call_id"], iteration["idx"], iteration["type"]) == (CALL_ID, 0, "message")


def test_a_gzip_body_of_two_members_stores_both_and_trailing_bytes_are_refused(
    sqlite_url: str, tmp_path: Path
) -> None:
    """RFC 1952 lets a body be several gzip members in a row: both halves of the batch are stored. Bytes
    after the last member that are not another member make the body unreadable (400), not shorter."""
    whole = json.dumps(contract_request()).encode()
    # Two members that decompress, one after the other, to the whole batch: the first alone is a
    # truncated document, so a reader that stops after it stores nothing.
    middle = len(whole) // 2
    members = [gzip.compress(whole[:middle]), gzip.compress(whole[middle:])]
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        assert post(collector.endpoint, members[0] + b"trailing", headers)[0] == 400
        assert rows(sqlite_url) == ([], [])
        status, _, _ = post(collector.endpoint, members[0] + members[1], headers)
    assert status == 200
    (stored_call,), (stored_iteration,) = rows(sqlite_url)
    assert (stored_call["call_id"], stored_iteration["call_id"]) == (CALL_ID, CALL_ID)


def test_a_negative_chunk_size_is_refused_without_reading_the_rest(sqlite_url: str, tmp_path: Path) -> None:
    """`-1` parses as hexadecimal in Python but is no chunk size: read(-1) would read until the client
    closes, past every bound. The answer comes while the client still holds the connection open."""
    with Collector(
        prepared(sqlite_url), http="127.0.0.1:0", max_request_bytes=2048, spool_dir=tmp_path / "spool"
    ) as collector:
        host, port = collector.endpoint.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            raw.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + b"\x00" * 65536
            )
            answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0]


def test_the_same_batch_twice_is_stored_once(database_url: str, tmp_path: Path) -> None:
    with Collector(prepared(database_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        provider = TracerProvider()
        captured: list[bytes] = []

        # Encode the batch once with the official encoder, then send the very same bytes twice.
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        compactobs.configure(tracer_provider=provider, store=False)
        try:
            with Simulator() as sim:
                sim.enqueue(*[Reply(message(usage=USAGE))] * 2)
                client = anthropic.Anthropic(
                    base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
                )
                for _ in range(2):
                    client.messages.create(
                        model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
                    )
                compactobs.flush()
        finally:
            compactobs.shutdown()
        captured.append(encode_spans(memory.get_finished_spans()).SerializeToString())
        for _ in range(2):
            status, _, answer = post(
                collector.endpoint, captured[0], {"Content-Type": "application/x-protobuf"}
            )
            assert status == 200
            assert not ExportTraceServiceResponse.FromString(answer).HasField("partial_success")
    call_rows, iteration_rows = rows(database_url)
    assert len(call_rows) == 2 and len(iteration_rows) == 4
    assert sum(Decimal(str(r["cost_usd"])) for r in call_rows) == 2 * CALL_COST


def test_refusals_follow_the_otlp_specification(sqlite_url: str, tmp_path: Path) -> None:
    token = "s3cret-token"
    proto = {"Content-Type": "application/x-protobuf"}
    with Collector(
        prepared(sqlite_url),
        http="127.0.0.1:0",
        token=token,
        max_request_bytes=2048,
        spool_dir=tmp_path / "spool",
    ) as collector:
        body = ExportTraceServiceRequest().SerializeToString()
        end = collector.endpoint
        assert post(end, body, proto)[0] == 401
        assert post(end, body, {**proto, "Authorization": "Bearer wrong"})[0] == 401
        auth = {**proto, "Authorization": f"Bearer {token}"}
        assert post(end, body, auth)[0] == 200
        assert post(end, b"\x00" * 4096, auth)[0] == 413
        # A gzip bomb: small on the wire, over the bound once inflated.
        bomb = gzip.compress(b"\x00" * 100_000)
        assert post(end, bomb, {**auth, "Content-Encoding": "gzip"})[0] == 413
        assert post(end, b"\x00" * 4096, auth, chunked=True)[0] == 413
        assert post(end, b"not protobuf \xff\xff", auth)[0] == 400
        assert post(end, body, {**auth, "Content-Type": "text/plain"})[0] == 415
        assert post(end, body, auth, path="/v1/other")[0] == 404
        status, _, answer = post(end, b"{}", {**auth, "Content-Type": "application/json"}, path="/v1/metrics")
        assert status == 200 and "not stored" in answer.decode()
    with pytest.raises(CollectError, match=r"0\.0\.0\.0 \(beyond loopback\) needs a bearer token"):
        Collector(sqlite_url, http="0.0.0.0:0")


def test_the_official_exporter_without_the_token_is_refused_and_stores_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", token="t0k", spool_dir=tmp_path / "spool") as c:
        with application(c.endpoint, calls_=1):
            pass
        with application(c.endpoint, calls_=1, headers={"Authorization": "Bearer t0k"}):
            pass
    assert len(rows(sqlite_url)[0]) == 1


# --- faults: the store locked or frozen while a client exports --------------------------------------------


def test_sqlite_locked_while_a_client_exports_loses_nothing(sqlite_url: str, tmp_path: Path) -> None:
    with Collector(
        prepared(sqlite_url),
        http="127.0.0.1:0",
        spool_dir=tmp_path / "spool",
        write_timeout_s=0.2,
        flush_every_s=0.2,
    ) as collector:
        with (
            sqlite_locked_by_another_process(sqlite_url),
            application(collector.endpoint, calls_=5, simple=True),
        ):
            pass
        assert collector.exporter.stats.spooled >= 1  # the lock was felt: the rows waited on disk
        assert collector.flush()
    call_rows, iteration_rows = rows(sqlite_url)
    assert sorted(r["conversation_id"] for r in call_rows) == [f"conv-{n}" for n in range(5)]
    assert len(iteration_rows) == 10


def test_postgres_frozen_while_a_client_exports_loses_nothing(postgres_url: str, tmp_path: Path) -> None:
    from tests.faults import FreezingProxy

    store.upgrade_database(postgres_url)
    proxy = FreezingProxy(("127.0.0.1", 5432))
    try:
        with Collector(
            proxy.url(postgres_url),
            http="127.0.0.1:0",
            spool_dir=tmp_path / "spool",
            write_timeout_s=0.3,
            flush_every_s=0.2,
        ) as collector:
            collector.exporter.check()  # connected before the freeze
            proxy.freeze()
            with application(collector.endpoint, calls_=4, simple=True):
                pass
            proxy.thaw()
            deadline = time.monotonic() + 60
            while not collector.flush() and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        proxy.close()
    call_rows, _ = rows(postgres_url)
    assert sorted(r["conversation_id"] for r in call_rows) == [f"conv-{n}" for n in range(4)]


def test_a_store_that_cannot_keep_a_batch_answers_retryable_and_the_client_retries(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The database locked and the spool too small to hold a call: 503 with Retry-After; the official
    exporter retries, and once the lock is gone the call is stored, once."""
    with Collector(
        prepared(sqlite_url),
        http="127.0.0.1:0",
        spool_dir=tmp_path / "spool",
        spool_max_bytes=1,
        write_timeout_s=0.2,
    ) as collector:
        with sqlite_locked_by_another_process(sqlite_url):
            status, headers, _ = post(
                collector.endpoint, _one_call_body(), {"Content-Type": "application/x-protobuf"}
            )
            assert (status, headers.get("Retry-After")) == (503, "1")
            exporting = threading.Thread(target=_export_one, args=(collector.endpoint,))
            exporting.start()
            deadline = time.monotonic() + 60
            while collector.stats.refused < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert collector.stats.refused >= 2  # the exporter's first try was refused, lock still held
        exporting.join(120)
        assert not exporting.is_alive()
        assert collector.stats.spans_stored == 3  # the call and its two iterations, once each
    ((call,), iteration_rows) = rows(sqlite_url)
    assert len(iteration_rows) == 2
    assert call["conversation_id"] == "conv-0"


def _export_one(endpoint: str) -> None:
    with application(endpoint, calls_=1, simple=True):
        pass


def _one_call_body() -> bytes:

    document = contract_request()
    from compactobs.collect.decode import _hex_ids_to_base64

    return json_format.ParseDict(
        _hex_ids_to_base64(document), ExportTraceServiceRequest()
    ).SerializeToString()


def test_cli_refuses_a_bind_beyond_loopback_without_a_token(sqlite_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "compactobs", "--db", sqlite_url, "collect", "--http", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "needs a bearer token" in result.stderr


def test_the_contract_file_names_every_attribute_the_store_reads() -> None:
    from compactobs.store.mapping import CALL_ATTRIBUTES, ITERATION_ATTRIBUTES

    text = (Path(__file__).resolve().parents[2] / "docs" / "semconv.md").read_text()
    # Grouped rows write `compactobs.cost.input_usd`, `.output_usd`: a name is present whole or by its tail.
    for name in {*CALL_ATTRIBUTES.values(), *ITERATION_ATTRIBUTES.values()}:
        assert f"`{name}`" in text or f"`.{name.rsplit('.', 1)[1]}`" in text, name


def test_otlp_grpc_with_the_official_exporter_and_its_refusals(sqlite_url: str, tmp_path: Path) -> None:
    """The official gRPC exporter: without the token UNAUTHENTICATED (nothing stored), with it the same
    rows as over HTTP, and a batch sent twice stored once."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "billing"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    compactobs.configure(tracer_provider=provider, store=False)
    try:
        with Simulator() as sim:
            sim.enqueue(Reply(message(usage=USAGE)))
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            client.messages.create(
                model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
            compactobs.flush()
    finally:
        compactobs.shutdown()
    spans = memory.get_finished_spans()
    with Collector(
        prepared(sqlite_url),
        http="127.0.0.1:0",
        grpc="127.0.0.1:0",
        token="t0k",
        spool_dir=tmp_path / "spool",
    ) as collector:
        endpoint = collector.grpc_endpoint
        assert endpoint is not None
        refused = GrpcSpanExporter(endpoint=endpoint, insecure=True, timeout=5)
        assert refused.export(spans) is SpanExportResult.FAILURE
        refused.shutdown()
        assert rows(sqlite_url)[0] == []
        exporter = GrpcSpanExporter(
            endpoint=endpoint,
            insecure=True,
            headers={"authorization": "Bearer t0k"},
            compression=None,
            timeout=30,
        )
        for _ in range(2):
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    (call,), iteration_rows = rows(sqlite_url)
    assert Decimal(str(call["cost_usd"])) == CALL_COST and len(iteration_rows) == 2


def test_the_command_serves_until_sigterm_and_requires_its_token(sqlite_url: str, tmp_path: Path) -> None:
    """`compactobs collect` as a real process: a client without the token is refused, one with it is
    stored; SIGTERM stops it after a flush, with its counts on stderr."""
    import os
    import signal

    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compactobs",
            "--db",
            prepared(sqlite_url),
            "collect",
            "--http",
            "127.0.0.1:0",
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "(bearer token required)" in line, line
        endpoint = line.split(" on ", 1)[1].split(" ", 1)[0]
        body = _one_call_body()
        assert post(endpoint, body, {"Content-Type": "application/x-protobuf"})[0] == 401
        with application(endpoint, calls_=2, headers={"Authorization": "Bearer s3cret"}):
            pass
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "6 spans, 0 events stored" in err  # two calls, each with two iterations
    assert sorted(r["conversation_id"] for r in rows(sqlite_url)[0]) == ["conv-0", "conv-1"]
