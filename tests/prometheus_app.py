"""An app instrumented with compactobs, scraped by a real Prometheus (tests/dashboards/test_prometheus.py).

    python -m tests.prometheus_app METRICS_PORT DATABASE_URL

Its metrics go through OpenTelemetry's Prometheus exporter, served on 127.0.0.1:METRICS_PORT; its calls go
through the real SDK to compactobs.testing's simulator and into the SQL store at DATABASE_URL.

Protocol on stdin/stdout, one line each: it makes the warm-up calls (a tiny call of every shape, so that
every series exists, small, before the traffic) and prints `warm`; on `go` it makes the traffic and prints
`done`; it exits when stdin closes.

    python -m tests.prometheus_app METRICS_PORT DATABASE_URL short

A short job: one call per model, made before its metrics are served, so that Prometheus' first sample of
every series already holds the job's whole spend; then it serves them, prints `done`, and exits when stdin
closes.

"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import anthropic
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import compactobs
from compactobs.testing import ErrorReply, Reply, Simulator, message

MODELS = ("claude-opus-4-8", "claude-sonnet-4-5")
TRAFFIC_CALLS = 20
"""Calls per model in the traffic; as many failed calls besides."""
SCALE = 1000
"""The traffic's calls are this many times the warm-up's."""


def usage(k: int) -> dict[str, Any]:
    """A compacting call's usage: a compaction iteration and a message iteration that reads and writes the
    cache; `k` scales every count."""
    compaction = {
        "type": "compaction",
        "input_tokens": 90 * k,
        "output_tokens": 7 * k,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    last = {
        "type": "message",
        "input_tokens": 20 * k,
        "output_tokens": 5 * k,
        "cache_read_input_tokens": 300 * k,
        "cache_creation_input_tokens": 40 * k,
    }
    return {**{key: value for key, value in last.items() if key != "type"}, "iterations": [compaction, last]}


def call(sim: Simulator, client: anthropic.Anthropic, model: str, k: int) -> None:
    sim.enqueue(
        Reply(
            message(
                model=model,
                content=[{"type": "compaction", "content": "summary"}, {"type": "text", "text": "ok"}],
                usage=usage(k),
            )
        )
    )
    client.beta.messages.create(
        model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}], betas=["compact-2026-01-12"]
    )


def fail(sim: Simulator, client: anthropic.Anthropic, model: str) -> None:
    sim.enqueue(ErrorReply(400, should_retry=False))
    with contextlib.suppress(anthropic.BadRequestError):
        client.messages.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "x"}])


def short_job(port: int, database_url: str) -> None:
    reader = PrometheusMetricReader()
    compactobs.instrument(
        database_url, meter_provider=MeterProvider(metric_readers=[reader]), service_name="short-job"
    )
    with Simulator() as sim:
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        for model in MODELS:
            call(sim, client, model, SCALE)
    compactobs.shutdown()
    start_http_server(port, addr="127.0.0.1")
    print("done", flush=True)
    for _ in sys.stdin:
        pass


def main() -> None:
    port, database_url = int(sys.argv[1]), sys.argv[2]
    if sys.argv[3:] == ["short"]:
        short_job(port, database_url)
        return
    reader = PrometheusMetricReader()
    start_http_server(port, addr="127.0.0.1")
    compactobs.instrument(
        database_url, meter_provider=MeterProvider(metric_readers=[reader]), service_name="prometheus-test"
    )
    with Simulator() as sim:
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        for model in MODELS:
            call(sim, client, model, 1)
            fail(sim, client, model)
        compactobs.flush()
        print("warm", flush=True)
        for line in sys.stdin:
            if line.strip() == "go":
                for model in MODELS:
                    for _ in range(TRAFFIC_CALLS):
                        call(sim, client, model, SCALE)
                        fail(sim, client, model)
                # Closes the store (the reports must not wait on its connection); the app's own meter
                # provider, and so the metrics, stay.
                compactobs.shutdown()
                print("done", flush=True)


if __name__ == "__main__":
    main()
