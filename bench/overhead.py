"""What compactobs adds to a call's wall time, as ratios to a plain client measured in the same run.

Five clients against the loopback simulator, non-streaming and streaming, each call timed twice: its
wall time, and the CPU time of the calling thread (`time.thread_time`), which is what instrumentation
takes from the caller's own path (compactobs prices and emits spans on its recording thread); and per
configuration, the CPU time of the whole process (every thread, drains included) per call, which is all
the work instrumentation adds wherever it runs:
  plain       SDK tracing off, no compactobs
  middleware  a middleware that only calls the next handler: what the SDK's middleware hook itself costs,
              which any middleware-based instrumentation pays before doing anything
  sdk-trace   the SDK's own OpenTelemetry spans on (BatchSpanProcessor, spans dropped by the exporter)
  compactobs  compactobs' middleware, spans and metrics, exported to its SQL store on a background thread
              (with --no-store: no SQL store, its spans dropped by the exporter as the SDK's are)
  no-store    compactobs without the SQL store in the same run: its spans dropped by the exporter as the
              SDK's are (the same middleware, its recorder swapped in for this configuration's rounds)
  guard       compactobs with every call in a guarded conversation within its limits
              (`compactobs.conversation(..., budget_usd=..., max_compactions=...)`, on_breach "warn"): the
              recording thread prices and counts each call before it records it
  guard-raise the same under on_breach="raise": each request first needs the figures of the call before
              it, which came back a moment ago (calls back to back): counted by the recording thread if it
              got to it, else by the request itself

Configurations run interleaved in rounds so drift on a shared machine hits all of them alike, each round
in an order rotated by one (no configuration always runs first, or always after another's drain). Work
left on background threads at the end of a round (compactobs' recording and export, the SDK's span
export) is drained before the next configuration's round, so it never lands in another configuration's
calls, and the mean figure counts it: (all calls' wall time + those drains) / calls, the all-in cost per
call, which the median does not show when work is batched. Rounds are 500 calls by default, long beside
the recording thread's 100 ms runs, so that most of its work lands among the timed calls as it would in a
steady workload, not in the drain (the store's export, every second, still falls partly in drains: the
mean has it).

The figures are the median per-call wall time over all rounds, and, as the measure of a run's noise, each
configuration's ratio to the plain client round by round (its round's median over plain's in the same
round): the median of those ratios and their range. On a shared host whose speed drifts from second to
second, the per-round ratios are the fairer comparison, and their range says how far to trust a figure.

The simulator runs in a child process, as the real API runs on another machine: in the same process its
threads would compete with the caller for the GIL, and the benchmark would measure the server as much as
the client.
With `--server-latency-ms`, the simulator answers each call that much later, as the real API does (its
calls take hundreds of milliseconds and more): background work then overlaps the caller's wait.
Run: `python bench/overhead.py [--calls 6000] [--rounds 12] [--no-store] [--server-latency-ms 0]`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anthropic
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import compactobs
from compactobs.instrument import state
from compactobs.recorder import Telemetry
from compactobs.testing import Reply, Simulator, message

USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "cache_read_input_tokens": 4000,
    "cache_creation_input_tokens": 0,
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 180000,
            "output_tokens": 3500,
            "cache_read_input_tokens": 40000,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 23000,
            "output_tokens": 1000,
            "cache_read_input_tokens": 4000,
            "cache_creation_input_tokens": 0,
        },
    ],
}
BODY = message(
    model="claude-opus-4-8",
    content=[
        {"type": "compaction", "content": "Summary."},
        {"type": "text", "text": " ".join(["word"] * 60)},
    ],
    usage=USAGE,
)
ARGS: dict[str, Any] = {
    "model": "claude-opus-4-8",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "hello"}],
    "betas": ["compact-2026-01-12"],
    "context_management": {"edits": [{"type": "compact_20260112"}]},
}


class DropExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class PassThrough(anthropic.Middleware):
    """Does nothing but hand the request on."""

    def handle(self, request: Any, call_next: Any) -> Any:
        return call_next(request)


CONFIGURATIONS = ("plain", "middleware", "sdk-trace", "compactobs", "no-store", "guard", "guard-raise")
GUARDED = {"guard": "warn", "guard-raise": "raise"}


def serve(replies: int, connection: Connection, latency_s: float = 0.0) -> None:
    """The child process: a simulator with `replies` copies of BODY queued, each answered `latency_s`
    after its request arrives, until told to stop."""
    with Simulator() as sim:
        reply = Reply(BODY, delay_s=latency_s)
        sim.enqueue(*([reply] * replies))
        connection.send(sim.base_url)
        connection.recv()


def time_calls(
    client: anthropic.Anthropic, calls: int, stream: bool, on_breach: str | None = None
) -> list[tuple[float, float]]:
    """(wall time, CPU time of the calling thread) per call; `on_breach`: inside a guarded conversation
    with that action, whose limits the run never reaches (each call compacts once, leaving 27,000 tokens of
    a 150,000 trigger: no loop)."""
    if on_breach is not None:
        limits = {"budget_usd": 10**9, "max_compactions": 10**9, "on_breach": on_breach}
        with compactobs.conversation(f"bench-guarded-{on_breach}", **limits):
            return time_calls(client, calls, stream)
    samples = []
    for _ in range(calls):
        start_cpu = time.thread_time()
        start = time.perf_counter()
        if stream:
            for _ in client.beta.messages.create(**ARGS, stream=True):
                pass
        else:
            client.beta.messages.create(**ARGS)
        samples.append((time.perf_counter() - start, time.thread_time() - start_cpu))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6000, help="calls per configuration and mode (>= 2000)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--no-store",
        action="store_true",
        help="compactobs without its SQL store, its spans to a dropping exporter like the SDK's tracing",
    )
    parser.add_argument(
        "--server-latency-ms",
        type=float,
        default=0.0,
        help="the simulator waits this long before each answer, as the real API takes its time (default 0)",
    )
    options = parser.parse_args()
    if options.rounds < 1 or options.calls < options.rounds:
        parser.error("--rounds takes a whole number from 1 to --calls")
    if not 0 <= options.server_latency_ms < 60_000:
        parser.error("--server-latency-ms takes milliseconds from 0 to 60000")
    per_round = max(1, options.calls // options.rounds)

    warmup = 50
    replies = 2 * len(CONFIGURATIONS) * (warmup + per_round * options.rounds)
    parent_end, child_end = multiprocessing.Pipe()
    spawn = multiprocessing.get_context("spawn")
    server = spawn.Process(
        target=serve, args=(replies, child_end, options.server_latency_ms / 1000), daemon=True
    )
    server.start()
    base_url = parent_end.recv()
    with tempfile.TemporaryDirectory() as tmp:
        sdk_provider = TracerProvider()
        sdk_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        compactobs_provider = TracerProvider()
        if options.no_store:
            compactobs_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        compactobs.configure(
            f"sqlite:///{Path(tmp) / 'bench.db'}",
            tracer_provider=compactobs_provider,
            meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
            store=not options.no_store,
        )
        stored = state.get_telemetry()
        assert stored is not None
        bare_provider = TracerProvider()
        bare_provider.add_span_processor(BatchSpanProcessor(DropExporter()))
        bare = Telemetry(bare_provider, MeterProvider(metric_readers=[InMemoryMetricReader()]), stored.pricer)

        def drain_bare() -> None:
            bare.drain()
            bare_provider.force_flush()

        clients: dict[str, Callable[[], anthropic.Anthropic]] = {
            "plain": lambda: anthropic.Anthropic(base_url=base_url, api_key="k", open_telemetry=False),
            "middleware": lambda: anthropic.Anthropic(
                base_url=base_url, api_key="k", open_telemetry=False, middleware=[PassThrough()]
            ),
            "sdk-trace": lambda: anthropic.Anthropic(
                base_url=base_url,
                api_key="k",
                open_telemetry={"traces": True, "tracer_provider": sdk_provider},
            ),
            "compactobs": lambda: anthropic.Anthropic(
                base_url=base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            ),
            "no-store": lambda: anthropic.Anthropic(
                base_url=base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            ),
            "guard": lambda: anthropic.Anthropic(
                base_url=base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            ),
            "guard-raise": lambda: anthropic.Anthropic(
                base_url=base_url, api_key="k", open_telemetry=False, middleware=[compactobs.Middleware()]
            ),
        }
        assert tuple(clients) == CONFIGURATIONS
        built = {name: make() for name, make in clients.items()}
        drains: dict[str, Callable[[], object]] = {
            "plain": lambda: None,
            "middleware": lambda: None,
            "sdk-trace": sdk_provider.force_flush,
            "compactobs": compactobs.flush,
            "no-store": drain_bare,
            "guard": compactobs.flush,
            "guard-raise": compactobs.flush,
        }

        def run(name: str, calls: int, stream: bool) -> list[tuple[float, float]]:
            """A configuration's calls; no-store's with its own recorder in place of the stored one."""
            if name != "no-store":
                return time_calls(built[name], calls, stream, GUARDED.get(name))
            state.set_telemetry(bare)
            try:
                return time_calls(built[name], calls, stream)
            finally:
                state.set_telemetry(stored)

        for stream in (False, True):
            for name in built:  # warm-up: connections, imports, price lookups
                run(name, warmup, stream)
                drains[name]()
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
            round_medians: dict[str, list[float]] = {name: [] for name in built}
            drained: dict[str, float] = dict.fromkeys(built, 0.0)
            process_cpu: dict[str, float] = dict.fromkeys(built, 0.0)
            for round_index in range(options.rounds):
                shift = round_index % len(CONFIGURATIONS)
                for name in CONFIGURATIONS[shift:] + CONFIGURATIONS[:shift]:
                    start_cpu = time.process_time()
                    timed = run(name, per_round, stream)
                    samples[name].extend(timed)
                    round_medians[name].append(statistics.median(w for w, _ in timed))
                    start = time.perf_counter()
                    drains[name]()
                    drained[name] += time.perf_counter() - start
                    process_cpu[name] += time.process_time() - start_cpu
            wall = {name: statistics.median(w for w, _ in values) for name, values in samples.items()}
            cpu = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
            mean = {
                name: (sum(w for w, _ in values) + drained[name]) / len(values)
                for name, values in samples.items()
            }
            all_cpu = {name: process_cpu[name] / len(values) for name, values in samples.items()}
            mode = "streaming" if stream else "non-streaming"
            print(
                f"{mode}: {len(samples['plain'])} calls per configuration in {options.rounds} rounds; median"
                " wall, mean wall incl. drains, median caller-thread CPU, the process's CPU (all threads) per"
                " call incl. drains (us, and ratio to plain); per-round ratio of median wall to plain's:"
                " median [min-max]"
            )
            for name in built:
                figures = (
                    f"{figure[name] * 1e6:7.1f} {figure[name] / figure['plain']:5.3f}x"
                    for figure in (wall, mean, cpu, all_cpu)
                )
                ratios = [
                    median / plain
                    for median, plain in zip(round_medians[name], round_medians["plain"], strict=True)
                ]
                spread = f"{statistics.median(ratios):5.3f}x [{min(ratios):5.3f}-{max(ratios):5.3f}]"
                print(f"  {name:<11} " + "   ".join(figures) + "   " + spread)
        compactobs.flush()
        compactobs.shutdown()
    parent_end.send("stop")
    server.join(10)


if __name__ == "__main__":
    import _harness

    _harness.run(main)
