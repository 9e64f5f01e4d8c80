"""What `reconcile` sets side by side: Anthropic's figures (from `anthropic_reports`) and compactobs' own
(the store's `report cost` measures, the spool's waiting calls), keyed alike by UTC bucket and group.

A helper of the `reconcile` report (compactobs.reports.reconcile), not a report of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Final

from sqlalchemy import Engine

from compactobs._types import SQLRecord, SQLValue
from compactobs.anthropic_reports import API_GROUPS, CLASSES, ApiFigures, Fetched
from compactobs.reports.model import Filters, ReportInputError
from compactobs.reports.sources.sql.cost import aggregate_calls
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.times import local_buckets
from compactobs.store.models import calls, epoch_ms

__all__ = [
    "BY_WIDTH",
    "GROUPS",
    "MONEY_FLOOR",
    "ZERO",
    "Key",
    "Scope",
    "Side",
    "Window",
    "api_dimensions",
    "api_side",
    "minus",
    "parse_groups",
    "spool_side",
    "store_side",
    "worked",
]

GROUPS: Final[tuple[str, ...]] = tuple(API_GROUPS)
BY_WIDTH: Final[dict[str, str]] = {"day": "1d", "hour": "1h"}
"""--by -> the reports' bucket width."""

_TOKENS: Final[dict[str, str]] = {
    "input": "input_tokens",
    "cache_read": "cache_read_input_tokens",
    "cache_write_5m": "cache_creation_5m_input_tokens",
    "cache_write_1h": "cache_creation_1h_input_tokens",
    "output": "output_tokens",
    "web_search": "web_search_requests",
}
"""Each compared class -> `report cost`'s measure of it (and the JSON name of the class here)."""
_COSTS: Final[dict[str, str]] = {
    "input": "cost_input_usd",
    "cache_read": "cost_cache_read_usd",
    "cache_write_5m": "cost_cache_write_5m_usd",
    "cache_write_1h": "cost_cache_write_1h_usd",
    "output": "cost_output_usd",
    "web_search": "cost_server_tools_usd",
}
_SPOOL_TOKENS: Final[dict[str, str]] = {
    "input": "input_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write_5m": "cache_write_5m_tokens",
    "cache_write_1h": "cache_write_1h_tokens",
    "output": "output_tokens",
    "web_search": "web_search_requests",
}
ZERO: Final = Decimal(0)
MONEY_FLOOR: Final = Decimal("0.000001")
"""Money differences below this are rounding (the JSON carries 6 decimal places)."""
_DATED: Final = re.compile(r"-\d{8}$")
_MAX_DIMENSIONS: Final = 5
"""The reports' limit on `group_by[]` dimensions."""
_DEFAULTS: Final[dict[str, str]] = {"service_tier": "standard", "speed": "standard"}
"""What a call whose usage did not say is served at."""


@dataclass(frozen=True)
class Scope:
    """The traffic compactobs records: these workspaces and API keys (empty: the whole organisation)."""

    workspaces: tuple[str, ...] = field(
        default=(),
        metadata={"option": "--workspace", "metavar": "ID", "help": "A workspace compactobs records."},
    )
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={"option": "--api-key", "metavar": "ID", "help": "An API key id compactobs records."},
    )

    def holds(self, workspace: str | None, api_key: str | None) -> bool:
        return (not self.workspaces or workspace in self.workspaces) and (
            not self.api_keys or api_key in self.api_keys
        )


@dataclass(frozen=True)
class Window:
    """Whole UTC buckets `[start, stop)` of `unit` (day or hour)."""

    start: datetime
    stop: datetime
    unit: str

    @property
    def step(self) -> timedelta:
        return timedelta(days=1) if self.unit == "day" else timedelta(hours=1)

    def label(self, bucket: datetime) -> str:
        return f"{bucket:%Y-%m-%d}" if self.unit == "day" else f"{bucket:%Y-%m-%d %H:00}"


@dataclass
class Side:
    """compactobs' figures for one bucket and group: requests, amounts by class, list cost by class."""

    requests: int = 0
    amounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    cost_by_class: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(CLASSES, ZERO))
    cost_usd: Decimal = ZERO
    unpriced: int = 0

    def add(self, other: Side) -> None:
        self.requests += other.requests
        self.unpriced += other.unpriced
        self.cost_usd += other.cost_usd
        for name in CLASSES:
            self.amounts[name] += other.amounts[name]
            self.cost_by_class[name] += other.cost_by_class[name]


Key = tuple[datetime, tuple[SQLValue, ...]]


def parse_groups(values: Iterable[str]) -> tuple[str, ...]:
    """--group names in the order given, without repeats; `a,b` splits. Raises ReportInputError."""
    result: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower().replace("-", "_")
            if not name:
                continue
            name = {"workspace_id": "workspace", "api_key_id": "api_key", "tier": "service_tier"}.get(
                name, name
            )
            if name not in GROUPS:
                raise ReportInputError(f"cannot group by {part.strip()!r}: use one of {', '.join(GROUPS)}")
            if name not in result:
                result.append(name)
    return tuple(result)


def api_dimensions(groups: Sequence[str], scope: Scope) -> tuple[str, ...]:
    """The reports' `group_by[]` for these groups, plus workspace / API key when the scope names some (to
    set the rest of the organisation apart)."""
    dimensions = [API_GROUPS[name] for name in worked(groups)]
    if scope.workspaces and "workspace_id" not in dimensions:
        dimensions.append("workspace_id")
    if scope.api_keys and "api_key_id" not in dimensions:
        dimensions.append("api_key_id")
    if len(dimensions) > _MAX_DIMENSIONS:
        raise ReportInputError(
            f"Anthropic's reports break figures out by at most {_MAX_DIMENSIONS} dimensions, and reconcile "
            f"always asks for the model: {', '.join(dimensions)} is {len(dimensions)}; group by fewer"
        )
    return tuple(dimensions)


