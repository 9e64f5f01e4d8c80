"""`reconcile`: the store's figures beside Anthropic's own usage and cost reports, and every difference
explained where it can be.

```python
fetched = anthropic_reports.fetch(client, start, stop, "1d", ("model",))
report = reconcile_report(engine, fetched, Window(start, stop, "day"), groups=("model",))
```

Per UTC bucket (day or hour, the reports' own edges) and group (model, service tier, speed, inference geo,
workspace, API key), for requests, uncached input, cache read, cache write 5m and 1h, output and web
search requests, and for the cost: Anthropic's list amount and its amount after discounts, against
compactobs' list price. The store's side is `report cost`'s own measures
(`sources.sql.cost.aggregate_calls`), over the calls that carried usage (a call that failed before any
usage is no request Anthropic bills).

A difference is a figure that differs by more than the tolerance (a percentage of the larger side; money
below $0.000001 is rounding). Each is set against what can explain it, in this order:

1. `other_scope`: Anthropic's traffic outside the workspaces / API keys compactobs records (--workspace,
   --api-key);
2. `spool`: calls compactobs recorded that still wait in the spool (the database was unreachable);
3. `bucket_edge`: a bucket short by as many requests as the next (or previous) one has too many, with
   the window's figures agreeing: the two sides dated the same calls either side of a bucket edge;
4. `uninstrumented`: Anthropic counted more requests than compactobs recorded: calls from clients
   compactobs does not instrument (their tokens, and their cost at the report's rates);
   `not_in_report`: the reverse, compactobs recorded requests that Anthropic's report does not have (yet);
5. `price_drift`: for a token class, the rate Anthropic's list amount implies (list amount / tokens) is not
   compactobs' rate; the effect is the difference in rate times compactobs' tokens;
6. `discount`: Anthropic's amount after discounts is below its list amount (priority tier commitments,
   negotiated discounts); above it is a surcharge;
7. `unpriced`: calls compactobs could not price (no list price for the model);
8. `unexplained`: whatever is left above the tolerance.

Differences are worked per model whatever the rows show (the model is always one of the reports' groups):
a rate is one model's rate, never a blend, so an uninstrumented call is valued at its own model's rates and
a mix of models is no drift. Rows without the model sum their models; each explanation names its model.

The list cost difference splits exactly: Anthropic's list - compactobs' = other scope + spool +
uninstrumented (extra tokens at the report's rates) + drift (rate difference x compactobs' tokens) +
whatever the report lists beyond tokens and web search (code execution...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import Engine

from compactobs._words import counted
from compactobs.anthropic_reports import API_GROUPS, CLASSES, ApiFigures, Fetched
from compactobs.reports.model import Filters, Report, ReportInputError
from compactobs.reports.sources.sql.cost import aggregate_calls
from compactobs.reports.sources.sql_reading import reading
from compactobs.reports.times import local_buckets
from compactobs.store.models import calls, epoch_ms

__all__ = [
    "BY_WIDTH",
    "GROUPS",
    "Explanation",
    "Scope",
    "Window",
    "api_dimensions",
    "parse_groups",
    "reconcile_report",
    "worst_gap",
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
_CLASS_LABEL: Final[dict[str, str]] = {
    "input": "uncached input",
    "cache_read": "cache read",
    "cache_write_5m": "cache write 5m",
    "cache_write_1h": "cache write 1h",
    "output": "output",
    "web_search": "web search requests",
}
_ZERO: Final = Decimal(0)
_MONEY_FLOOR: Final = Decimal("0.000001")
"""Money differences below this are rounding (the JSON carries 6 decimal places)."""
_MTOK: Final = Decimal(1_000_000)
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
class Explanation:
    """One explained (or unexplained) part of a row's difference: `kind` (see the module docstring), a
    one-line `message`, and its `figures` (requests, tokens by class, dollars)."""

    kind: str
    message: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Side:
    """compactobs' figures for one bucket and group: requests, amounts by class, list cost by class."""

    requests: int = 0
    amounts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    cost_by_class: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(CLASSES, _ZERO))
    cost_usd: Decimal = _ZERO
    unpriced: int = 0

    def add(self, other: _Side) -> None:
        self.requests += other.requests
        self.unpriced += other.unpriced
        self.cost_usd += other.cost_usd
        for name in CLASSES:
            self.amounts[name] += other.amounts[name]
            self.cost_by_class[name] += other.cost_by_class[name]


