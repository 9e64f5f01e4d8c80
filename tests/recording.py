"""Recording calls into a store as an application does: compactobs configured on a store, a client with its
middleware, the loopback simulator answering (used by the report tests that build their store through the
real SDK)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import anthropic
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import compactobs
from compactobs import store
from compactobs.demo import DemoSummary
from compactobs.testing import Simulator


@contextmanager
def recording(
    url: str,
    service_name: str | None = None,
    sim: Simulator | None = None,
    processors: Sequence[SpanProcessor] = (),
    guard: compactobs.GuardPolicy | None = None,
) -> Iterator[tuple[Simulator, anthropic.Anthropic]]:
    """(the simulator, a client compactobs records into `url`, no retries); everything recorded is in the
    store when the block ends. `service_name`: the recording process's `service.name`; `sim`: a simulator
    that outlives the block (its admin reports, for `reconcile`), else one of the block's own; `processors`:
    more span processors on the provider (e.g. to keep the spans); `guard`: the service's guard policy."""
    store.upgrade_database(url)
    resource = Resource.create({"service.name": service_name}) if service_name is not None else None
    provider = TracerProvider(resource=resource) if resource is not None else TracerProvider()
    for processor in processors:
        provider.add_span_processor(processor)
    compactobs.configure(url, tracer_provider=provider, meter_provider=NoOpMeterProvider(), guard=guard)
    try:
        with contextlib.ExitStack() as stack:
            server = sim if sim is not None else stack.enter_context(Simulator())
            client = anthropic.Anthropic(
                base_url=server.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
            )
            yield server, client
    finally:
        compactobs.shutdown()
        provider.shutdown()


@dataclass(frozen=True)
class DemoRecording:
    """The demo's workload recorded once into PostgreSQL (`url`), with its finished spans kept in memory."""

    url: str
    summary: DemoSummary
    spans: tuple[ReadableSpan, ...]
