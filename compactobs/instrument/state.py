"""Where the middleware finds the Telemetry it records into, made on first use by the package's setup."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported with the recording it sets up, not with the package (see compactobs/__init__)
    from compactobs.recorder import Telemetry

_lock = threading.Lock()
_telemetry: Telemetry | None = None
_factory: Callable[[], Telemetry] | None = None
active = True
"""False after `uninstrument()`: middleware `instrument()` added then passes calls straight through."""


def set_factory(factory: Callable[[], Telemetry]) -> None:
    global _factory
    _factory = factory


def set_telemetry(telemetry: Telemetry | None) -> None:
    global _telemetry
    _telemetry = telemetry


def get_telemetry() -> Telemetry | None:
    """The Telemetry in use, set up on first use. None when it cannot be set up (then calls pass through)."""
    global _telemetry
    if _telemetry is not None or _factory is None:
        return _telemetry
    with _lock:
        if _telemetry is None:
            _telemetry = _factory()
    return _telemetry


def get_telemetry_if_set() -> Telemetry | None:
    """The Telemetry in use, without setting one up."""
    return _telemetry
