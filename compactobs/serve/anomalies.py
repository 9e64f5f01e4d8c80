"""The overview's anomalies, computed off the request path: `report anomalies` reads every call (seconds
at a million), so a worker thread started with the application computes them, and the overview shows the
latest completed findings with when they were computed and the data they cover.

```python
cache = AnomaliesCache(compute, stamp, every=30.0)   # compute: the Report; stamp: the store's DataStamp
cache.start()                                        # the lifespan's start; cache.stop() at its end
cache.latest()                                       # an Anomalies: findings, or pending, and the last error
```

The worker reads the store's `DataStamp` (a count and two index lookups) at most every `every` seconds and
recomputes only when it differs from the one the findings were computed at (or the last attempt failed).
The stamp is read before the computation starts: the findings cover at least the calls it counts (a call
recorded while they run may be in them too, and changes the stamp, so the next check recomputes). An
update in place that changes neither the count nor the range (a repricing, or an import replacing a
call's snapshot) is not seen until the next call is recorded; a change of the budgets file is. Nothing
the worker raises leaves it: the error's first line is kept for the overview.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from compactobs._types import JSON
from compactobs.reports.model import Report
from compactobs.reports.sources.base import DataStamp
from compactobs.serve.defaults import ANOMALIES_EVERY

__all__ = ["DEFAULT_EVERY", "Anomalies", "AnomaliesCache", "one_line"]

log = logging.getLogger(__name__)

DEFAULT_EVERY: Final = ANOMALIES_EVERY
_STOP_WAIT: Final = 5.0
"""How long stopping waits for a computation under way (the thread is a daemon: it never holds the exit)."""


@dataclass(frozen=True)
class Anomalies:
    """What the overview shows of the anomalies: the latest completed findings (None before the first
    computation ends), when that computation started (epoch seconds) and how long it took, the stamp of
    the data it covers; and the first line of the last attempt's error, when the last attempt failed."""

    findings: Sequence[Mapping[str, JSON]] | None = None
    warnings: Sequence[str] = ()
    started: float | None = None
    seconds: float | None = None
    stamp: DataStamp | None = None
    error: str | None = None
    error_at: float | None = None


def one_line(err: BaseException) -> str:
    """The error's first line (its type's name when it has no message)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass
class AnomaliesCache:
    """The anomalies of one set of filters, recomputed by a worker thread when the data changes.

    `compute` runs the report; `stamp` reads the store's DataStamp; `every`: seconds between checks;
    `clock`: the time the findings are stamped with."""

    compute: Callable[[], Report]
    stamp: Callable[[], DataStamp]
    every: float = DEFAULT_EVERY
    clock: Callable[[], float] = time.time
    inputs: Callable[[], Hashable] = lambda: None
    """What else the findings depend on (the budgets file's modification time): a change recomputes too."""
    _latest: Anomalies = field(default_factory=Anomalies, init=False)
    _inputs: Hashable = field(default=None, init=False)
    _failed: bool = field(default=False, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def latest(self) -> Anomalies:
        """The latest state (one attribute read: a consistent whole)."""
        return self._latest

    def check(self) -> bool:
        """One check: read the stamp and recompute when it differs from the findings' (or the last attempt
        failed). True when it computed. Never raises: an error is kept, one line, in `latest().error`."""
        try:
            now = self.clock()
            stamp = self.stamp()
            inputs = self.inputs()
            same = stamp == self._latest.stamp and inputs == self._inputs
            if not self._failed and self._latest.findings is not None and same:
                return False
            start = time.perf_counter()
            report = self.compute()
            seconds = time.perf_counter() - start
            self._latest = Anomalies(
                findings=list(report.extra.get("findings", [])),
                warnings=list(report.warnings),
                started=now,
                seconds=seconds,
                stamp=stamp,
            )
            self._inputs = inputs
            self._failed = False
            return True
        except Exception as err:  # the worker outlives any error; the overview shows it
            log.warning("the overview's anomalies: %s", one_line(err))
            latest = self._latest
            self._latest = Anomalies(
                findings=latest.findings,
                warnings=latest.warnings,
                started=latest.started,
                seconds=latest.seconds,
                stamp=latest.stamp,
                error=one_line(err),
                error_at=self.clock(),
            )
            self._failed = True
            return False

    def _run(self, stop: threading.Event) -> None:
        self.check()
        while not stop.wait(self.every):
            self.check()

    def start(self) -> None:
        """Start the worker (its first check at once). Each worker has its own stop event: one stopped while
        computing ends after it, even when a new one has started since."""
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="compactobs-overview-anomalies", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker: no check after this; a computation under way is waited for a few seconds."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(_STOP_WAIT)
