"""compactobs: what your Claude traffic really costs, where the cache pays, when compaction runs away.

```python
import compactobs
compactobs.instrument()                       # every SDK client (Bedrock, Vertex, ...), new and existing
with compactobs.conversation("ticket-42"):
    client.beta.messages.create(...)
compactobs.flush(); compactobs.shutdown()     # shutdown also runs at interpreter exit and on SIGTERM
client = anthropic.Anthropic(middleware=[compactobs.Middleware()])   # or explicitly, per client
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from compactobs._version import __version__
from compactobs.checkpoint import Checkpoint, checkpoint
from compactobs.configfile import ConfigError
from compactobs.errors import CompactobsError, UserError
from compactobs.instrument.conversation import conversation
from compactobs.runtime import configure, flush, instrument, shutdown, uninstrument

if TYPE_CHECKING:
    from compactobs.guard import (
        BudgetExceeded,
        CompactionLoopDetected,
        GuardError,
        GuardPolicy,
        SpendUnknown,
        wrap_up_message,
    )
    from compactobs.instrument.middleware import Middleware

__all__ = [
    "BudgetExceeded",
    "Checkpoint",
    "CompactionLoopDetected",
    "CompactobsError",
    "ConfigError",
    "GuardError",
    "GuardPolicy",
    "Middleware",
    "SpendUnknown",
    "UserError",
    "__version__",
    "checkpoint",
    "configure",
    "conversation",
    "flush",
    "instrument",
    "shutdown",
    "uninstrument",
    "wrap_up_message",
]

# Imported on first use, not with the package: the SDK comes with `Middleware` (`import anthropic` is ~1.3 s)
# and the guard with asyncio and the rules; the CLI imports the package too, and its reports need neither.
_LAZY = {
    "Middleware": "compactobs.instrument.middleware",
    "BudgetExceeded": "compactobs.guard",
    "CompactionLoopDetected": "compactobs.guard",
    "GuardError": "compactobs.guard",
    "GuardPolicy": "compactobs.guard",
    "SpendUnknown": "compactobs.guard",
    "wrap_up_message": "compactobs.guard",
}


def __getattr__(name: str) -> Any:
    if name == "guard":  # the README's `compactobs.guard.allow_wrap_up(...)`, before anything loaded it
        return importlib.import_module("compactobs.guard")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compactobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "guard"})
