"""OTLP exporters, chosen the OpenTelemetry way: one place for the live export and `compactobs export otlp`.

The protocol is `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else
`http/protobuf` (the OTLP exporter specification's default). Everything else the official exporters read
from the standard variables themselves, so it is not re-implemented here: endpoint, headers, timeout,
compression, certificates, insecure, metric temporality.

compactobs' own providers export a signal when the application asked for it: `OTEL_{SIGNAL}_EXPORTER` names
`otlp` (or says `none`, and then never), or, without that variable, an OTLP endpoint is set.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Literal

from compactobs.errors import UserError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "DEFAULT_PROTOCOL",
    "PROTOCOLS",
    "OtlpConfigError",
    "Signal",
    "configured_endpoint",
    "export_requested",
    "metric_exporter",
    "protocol",
    "span_exporter",
]

Signal = Literal["TRACES", "METRICS"]

GRPC: Final = "grpc"
HTTP_PROTOBUF: Final = "http/protobuf"
PROTOCOLS: Final = (GRPC, HTTP_PROTOBUF)
"""What the official Python exporters speak (`http/json` has no Python exporter)."""
DEFAULT_PROTOCOL: Final = HTTP_PROTOBUF

_SIGNAL_PATH: Final = {"TRACES": "v1/traces", "METRICS": "v1/metrics"}


class OtlpConfigError(UserError, ValueError):
    """An OTLP setting that cannot work (an unknown protocol); its message is one line saying what to do."""


def protocol(signal: Signal, given: str | None = None) -> str:
    """The OTLP protocol for `signal`: `given`, else the per-signal variable, else the general one, else
    http/protobuf. Raises OtlpConfigError for a protocol no installed exporter speaks."""
    chosen = (
        given
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_PROTOCOL
    ).strip()
    if chosen not in PROTOCOLS:
        raise OtlpConfigError(
            f"unsupported OTLP protocol {chosen!r} (from OTEL_EXPORTER_OTLP_{signal}_PROTOCOL or "
            f"OTEL_EXPORTER_OTLP_PROTOCOL): use {' or '.join(PROTOCOLS)}"
        )
    return chosen


def configured_endpoint(signal: Signal) -> str | None:
    """The endpoint the standard variables name for `signal` (per-signal first), if any."""
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )


def export_requested(signal: Signal) -> bool:
    """Whether the application asked for `signal` over OTLP (see the module's docstring)."""
    exporters = os.environ.get(f"OTEL_{signal}_EXPORTER")
    if exporters is not None and exporters.strip():
        return "otlp" in {name.strip() for name in exporters.split(",")}
    return configured_endpoint(signal) is not None


def _signal_endpoint(endpoint: str | None, chosen: str, signal: Signal) -> str | None:
    """An endpoint given as a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: OTLP/HTTP appends the signal's
    path (unless it is there already); gRPC takes it as it is."""
    if endpoint is None or chosen == GRPC:
        return endpoint
    base = endpoint.rstrip("/")
    path = _SIGNAL_PATH[signal]
    return base if base.endswith("/" + path) else f"{base}/{path}"


def span_exporter(
    protocol_name: str | None = None, *, endpoint: str | None = None, timeout_s: float | None = None
) -> SpanExporter:
    """The official OTLP span exporter for the protocol (see `protocol`); `endpoint` is a base URL as in
    OTEL_EXPORTER_OTLP_ENDPOINT (None: the exporter's own variables and default)."""
    chosen = protocol("TRACES", protocol_name)
    url = _signal_endpoint(endpoint, chosen, "TRACES")
    if chosen == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=url, timeout=timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=url, timeout=timeout_s)


def metric_exporter(protocol_name: str | None = None) -> MetricExporter:
    """The official OTLP metric exporter for the protocol, configured by the standard variables."""
    if protocol("METRICS", protocol_name) == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()
