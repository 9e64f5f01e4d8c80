"""The month-end forecast (`compactobs.alerts.forecast`) on synthetic series with a known trend and weekly
seasonality, `report cost --forecast`'s JSON, and the alerts built on the daily series: monthly budget burn,
the forecast over budget, and spend spikes, with the figures worked by hand."""

from __future__ import annotations

import calendar
import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from compactobs import store
from compactobs.alerts.evaluate import AlertRules, evaluate
from compactobs.alerts.forecast import project_month
from compactobs.reports.times import build_filters
from compactobs.rules import MonthlyBudgets, SpikeRule
from tests.cli import run
from tests.reports.test_anomalies import call, store_rows

TODAY = date(2026, 3, 16)
"""A Monday; March has 31 days: 15 days left after it."""


def linear(day: date) -> Decimal:
    """$10 on 2026-02-01, then $0.50 more each day."""
    return Decimal(10) + Decimal("0.5") * (day - date(2026, 2, 1)).days


def test_a_linear_series_is_projected_within_two_percent() -> None:
    daily = {
        date(2026, 2, 1) + timedelta(days=i): linear(date(2026, 2, 1) + timedelta(days=i)) for i in range(43)
    }
    daily[TODAY] = Decimal("4.00")  # today so far
    forecast = project_month(daily, TODAY)
    # March 1 is day 28 ($24.00), March 31 day 58 ($39.00): 31 days averaging $31.50 = $976.50.
    truth = sum(linear(date(2026, 3, d)) for d in range(1, 32))
    assert truth == Decimal("976.5")
    assert abs(forecast.projected_cost_usd - truth) <= truth * Decimal("0.02")
    assert forecast.low_usd <= truth <= forecast.high_usd
    # Spent: March 1-15 ($24.00 ... $31.00: 15 days averaging $27.50 = $412.50) and today's $4.00.
    assert forecast.spent_usd == Decimal("416.5")
    assert (forecast.month, forecast.days_left, forecast.days_fitted) == ("2026-03", 15, 28)
    assert forecast.method == "linear-trend+weekday"


def seasonal(day: date) -> Decimal:
    """A trend of $20 + $1 a day, times 0.4 on weekends and 1.24 on weekdays (5 x 1.24 + 2 x 0.4 = 7)."""
    trend = Decimal(20) + (day - date(2026, 2, 1)).days
    return trend * (Decimal("0.4") if day.weekday() >= 5 else Decimal("1.24"))


def test_a_trend_with_weekly_seasonality_is_projected_within_two_percent() -> None:
    days = [date(2026, 2, 1) + timedelta(days=i) for i in range(43)]
    # Deterministic noise of +-3%, alternating, so the fit has residuals to make its interval from.
    daily = {d: seasonal(d) * (Decimal("1.03") if i % 2 else Decimal("0.97")) for i, d in enumerate(days)}
    forecast = project_month(daily, TODAY)
    truth = sum(seasonal(date(2026, 3, d)) for d in range(1, 32))
    assert abs(forecast.projected_cost_usd - truth) <= truth * Decimal("0.02")
    assert forecast.low_usd <= truth <= forecast.high_usd
    assert forecast.method == "linear-trend+weekday"
    # Without the weekday factors, a straight line would miss: the weekends ahead are not average days.
    flat = project_month({d: v for d, v in daily.items() if d >= TODAY - timedelta(days=10)}, TODAY)
    assert flat.method == "linear-trend"


def test_a_short_series_is_a_run_rate() -> None:
    forecast = project_month({TODAY - timedelta(days=1): Decimal(2), TODAY: Decimal(1)}, TODAY)
    # $2 a day: yesterday's $2, today $2 (of which $1 is spent), 15 more days at $2: $2 + $2 + $30 = $34;
    # the interval +-50% of the $31 ahead above the $3 spent.
    assert forecast.method == "run-rate"
    assert forecast.projected_cost_usd == Decimal(34)
    assert (forecast.low_usd, forecast.high_usd) == (
        Decimal("3") + Decimal("15.5"),
        Decimal("3") + Decimal("46.5"),
    )


