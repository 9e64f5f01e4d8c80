"""`compactobs collect --grpc`: the OTLP/gRPC services (traces, logs, metrics) over the collector's handler.

The same handler as OTLP/HTTP answers each request (see `compactobs.collect.server`), its HTTP statuses
mapped to the gRPC codes the OTLP specification names: UNAVAILABLE (retryable, with a RetryInfo) when the
store cannot keep a batch now, INVALID_ARGUMENT for a body that is not OTLP, UNAUTHENTICATED without the
bearer token. gRPC handles compression (gzip) itself; the size bound is its receive limit. Eight requests
are served at once and at most MAX_CONCURRENT_RPCS held in all: gRPC answers RESOURCE_EXHAUSTED beyond.
"""

from __future__ import annotations

import hmac
from concurrent import futures
from http import HTTPStatus
from typing import Any, Final

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo

from compactobs.collect.server import RETRY_AFTER_S, CollectError, Handler, is_loopback

__all__ = ["GrpcReceiver"]

_SERVICES: Final = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
}
_CODES: Final = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


MAX_CONCURRENT_RPCS: Final = 64
"""Requests being served or waiting for one of the eight threads; each may hold max_request_bytes."""


class GrpcReceiver:
    """Serves OTLP/gRPC on HOST:PORT; `port` is the bound port. Raises CollectError (bind, token)."""

    def __init__(
        self, handler: Handler, *, host: str, port: int, token: str | None, max_request_bytes: int
    ) -> None:
        if token is None and not is_loopback(host):
            raise CollectError(
                f"listening on {host} (beyond loopback) needs a bearer token: pass --token-file FILE"
            )
        self._handler = handler
        self._token = token
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="compactobs-collect-grpc"),
            options=[("grpc.max_receive_message_length", max_request_bytes)],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        handlers = [
            grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(self._export(signal))}
            )
            for signal, service in _SERVICES.items()
        ]
        self._server.add_generic_rpc_handlers(handlers)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port: int = self._server.add_insecure_port(address)
        except RuntimeError as err:
            raise CollectError(f"cannot listen on {address} for gRPC: {err}") from None
        self.host = host

    def _export(self, signal: str) -> Any:
        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            if self._token is not None and not self._authorized(context):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required (authorization)")
            answer = self._handler(signal, request, False)
            if answer.error is None:
                return answer.message.SerializeToString() if answer.message is not None else b""
            code = _CODES.get(HTTPStatus(answer.status), grpc.StatusCode.INTERNAL)
            if code is grpc.StatusCode.UNAVAILABLE:
                # RetryInfo tells the client how long to wait, as Retry-After does over HTTP.
                info = RetryInfo(retry_delay=Duration(seconds=answer.retry_after_s or RETRY_AFTER_S))
                context.set_trailing_metadata((("google.rpc.retryinfo-bin", info.SerializeToString()),))
            context.abort(code, answer.error)
            raise AssertionError("unreachable: abort raises")

        return export

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        token = self._token or ""
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                scheme, _, given = value.partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), token.encode()
                )
        return False

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=5).wait()
