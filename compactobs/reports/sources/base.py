"""What a report needs from where the rows are: the `Source` Protocol, engine-free.

A report module (`reports.cost`, `reports.cache`, ...) asks a `Source` for intermediate results (the
window's data range, groups of summed measures) and assembles its `Report` from them; the same rules,
rendering and JSON on every engine. Implemented by the SQL store (`sources.sql.SqlSource`, SQLite and
PostgreSQL, with rollups) and by ClickHouse (`sources.clickhouse.ClickHouseSource`, the Collector's
spans). Both compile the measures of `reports.measures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from compactobs.reports.model import Filters
from compactobs.reports.sources.anomalies_ops import AnomaliesOpsSource
from compactobs.reports.times import Buckets

__all__ = ["DataStamp", "Groups", "Source"]

Groups = dict[tuple[Any, ...], dict[str, Any]]
"""{group key values, in `by` order (with `with_model`: the call's model last): summed measures}."""
DataStamp = tuple[int, int | None, int | None]
"""(calls, first start_ms, last start_ms) of the whole store: cheap to read, and different after most
writes (a call added or deleted); an update in place (a repricing) leaves it as it was."""


@runtime_checkable
class Source(AnomaliesOpsSource, Protocol):
    """Where a report's rows are. Every method reads only; errors the user can fix are raised as they are
    (a bad URL, a missing table), before any figure."""

    def data_range(self, filters: Filters) -> tuple[int, int] | None:
        """(first, last) start_ms of the calls in the window, None when there is none."""
        ...

    def data_stamp(self) -> DataStamp:
        """The whole store's `DataStamp` (index lookups and a count): what a cache of a report over every
        call compares to know whether the data changed."""
        ...

    def refresh(self, filters: Filters, by: Sequence[str]) -> None:
        """Bring the source's precomputed sums up to date for a report of `filters` grouped `by`, when it
        keeps any that could answer it (the SQL store's rollups); a failure only means the report reads
        the calls instead."""
        ...

    def cost_groups(
        self, filters: Filters, by: Sequence[str], buckets: Buckets | None
    ) -> tuple[Groups, Groups]:
        """(every group's sums, the unpriced calls' sums by group and call model) for `report cost`: the
        sums are `measures.cost.SUMMED` plus the write total, per group of `by` (`measures.groups`; time
        units labelled by `buckets`); the second has the call's model (response, else request) as one
        more key, last, and is empty when no call is unpriced. Both from one view of the data."""
        ...

    def cache_groups(
        self, filters: Filters, by: Sequence[str], span: tuple[int, int], now_ms: int
    ) -> tuple[Groups, Groups]:
        """(every group's sums, the unpriced calls' sums by group) for `report cache`: `measures.cache.SUMMED`
        per group of `by`, time units local to `filters.tz` over `span` (the data range); `now_ms` judges
        the writes with no next call yet. The second is empty when no call is unpriced."""
        ...

    def source_cost_groups(self, filters: Filters) -> list[dict[str, Any]]:
        """Per service (`service`), `measures.cost.source_cost_measures` over the calls `filters` select
        that carry their source's own price (`source_cost_usd`), by service name."""
        ...

    def tune_rows(self, filters: Filters) -> tuple[list[Any], list[Any]]:
        """(iterations by call and index, calls by conversation and start) for `compactobs tune`: the
        columns of `sources.tune_fields`, of the priced calls with a conversation that `filters` select."""
        ...
