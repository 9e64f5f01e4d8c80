"""Where a report's rows are: the `Source` Protocol (`base`), the SQL store (`sql`), ClickHouse.

```python
source = as_source(engine)            # a SQL store's Engine, or a Source as it is (e.g. ClickHouseSource)
```
"""

from __future__ import annotations

from sqlalchemy import Engine

from compactobs.reports.sources.base import Groups, Source
from compactobs.reports.sources.sql import SqlSource

__all__ = ["Groups", "Source", "as_source"]


def as_source(where: Engine | Source) -> Source:
    """`where` as a report Source: a SQL store's Engine wrapped in `SqlSource`, a Source as it is."""
    if not isinstance(where, Engine):
        return where
    return SqlSource(where)
