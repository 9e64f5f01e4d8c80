"""The least CPU the telemetry DESIGN.md asks for can cost, as a share of a plain call, in one run.

compactobs emits, per call, one call span and one span per usage iteration with the attributes of DESIGN.md
section 4, and three histogram points. This takes the spans and points compactobs really emitted for one
call (captured in memory), then replays them through the OpenTelemetry SDK alone, attributes ready-made:
no parsing, no pricing, no store, nothing of compactobs' own. That CPU is a floor for any instrumentation
that emits the same telemetry through the SDK in the application's process, on whichever thread it runs.

Beside it, the plain client's median wall time per call against the loopback simulator (in a child process,
as in `overhead.py`), its caller-thread CPU, and the time the caller spends waiting for the server, where
work on another thread could run without taking the interpreter from the caller. With one interpreter lock,
work beyond that wait lands in the caller's wall time.
Run: `python bench/otel_floor.py [--calls 3000]`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from typing import Any

import anthropic
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from overhead import DropExporter, serve, time_calls

import compactobs


def captured_telemetry(
    base_url: str, stream: bool
) -> tuple[list[ReadableSpan], list[tuple[str, dict[str, Any], float]]]:
    """What compactobs emitted for one call: its spans (call span last), and its histogram points as
    (instrument, attributes, value)."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    compactobs.configure(tracer_provider=tracer_provider, meter_provider=MeterProvider([reader]), store=False)
    client = anthropic.Anthropic(
        base_url=base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
    )
    time_calls(client, 1, stream)
    compactobs.flush()
    compactobs.shutdown()
    points = []
    metrics_data = reader.get_metrics_data()
    for resource_metrics in metrics_data.resource_metrics if metrics_data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        points.append((metric.name, dict(point.attributes or {}), point.sum))
    return list(spans.get_finished_spans()), points


def floor_cpu(
    spans: list[ReadableSpan], points: list[tuple[str, dict[str, Any], float]], calls: int
) -> float:
    """CPU seconds per call the OpenTelemetry SDK takes to emit `spans` and `points` again, spans batched
    to a dropping exporter as an application's would be."""
    tracer_provider = TracerProvider()
    # Room for every replayed span (a dropped span would cost less than an exported one), and never less
    # than the processor's default export batch, which may not exceed its queue.
    queue = max(len(spans) * calls, 512)
    tracer_provider.add_span_processor(BatchSpanProcessor(DropExporter(), max_queue_size=queue))
    tracer = tracer_provider.get_tracer("floor")
    meter = MeterProvider([InMemoryMetricReader()]).get_meter("floor")
    histograms = {name: meter.create_histogram(name) for name, _, _ in points}
    *children, call = spans
    call_attributes = dict(call.attributes or {})
    child_parts = [(child.name, child.kind, dict(child.attributes or {})) for child in children]
    start = time.thread_time()
    for _ in range(calls):
        span = tracer.start_span(call.name, kind=call.kind, attributes=call_attributes, start_time=1)
        context = trace.set_span_in_context(span)
        for name, kind, attributes in child_parts:
            tracer.start_span(name, context, kind, attributes, start_time=2).end(end_time=2)
        span.end(end_time=3)
        for name, attributes, value in points:
            histograms[name].record(value, attributes)
    elapsed = time.thread_time() - start
    tracer_provider.shutdown()
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000, help="plain calls and replays per mode")
    options = parser.parse_args()
    if options.calls < 1:
        parser.error("--calls must be at least 1")
    parent_end, child_end = multiprocessing.Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=serve, args=(2 * (options.calls + 52), child_end), daemon=True
    )
    server.start()
    base_url = parent_end.recv()
    plain = anthropic.Anthropic(base_url=base_url, api_key="k", open_telemetry=False)
    for stream in (False, True):
        spans, points = captured_telemetry(base_url, stream)
        time_calls(plain, 50, stream)
        samples = time_calls(plain, options.calls, stream)
        wall = statistics.median(w for w, _ in samples)
        caller_cpu = statistics.median(c for _, c in samples)
        waiting = statistics.median(w - c for w, c in samples)
        floor = floor_cpu(spans, points, options.calls)
        attributes = sum(len(span.attributes or {}) for span in spans)
        mode = "streaming" if stream else "non-streaming"
        print(
            f"{mode}: {options.calls} plain calls and replays (us per call, the median of the plain calls and"
            " the mean of the replays, and their share of the plain call's wall time)"
        )
        print(f"  plain call, wall                     {wall * 1e6:7.1f}")
        print(f"  plain call, caller-thread CPU        {caller_cpu * 1e6:7.1f}  {caller_cpu / wall:5.3f}")
        print(f"  plain call, caller waiting on server {waiting * 1e6:7.1f}  {waiting / wall:5.3f}")
        print(
            f"  OpenTelemetry SDK alone: {len(spans)} spans ({attributes} attributes),"
            f" {len(points)} histogram points  {floor * 1e6:7.1f}  {floor / wall:5.3f}"
        )
    parent_end.send("stop")
    server.join(10)


if __name__ == "__main__":
    import _harness

    _harness.run(main)
