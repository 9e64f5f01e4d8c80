"""One `compactobs alert` pass: evaluate, then for each sink claim what is due, send it grouped by kind, and
record what arrived. A sink that fails keeps its claims unsent (released), so the next run sends them; the
other sinks go on. `run_pass` never raises for a delivery: its result says which sinks failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Final

from sqlalchemy import Engine

from compactobs.alerts.evaluate import Alert, AlertRules, evaluate
from compactobs.alerts.sinks import DeliveryError, Sink, groups_of
from compactobs.alerts.state import AlertState
from compactobs.configfile import ConfigError
from compactobs.reports.model import Filters
from compactobs.store.models import epoch_ms

__all__ = [
    "EXIT_DELIVERY",
    "AlertInputError",
    "PassResult",
    "SinkResult",
    "destination_of",
    "parse_duration",
    "read_secret",
    "run_pass",
]

EXIT_DELIVERY: Final = 4
"""`compactobs alert`'s exit code when a destination did not take what it was sent (2: bad input, 1: a
crash, 3: `report anomalies --fail-on`)."""


class AlertInputError(ConfigError):
    """A bad alert option (a duration, a secret file): one line."""


_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> timedelta:
    """`30s`, `5m`, `4h`, `1d` (a whole number and a unit) as a timedelta above 0."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if found is None or int(found.group(1)) == 0:
        raise AlertInputError(f"{option} {text!r}: give a duration such as 30s, 5m, 4h or 1d")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def read_secret(value: str, option: str) -> str:
    """An option's secret: as given, or from a file when it is `@PATH` (its first line), so it need not
    appear in a process list or a crontab."""
    if not value.startswith("@"):
        return value.strip()
    path = value[1:]
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.readline().strip()
    except OSError as err:
        raise AlertInputError(f"{option}: cannot read {path}: {err.strerror or err}") from None
    if not secret:
        raise AlertInputError(f"{option}: {path} is empty")
    return secret


def destination_of(sink: Sink, scope: str) -> str:
    """The state's name for a sink under a scope: its kind and a digest of its identity and the scope (the
    filters it runs with), so two cron lines with other filters never resolve each other's findings, and
    no secret is stored."""
    digest = hashlib.sha256(f"{sink.identity}\n{scope}".encode()).hexdigest()[:16]
    return f"{sink.name}:{digest}"


@dataclass
class SinkResult:
    shown: str
    messages: int = 0
    triggers: int = 0
    resolves: int = 0
    error: str | None = None
    kept: int = 0
    """Findings claimed but not delivered (sent on the next run)."""

    def line(self) -> str:
        if self.error is not None:
            return f"{self.error}: {self.kept} finding(s) kept for the next run"
        if not self.messages and not self.triggers and not self.resolves:
            return f"{self.shown}: nothing new"
        done = f"{self.triggers} trigger(s), {self.resolves} resolve(s)"
        return f"{self.shown}: {self.messages} message(s), {done}"


@dataclass
class PassResult:
    alerts: list[Alert]
    sinks: list[SinkResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SinkResult]:
        return [sink for sink in self.sinks if sink.error is not None]


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_pass(
    engine: Engine,
    state_engine: Engine,
    filters: Filters,
    rules: AlertRules,
    sinks: Sequence[Sink],
    scope: str,
    renotify: timedelta | None = None,
    now: datetime | None = None,
) -> PassResult:
    """Evaluate once and deliver to every sink (see the module). `engine` reads, `state_engine` writes
    `alert_state` (a writer engine)."""
    now = now or datetime.now(timezone.utc)
    alerts = evaluate(engine, filters, rules, now)
    result = PassResult(alerts)
    state = AlertState(state_engine, _owner())
    renotify_ms = int(renotify.total_seconds() * 1000) if renotify is not None else None
    scope_digest = hashlib.sha256(scope.encode()).hexdigest()[:12]
    for sink in sinks:
        destination = destination_of(sink, scope)
        outcome = SinkResult(sink.shown)
        result.sinks.append(outcome)
        claimed = state.claim(destination, alerts, epoch_ms(now), renotify_ms)
        groups = groups_of(claimed.triggers, claimed.repeats, claimed.resolves, alerts)
        for index, group in enumerate(groups):
            left = groups[index:]
            keys = [a.key for g in left for a in g.triggers] + [k for g in left for k, _ in g.resolves]
            try:
                outcome.messages += sink.deliver(group, scope_digest, now)
            except DeliveryError as err:
                # The sink is down: what this pass claimed for it stays due, for the next run.
                outcome.error = str(err)
                outcome.kept = len(keys)
                state.release(destination, keys)
                break
            except BaseException:
                state.release(destination, keys)
                raise
            sent_ms = epoch_ms(now)  # the pass's clock: re-notify intervals count from the pass
            state.sent(destination, [a.key for a in group.triggers], sent_ms)
            state.resolved(destination, [key for key, _ in group.resolves], sent_ms)
            outcome.triggers += len(group.triggers)
            outcome.resolves += len(group.resolves)
    return result
