"""`report cache`: where the prompt cache pays, and where it is written for nothing.

```python
report = cache_report(engine, build_filters("7d", None, None), by=("model",))
```

Assembled from a report `Source` (`reports.sources`), which sums `reports.measures.cache` over `calls LEFT
JOIN iterations` (each iteration at its own model and rates). Per group:

- hit ratio = cache read / (uncached input + cache write 5m + cache write 1h + cache read), weighted by
  tokens (a ratio of the group's sums, never an average of per-call ratios);
- saved by reads = read tokens x the uncached input rate - what the reads cost. The rate is each
  iteration's own (its uncached input cost / its uncached input tokens: model, tier, batch and residency
  included). An iteration with no uncached input takes it from its writes (5m writes bill 1.25x input,
  1h writes 2x); with neither, reads are assumed to bill 0.1x input, and the figure is counted in
  `estimated_iterations`;
- write premium = what the writes cost - the same tokens at the uncached input rate;
- net = saved - premium (negative: the cache costs more than it saves);
- waste: a call's cache writes are never read back when the conversation's next call starts more than
  the write's TTL (5 minutes, 1 hour) after the call ended, or never comes (and the TTL is over by
  `now`). Wasted tokens and the premium paid on them are counted; calls without a conversation id are
  never judged. The next call is looked up (index on conversation_id, start_ms) only for calls that
  wrote, beyond the report's window if need be.

Dollar figures cover priced iterations only; unpriced calls keep their tokens and are counted in
`unpriced_calls`, with a warning. Groups, and which row a call counts on, are those of `report cost`
(see `compactobs.reports.cost`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs.reports.measures.cache import MONEY as _MONEY
from compactobs.reports.measures.cache import TOKENS as _TOKENS
from compactobs.reports.measures.cache import TTL_1H_MS, TTL_5M_MS, empty_sums
from compactobs.reports.measures.groups import key_of, parse_by
from compactobs.reports.model import ColumnKind, Filters, Report
from compactobs.reports.sources import Source, as_source
from compactobs.reports.times import TIME_UNITS
from compactobs.store.models import epoch_ms

__all__ = ["CACHE_MEASURES", "DEFINITIONS", "TTL_1H_MS", "TTL_5M_MS", "cache_report"]

_ZERO: Final = Decimal(0)

CACHE_MEASURES: Final[tuple[str, ...]] = (
    "calls",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "hit_ratio",
    "saved_usd",
    "write_premium_usd",
    "net_usd",
    "wasted_write_calls",
    "wasted_write_tokens",
    "wasted_5m_write_tokens",
    "wasted_1h_write_tokens",
    "wasted_premium_usd",
    "estimated_iterations",
    "unpriced_calls",
)
"""Every row's fields after its group keys, in JSON order."""

DEFINITIONS: Final[dict[str, str]] = {
    "hit_ratio": "cache_read / (input + cache_write_5m + cache_write_1h + cache_read), summed tokens",
    "saved_usd": "cache_read tokens x the iteration's uncached input rate - the cost of those reads",
    "write_premium_usd": "cost of cache writes - the same tokens at the iteration's uncached input rate",
    "net_usd": "saved_usd - write_premium_usd",
    "wasted": "writes whose conversation's next call started more than the TTL (5m, 1h) after the call "
    "ended, or never came; wasted_premium_usd is the premium paid on them",
}

_LABELS: Final[dict[str, str]] = {
    "conversation_id": "conversation",
    "iteration_type": "iteration type",
    "input_tokens": "input",
    "cache_read_input_tokens": "cache read",
    "cache_creation_5m_input_tokens": "write 5m",
    "cache_creation_1h_input_tokens": "write 1h",
    "hit_ratio": "hit ratio",
    "saved_usd": "saved by reads",
    "write_premium_usd": "write premium",
    "net_usd": "net",
    "wasted_write_tokens": "wasted tokens",
    "cache_creation_input_tokens": "cache write",
    "wasted_premium_usd": "wasted premium",
    "unpriced_calls": "unpriced",
}


def _finish(row: dict[str, Any], unpriced: bool = False) -> dict[str, Any]:
    """Derived fields (write total, hit ratio, net, wasted total); money to 10 decimal places, or None when
    the row is `unpriced` or every call of it is (never $0); group keys first, then CACHE_MEASURES in
    order."""
    for name in _MONEY:
        row[name] = row[name].quantize(Decimal("1E-10"))
    row["cache_creation_input_tokens"] = (
        row["cache_creation_5m_input_tokens"] + row["cache_creation_1h_input_tokens"]
    )
    seen = row["input_tokens"] + row["cache_creation_input_tokens"] + row["cache_read_input_tokens"]
    row["hit_ratio"] = Decimal(row["cache_read_input_tokens"]) / Decimal(seen) if seen else None
    row["net_usd"] = row["saved_usd"] - row["write_premium_usd"]
    row["wasted_write_tokens"] = row["wasted_5m_write_tokens"] + row["wasted_1h_write_tokens"]
    if unpriced or (row["calls"] and row["unpriced_calls"] == row["calls"]):
        row.update(dict.fromkeys((*_MONEY, "net_usd")))
    keys = {k: v for k, v in row.items() if k not in CACHE_MEASURES}
    return {**keys, **{name: row[name] for name in CACHE_MEASURES}}