_Key = tuple[datetime, tuple[Any, ...]]


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
    dimensions = [API_GROUPS[name] for name in _worked(groups)]
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


def _worked(groups: Sequence[str]) -> tuple[str, ...]:
    """The groups differences are worked in: the shown ones, and always the model, so that a rate is one
    model's rate (a blend of models' rates is no price anyone charged)."""
    return tuple(groups) if "model" in groups else (*groups, "model")


def _model(value: Any) -> Any:
    """A model id without its date suffix: responses name `claude-x-20250929`, reports may name `claude-x`."""
    return _DATED.sub("", value) if isinstance(value, str) else value


def _normal(name: str, value: Any) -> Any:
    if name == "model":
        return _model(value)
    if value is None:
        return _DEFAULTS.get(name)
    return value


def _store_value(name: str, scope: Scope) -> str:
    """What compactobs knows of a workspace / API key: the one its scope names."""
    names = scope.workspaces if name == "workspace" else scope.api_keys
    flag = "--workspace" if name == "workspace" else "--api-key"
    if len(names) != 1:
        raise ReportInputError(
            f"--group {name} needs the one {name.replace('_', ' ')} compactobs records ({flag} ID): "
            "the store does not know which one a call used"
        )
    return names[0]


def _store_side(engine: Engine, window: Window, groups: Sequence[str], scope: Scope) -> dict[_Key, _Side]:
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
    fixed = {name: _store_value(name, scope) for name in groups if name in ("workspace", "api_key")}
    with reading(engine, snapshot=True) as connection:
        measures = aggregate_calls(
            connection, filters, [window.unit, *store_groups], buckets, [calls.c.priced.is_not(None)]
        )
    result: dict[_Key, _Side] = {}
    for values, row in measures.items():
        known = dict(zip(store_groups, values[1:], strict=True))
        key_values = tuple(_normal(name, fixed[name] if name in fixed else known[name]) for name in groups)
        side = _Side(
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


def _spool_side(
    rows: Iterable[Mapping[str, Any]], window: Window, groups: Sequence[str], scope: Scope
) -> dict[_Key, _Side]:
    """The spool's waiting calls by UTC bucket and group (by each call's model, not its iterations')."""
    start_ms, stop_ms = epoch_ms(window.start), epoch_ms(window.stop)
    step_ms = int(window.step.total_seconds() * 1000)
    result: dict[_Key, _Side] = {}
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
                values.append(_store_value(name, scope))
            elif name == "model":
                values.append(_model(row.get("response_model") or row.get("request_model")))
            else:
                values.append(_normal(name, row.get(name)))
        side = result.setdefault((bucket, tuple(values)), _Side())
        side.requests += 1
        for name in CLASSES:
            side.amounts[name] += int(row.get(_SPOOL_TOKENS[name]) or 0)
        side.cost_usd += Decimal(str(row.get("cost_usd") or 0))
    return result


def _api_side(
    fetched: Fetched, groups: Sequence[str], scope: Scope
) -> tuple[dict[_Key, ApiFigures], dict[_Key, ApiFigures]]:
    """Anthropic's figures by bucket and group: (everything, the part outside compactobs' scope)."""
    everything: dict[_Key, ApiFigures] = {}
    outside: dict[_Key, ApiFigures] = {}
    for (bucket, group), figure in fetched.figures.items():
        values = dict(group)
        key = (bucket, tuple(_normal(name, values.get(API_GROUPS[name])) for name in groups))
        everything.setdefault(key, ApiFigures()).add(figure)
        if not scope.holds(values.get("workspace_id"), values.get("api_key_id")):
            outside.setdefault(key, ApiFigures()).add(figure)
    return everything, outside


def _minus(a: ApiFigures, b: ApiFigures | None) -> ApiFigures:
    if b is None:
        return a
    result = ApiFigures(
        requests=a.requests - b.requests,
        amounts={name: a.amounts[name] - b.amounts[name] for name in CLASSES},
        list_by_class={
            name: a.list_by_class.get(name, _ZERO) - b.list_by_class.get(name, _ZERO)
            for name in {*a.list_by_class, *b.list_by_class}
        },
        list_usd=a.list_usd - b.list_usd,
        amount_usd=a.amount_usd - b.amount_usd,
    )
    return result


def _significant(
    delta: Decimal | int, a: Decimal | int, b: Decimal | int, tolerance: Decimal, money: bool
) -> bool:
    size = abs(Decimal(delta))
    if money and size < _MONEY_FLOOR:
        return False
    return size > tolerance * max(abs(Decimal(a)), abs(Decimal(b)))


def _usd(value: Decimal) -> str:
    sign = "-" if value < 0 else ""
    return (
        f"{sign}${abs(value):,.6f}".rstrip("0").rstrip(".")
        if abs(value) < Decimal("0.01")
        else f"{sign}${abs(value):,.4f}"
    )


def _tokens_text(amounts: Mapping[str, int]) -> str:
    parts = [f"{_CLASS_LABEL[name]} {amounts[name]:+,}" for name in CLASSES if amounts.get(name)]
    return ", ".join(parts) if parts else "no tokens"


@dataclass
class _Row:
    bucket: datetime
    group: tuple[Any, ...]
    api: ApiFigures
    outside: ApiFigures
    store: _Side
    spool: _Side
    explanations: list[Explanation] = field(default_factory=list)
    moved: dict[str, int] = field(default_factory=dict)
    """Requests and amounts explained by a bucket edge: taken out before the later steps."""
    moved_list: Decimal = _ZERO
    """The list price of what `moved` holds."""

    @property
    def inside(self) -> ApiFigures:
        return _minus(self.api, self.outside)


def _rate(money: Decimal, amount: int) -> Decimal | None:
    return money / amount if amount else None


def _explain(row: _Row, tolerance: Decimal, refreshed_at: datetime | None, window: Window) -> None:
    """Set the row's explanations (after the bucket-edge pass), in the module docstring's order."""
    inside, store, spool = row.inside, row.store, row.spool
    out = row.outside
    if out.requests or any(out.amounts.values()) or abs(out.list_usd) >= _MONEY_FLOOR:
        row.explanations.append(
            Explanation(
                "other_scope",
                f"{counted(out.requests, 'request')} in other workspaces or API keys than compactobs records "
                f"({_tokens_text(out.amounts)}; list {_usd(out.list_usd)})",
                {"requests": out.requests, "amounts": dict(out.amounts), "list_usd": out.list_usd},
            )
        )
    if spool.requests:
        row.explanations.append(
            Explanation(
                "spool",
                f"{counted(spool.requests, 'call')} recorded by compactobs still wait in the spool (the "
                f"database was unreachable; they are written when it is back, or at the next flush): "
                f"{_tokens_text(spool.amounts)}; list {_usd(spool.cost_usd)}",
                {"requests": spool.requests, "amounts": dict(spool.amounts), "list_usd": spool.cost_usd},
            )
        )
    moved = row.moved
    extra_requests = inside.requests - store.requests - spool.requests - moved.get("requests", 0)
    extra = {
        name: inside.amounts[name] - store.amounts[name] - spool.amounts[name] - moved.get(name, 0)
        for name in CLASSES
    }
    # The report's own rate of each class: what its list amount implies for its tokens.
    api_rates = {name: _rate(inside.list_by_class.get(name, _ZERO), inside.amounts[name]) for name in CLASSES}
    store_rates = {name: _rate(store.cost_by_class[name], store.amounts[name]) for name in CLASSES}
    explained_list = spool.cost_usd
    explained_amounts = dict.fromkeys(CLASSES, 0)
    if extra_requests > 0:
        money = _ZERO
        for name in CLASSES:
            api_rate = api_rates[name]
            money += (api_rate if api_rate is not None else store_rates[name] or _ZERO) * extra[name]
        explained_list += money
        explained_amounts = dict(extra)
        row.explanations.append(
            Explanation(
                "uninstrumented",
                f"Anthropic counted {counted(extra_requests, 'request')} more than compactobs recorded: "
                f"calls from clients compactobs does not instrument ({_tokens_text(extra)}; list "
                f"{_usd(money)} at the report's rates)",
                {"requests": extra_requests, "amounts": extra, "list_usd": money},
            )
        )
    elif extra_requests < 0:
        late = refreshed_at is not None and row.bucket + window.step > refreshed_at
        money = _ZERO
        for name in CLASSES:
            money += (store_rates[name] or _ZERO) * extra[name]
        explained_list += money
        explained_amounts = dict(extra)
        why = (
            f"Anthropic's data was refreshed at {refreshed_at:%Y-%m-%d %H:%M} UTC, within this bucket"
            if late
            else "calls Anthropic did not bill, or billed elsewhere"
        )
        row.explanations.append(
            Explanation(
                "not_in_report",
                f"compactobs recorded {counted(-extra_requests, 'request')} that Anthropic's report does "
                f"not have ({why}; {_tokens_text(extra)}; list {_usd(money)})",
                {"requests": extra_requests, "amounts": extra, "list_usd": money},
            )
        )
    for name in CLASSES:
        api_rate, store_rate = api_rates[name], store_rates[name]
        if api_rate is None or store_rate is None:
            continue
        effect = (api_rate - store_rate) * store.amounts[name]
        if _significant(
            effect, inside.list_by_class.get(name, _ZERO), store.cost_by_class[name], tolerance, True
        ):
            explained_list += effect
            scale = Decimal(1000) if name == "web_search" else _MTOK
            noun = "requests" if name == "web_search" else "tokens"
            unit = "/1K requests" if name == "web_search" else "/MTok"
            row.explanations.append(
                Explanation(
                    "price_drift",
                    f"{_CLASS_LABEL[name]}: the report implies ${(api_rate * scale).normalize():f}{unit}, "
                    f"compactobs priced ${(store_rate * scale).normalize():f}{unit}: "
                    f"{_usd(effect)} on {store.amounts[name]:,} {noun}"
                    " (check the price table: genai-prices, COMPACTOBS_PRICING_FILE)",
                    {
                        "class": name,
                        "report_rate": api_rate * scale,
                        "compactobs_rate": store_rate * scale,
                        "per": "1K requests" if name == "web_search" else "MTok",
                        "usd": effect,
                    },
                )
            )
    other = inside.list_by_class.get("other", _ZERO)
    if abs(other) >= _MONEY_FLOOR:
        explained_list += other
        row.explanations.append(
            Explanation(
                "other_cost",
                f"Anthropic lists {_usd(other)} for what compactobs does not price "
                "(code execution, sessions)",
                {"list_usd": other},
            )
        )
    discount = row.api.list_usd - row.api.amount_usd
    if _significant(discount, row.api.list_usd, row.api.amount_usd, tolerance, True):
        share = discount / row.api.list_usd if row.api.list_usd else None
        what = "discount" if discount > 0 else "surcharge"
        row.explanations.append(
            Explanation(
                "discount",
                f"Anthropic's amount is {_usd(abs(discount))} {'below' if discount > 0 else 'above'} "
                f"its list amount ({what}"
                + (f" of {abs(share) * 100:.2f}%" if share is not None else "")
                + "; priority tier commitments, negotiated discounts): compactobs shows list prices",
                {"usd": discount, "share": share},
            )
        )
    if store.unpriced:
        row.explanations.append(
            Explanation(
                "unpriced",
                f"{counted(store.unpriced, 'call')} compactobs could not price: their list cost is missing "
                "on its side (add the model to COMPACTOBS_PRICING_FILE, then run `compactobs reprice`)",
                {"calls": store.unpriced},
            )
        )
    # What is left once the above are taken out (a difference in requests always has its explanation).
    residual = {name: extra[name] - explained_amounts[name] for name in CLASSES}
    residual_list = inside.list_usd - store.cost_usd - explained_list - row.moved_list
    problems = [
        f"{_CLASS_LABEL[name]} {residual[name]:+,}"
        for name in CLASSES
        if _significant(residual[name], inside.amounts[name], store.amounts[name], tolerance, False)
    ]
    if not store.unpriced and _significant(residual_list, inside.list_usd, store.cost_usd, tolerance, True):
        problems.append(f"list {_usd(residual_list)}")
    if problems:
        row.explanations.append(
            Explanation(
                "unexplained",
                "not explained: " + ", ".join(problems) + " (e.g. usage compactobs did not count, such as "
                "compaction iterations, or a change of model name)",
                {"amounts": residual, "list_usd": residual_list},
            )
        )


def _bucket_edges(rows: dict[_Key, _Row], window: Window) -> None:
    """Pair a bucket's shortfall of requests with the same excess in the next bucket of the same group:
    the same calls, dated either side of an edge. Both rows say so; their moved figures are set aside."""
    for (bucket, group), row in sorted(rows.items(), key=lambda item: item[0][0]):
        following = rows.get((bucket + window.step, group))
        if following is None:
            continue

        def gap(r: _Row) -> tuple[int, dict[str, int], Decimal]:
            inside = r.inside
            requests = inside.requests - r.store.requests - r.spool.requests - r.moved.get("requests", 0)
            amounts = {
                n: inside.amounts[n] - r.store.amounts[n] - r.spool.amounts[n] - r.moved.get(n, 0)
                for n in CLASSES
            }
            return requests, amounts, inside.list_usd - r.store.cost_usd

        here, here_amounts, here_list = gap(row)
        there, there_amounts, there_list = gap(following)
        if not here or here != -there:
            continue
        shifted = {n: here_amounts[n] if here_amounts[n] == -there_amounts[n] else 0 for n in CLASSES}
        money = here_list if (here_list + there_list).copy_abs() < _MONEY_FLOOR else _ZERO
        count = abs(here)
        earlier = here > 0  # Anthropic has them in this bucket, compactobs in the next one
        edge = window.label(bucket + window.step)
        for target, sign in ((row, 1), (following, -1)):
            target.moved["requests"] = target.moved.get("requests", 0) + sign * here
            for n in CLASSES:
                target.moved[n] = target.moved.get(n, 0) + sign * shifted[n]
            target.moved_list += sign * money
            target.explanations.append(
                Explanation(
                    "bucket_edge",
                    f"{counted(count, 'request')} dated {'earlier' if earlier else 'later'} by Anthropic "
                    f"than by compactobs, across the edge {edge} UTC (the two buckets together agree; "
                    "compactobs dates a call by its start)",
                    {
                        "requests": sign * here,
                        "amounts": {n: sign * shifted[n] for n in CLASSES},
                        "list_usd": sign * money,
                        "edge": bucket + window.step,
                    },
                )
            )


def worst_gap(report: Report) -> Decimal:
    """The largest difference over the window, in percent of Anthropic's figure (in scope): requests, each
    class, list cost. What --fail-over compares."""
    return Decimal(str(report.extra["gap_pct"]))


def reconcile_report(
    engine: Engine,
    fetched: Fetched,
    window: Window,
    groups: Sequence[str] = (),
    *,
    scope: Scope = Scope(),
    spooled: Iterable[Mapping[str, Any]] = (),
    tolerance_pct: Decimal = _ZERO,
) -> Report:
    """The store's figures beside Anthropic's (`fetched` over `window`), row by bucket and group, each
    difference explained (see the module docstring). `spooled`: call rows still waiting in the spool.

    Raises ReportInputError for a grouping the store cannot follow."""
    tolerance = Decimal(tolerance_pct) / 100
    groups = tuple(groups)
    worked = _worked(groups)
    store = _store_side(engine, window, worked, scope)
    spool = _spool_side(spooled, window, worked, scope)
    api, outside = _api_side(fetched, worked, scope)
    rows: dict[_Key, _Row] = {}
    for key in sorted(
        {*store, *spool, *api}, key=lambda k: (k[0], tuple("" if v is None else str(v) for v in k[1]))
    ):
        if not window.start <= key[0] < window.stop:
            continue
        rows[key] = _Row(
            key[0],
            key[1],
            api.get(key, ApiFigures()),
            outside.get(key, ApiFigures()),
            store.get(key, _Side()),
            spool.get(key, _Side()),
        )
    _bucket_edges(rows, window)
    for row in rows.values():
        _explain(row, tolerance, fetched.refreshed_at, window)

    # Shown rows sum the worked ones over the models the grouping does not show.
    shown: dict[_Key, list[_Row]] = {}
    for (bucket, values), row in rows.items():
        shown.setdefault((bucket, values[: len(groups)]), []).append(row)
    model_hidden = "model" not in groups
    out_rows: list[dict[str, Any]] = []
    explanations: list[dict[str, Any]] = []
    totals_api, totals_out, totals_store = ApiFigures(), ApiFigures(), _Side()
    for (bucket, values), parts in shown.items():
        keys = {"bucket": window.label(bucket), **dict(zip(groups, values, strict=True))}
        api_sum, store_sum = ApiFigures(), _Side()
        found: list[str] = []
        for row in parts:
            api_sum.add(row.api)
            store_sum.add(row.store)
            totals_out.add(row.outside)
            for e in row.explanations:
                found += [] if e.kind in found else [e.kind]
                if model_hidden:
                    model = row.group[-1]
                    explanations.append(
                        {
                            **keys,
                            "model": model,
                            "kind": e.kind,
                            "message": f"{model}: {e.message}",
                            "figures": e.figures,
                        }
                    )
                else:
                    explanations.append({**keys, "kind": e.kind, "message": e.message, "figures": e.figures})
        totals_api.add(api_sum)
        totals_store.add(store_sum)
        status = "unexplained" if "unexplained" in found else "explained" if found else "match"
        out_rows.append(
            {**keys, **_figures(api_sum, store_sum), "status": status, "explained": ";".join(found)}
        )
    totals = {**_figures(totals_api, totals_store), "status": None, "explained": None}
    gap = _gap(_minus(totals_api, totals_out), totals_store)

    columns = ["bucket", *groups, *_FIGURE_COLUMNS, "status", "explained"]
    header = [
        f"{window.label(window.start)} to {window.label(window.stop)} (exclusive), UTC {window.unit}s: "
        "Anthropic's buckets",
        "Anthropic's figures beside compactobs' (Δ = Anthropic - compactobs); cost: Anthropic's list and "
        "after-discount amounts against compactobs' list price.",
    ]
    if scope.workspaces or scope.api_keys:
        named = [*scope.workspaces, *scope.api_keys]
        header.append(f"compactobs records: {', '.join(named)}; the rest of the organisation is other_scope")
    if fetched.refreshed_at is not None:
        header.append(f"Anthropic's data refreshed at {fetched.refreshed_at:%Y-%m-%d %H:%M:%S} UTC")
    notes = [f"Largest gap over the window (in scope): {gap:.2f}% of Anthropic's figure."]
    unexplained = sum(1 for r in out_rows if r["status"] == "unexplained")
    warnings = [f"{unexplained:,} bucket(s) with a difference not explained"] if unexplained else []
    section = Report(
        name="explanations",
        title="Differences and what explains them",
        columns=["bucket", *groups, "kind", "message"],
        rows=[{k: v for k, v in e.items() if k != "figures"} for e in explanations],
        kinds={"bucket": "key", **{g: "key" for g in groups}, "kind": "text", "message": "text"},
    )
    kinds: dict[str, Any] = {
        "bucket": "key",
        **{g: "key" for g in groups},
        "status": "text",
        "explained": "text",
    }
    for column in _FIGURE_COLUMNS:
        kinds[column] = "usd" if column.endswith("_usd") else "int"
    return Report(
        name="reconcile",
        title="Reconcile with Anthropic's usage and cost reports",
        columns=columns,
        rows=out_rows,
        totals=totals,
        header=header,
        warnings=warnings,
        extra={
            "by": window.unit,
            "groups": list(groups),
            "since": window.start,
            "until": window.stop,
            "scope": {"workspaces": list(scope.workspaces), "api_keys": list(scope.api_keys)},
            "data_refreshed_at": fetched.refreshed_at,
            "tolerance_pct": Decimal(tolerance_pct),
            "gap_pct": gap,
            "explanations": explanations,
        },
        kinds=kinds,
        labels=dict(_LABELS),
        table_columns=["bucket", *groups, *_TABLE_COLUMNS, "status"],
        narrow_columns=[["bucket", *groups, *narrow, "status"] for narrow in _NARROW_COLUMNS],
        sections=[section] if explanations else [],
        empty_message="Neither Anthropic nor compactobs has a request in this window.",
        notes=notes,
    )


_FIGURE_COLUMNS: Final[tuple[str, ...]] = (
    "requests",
    "compactobs_requests",
    "delta_requests",
    *(
        f"{side}{name}"
        for name in ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "web_search")
        for side in ("", "compactobs_", "delta_")
    ),
    "list_usd",
    "amount_usd",
    "compactobs_cost_usd",
    "delta_list_usd",
    "delta_amount_usd",
)
"""Per class: Anthropic's figure (the class's name), compactobs' and the difference."""
_TABLE_COLUMNS: Final[tuple[str, ...]] = (
    "requests",
    "delta_requests",
    "delta_input",
    "delta_cache_read",
    "delta_cache_write_5m",
    "delta_cache_write_1h",
    "delta_output",
    "delta_web_search",
    "list_usd",
    "amount_usd",
    "compactobs_cost_usd",
    "delta_list_usd",
)
_NARROW_COLUMNS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "requests",
        "delta_requests",
        "delta_input",
        "delta_output",
        "list_usd",
        "compactobs_cost_usd",
        "delta_list_usd",
    ),
    ("delta_requests", "list_usd", "delta_list_usd"),
    ("delta_list_usd",),
)
"""Smaller sets of _TABLE_COLUMNS for terminals of 120 and 80 columns (each after the bucket and groups)."""
_LABELS: Final[dict[str, str]] = {
    "requests": "requests",
    "delta_requests": "Δ req",
    "delta_input": "Δ input",
    "delta_cache_read": "Δ read",
    "delta_cache_write_5m": "Δ write 5m",
    "delta_cache_write_1h": "Δ write 1h",
    "delta_output": "Δ output",
    "delta_web_search": "Δ search",
    "list_usd": "list",
    "amount_usd": "amount",
    "compactobs_cost_usd": "compactobs",
    "delta_list_usd": "Δ list",
}


