"""error_burst: in one clock hour (UTC hours), >= `error_min_calls` calls and more than `error_share` of them
ended in HTTP 429, 529 or another 5xx."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs.reports.anomalies.finding import MAX_CALL_IDS, Finding, ratio, when
from compactobs.reports.thresholds import Thresholds
from compactobs.store.models import calls

__all__ = ["ERROR_STATUSES", "HOUR_MS", "ErrorBurst", "error_burst_statement"]

HOUR_MS: Final = 3_600_000
ERROR_STATUSES: Final = (429, 529)
"""With every other 5xx, the statuses of a failed call."""


class ErrorBurst:
    """Per UTC hour over the thresholds, one finding, from one grouped query (`statement`) and a sample of
    its failed calls (`sample_statement`)."""

    kind: Final = "error_burst"
    remedy: Final = (
        "throttle or queue requests (rate limits: 429), retry 529/5xx with backoff, or spread load across "
        "hours or the batch API"
    )

    @staticmethod
    def server_error() -> ColumnElement[bool]:
        status = calls.c.http_status
        return or_(status.in_(ERROR_STATUSES), and_(status >= 500, status <= 599))

    @classmethod
    def statement(cls, conditions: Sequence[ColumnElement[bool]], thresholds: Thresholds) -> Select[Any]:
        """The rule as one query over the calls meeting `conditions`: per UTC clock hour (`hour`: epoch
        hours) with >= `error_min_calls` calls of which more than `error_share` failed with 429/529/5xx:
        `calls`, `error_calls`, `http_429`, `http_529`, `retries`. The report and the dashboards both run
        it."""
        c = calls.c
        hour = (c.start_ms // HOUR_MS).label("hour")
        errors = func.sum(case((cls.server_error(), 1), else_=0))
        return (
            select(
                hour,
                func.count().label("calls"),
                errors.label("error_calls"),
                func.sum(case((c.http_status == 429, 1), else_=0)).label("http_429"),
                func.sum(case((c.http_status == 529, 1), else_=0)).label("http_529"),
                func.sum(func.coalesce(c.attempts, 1) - 1).label("retries"),
            )
            .where(*conditions)
            .group_by(hour)
            .having(
                and_(
                    func.count() >= thresholds.error_min_calls,
                    errors > literal_column(repr(float(thresholds.error_share))) * func.count(),
                )
            )
            .order_by(hour)
        )

    @classmethod
    def sample_statement(cls, conditions: Sequence[ColumnElement[bool]], start_ms: int) -> Select[Any]:
        """The first MAX_CALL_IDS calls of the hour from `start_ms` that failed with 429/529/5xx."""
        c = calls.c
        return (
            select(c.call_id)
            .where(c.start_ms >= start_ms, c.start_ms < start_ms + HOUR_MS, cls.server_error(), *conditions)
            .order_by(c.start_ms, c.call_id)
            .limit(MAX_CALL_IDS)
        )

    @classmethod
    def findings(
        cls,
        hours: Iterable[Sequence[Any]],
        sample_of: Callable[[int], Sequence[str]],
        thresholds: Thresholds,
        tz: Any,
    ) -> Iterator[Finding]:
        """The rule over `statement`'s records (or a source's); `sample_of(hour start)`: its first failed
        calls."""
        bursts = [row for row in hours if row[2] and row[2] > thresholds.error_share * row[1]]
        for hour_value, total, failed, rate_limited, overloaded, retries in bursts:
            start_ms = int(hour_value) * HOUR_MS
            sample = sample_of(start_ms)
            share = failed / total
            other = failed - rate_limited - overloaded
            yield Finding(
                kind=cls.kind,
                severity="warning",
                conversation_id=None,
                call_ids=tuple(sample),
                message=(
                    f"{failed} of {total} calls ({share:.1%}) failed with 429/529/5xx in the hour from "
                    f"{when(start_ms, tz)} (threshold {thresholds.error_share:.0%})"
                ),
                evidence={
                    "hour_start": when(start_ms, tz),
                    "hour_start_ms": start_ms,
                    "calls": total,
                    "error_calls": failed,
                    "share": ratio(share),
                    "http_429": rate_limited,
                    "http_529": overloaded,
                    "http_5xx_other": other,
                    "retries": int(retries or 0),
                },
                remedy=cls.remedy,
                first_ms=start_ms,
            )


error_burst_statement = ErrorBurst.statement
"""The rule's query, by the name the dashboards use."""