_USAGE: Final = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
)


def _all_unpriced(
    merged: Mapping[tuple[Any, ...], Mapping[str, Any]], unpriced: Mapping[tuple[Any, ...], Mapping[str, Any]]
) -> set[tuple[Any, ...]]:
    """The groups whose every token belongs to their unpriced calls (`unpriced`: those calls' figures by
    group): their other calls have no usage (errors), so their dollars are unknown, not $0."""
    return {
        group
        for group, row in unpriced.items()
        if group in merged and all(row[name] == merged[group][name] for name in _USAGE)
    }


def cache_report(
    engine: Engine | Source, filters: Filters, by: Iterable[str] = ("model",), now: datetime | None = None
) -> Report:
    """The cache report: per group, hit ratio, read and write tokens (5m, 1h), dollars saved by reads,
    spent on the write premium, the net, and wasted writes; totals over every group. `by` takes the
    groupings of `report cost` (default: model). `now` decides whether a write with no next call yet is
    still within its TTL. Raises ReportInputError for a bad grouping. Reads the store only."""
    groups = parse_by(by)
    now_ms = epoch_ms(now or datetime.now(timezone.utc))
    keys = [key_of(name) for name in groups]
    time_key = next((key_of(name) for name in groups if name in TIME_UNITS), None)

    source = as_source(engine)
    source.refresh(filters, groups)
    span = source.data_range(filters)
    # The unpriced calls' own figures (a second pass over them alone, as in `report cost`, only when there
    # are some) find the groups that are unpriced through and through.
    merged, unpriced = source.cache_groups(filters, groups, span, now_ms) if span is not None else ({}, {})
    all_unpriced = _all_unpriced(merged, unpriced)
    rows = [
        _finish({**dict(zip(keys, group, strict=True)), **row}, group in all_unpriced)
        for group, row in merged.items()
    ]
    total = empty_sums()
    for row in rows:
        for name in (*_TOKENS, *_MONEY):
            if row[name] is not None:
                total[name] += row[name]
    totals = _finish(total)

    def order(row: Mapping[str, Any]) -> tuple[object, ...]:
        others = tuple("" if row[k] is None else str(row[k]) for k in keys if k != time_key)
        return (row[time_key] if time_key else "", -row["cache_read_input_tokens"], -row["calls"], others)

    rows.sort(key=order)

    warnings: list[str] = []
    if totals["unpriced_calls"]:
        warnings.append(
            f"{totals['unpriced_calls']:,} call(s) have no price: their tokens count in the hit ratio, "
            "their dollars are not in saved, premium or net."
        )
    if totals["estimated_iterations"]:
        warnings.append(
            f"{totals['estimated_iterations']:,} iteration(s) read the cache with no uncached input and no "
            "writes to take a rate from: their savings assume reads bill 0.1x input."
        )
    notes = [
        "hit ratio = cache read / (input + cache write 5m + 1h + cache read), weighted by tokens.",
        "saved = reads at the uncached input rate - their cost; premium = writes - the same tokens at the "
        "input rate; net = saved - premium.",
        "wasted tokens = cache-write tokens whose conversation's next call came after the TTL (5 min, 1 h) "
        "or never came; wasted premium = the write premium paid on them.",
    ]
    kinds: dict[str, ColumnKind] = {k: "key" for k in keys}
    kinds.update({name: "int" for name in _TOKENS})
    kinds.update({"cache_creation_input_tokens": "int", "wasted_write_tokens": "int"})
    kinds.update({name: "usd" for name in (*_MONEY, "net_usd")})
    kinds["hit_ratio"] = "ratio"
    table_columns = [
        *keys,
        "calls",
        "hit_ratio",
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_5m_input_tokens",
        "cache_creation_1h_input_tokens",
        "saved_usd",
        "write_premium_usd",
        "net_usd",
        "wasted_write_tokens",
        "wasted_premium_usd",
    ]
    # Smaller sets for a terminal of 120 and of 80 columns: the hit ratio, what the cache saves net, and
    # what was written for nothing stay.
    medium = [
        *keys,
        "hit_ratio",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "saved_usd",
        "net_usd",
        "wasted_write_tokens",
    ]
    narrow = [*keys, "calls", "hit_ratio", "net_usd", "wasted_write_tokens"]
    if totals["unpriced_calls"]:
        table_columns.append("unpriced_calls")
    return Report(
        name="cache",
        title=f"Cache by {', '.join(groups)}" if groups else "Cache",
        columns=[*keys, *CACHE_MEASURES],
        rows=rows,
        totals=totals,
        header=[filters.describe()],
        warnings=warnings,
        extra={
            "by": keys,
            "timezone": filters.zone,
            "since": filters.since,
            "until": filters.until,
            "definitions": dict(DEFINITIONS),
        },
        kinds=kinds,
        labels=dict(_LABELS),
        table_columns=table_columns,
        notes=notes,
        narrow_columns=[medium, narrow, [*keys, "hit_ratio", "net_usd"], [*keys, "net_usd"]],
    )
