"""Project a month's spend to its end from the daily series: a least-squares trend with weekday factors.

The method (`METHOD`), on the complete days before today (at most `FIT_DAYS`, from the first day with spend):
1. fit a straight line, spend = a + b * day, by ordinary least squares;
2. with at least two weeks of days, multiply it by each weekday's factor: the mean of the actual spend over
   the line on that weekday, the factors scaled to average 1 (a weekly pattern, e.g. quiet weekends);
3. the month-end projection is the spend so far (whole days, and today's spend as a floor for today) plus
   the fitted spend of each remaining day, never below 0;
4. the interval: +-1.96 standard deviations of the daily residuals, times the square root of the days
   left (a 95% interval if the days' errors are independent), the low end never below what is spent.

With fewer than 3 complete days the projection is the run rate (the mean of the days known) with an interval
of +-50%: named `run-rate`. Pure: no database; money in, Decimal out.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Final

from compactobs._types import JSONObject

__all__ = ["FIT_DAYS", "METHOD", "Forecast", "fit_window", "project_month"]

FIT_DAYS: Final = 28
"""The trailing complete days a projection fits."""
SEASONAL_DAYS: Final = 14
"""Weekday factors need at least this many days (two of each weekday)."""
METHOD: Final = "linear-trend"
"""The method's name; `+weekday` is added when weekday factors are used; `run-rate` for short series."""
_Z95: Final = 1.96
_SIX: Final = Decimal("0.000001")


@dataclass(frozen=True)
class Forecast:
    """A month's projected spend: `projected_cost_usd` within [`low_usd`, `high_usd`]."""

    month: str
    """YYYY-MM."""
    projected_cost_usd: Decimal
    low_usd: Decimal
    high_usd: Decimal
    method: str
    spent_usd: Decimal
    """The month's spend so far (today's included)."""
    days_fitted: int
    days_left: int
    """Days after today to the month's end."""

    def as_json(self) -> JSONObject:
        """The `forecast` object of `report cost --format json` (money rounded to 6 places)."""
        return {
            "month": self.month,
            "projected_cost_usd": _round(self.projected_cost_usd),
            "low_usd": _round(self.low_usd),
            "high_usd": _round(self.high_usd),
            "method": self.method,
            "spent_usd": _round(self.spent_usd),
            "days_fitted": self.days_fitted,
            "days_left": self.days_left,
        }


def _round(value: Decimal) -> Decimal:
    return value.quantize(_SIX)


def fit_window(today: date) -> tuple[date, date]:
    """[first, end) of the days a projection for `today`'s month reads: the `FIT_DAYS` before today or the
    month's first day, whichever is earlier, up to the day after today."""
    first = min(today - timedelta(days=FIT_DAYS), today.replace(day=1))
    return first, today + timedelta(days=1)


def project_month(daily: Mapping[date, Decimal], today: date) -> Forecast:
    """The projection of `today`'s month from `daily` (spend per local day; a missing day spent 0; days after
    today are ignored). `today` is the current, partial day."""
    month_start = today.replace(day=1)
    last_day = today.replace(day=calendar.monthrange(today.year, today.month)[1])
    days_left = (last_day - today).days
    spent_before = sum((v for d, v in daily.items() if month_start <= d < today), Decimal(0))
    spent_today = daily.get(today, Decimal(0))
    spent = spent_before + spent_today
    known = [d for d, v in daily.items() if d < today and v]
    start = max(min(known), today - timedelta(days=FIT_DAYS)) if known else today
    days = [start + timedelta(days=i) for i in range((today - start).days)]
    series = [float(daily.get(d, Decimal(0))) for d in days]
    month = f"{today:%Y-%m}"
    if len(series) < 3:
        rate = sum(series) / len(series) if series else float(spent_today)
        ahead = Decimal(repr(rate)) * days_left + max(Decimal(repr(rate)), spent_today) - spent_today
        projected = spent + max(ahead, Decimal(0))
        low = max(spent, spent + ahead / 2)
        high = spent + ahead * Decimal("1.5")
        return Forecast(month, projected, low, high, "run-rate", spent, len(series), days_left)

    factors = dict.fromkeys(range(7), 1.0)
    method = METHOD
    intercept, slope = _least_squares(series)
    if len(series) >= SEASONAL_DAYS:
        # Alternate: the weekday pattern around the line, then the line through the spend with the pattern
        # taken out; a few rounds settle both (one leaves the pattern's share of the trend in the line).
        for _ in range(4):
            found = _weekday_factors(days, series, intercept, slope)
            if found is None:
                break
            factors, method = found, f"{METHOD}+weekday"
            intercept, slope = _least_squares(
                [y / factors[d.weekday()] for d, y in zip(days, series, strict=True)]
            )

    def line(day: date) -> float:
        return intercept + slope * (day - start).days

    def fitted(day: date) -> float:
        return max(line(day) * factors[day.weekday()], 0.0)

    residuals = [y - fitted(day) for day, y in zip(days, series, strict=True)]
    dof = max(len(residuals) - 2, 1)
    sigma = math.sqrt(sum(r * r for r in residuals) / dof)
    rest = sum(fitted(today + timedelta(days=i)) for i in range(1, days_left + 1))
    today_total = max(Decimal(repr(fitted(today))), spent_today)
    projected = spent_before + today_total + Decimal(repr(rest))
    half = Decimal(repr(_Z95 * sigma * math.sqrt(days_left + 1)))
    return Forecast(
        month,
        projected,
        max(spent, projected - half),
        projected + half,
        method,
        spent,
        len(series),
        days_left,
    )


def _least_squares(series: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through `series` at x = 0, 1, 2, ..."""
    n = len(series)
    mean_x, mean_y = (n - 1) / 2, sum(series) / n
    sxx = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(series)) / sxx
    return mean_y - slope * mean_x, slope


def _weekday_factors(
    days: list[date], series: list[float], intercept: float, slope: float
) -> dict[int, float] | None:
    """Each weekday's mean of spend over the line (at x = 0, 1, ... for `days`), scaled to average 1; None
    unless every weekday has a day where the line is above 0."""
    ratios: dict[int, list[float]] = {}
    for x, (day, y) in enumerate(zip(days, series, strict=True)):
        fitted = intercept + slope * x
        if fitted > 0:
            ratios.setdefault(day.weekday(), []).append(y / fitted)
    if len(ratios) < 7:
        return None
    raw = {weekday: sum(values) / len(values) for weekday, values in ratios.items()}
    scale = sum(raw.values()) / 7
    if scale <= 0 or min(raw.values()) <= 0:
        return None
    return {weekday: value / scale for weekday, value in raw.items()}
