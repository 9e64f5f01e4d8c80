"""compactobs' price of collected calls beside the price their source gave them (`calls.source_cost_usd`:
Claude Code's own `cost_usd`), per service: the calls that carry one, the two sums and their difference.

An unpriced call (no price for its model here) adds nothing to compactobs' sum: with any, the difference is
not shown (it would compare sums over different calls) and a warning counts them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.model import Filters, Report
from compactobs.reports.sources import Source, as_source

__all__ = ["EXPLANATION", "source_cost_report"]

EXPLANATION: Final = (
    "The difference is the two price tables: compactobs prices each call's tokens with its own "
    "(genai-prices and your overrides), Claude Code with its built-in one; Claude Code's events give one "
    "cache-write count, which compactobs prices as 5-minute writes."
)


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def source_cost_report(source: Engine | Source, filters: Filters) -> Report:
    """Per service, the calls `filters` select that carry their source's own price, both prices side by
    side."""
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for group in as_source(source).source_cost_groups(filters):
        unpriced = int(group["unpriced_calls"] or 0)
        theirs, ours = _money(group["source_cost_usd"]), _money(group["cost_usd"]) or Decimal(0)
        if unpriced:
            warnings.append(
                f"{group['service']}: {unpriced} call(s) compactobs could not price: no difference shown"
            )
        rows.append(
            {
                "service": group["service"],
                "calls": int(group["calls"]),
                "source_cost_usd": theirs,
                "cost_usd": ours,
                "difference_usd": None if unpriced or theirs is None else ours - theirs,
                "unpriced_calls": unpriced,
            }
        )
    return Report(
        name="source_cost",
        title="compactobs' price beside the source's own",
        columns=["service", "calls", "source_cost_usd", "cost_usd", "difference_usd", "unpriced_calls"],
        rows=rows,
        header=[filters.describe()],
        notes=[EXPLANATION] if rows else [],
        warnings=warnings,
        kinds={
            "service": "key",
            "calls": "int",
            "source_cost_usd": "usd",
            "cost_usd": "usd",
            "difference_usd": "usd_delta",
            "unpriced_calls": "int",
        },
        labels={
            "source_cost_usd": "source's price",
            "cost_usd": "compactobs' price",
            "difference_usd": "compactobs - source",
            "unpriced_calls": "unpriced",
        },
        empty_message="No call in this window carries its source's own price (Claude Code sends one).",
    )