def worked(groups: Sequence[str]) -> tuple[str, ...]:
    """The groups differences are worked in: the shown ones, and always the model, so that a rate is one
    model's rate (a blend of models' rates is no price anyone charged)."""
    return tuple(groups) if "model" in groups else (*groups, "model")


def model_id(value: SQLValue) -> SQLValue:
    """A model id without its date suffix: responses name `claude-x-20250929`, reports may name `claude-x`."""
    return _DATED.sub("", value) if isinstance(value, str) else value


def normal(name: str, value: SQLValue) -> SQLValue:
    if name == "model":
        return model_id(value)
    if value is None:
        return _DEFAULTS.get(name)
    return value


def store_value(name: str, scope: Scope) -> str:
    """What compactobs knows of a workspace / API key: the one its scope names."""
    names = scope.workspaces if name == "workspace" else scope.api_keys
    flag = "--workspace" if name == "workspace" else "--api-key"
    if len(names) != 1:
        raise ReportInputError(
            f"--group {name} needs the one {name.replace('_', ' ')} compactobs records ({flag} ID): "
            "the store does not know which one a call used"
        )
    return names[0]


def store_side(engine: Engine, window: Window, groups: Sequence[str], scope: Scope) -> dict[Key, Side]:
    """`report cost`'s measures by UTC bucket and group, from `calls` (and `iterations` by model)."""
    start_ms, stop_ms = epoch_ms(window.start), epoch_ms(window.stop)
    utc = timezone.utc
    filters = Filters(window.start, window.stop, utc)
    buckets = local_buckets(window.unit, utc, start_ms, stop_ms - 1)
    starts = {
        label: datetime.fromtimestamp(ms / 1000, utc)
        for label, ms in zip(buckets.labels, buckets.starts, strict=True)
    }
    store_groups = [name for name in groups if name not in ("workspace", "api_key")]
    fixed = {name: store_value(name, scope) for name in groups if name in ("workspace", "api_key")}
    with reading(engine, snapshot=True) as connection:
        measures = aggregate_calls(
            connection, filters, [window.unit, *store_groups], buckets, [calls.c.priced.is_not(None)]
        )
    result: dict[Key, Side] = {}
    for values, row in measures.items():
        known = dict(zip(store_groups, values[1:], strict=True))
        key_values = tuple(normal(name, fixed[name] if name in fixed else known[name]) for name in groups)
        side = Side(
            requests=row["calls"],
            amounts={name: int(row[_TOKENS[name]]) for name in CLASSES},
            cost_by_class={name: Decimal(row[_COSTS[name]] or 0) for name in CLASSES},
            cost_usd=Decimal(row["cost_usd"] or 0),
            unpriced=row["unpriced_calls"],
        )
        key = (starts[values[0]], key_values)
        if key in result:
            result[key].add(side)
        else:
            result[key] = side
    return result


def spool_side(
    rows: Iterable[SQLRecord], window: Window, groups: Sequence[str], scope: Scope
) -> dict[Key, Side]:
    """The spool's waiting calls by UTC bucket and group (by each call's model, not its iterations')."""
    start_ms, stop_ms = epoch_ms(window.start), epoch_ms(window.stop)
    step_ms = int(window.step.total_seconds() * 1000)
    result: dict[Key, Side] = {}
    for row in rows:
        at = row.get("start_ms")
        if not isinstance(at, int) or not start_ms <= at < stop_ms or row.get("priced") is None:
            continue
        bucket = datetime.fromtimestamp(
            (start_ms + (at - start_ms) // step_ms * step_ms) / 1000, timezone.utc
        )
        values = []
        for name in groups:
            if name in ("workspace", "api_key"):
                values.append(store_value(name, scope))
            elif name == "model":
                values.append(model_id(row.get("response_model") or row.get("request_model")))
            else:
                values.append(normal(name, row.get(name)))
        side = result.setdefault((bucket, tuple(values)), Side())
        side.requests += 1
        for name in CLASSES:
            side.amounts[name] += int(row.get(_SPOOL_TOKENS[name]) or 0)
        side.cost_usd += Decimal(str(row.get("cost_usd") or 0))
    return result


def api_side(
    fetched: Fetched, groups: Sequence[str], scope: Scope
) -> tuple[dict[Key, ApiFigures], dict[Key, ApiFigures]]:
    """Anthropic's figures by bucket and group: (everything, the part outside compactobs' scope)."""
    everything: dict[Key, ApiFigures] = {}
    outside: dict[Key, ApiFigures] = {}
    for (bucket, group), figure in fetched.figures.items():
        values = dict(group)
        key = (bucket, tuple(normal(name, values.get(API_GROUPS[name])) for name in groups))
        everything.setdefault(key, ApiFigures()).add(figure)
        if not scope.holds(values.get("workspace_id"), values.get("api_key_id")):
            outside.setdefault(key, ApiFigures()).add(figure)
    return everything, outside


def minus(a: ApiFigures, b: ApiFigures | None) -> ApiFigures:
    if b is None:
        return a
    result = ApiFigures(
        requests=a.requests - b.requests,
        amounts={name: a.amounts[name] - b.amounts[name] for name in CLASSES},
        list_by_class={
            name: a.list_by_class.get(name, ZERO) - b.list_by_class.get(name, ZERO)
            for name in {*a.list_by_class, *b.list_by_class}
        },
        list_usd=a.list_usd - b.list_usd,
        amount_usd=a.amount_usd - b.amount_usd,
    )
    return result
