"""compactobs' price beside a collected call's own (`calls.source_cost_usd`), per service, worked by hand on
SQLite and PostgreSQL (ClickHouse: tests/reports/test_clickhouse.py)."""

from __future__ import annotations

from decimal import Decimal

from compactobs import store
from compactobs.reports.source_cost import EXPLANATION, source_cost_report
from compactobs.reports.times import build_filters
from tests.reports.test_anomalies import call, store_rows


def test_both_prices_per_service_and_no_difference_over_an_unpriced_call(database_url: str) -> None:
    d = Decimal
    store_rows(
        database_url,
        [
            call("c1", 0, "s1", service_name="claude-code", cost_usd=d("0.42"), source_cost_usd=d("0.645")),
            call("c2", 1, "s1", service_name="claude-code", cost_usd=d("0.006"), source_cost_usd=d("0.006")),
            call(
                "c3", 2, "s1", service_name="claude-code", cost_usd=d("0.10")
            ),  # imported: no price of its own
            call("o1", 0, "s2", service_name="other", priced=False, source_cost_usd=d("0.02")),
            call("o2", 1, "s2", service_name="other", cost_usd=d("0.03"), source_cost_usd=d("0.05")),
        ],
    )
    engine = store.open_database(database_url)
    try:
        report = source_cost_report(engine, build_filters(None, None, "UTC"))
        only = source_cost_report(engine, build_filters(None, None, "UTC", services=("other",)))
    finally:
        engine.dispose()
    assert report.rows == [
        # c3 carries no source price, so it is in neither sum: 0.645 + 0.006 against 0.42 + 0.006
        {
            "service": "claude-code",
            "calls": 2,
            "source_cost_usd": d("0.651"),
            "cost_usd": d("0.426"),
            "difference_usd": d("-0.225"),
            "unpriced_calls": 0,
        },
        # o1 is unpriced here: compactobs' sum covers o2 only, so no difference is claimed
        {
            "service": "other",
            "calls": 2,
            "source_cost_usd": d("0.07"),
            "cost_usd": d("0.03"),
            "difference_usd": None,
            "unpriced_calls": 1,
        },
    ]
    assert report.warnings == ["other: 1 call(s) compactobs could not price: no difference shown"]
    assert report.notes == [EXPLANATION]
    assert [row["service"] for row in only.rows] == ["other"]
