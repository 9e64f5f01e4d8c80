"""The dashboards' shared recordings, only read: the
demo's spans in chdb beside its PostgreSQL store (`traffic`), and a real Prometheus's scrape (`scraped`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta, timezone
from typing import Any

import pytest

from tests.recording import DemoRecording


# Module scope: chdb opens one directory per process, so the session closes before another module's opens.
@pytest.fixture(scope="module")
def traffic(
    demo_recording: DemoRecording, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The demo's spans written into the committed dashboard's `otel_traces` table in a chdb directory,
    beside its PostgreSQL store; the range: the UTC day before the demo to the day after (whole days, as
    `report --since/--until` takes). Read by tests/dashboards/test_clickhouse.py and the injection tests."""
    from compactobs.reports.clickhouse.source import ClickHouseSource

    from compactobs.reports.dashboard import SPANS_TABLE
    from tests.otel_traces import write_spans

    source = ClickHouseSource(f"chdb://{tmp_path_factory.mktemp('chdb-dashboards')}")
    write_spans(source, demo_recording.spans, SPANS_TABLE)
    summary = demo_recording.summary
    day = summary.started_at.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        yield {
            "pg": demo_recording.url,
            "source": source,
            "summary": summary,
            "since": day - timedelta(days=1),
            "until": day + timedelta(days=2),
        }
    finally:
        source.close()


@pytest.fixture(scope="session")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """tests/prometheus_app.py's traffic scraped to the end by a real Prometheus (tests/prometheus.py
    `scraping`), once per session: read by the Prometheus dashboard's tests and the injection tests."""
    from tests.prometheus import PROMETHEUS, scraping

    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus package is not installed")
    with scraping(tmp_path_factory.mktemp("prometheus")) as run:
        yield run
