"""Observe Anthropic SDK clients: SDK middleware per HTTP attempt, plus a stream observer.

Nothing in this package touches a database: it hands observations to `compactobs.telemetry`.
"""

from compactobs.instrument.conversation import conversation
from compactobs.instrument.middleware import Middleware

__all__ = ["Middleware", "conversation"]
