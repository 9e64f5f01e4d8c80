"""Observe Anthropic SDK clients: SDK middleware per HTTP attempt, plus a stream observer.

Nothing in this package touches a database: it hands observations to `compactobs.recorder`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compactobs.instrument.conversation import conversation

if TYPE_CHECKING:
    from compactobs.instrument.middleware import Middleware

__all__ = ["Middleware", "conversation"]


def __getattr__(name: str) -> type[Middleware]:
    # Imported on first use, with the SDK (see compactobs.__getattr__).
    if name == "Middleware":
        from compactobs.instrument.middleware import Middleware

        return Middleware
    raise AttributeError(f"module 'compactobs.instrument' has no attribute {name!r}")