def _figures(api: ApiFigures, store: _Side) -> dict[str, Any]:
    result: dict[str, Any] = {
        "requests": api.requests,
        "compactobs_requests": store.requests,
        "delta_requests": api.requests - store.requests,
    }
    for name in CLASSES:
        result[name] = api.amounts[name]
        result[f"compactobs_{name}"] = store.amounts[name]
        result[f"delta_{name}"] = api.amounts[name] - store.amounts[name]
    result.update(
        {
            "list_usd": api.list_usd,
            "amount_usd": api.amount_usd,
            "compactobs_cost_usd": store.cost_usd,
            "delta_list_usd": api.list_usd - store.cost_usd,
            "delta_amount_usd": api.amount_usd - store.cost_usd,
        }
    )
    return result


def _gap(api: ApiFigures, store: _Side) -> Decimal:
    pairs = [(Decimal(api.requests), Decimal(store.requests))]
    pairs += [(Decimal(api.amounts[n]), Decimal(store.amounts[n])) for n in CLASSES]
    pairs.append((api.list_usd, store.cost_usd))
    worst = _ZERO
    for theirs, ours in pairs:
        if abs(theirs - ours) < _MONEY_FLOOR:
            continue
        base = abs(theirs) if theirs else abs(ours)
        worst = max(worst, abs(theirs - ours) / base * 100)
    return worst
