"""`compactobs export otlp` throughput: stored calls replayed to a loopback OTLP sink, against the official
exporter sending the same spans, already built, in the same batches (its own floor), in the same run.

Data: bench/reports.py's generator (seeded; a store reused when its parameters match). The sink is a
loopback OTLP endpoint that reads each request and answers OK without decoding it (gRPC: raw bytes; HTTP:
the body read and dropped), in this process, so it shares the CPU with the exporter: figures are for this
shared machine, as ratios.

Per protocol, median of --rounds:
  - `replay`: `compactobs.store.replay.replay` over the whole store: read calls and iterations in SQL,
    build the spans, export them;
  - `export only`: the official exporter sending the same spans, built beforehand, in the same batches;
  - `read + build`: the replay into an exporter that drops the spans (no encoding, no network).

Run: `python bench/export_otlp.py` (20,000 calls), or e.g. `--calls 100000 --protocol grpc`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reports import Params, prepare  # bench/reports.py's generator

from compactobs import otlp
from compactobs.store import make_engine
from compactobs.store.replay import count_calls, replay


class Sink:
    """A loopback OTLP endpoint that takes every request and decodes nothing."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        if protocol == "grpc":
            handler = grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService",
                {"Export": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
            )
            self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            self._server.add_generic_rpc_handlers((handler,))
            port = self._server.add_insecure_port("127.0.0.1:0")
            self._server.start()
        else:

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self) -> None:
                    self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                def log_message(self, *args: Any) -> None:
                    pass

            self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        if self.protocol == "grpc":
            self._server.stop(grace=None)
        else:
            self._http.shutdown()
            self._http.server_close()


class Keep(SpanExporter):
    """Keeps the batches it is given (or drops them, `keep=False`)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.batches: list[Sequence[ReadableSpan]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.keep:
            self.batches.append(spans)
        return SpanExportResult.SUCCESS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocol", action="append", choices=otlp.PROTOCOLS)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/compactobs-bench"))
    args = parser.parse_args()
    if args.calls < 1 or args.rounds < 1:
        parser.error("--calls and --rounds must be at least 1")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (database,) = prepare(
        Params(calls=args.calls, days=7, conversations=max(args.calls // 100, 1)), args.data_dir, None
    )
    engine = make_engine(database.url)
    total = count_calls(engine, [])
    kept = Keep()
    replay(engine, [], kept)
    spans = sum(len(batch) for batch in kept.batches)
    print(
        f"{total:,} calls, {spans:,} spans, {len(kept.batches)} requests of 128 calls; SQLite; "
        f"median of {args.rounds}"
    )

    def timed(run: Any) -> float:
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    build = timed(lambda: replay(engine, [], Keep(keep=False)))
    print(f"  read + build: {build:.2f} s ({total / build:,.0f} calls/s)")
    for protocol in args.protocol or list(otlp.PROTOCOLS):
        sink = Sink(protocol)
        exporter = otlp.span_exporter(protocol, endpoint=sink.endpoint)
        try:
            full = timed(lambda exporter=exporter: replay(engine, [], exporter))
            floor = timed(lambda exporter=exporter: [exporter.export(batch) for batch in kept.batches])
        finally:
            exporter.shutdown()
            sink.close()
        print(
            f"  {protocol:<13} replay {full:.2f} s ({total / full:,.0f} calls/s, "
            f"{spans / full:,.0f} spans/s); "
            f"export only {floor:.2f} s; replay / export only = {full / floor:.2f}"
        )
    engine.dispose()


if __name__ == "__main__":
    import _harness

    _harness.run(main)
