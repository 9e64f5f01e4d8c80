"""A real Prometheus (Debian's `prometheus`) scraping tests/prometheus_app.py: its helpers, and one run of
the app's traffic scraped to the end (`scraping`), shared by the dashboards' tests through conftest."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compactobs.reports import promql

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus")
SCRAPE_S = 0.5
RANGE = "10m"
"""Longer than the app has lived: the range starts before every series."""
TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def wait_for(what: str, check: Any) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def instant(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = json.loads(get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}"))
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def scraped_sum(metrics_url: str, name: str) -> float:
    """The sum of a metric's series as the app serves them now. A series may be served more than once:
    opentelemetry-exporter-prometheus (0.66b2) queues a collection per `force_flush` (compactobs.flush()
    makes one) and serves every queued one at the next scrape; the last is the newest."""
    series: dict[str, float] = {}
    for line in get(metrics_url).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, number = line.rsplit(" ", 1)
            series[key] = float(number)
    return sum(series.values())


@contextmanager
def scraping(home: Path) -> Iterator[dict[str, Any]]:
    """The app and Prometheus (working under `home`), after the traffic and its last scrape:
    {prometheus, at, db, metrics, short_at, short_db}. Stopped on the way out."""
    db = f"sqlite:///{home / 'store.db'}"
    short_db = f"sqlite:///{home / 'short.db'}"
    app_port, prom_port, short_port = free_port(), free_port(), free_port()
    metrics_url = f"http://127.0.0.1:{app_port}/metrics"
    app = subprocess.Popen(
        [sys.executable, "-m", "tests.prometheus_app", str(app_port), db],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    config = home / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {int(SCRAPE_S * 1000)}ms\n  scrape_timeout: {int(SCRAPE_S * 1000)}ms\n"
        f"scrape_configs:\n  - job_name: app\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{app_port}']\n"
        f"  - job_name: short\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{short_port}']\n"
    )
    short: subprocess.Popen[str] | None = None
    server = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert app.stdin is not None and app.stdout is not None
        assert app.stdout.readline().strip() == "warm"
        prometheus = Prometheus(f"http://127.0.0.1:{prom_port}")
        wait_for("Prometheus", lambda: "Ready" in get(f"{prometheus.url}/-/ready"))
        # Every warm-up series has been scraped (twice) before the traffic starts.
        wait_for(
            "two scrapes of the warm-up",
            lambda: prometheus.instant(f"count_over_time({promql.COST}[1m]) >= 2"),
        )
        app.stdin.write("go\n")
        app.stdin.flush()
        assert app.stdout.readline().strip() == "done"
        final = scraped_sum(metrics_url, promql.COST)

        def caught_up() -> Any:
            now = prometheus.instant(f"sum({promql.COST})")
            return any(math.isclose(float(r["value"][1]), final, rel_tol=1e-9) for r in now)

        wait_for("a scrape after the traffic", caught_up)
        (last,) = prometheus.instant(f'max(timestamp({promql.COST}{{job="app"}}))')
        short = subprocess.Popen(
            [sys.executable, "-m", "tests.prometheus_app", str(short_port), short_db, "short"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert short.stdout is not None and short.stdout.readline().strip() == "done"
        wait_for(
            "two scrapes of the short job",
            lambda: prometheus.instant(f'count_over_time({promql.COST}{{job="short"}}[1m]) >= 2'),
        )
        (short_last,) = prometheus.instant(f'max(timestamp({promql.COST}{{job="short"}}))')
        yield {
            "prometheus": prometheus,
            "at": float(last["value"][1]),
            "db": db,
            "metrics": metrics_url,
            "short_at": float(short_last["value"][1]),
            "short_db": short_db,
        }
    finally:
        for process in (app, short):
            if process is not None and process.stdin is not None:
                process.stdin.close()
                process.wait(timeout=30)
        server.terminate()
        server.wait(timeout=30)
