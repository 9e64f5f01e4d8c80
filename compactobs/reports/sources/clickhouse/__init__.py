"""Reports where a fleet's spans already are: `otel_traces`, the Collector's ClickHouse exporter's table.

```python
from compactobs.reports.sources.clickhouse import open_source
from compactobs.reports.cost import cost_report

with open_source("clickhouse://default@clickhouse:8123/otel") as source:   # or chdb:///path
    report = cost_report(source, filters, by=("day",))                   # the same Report, the same JSON
```

A `ClickHouseSource` is a report `Source` (`reports.sources.base`): each report asks it for the
intermediate results the SQL store's queries produce (groups of measures, ranked values, neighbouring
calls), computed by ClickHouse from the spans (`spans`: the store's columns from the spans' attributes)
with the same measures (`reports.measures`, compiled by `dialect`; `queries`), so the report's rules,
rendering and JSON are the same code on both. Needs `pip install 'compactobs[clickhouse]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compactobs.reports.sources.clickhouse.client import DEFAULT_TABLE, is_clickhouse_url

if TYPE_CHECKING:
    from compactobs.reports.sources.clickhouse.source import ClickHouseSource

__all__ = ["DEFAULT_TABLE", "ClickHouseSource", "is_clickhouse_url", "open_source"]

# The source module (and the span vocabulary it reads, with OpenTelemetry) is imported only when a source
# is opened: the CLI asks `is_clickhouse_url` of every --db, and a report on the SQL store must start fast.


def open_source(url: str, table: str = DEFAULT_TABLE, check: bool = True) -> ClickHouseSource:
    """`source.open_source`: a ClickHouseSource for `url`. Raises StoreError."""
    from compactobs.reports.sources.clickhouse import source

    return source.open_source(url, table, check)


def __getattr__(name: str) -> type[ClickHouseSource]:
    if name == "ClickHouseSource":
        from compactobs.reports.sources.clickhouse.source import ClickHouseSource

        return ClickHouseSource
    raise AttributeError(name)
