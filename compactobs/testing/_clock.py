"""An idle wall clock for simulated traffic: move the time both the simulator's prompt cache and
compactobs' recorded call times read, so idle gaps (a cache TTL running out) show in the store as they
would in real traffic, without waiting."""

from __future__ import annotations

import time
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compactobs.testing._server import Simulator

__all__ = ["IdleClock"]


class _ShiftedTime:
    """The `time` module, its wall clock moved forward by `offset_s` (monotonic clocks untouched)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return time.time() + self.offset_s

    def time_ns(self) -> int:
        return time.time_ns() + int(self.offset_s * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class IdleClock:
    """`with IdleClock(sim) as clock: ...; clock.idle(400)`: the next calls start 400 s later, for the
    simulator's cache and for the times compactobs records. Restores both on exit. One at a time."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._shifted = _ShiftedTime()
        self._patched: list[tuple[ModuleType, object]] = []

    def __enter__(self) -> IdleClock:
        from compactobs.instrument import middleware

        for module in (middleware,):
            self._patched.append((module, module.time))
            setattr(module, "time", self._shifted)  # noqa: B010 (a module attribute, swapped on purpose)
        return self

    def idle(self, seconds: float) -> None:
        """Let `seconds` pass with no call."""
        self._shifted.offset_s += seconds
        self._sim.advance_clock(seconds)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        for module, original in reversed(self._patched):
            setattr(module, "time", original)  # noqa: B010
        self._patched.clear()
