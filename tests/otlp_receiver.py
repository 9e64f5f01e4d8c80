"""A real OTLP receiver for tests, over OTLP/HTTP or OTLP/gRPC, decoding protobuf with opentelemetry-proto.

`OtlpReceiver("http/protobuf")` listens on `/v1/traces` and `/v1/metrics`; `OtlpReceiver("grpc")` serves the
collector's `TraceService` and `MetricsService`. Both keep every span they accept (ids, times, kind, status,
attributes, resource, scope), the metrics by name, and the headers (gRPC metadata) of each request.

`refuse` answers the first N export requests with a retryable refusal, as a collector under load does:
HTTP 503 with `Retry-After: 0`, gRPC UNAVAILABLE with a `RetryInfo` of 0 s; `accept` takes only the first N
requests and refuses every one after, as a collector that went away mid-way. Refused requests keep nothing.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpReceiver", "any_value"]


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


class OtlpReceiver:
    """Collects what the official exporters send: `spans` (dicts), `metrics` (by name), `requests` (headers
    of every export request, refused ones included)."""

    def __init__(
        self, protocol: str = "http/protobuf", *, refuse: int = 0, accept: int | None = None
    ) -> None:
        self.protocol = protocol
        self.spans: list[dict[str, Any]] = []
        self.metrics: dict[str, list[Any]] = {}
        self.requests: list[dict[str, str]] = []
        self.arrivals: list[float] = []
        """time.monotonic() of each request's arrival."""
        self.refused = 0
        self._to_refuse = refuse
        self._to_accept = accept
        self.accepted = 0
        self._lock = threading.Lock()
        if protocol == "grpc":
            self._start_grpc()
        elif protocol == "http/protobuf":
            self._start_http()
        else:
            raise ValueError(protocol)

    # -- what both transports share ---------------------------------------------------------------------

    def _admit(self, headers: dict[str, str]) -> bool:
        """Record the request; False when it is to be refused."""
        with self._lock:
            self.arrivals.append(time.monotonic())
            self.requests.append(headers)
            if self.refused < self._to_refuse or (
                self._to_accept is not None and self.accepted >= self._to_accept
            ):
                self.refused += 1
                return False
            self.accepted += 1
            return True

    def _traces(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        {
                            "name": span.name,
                            "scope": scope_spans.scope.name,
                            "scope_version": scope_spans.scope.version,
                            "resource": resource,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "start_ns": span.start_time_unix_nano,
                            "end_ns": span.end_time_unix_nano,
                            "status_code": span.status.code,
                            "status_message": span.status.message,
                            "attributes": _attributes(span.attributes),
                        }
                    )
        with self._lock:
            self.spans.extend(received)

    def _metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.metrics.setdefault(metric.name, []).append(metric)

    # -- OTLP/HTTP ---------------------------------------------------------------------------------------

    def _start_http(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if not receiver._admit({k.lower(): v for k, v in self.headers.items()}):
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/v1/traces":
                    receiver._traces(ExportTraceServiceRequest.FromString(body))
                elif self.path == "/v1/metrics":
                    receiver._metrics(ExportMetricsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- OTLP/gRPC ---------------------------------------------------------------------------------------

    def _grpc_admit(self, context: grpc.ServicerContext) -> None:
        if self._admit({k: v for k, v in context.invocation_metadata() if isinstance(v, str)}):
            return
        retry = RetryInfo(retry_delay=Duration(seconds=0))
        context.set_trailing_metadata((("google.rpc.retryinfo-bin", retry.SerializeToString()),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "receiver refusing, as told")

    def _start_grpc(self) -> None:
        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
                receiver._grpc_admit(context)
                receiver._traces(request)
                return ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> ExportMetricsServiceResponse:
                receiver._grpc_admit(context)
                receiver._metrics(request)
                return ExportMetricsServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    # -- lifetime ----------------------------------------------------------------------------------------

    def __enter__(self) -> OtlpReceiver:
        if self.protocol == "grpc":
            self._grpc.start()
        else:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.protocol == "grpc":
            self._grpc.stop(grace=None)
        else:
            self._server.shutdown()
            self._server.server_close()


class SilentEndpoint:
    """An OTLP endpoint that never answers: it accepts connections and reads nothing, writes nothing (a
    collector that hangs, or a black-holed network as its clients see it). `endpoint` is its base URL."""

    def __init__(self) -> None:
        import socket

        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[Any] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)  # kept open, never answered

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> SilentEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
