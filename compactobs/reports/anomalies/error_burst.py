"""error_burst: in one clock hour (UTC hours), >= `error_min_calls` calls and more than `error_share` of them
ended in HTTP 429, 529 or another 5xx."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from compactobs.reports.anomalies.finding import Finding, ratio, when
from compactobs.reports.measures.anomalies import (
    ERROR_STATUSES,
    HOUR_MS,
    error_hours_statement,
    error_sample_statement,
    server_error,
)
from compactobs.reports.thresholds import Thresholds

__all__ = ["ERROR_STATUSES", "HOUR_MS", "ErrorBurst", "error_burst_statement"]


class ErrorBurst:
    """Per UTC hour over the thresholds, one finding, from one grouped query (`statement`) and a sample of
    its failed calls (`sample_statement`)."""

    kind: Final = "error_burst"
    remedy: Final = (
        "throttle or queue requests (rate limits: 429), retry 529/5xx with backoff, or spread load across "
        "hours or the batch API"
    )

    server_error: Final = staticmethod(server_error)
    statement: Final = staticmethod(error_hours_statement)
    sample_statement: Final = staticmethod(error_sample_statement)

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