def dollar_days(until: datetime, days: int, service: str = "api") -> list[dict[str, Any]]:
    """A $1 call at 00:30 UTC of each of the `days` days before `until`'s, and one a minute before `until`."""
    first = datetime.combine(until.date(), datetime.min.time(), tzinfo=timezone.utc)
    starts = [first - timedelta(days=d) + timedelta(minutes=30) for d in range(days, 0, -1)]
    starts.append(until - timedelta(minutes=1))
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [
        call(f"{service[:2]}{i:014x}", (start - base).total_seconds() / 60, f"{service}-{i}", cost_usd=1,
             priced=True, service_name=service)
        for i, start in enumerate(starts)
    ]  # fmt: skip


def test_report_cost_forecast_json(sqlite_url: str) -> None:
    now = datetime.now(timezone.utc)
    store_rows(sqlite_url, dollar_days(now, 35))
    code, out, err = run(
        "--db", sqlite_url, "report", "cost", "--forecast", "--tz", "UTC", "--format", "json"
    )
    assert code == 0, err
    forecast = json.loads(out)["forecast"]
    # $1 every day: whatever today is, the month ends at $1 x its days, with no spread.
    days = calendar.monthrange(now.year, now.month)[1]
    assert forecast["month"] == f"{now:%Y-%m}"
    assert forecast["projected_cost_usd"] == forecast["low_usd"] == forecast["high_usd"] == days
    assert forecast["method"] == "linear-trend+weekday"
    code, out, err = run("--db", sqlite_url, "report", "cost", "--forecast", "--tz", "UTC")
    assert f"Forecast for {now:%Y-%m}: ${days:,.2f} by month end" in out


def test_monthly_budget_burn_and_forecast_alerts(sqlite_url: str) -> None:
    now = datetime(2026, 3, 16, 12, tzinfo=timezone.utc)
    store_rows(sqlite_url, dollar_days(now, 40, "api") + dollar_days(now, 40, "batch"))
    engine = store.open_database(sqlite_url)
    filters = build_filters(None, None, "UTC")
    try:
        # March 1-16 at $1 a day per service: $16 spent each, $32 in all; on course for $31 and $62.
        monthly = MonthlyBudgets(usd=Decimal(40), services={"api": Decimal(20), "batch": Decimal(15)})
        # (The last minute's $1 a service is a spike over $1 a day: the factor is raised out of the way.)
        rules = AlertRules(monthly=monthly, spike=SpikeRule(factor=1000))
        alerts = evaluate(engine, filters, rules, now)
    finally:
        engine.dispose()
    found = [(a.kind, a.severity, a.service, a.cost_usd) for a in alerts]
    assert found == [
        ("monthly_budget_exceeded", "critical", "batch", Decimal(16)),
        ("forecast_over_budget", "warning", None, Decimal(62)),
        ("forecast_over_budget", "warning", "api", Decimal(31)),
    ]
    assert (
        alerts[0].message == "service 'batch' spent $16.00 in 2026-03, over its $15.00 monthly budget (107%)"
    )
    assert alerts[1].evidence["forecast"]["projected_cost_usd"] == Decimal(62)


def test_spend_spike(sqlite_url: str) -> None:
    now = datetime(2026, 3, 16, 12, tzinfo=timezone.utc)
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def at(moment: datetime) -> float:
        return (moment - base).total_seconds() / 60

    rows = []
    for hour in range(1, 169):  # the week before the last hour: $0.10 an hour each
        moment = now - timedelta(hours=hour, minutes=30)
        for service in ("api", "steady"):
            row = call(f"{service[:1]}{hour:015x}", at(moment), None, cost_usd=Decimal("0.1"), priced=True)
            rows.append({**row, "service_name": service})
    rows.append(
        call(
            "a" + "f" * 15, at(now - timedelta(minutes=10)), None, cost_usd=5, priced=True, service_name="api"
        )
    )
    row = call("s" + "f" * 15, at(now - timedelta(minutes=10)), None, cost_usd=Decimal("0.2"), priced=True)
    rows.append({**row, "service_name": "steady"})
    store_rows(sqlite_url, rows)
    engine = store.open_database(sqlite_url)
    try:
        alerts = evaluate(engine, build_filters(None, None, "UTC"), AlertRules(spike=SpikeRule()), now)
    finally:
        engine.dispose()
    # api: $5 in the hour against $16.80 over 168 hours, $0.10 an hour: 50x > 3x, and >= $1. steady: $0.20,
    # 2x and under $1.
    (spike,) = alerts
    assert (spike.kind, spike.service, spike.cost_usd) == ("spend_spike", "api", Decimal(5))
    assert spike.evidence["baseline_usd"] == Decimal("16.8") and spike.evidence["factor"] == 50.0
