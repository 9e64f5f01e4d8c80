"""`compactobs collect`: an OTLP receiver that writes what other processes report into the SQL store.

```python
from compactobs.collect import Collector
with Collector("postgresql+psycopg://db/spend", http="0.0.0.0:4318", token=secret) as collector:
    threading.Event().wait()  # serve until the process is stopped
```

It keeps compactobs' own call and iteration spans from any process or language (the contract is
docs/semconv.md) and Claude Code's API events (`claude_code`), through the same recorder and store path
as in-process recording (see `collector`).
"""

from __future__ import annotations

from compactobs.collect.collector import DEFAULT_STORE_WAIT_S, Collector, CollectStats
from compactobs.collect.server import DEFAULT_HTTP, DEFAULT_MAX_REQUEST_BYTES, CollectError

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_STORE_WAIT_S",
    "CollectError",
    "CollectStats",
    "Collector",
]
