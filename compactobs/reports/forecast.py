"""Month-end spend forecasts over the store: the daily series from `report cost`, projected by
`compactobs.alerts.forecast` (`report cost --forecast`, and the forecast alerts of `compactobs alert`).

The forecast is of the current month in the filters' zone, whatever the report's --since/--until: it reads
the `FIT_DAYS` days before today (or from the month's first day) up to now, with the filters' models,
services and conversations. Costs come from `cost_report` by day (and service), so they are the report's
own figures: unpriced calls carry no cost and are left out, as in the report's totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from compactobs.alerts.forecast import Forecast, fit_window, project_month
from compactobs.reports.cost import cost_report
from compactobs.reports.measures.groups import key_of
from compactobs.reports.model import Filters, Report
from compactobs.reports.sources import Source

__all__ = ["daily_costs", "forecast_words", "month_forecast", "with_forecast"]


def daily_costs(
    engine: Engine | Source, filters: Filters, now: datetime, by: str = "service"
) -> tuple[date, dict[str | None, dict[date, Decimal]]]:
    """(today in the filters' zone, the priced spend per local day from `fit_window(today)` to now, per
    group of `by` (`service`, or `tag:KEY`: the tag's value), with None for all of them together; calls
    without the group's key (no tag) count in None alone)."""
    today = now.astimezone(filters.tz).date()
    first, _ = fit_window(today)
    since = datetime.combine(first, time(0), tzinfo=filters.tz).astimezone(timezone.utc)
    report = cost_report(engine, filters.with_window(since, now), by=("day", by))
    column = key_of(by)
    series: dict[str | None, dict[date, Decimal]] = {None: {}}
    for row in report.rows:
        cost = row["cost_usd"]
        if cost is None:
            continue
        day = date.fromisoformat(row["day"])
        for scope in {None, row[column]}:
            days = series.setdefault(scope, {})
            days[day] = days.get(day, Decimal(0)) + cost
    return today, series


def month_forecast(engine: Engine | Source, filters: Filters, now: datetime | None = None) -> Forecast:
    """The current month's projected spend over what `filters` select (their window aside)."""
    today, series = daily_costs(engine, filters, now or datetime.now(timezone.utc))
    return project_month(series[None], today)


def with_forecast(
    report: Report, engine: Engine | Source, filters: Filters, now: datetime | None = None
) -> Report:
    """`report` with `forecast` in its JSON (`month`, `projected_cost_usd`, `low_usd`, `high_usd`,
    `method`, ...) and a note saying it."""
    forecast = month_forecast(engine, filters, now)
    report.extra["forecast"] = forecast.as_json()
    report.notes.append(forecast_words(forecast.as_json()))
    return report


def forecast_words(forecast: Mapping[str, Any]) -> str:
    """A forecast's JSON in one line."""
    return (
        f"Forecast for {forecast['month']}: ${forecast['projected_cost_usd']:,.2f} by month end "
        f"(interval ${forecast['low_usd']:,.2f} to ${forecast['high_usd']:,.2f}; "
        f"${forecast['spent_usd']:,.2f} spent so far; method {forecast['method']})."
    )
