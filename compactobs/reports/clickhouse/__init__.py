"""Reports where a fleet's spans already are: `otel_traces`, the Collector's ClickHouse exporter's table.

```python
from compactobs.reports.clickhouse import open_source
from compactobs.reports.cost import cost_report

with open_source("clickhouse://default@clickhouse:8123/otel") as source:   # or chdb:///path
    report = cost_report(source, filters, by=("day",))                   # the same Report, the same JSON
```

A `ClickHouseSource` is an `ExternalSource` (`compactobs.reports._common`): each report asks it for the
intermediate results its SQL store queries produce (groups of measures, ranked values, neighbouring calls),
computed by ClickHouse from the spans (`spans`: the store's columns from the spans' attributes), so the
report's rules, rendering and JSON are the same code on both. Needs `pip install 'compactobs[clickhouse]'`.
"""

from compactobs.reports.clickhouse.source import (
    DEFAULT_TABLE,
    ClickHouseSource,
    is_clickhouse_url,
    open_source,
)

__all__ = ["DEFAULT_TABLE", "ClickHouseSource", "is_clickhouse_url", "open_source"]
