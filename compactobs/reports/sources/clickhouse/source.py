"""The Collector's ClickHouse as a report `Source`: each report method answered by its query module.

```python
with open_source("clickhouse://default@clickhouse:8123/otel") as source:   # or chdb:///path
    report = cost_report(source, filters, by=("day",))                   # the same Report, the same JSON
```

A `ClickHouseSource` is a `ClickHouseClient` (the connection: `client`) that serves what the reports ask a
`Source` (`reports.sources.base`): groups of summed measures (`cost`, `cache`), ops figures, a
conversation's calls and anomaly data, computed by ClickHouse from the spans, plus setup's typed tables and
slots (`spans`, `slots`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from compactobs._types import SQLRow, SQLValue
from compactobs.reports.model import Filters, ReportInputError
from compactobs.reports.sources.base import AnomalyData, DataStamp, Groups, OpsFigures, Source
from compactobs.reports.sources.clickhouse import cache, cost, slots, spans
from compactobs.reports.sources.clickhouse.client import DEFAULT_TABLE, ClickHouseClient
from compactobs.reports.times import Buckets

__all__ = ["ClickHouseSource", "open_source"]

log = logging.getLogger(__name__)


class ClickHouseSource(ClickHouseClient):
    """A ClickHouse database holding the Collector's spans table, as a report Source. Opened by
    `open_source`; close it when done."""

    # -- the Source Protocol ---------------------------------------------------------------------------

    def data_range(self, filters: Filters) -> tuple[int, int] | None:
        return cost.data_range(self, filters)

    def data_stamp(self) -> DataStamp:
        return cost.data_stamp(self)

    def refresh(self, filters: Filters, by: Sequence[str]) -> None:
        """Nothing to do up front: setup's slot sums are refreshed when first read (`slots.ready`)."""

    def cost_groups(
        self, filters: Filters, by: Sequence[str], buckets: Buckets | None
    ) -> tuple[Groups, Groups]:
        everything = cost.cost_groups(self, filters, by, buckets)
        if not any(row["unpriced_calls"] for row in everything.values()):
            return everything, {}
        return everything, cost.cost_groups(self, filters, by, buckets, unpriced_only=True, with_model=True)

    def cache_groups(
        self, filters: Filters, by: Sequence[str], span: tuple[int, int], now_ms: int
    ) -> tuple[Groups, Groups]:
        merged = cache.cache_groups(self, filters, by, span, now_ms)
        if not any(row["unpriced_calls"] for row in merged.values()):
            return merged, {}
        return merged, cache.cache_groups(self, filters, by, span, now_ms, unpriced_only=True)

    # -- report ops, conversation, call and anomalies ---------------------------------------------------

    def ops_figures(self, filters: Filters) -> OpsFigures:
        from compactobs.reports.sources.clickhouse import ops

        return ops.ops_figures(self, filters)

    def conversation_calls(self, filters: Filters, conversation_id: str) -> Iterator[SQLValue]:
        from compactobs.reports.sources.clickhouse import conversation

        return conversation.conversation_calls(self, filters, conversation_id)

    def conversation_type_costs(
        self, filters: Filters, conversation_id: str
    ) -> list[tuple[str, SQLValue, SQLValue]]:
        from compactobs.reports.sources.clickhouse import conversation

        return conversation.conversation_type_costs(self, filters, conversation_id)

    def call_with_iterations(self, reference: str) -> tuple[SQLRow, list[SQLRow]]:
        raise ReportInputError(
            "`report call` reads the SQL store: run it with a sqlite:// or postgresql:// --db"
        )

    def anomaly_data(self, filters: Filters) -> AnomalyData:
        from compactobs.reports.sources.clickhouse.anomalies import ClickHouseAnomalyData

        return ClickHouseAnomalyData(self, filters)

    def source_cost_groups(self, filters: Filters) -> list[dict[str, Any]]:
        from compactobs.reports.sources.clickhouse.queries import source_cost_sql

        where = ["c.source_cost_usd IS NOT NULL", *spans.call_conditions(filters, "c.")]
        measures = ", ".join(f"{sql} AS {name}" for name, sql in source_cost_sql())
        return self.rows(
            f"SELECT c.service_name AS service, {measures} FROM {spans.calls_of(self, filters)} AS c "
            f"WHERE {' AND '.join(where)} GROUP BY service ORDER BY service"
        )

    def tune_rows(self, filters: Filters) -> tuple[list[Any], list[Any]]:
        from compactobs.reports.sources.clickhouse import tune

        return tune.tune_rows(self, filters)

    # -- setup's tables --------------------------------------------------------------------------------

    def detect_typed(self) -> bool:
        """Use the typed tables of `compactobs clickhouse setup` when both exist."""
        self.typed = all(self.exists(name) for name in spans.typed_names(self.table))
        if self.typed and not spans.typed_columns_current(self):
            # Made by an older compactobs (a column the store has since gained is missing): the spans are
            # read instead, exact and slower, until setup makes the tables again.
            log.warning("compactobs: typed tables of %s lack newer columns; reading the spans", self.table)
            self.typed = False
        turns = spans.turns_name(self.table)
        self.turns = self.typed and self.exists(turns) and spans.has_columns(self, turns, spans.TURN_COLUMNS)
        return self.typed

    def setup(self) -> list[str]:
        """Create the typed tables, the per-slot sums and their materialised views, and fill them
        (idempotent)."""
        statements = [
            *spans.setup_statements(self.table),
            *spans.turns_setup_statements(self.table),
            *slots.setup_statements(self.table),
        ]
        for statement in statements:
            self.execute(statement)
        self.typed = self.turns = True
        slots.refresh(self, everything=True)
        self._slots = True
        return statements

    def slots_ready(self) -> bool:
        """Whether the reports can read setup's per-slot sums (`slots.ready`)."""
        return slots.ready(self)


if TYPE_CHECKING:

    def _is_a_source(source: ClickHouseSource) -> Source:
        """The type checker holds ClickHouseSource to the Protocol the SQL store implements too."""
        return source


def open_source(url: str, table: str = DEFAULT_TABLE, check: bool = True) -> ClickHouseSource:
    """A ClickHouseSource for `url` (clickhouse://user:password@host:8123/db, clickhouse+https://...,
    chdb:///directory), its spans table checked when `check`. Raises StoreError."""
    source = ClickHouseSource(url, table)
    if check:
        try:
            source.check_table()
            source.detect_typed()
        except BaseException:
            source.close()
            raise
    return source
