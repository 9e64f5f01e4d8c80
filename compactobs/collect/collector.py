"""The Collector: OTLP requests in, rows out through the SQL store's own processor, exporter and spool.

The store objects are the ones in-process recording uses (`StoreSpanProcessor(SqlSpanExporter(url))`):
the same row mapper, the same idempotent writes (a span's id is its row's key, so a batch sent twice is
stored once), the same bounded waits and the same spool. A batch is acknowledged only once it is durable,
committed or spooled; when the store can keep it in neither within `store_wait_s`, the answer is 503 with
Retry-After, which OTLP clients retry.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Final

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from sqlalchemy import Engine

from compactobs import semconv as t
from compactobs._types import JSONObject
from compactobs.collect import decode, platform
from compactobs.collect.claude_code import ClaudeCodeEvents
from compactobs.collect.server import (
    DEFAULT_HTTP,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BYTES,
    RETRY_AFTER_S,
    Answer,
    HttpReceiver,
    parse_bind,
)
from compactobs.store import make_engine
from compactobs.store.api_requests import write_api_requests
from compactobs.store.exporter import DEFAULT_WRITE_TIMEOUT_S, SqlSpanExporter
from compactobs.store.processor import StoreSpanProcessor

__all__ = ["DEFAULT_STORE_WAIT_S", "CollectStats", "Collector"]

log = logging.getLogger("compactobs.collect")

DEFAULT_STORE_WAIT_S: Final = 10.0
"""How long a request may wait for the store (another batch's write, a spool replay) before it is answered
503: a write waits at most about 2 x write_timeout_s + 1 s before its rows are spooled, so this is only
passed when the store is stalled beyond its own bounds."""
FLUSH_EVERY_S: Final = 2.0
"""How often rows waiting in the spool are retried while no request arrives to carry them."""

NOT_OURS: Final = (
    "spans that are neither compactobs call or iteration spans (scope 'compactobs', attribute "
    "'compactobs.span.kind' = 'call' or 'iteration') nor the Claude API's own (service 'claude-platform') "
    "are not kept; see docs/semconv.md"
)


NOT_KEPT_EVENTS: Final = (
    "only Claude Code's api_request and api_error events (as calls) and compaction events (as their "
    "compactions) are stored; other log records are read and not kept"
)


@dataclass
class CollectStats:
    """Counts since the collector started."""

    requests: int = 0
    spans_stored: int = 0
    """Accepted spans, committed or spooled (each once per request: a resent batch counts again)."""
    spans_rejected: int = 0
    events_stored: int = 0
    events_rejected: int = 0
    refused: int = 0
    """Requests answered 503 (store full or stalled): the client retries them."""
    api_requests_stored: int = 0
    """Request spans of server-side telemetry kept in api_requests (see compactobs.collect.platform)."""


class Collector:
    """`compactobs collect` as a library: an OTLP/HTTP receiver writing into the store at `database_url`.

    ```python
    with Collector("sqlite:///spend.db", http="127.0.0.1:0") as collector:
        ...  # exporters send to collector.endpoint + "/v1/traces"
    ```
    `grpc`: also serve OTLP/gRPC at this HOST:PORT. `token`: required bearer token (mandatory beyond
    loopback), on both. `store_wait_s`: see DEFAULT_STORE_WAIT_S. `max_connections`: HTTP connections served
    at once (see compactobs.collect.server).
    `spool_dir`, `spool_max_bytes`, `write_timeout_s`: the store's, as for in-process recording.
    Raises CollectError for a bad bind or a missing token, at construction.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        http: str = DEFAULT_HTTP,
        grpc: str | None = None,
        token: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int | None = None,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        store_wait_s: float = DEFAULT_STORE_WAIT_S,
        flush_every_s: float = FLUSH_EVERY_S,
    ) -> None:
        host, port = parse_bind(http)
        self._http = HttpReceiver(
            self.handle,
            host=host,
            port=port,
            token=token,
            max_request_bytes=max_request_bytes,
            max_connections=max_connections,
        )
        self._grpc = None
        if grpc is not None:
            from compactobs.collect.grpc_server import GrpcReceiver  # grpcio: only when asked for

            grpc_host, grpc_port = parse_bind(grpc)
            self._grpc = GrpcReceiver(
                self.handle, host=grpc_host, port=grpc_port, token=token, max_request_bytes=max_request_bytes
            )
        self.exporter = SqlSpanExporter(
            database_url,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            write_timeout_s=write_timeout_s,
        )
        self.processor = StoreSpanProcessor(self.exporter)
        self.stats = CollectStats()
        self.store_wait_s = store_wait_s
        self._flush_every_s = flush_every_s
        # One batch at a time into the store: the exporter serialises them anyway; this bounds the wait.
        self._store_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._closing = threading.Event()
        self._claude_code = ClaudeCodeEvents()
        self._flusher: threading.Thread | None = None
        self._api_engine: Engine | None = None
        self._database_url = database_url

    @property
    def endpoint(self) -> str:
        """The base URL, e.g. http://127.0.0.1:4318 (OTEL_EXPORTER_OTLP_ENDPOINT's form)."""
        return self._http.endpoint

    @property
    def grpc_endpoint(self) -> str | None:
        """The gRPC endpoint (e.g. http://127.0.0.1:4317), when serving gRPC."""
        if self._grpc is None:
            return None
        host = f"[{self._grpc.host}]" if ":" in self._grpc.host else self._grpc.host
        return f"http://{host}:{self._grpc.port}"

    @property
    def turned_away(self) -> int:
        """HTTP connections answered 503 because `max_connections` were being served."""
        return self._http.turned_away

    @property
    def spool_directory(self) -> Path:
        return self.exporter.spool.directory

    def start(self) -> Collector:
        self.exporter.prepare()
        self._http.start()
        if self._grpc is not None:
            self._grpc.start()
        self._flusher = threading.Thread(
            target=self._flush_loop, name="compactobs-collect-flush", daemon=True
        )
        self._flusher.start()
        return self

    def close(self) -> None:
        """Stop listening, then flush the store (rows the database cannot take stay in the spool)."""
        self._http.close()
        if self._grpc is not None:
            self._grpc.close()
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._store_lock:
            self.processor.shutdown()
            if self._api_engine is not None:
                self._api_engine.dispose()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write what waits in the spool now. True when nothing is left waiting."""
        with self._store_lock:
            return self.exporter.force_flush(int(timeout_s * 1000))

    # --- requests ---------------------------------------------------------------------------------------

    def handle(self, signal: str, body: bytes, is_json: bool) -> Answer:
        with self._stats_lock:
            self.stats.requests += 1
        try:
            if signal == "traces":
                traces = decode.parse_traces(body, json_body=is_json)
            else:
                request = decode.parse(body, decode.REQUEST_TYPES[signal], json_body=is_json)
        except decode.DecodeFailure as err:
            return Answer(HTTPStatus.BAD_REQUEST, error=str(err))
        if signal == "traces":
            return self._traces(traces)
        if signal == "logs":
            return self._logs(request)
        return Answer(
            HTTPStatus.OK,
            ExportMetricsServiceResponse(
                partial_success=ExportMetricsPartialSuccess(
                    error_message="metrics are not stored by compactobs collect; spans and log events are"
                )
            ),
        )

    def _traces(self, request: Message) -> Answer:
        batch = decode.spans(request)
        ours: list[ReadableSpan] = []
        api: list[ReadableSpan] = []  # the Claude API's own spans (server-side telemetry)
        for span in batch.spans:
            if _is_compactobs(span):
                ours.append(span)
            elif platform.is_platform(span):
                api.append(span)
        api_rows, api_not_kept = platform.request_rows(api)
        rejected = batch.rejected + len(batch.spans) - len(ours) - len(api) + api_not_kept
        reasons = list(batch.reasons)
        if len(ours) + len(api) < len(batch.spans):
            reasons.append(NOT_OURS)
        if api_not_kept:
            reasons.append(platform.NOT_KEPT)
        refused = self._store(ours) or self._store_api_requests(api_rows)
        if refused is not None:
            return refused
        with self._stats_lock:
            self.stats.spans_stored += len(ours)
            self.stats.spans_rejected += rejected
            self.stats.api_requests_stored += len(api_rows)
        partial = (
            ExportTracePartialSuccess(rejected_spans=rejected, error_message="; ".join(reasons))
            if rejected
            else None
        )
        return Answer(HTTPStatus.OK, ExportTraceServiceResponse(partial_success=partial))

    def _logs(self, request: Message) -> Answer:
        records = decode.log_records(request)
        spans, calls, not_kept, unreadable = self._claude_code_spans(records)
        refused = self._store(spans)
        if refused is not None:
            return refused
        with self._stats_lock:
            self.stats.events_stored += calls
            self.stats.events_rejected += not_kept + unreadable
        # Claude Code's other events (prompts, tool decisions...) are not kept: said once per request, as a
        # warning (rejected_log_records stays 0 for them: they were read, and deliberately not stored).
        # Records whose values cannot be read are rejected: resending them would fail the same way.
        reasons = [NOT_KEPT_EVENTS] if not_kept else []
        if unreadable:
            reasons.append(f"{unreadable} record(s) with values that cannot be read as a call were rejected")
        partial = (
            ExportLogsPartialSuccess(rejected_log_records=unreadable, error_message="; ".join(reasons))
            if reasons
            else None
        )
        return Answer(HTTPStatus.OK, ExportLogsServiceResponse(partial_success=partial))

    def _claude_code_spans(
        self, records: Sequence[decode.LogRecord]
    ) -> tuple[list[ReadableSpan], int, int, int]:
        """(spans, calls, records not kept, records rejected). A record whose values break the mapping (a
        data error, not a store's) is rejected alone: the batch is mapped again record by record."""
        try:
            spans, calls, not_kept = self._claude_code.spans(records)
            return spans, calls, not_kept, 0
        except Exception:
            log.warning("compactobs collect: a log batch has unreadable records; mapping them one by one")
        spans, calls, not_kept, unreadable = [], 0, 0, 0
        for record in records:
            try:
                one, one_calls, one_not_kept = self._claude_code.spans([record])
            except Exception:
                unreadable += 1
                continue
            spans += one
            calls += one_calls
            not_kept += one_not_kept
        return spans, calls, not_kept, unreadable

    def _store(self, spans: Sequence[ReadableSpan]) -> Answer | None:
        """None once the spans are durable; else the retryable answer."""
        if not spans:
            return None
        if not self._store_lock.acquire(timeout=self.store_wait_s):
            return self._refuse("the store is busy (the database stalled beyond its bounds): retry")
        try:
            result = self.processor.submit(spans)
        finally:
            self._store_lock.release()
        if result is not SpanExportResult.SUCCESS:
            return self._refuse(
                "the store cannot keep this batch now (the database is unavailable and the spool is full or "
                "not writable): retry"
            )
        return None

    def _store_api_requests(self, rows: list[JSONObject]) -> Answer | None:
        """None once server-side telemetry's requests are committed; else the retryable answer (they are
        not spooled: the sender keeps them until this answers)."""
        if not rows:
            return None
        if not self._store_lock.acquire(timeout=self.store_wait_s):
            return self._refuse("the store is busy (the database stalled beyond its bounds): retry")
        try:
            if self._api_engine is None:
                self._api_engine = make_engine(self._database_url, connect_timeout_s=5)
            write_api_requests(self._api_engine, rows)
        except Exception:
            log.warning("compactobs collect: could not store %d api requests", len(rows), exc_info=True)
            return self._refuse(
                "the store cannot keep server-side telemetry now (the database is unavailable): retry"
            )
        finally:
            self._store_lock.release()
        return None

    def _refuse(self, message: str) -> Answer:
        with self._stats_lock:
            self.stats.refused += 1
        return Answer(HTTPStatus.SERVICE_UNAVAILABLE, error=message, retry_after_s=RETRY_AFTER_S)

    def _flush_loop(self) -> None:
        while not self._closing.wait(self._flush_every_s):
            try:
                if not self.exporter.spool.has_replayable():
                    continue
            except OSError:
                continue
            # Never make a request wait behind a replay: skip this round if a batch is being stored.
            if self._store_lock.acquire(blocking=False):
                try:
                    self.exporter.force_flush(int(self.store_wait_s * 1000))
                finally:
                    self._store_lock.release()


def _is_compactobs(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    if scope is None or scope.name != t.INSTRUMENTATION_SCOPE:
        return False
    kind = span.attributes.get(t.SPAN_KIND) if span.attributes else None
    return kind in (t.SPAN_KIND_CALL, t.SPAN_KIND_ITERATION)
