"""`compactobs collect` ingest: calls per second stored through OTLP/HTTP, against the in-process store's own
ingest of the same spans, in the same run.

Each call is one `chat` span and three iteration spans, built before any timing by bench/ingest.py's
generator. For each database, rounds interleave:
  in-process  SqlSpanExporter.export(batch) for every batch, then force_flush() (bench/ingest.py's figure)
  collect     every batch, encoded beforehand by the official OTLP encoder (protobuf), POSTed on one
              keep-alive connection to a `Collector` on loopback, which decodes it and stores it through
              the same processor and exporter; each answer comes once the batch is durable, so the clock
              stops when everything is stored. The sender's encoding is its own cost, not the ingest's.
Client and collector share this process (and this machine's 2 cores).
Each round gets a fresh database. The figure is the median over rounds; the target is collect >= half the
in-process rate.

Run: `python bench/collect.py [--calls 20000] [--rounds 3] [--batch 2048] [--no-postgres] [--ref GIT_REF]`
(--ref: see bench/_harness.py).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import DEFAULT_POSTGRES, batches, count_calls, fresh_database, make_spans, run_exporter

from compactobs.collect import Collector
from compactobs.store import make_engine


def run_collect(url: str, span_batches: list[Sequence[ReadableSpan]], tmp: Path) -> float:
    with Collector(url, http="127.0.0.1:0", spool_dir=tmp / f"spool-{uuid.uuid4().hex}") as collector:
        collector.exporter.check()  # connected, schema checked, before the clock starts
        bodies = [encode_spans(batch).SerializeToString() for batch in span_batches]
        host, port = collector.endpoint.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        start = time.perf_counter()
        for body in bodies:
            connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        elapsed = time.perf_counter() - start
        connection.close()
        stats = collector.exporter.stats
        assert stats.spooled == 0 and stats.dropped == 0 and collector.stats.refused == 0, stats
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2048, help="spans per export request")
    parser.add_argument("--no-postgres", action="store_true")
    options = parser.parse_args()
    postgres_url = os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    spans = make_spans(options.calls, 97)
    span_batches = batches(spans, options.batch)
    gc.collect()
    gc.freeze()
    print(
        f"{options.calls} calls x (1 call + 3 iteration spans), {len(span_batches)} requests of "
        f"{options.batch} spans, median of {options.rounds} rounds, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        for kind in ["sqlite"] + ([] if options.no_postgres else ["postgresql"]):
            runs: dict[str, list[float]] = {"in-process": [], "collect": []}
            for _ in range(options.rounds):
                for name, job in (("in-process", run_exporter), ("collect", run_collect)):
                    with fresh_database(kind, postgres_url, tmp) as url:
                        elapsed = job(url, span_batches, tmp)
                        engine = make_engine(url)
                        stored = count_calls(engine)
                        engine.dispose()
                        assert stored == (options.calls, 3 * options.calls), (name, stored)
                        runs[name].append(options.calls / elapsed)
            local, collected = statistics.median(runs["in-process"]), statistics.median(runs["collect"])
            ratio = collected / local
            print(
                f"  {kind:<10} in-process {local:8.0f} calls/s  collect (OTLP/HTTP) {collected:8.0f} calls/s "
                f"ratio {ratio:4.2f}   target 0.5: {'met' if ratio >= 0.5 else 'NOT met'}"
            )


if __name__ == "__main__":
    import _harness

    _harness.run(main)
