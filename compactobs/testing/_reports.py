"""The simulator's own books: every Messages response it served, and the organisation usage and cost reports
(`GET /v1/organizations/analytics/usage` and `/cost`) computed from them, as Anthropic computes its own.

The ledger is kept here, from the responses' usage as sent, not through compactobs' instrumentation or its
store: it is the other side of a reconciliation. Its list prices are the rates compactobs' pricing would use
(genai-prices, under COMPACTOBS_PRICING_FILE), each iteration at its own model and tier, web search per
request, unless `ReportScenario` says otherwise. Knobs for the usual mismatches:

- `price_factors`: the report's list rate of a class (`input`, `cache_read`, `cache_write_5m`,
  `cache_write_1h`, `output`, `web_search`) is this times compactobs' (a price table that drifted);
- `discount`: the `amount` after discounts is the list amount times (1 - discount);
- `keys`: an API key (the request's `x-api-key`, or its `authorization: Bearer` token) mapped to
  (api key id, workspace id), so traffic sent with another key lands in another workspace; any other key
  is `api_key_id` in `workspace_id`;
- `shift_s`: each response is counted this many seconds after it was served (a bucket-edge disagreement);
- calls that compactobs never saw are simply calls made to the simulator by a client it does not instrument.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from compactobs._types import JSON, JSONObject
from compactobs.testing._conversation import SimulationError

if TYPE_CHECKING:
    from compactobs.pricing import Pricer

__all__ = ["Ledger", "ReportScenario"]

USAGE_ROUTE: Final = "/v1/organizations/analytics/usage"
COST_ROUTE: Final = "/v1/organizations/analytics/cost"
BETA: Final = "analytics-usage-cost-2026-08-24"

_WIDTHS: Final = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
_MAX_SPAN: Final = {"1m": timedelta(hours=24), "1h": timedelta(days=31), "1d": timedelta(days=31)}
_DIMENSIONS: Final = frozenset(
    {"model", "service_tier", "speed", "inference_geo", "workspace_id", "api_key_id", "context_window"}
)
_TOKEN_CLASSES: Final = (
    ("input", "uncached_input_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_write_5m", "cache_creation.ephemeral_5m_input_tokens"),
    ("cache_write_1h", "cache_creation.ephemeral_1h_input_tokens"),
    ("output", "output_tokens"),
)
_PER_MTOK: Final = Decimal(1_000_000)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class ReportScenario:
    """How the simulator's organisation reports differ from what it served (see the module docstring)."""

    workspace_id: str = "wrkspc_sim"
    api_key_id: str = "apikey_sim"
    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    price_factors: Mapping[str, Decimal] = field(default_factory=dict)
    discount: Decimal = Decimal(0)
    shift_s: float = 0.0


@dataclass(frozen=True)
class _Entry:
    """One billed iteration of one served response (the last one carries the request and web searches)."""

    at: float
    api_key: str
    model: str
    service_tier: str | None
    speed: str | None
    inference_geo: str | None
    amounts: dict[str, int]
    requests: int
    total_input: int


def _int(value: JSON) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _amounts(usage: Mapping[str, JSON]) -> dict[str, int]:
    creation = usage.get("cache_creation")
    write = _int(usage.get("cache_creation_input_tokens"))
    if isinstance(creation, Mapping):
        write_5m = _int(creation.get("ephemeral_5m_input_tokens"))
        write_1h = _int(creation.get("ephemeral_1h_input_tokens"))
    else:
        write_5m, write_1h = write, 0  # no breakdown: every write is a 5-minute one
    return {
        "input": _int(usage.get("input_tokens")),
        "cache_read": _int(usage.get("cache_read_input_tokens")),
        "cache_write_5m": write_5m,
        "cache_write_1h": write_1h,
        "output": _int(usage.get("output_tokens")),
        "web_search": 0,
    }


class Ledger:
    """What the simulator served, and its reports over it. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self.scenario = ReportScenario()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def record(self, body: JSON, api_key: str, at: float) -> None:
        """Book one served Messages response (`body`, as sent): its iterations when it has them (each at its
        own model), else its top-level usage."""
        if not isinstance(body, Mapping) or not isinstance(body.get("usage"), Mapping):
            return
        usage = body["usage"]
        model = str(body.get("model") or "")
        tier, speed, geo = usage.get("service_tier"), usage.get("speed"), usage.get("inference_geo")
        iterations = usage.get("iterations")
        steps = [i for i in iterations if isinstance(i, Mapping)] if isinstance(iterations, list) else []
        if not steps:
            steps = [usage]
        entries = []
        for index, step in enumerate(steps):
            amounts = _amounts(step)
            last = index == len(steps) - 1
            if last:
                tools = usage.get("server_tool_use")
                amounts["web_search"] = (
                    _int(tools.get("web_search_requests")) if isinstance(tools, Mapping) else 0
                )
            total_input = amounts["input"] + amounts["cache_read"] + amounts["cache_write_5m"]
            total_input += amounts["cache_write_1h"]
            entries.append(
                _Entry(
                    at,
                    api_key,
                    str(step.get("model") or model),
                    tier,
                    speed,
                    geo,
                    amounts,
                    1 if last else 0,
                    total_input,
                )
            )
        with self._lock:
            self._entries.extend(entries)

    # -- the report endpoints ---------------------------------------------------------------------------

    def answer(self, route: str, query: str, headers: Mapping[str, str]) -> JSONObject:
        """The JSON page for a report request. Raises SimulationError (400) for what the API refuses."""
        params = parse_qs(query, keep_blank_values=True)

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        if BETA not in headers.get("anthropic-beta", ""):
            raise SimulationError(f"this endpoint is in beta: send anthropic-beta: {BETA}")
        width = one("time_bucket_width")
        if width is None or width not in _WIDTHS:
            raise SimulationError("time_bucket_width: the simulator serves 1m, 1h or 1d buckets")
        start, stop = _moment(one("starting_at"), "starting_at"), _moment(one("ending_at"), "ending_at")
        if stop <= start:
            raise SimulationError("ending_at must be after starting_at")
        if stop - start > _MAX_SPAN[width]:
            most = "24 hours" if width == "1m" else "31 days"
            raise SimulationError(f"the range may span at most {most} with time_bucket_width={width}")
        if start < datetime(2026, 1, 1, tzinfo=timezone.utc):
            raise SimulationError("starting_at must be no earlier than 2026-01-01T00:00:00Z")
        try:
            limit = int(one("limit") or 20)
        except ValueError:
            raise SimulationError("limit must be an integer") from None
        if not 1 <= limit <= 1000:
            raise SimulationError("limit must be between 1 and 1000")
        groups = params.get("group_by[]", [])
        fan_out = [g for g in groups if g in ("cost_type", "token_type")]
        dimensions = [g for g in groups if g not in fan_out]
        if route == USAGE_ROUTE and fan_out:
            raise SimulationError("cost_type and token_type group only the cost endpoint")
        unknown = [g for g in dimensions if g not in _DIMENSIONS]
        if unknown:
            raise SimulationError(f"the simulator cannot group by {', '.join(unknown)}")
        if len(dimensions) > 5:
            raise SimulationError("group_by[] takes at most 5 dimensions")
        workspaces = set(params.get("workspace_ids[]", []))
        keys = set(params.get("api_key_ids[]", []))
        rows = self._rows(start, stop, _WIDTHS[width], dimensions, workspaces, keys)
        if route == USAGE_ROUTE:
            items = [_usage_item(*row) for row in rows]
        else:
            items = [_cost_item(*row, fan_out, self.scenario.discount) for row in rows]
        try:
            offset = int((one("page") or "page_0").removeprefix("page_"))
        except ValueError:
            raise SimulationError("page: not a cursor from a previous response") from None
        # Fan-out rows (one bucket and group's cost types) stay on one page, as they do not count to limit.
        chunk: list[JSONObject] = []
        index = offset
        while index < len(items) and index - offset < limit:
            chunk.extend(items[index])
            index += 1
        more = index < len(items)
        return {
            "data": chunk,
            "has_more": more,
            "next_page": f"page_{index}" if more else None,
            "data_refreshed_at": datetime.now(timezone.utc).isoformat(),
        }

    def _rows(
        self,
        start: datetime,
        stop: datetime,
        width: timedelta,
        dimensions: list[str],
        workspaces: set[str],
        keys: set[str],
    ) -> list[tuple[datetime, datetime, JSONObject, dict[str, int], int, dict[str, Decimal]]]:
        from compactobs.pricing import default_pricer

        pricer = default_pricer()
        scenario = self.scenario
        with self._lock:
            entries = list(self._entries)
        cells: dict[tuple[datetime, tuple[Any, ...]], list[JSON]] = {}
        for entry in entries:
            when = datetime.fromtimestamp(entry.at + scenario.shift_s, timezone.utc)
            if not start <= when < stop:
                continue
            key_id, workspace = scenario.keys.get(entry.api_key, (scenario.api_key_id, scenario.workspace_id))
            if (workspaces and workspace not in workspaces) or (keys and key_id not in keys):
                continue
            values = {
                "model": entry.model,
                "service_tier": entry.service_tier,
                "speed": entry.speed,
                "inference_geo": entry.inference_geo,
                "workspace_id": workspace,
                "api_key_id": key_id,
                "context_window": "200k-1M" if entry.total_input > 200_000 else "0-200k",
            }
            bucket = _EPOCH + ((when - _EPOCH) // width) * width
            group = {name: values[name] for name in dimensions}
            cell = cells.setdefault(
                (bucket, tuple(group.values())), [group, dict.fromkeys(_CLASSES, 0), 0, {}]
            )
            for name, amount in entry.amounts.items():
                cell[1][name] += amount
            cell[2] += entry.requests
            listed = _list_prices(pricer, entry, scenario)
            for name, money in listed.items():
                cell[3][name] = cell[3].get(name, Decimal(0)) + money
        return [
            (bucket, bucket + width, group, amounts, requests, listed)
            for (bucket, _), (group, amounts, requests, listed) in sorted(
                cells.items(), key=lambda kv: kv[0][0]
            )
        ]


_CLASSES: Final = ("input", "cache_read", "cache_write_5m", "cache_write_1h", "output", "web_search")


def _list_prices(pricer: Pricer, entry: _Entry, scenario: ReportScenario) -> dict[str, Decimal]:
    """The list amount of each class of one entry, in dollars: compactobs' rates times the drift factors."""
    when = datetime.fromtimestamp(entry.at, timezone.utc)
    variants = (entry.service_tier, entry.speed, entry.inference_geo)
    if not all(v is None or isinstance(v, str) for v in variants):
        return {}  # a malformed queued usage: booked without a price
    rates = pricer.rates(
        entry.model,
        when,
        service_tier=entry.service_tier,
        speed=entry.speed,
        inference_geo=entry.inference_geo,
        total_input_tokens=entry.total_input,
    )
    if rates is None:
        return {}
    per_mtok = {
        "input": rates.input,
        "cache_read": rates.cache_read,
        "cache_write_5m": rates.cache_write_5m,
        "cache_write_1h": rates.cache_write_1h,
        "output": rates.output,
    }
    result = {}
    for name, rate in per_mtok.items():
        factor = Decimal(scenario.price_factors.get(name, 1))
        result[name] = Decimal(entry.amounts[name]) * rate * rates.multiplier * factor / _PER_MTOK
    factor = Decimal(scenario.price_factors.get("web_search", 1))
    result["web_search"] = Decimal(entry.amounts["web_search"]) * rates.web_search_per_1k * factor / 1000
    return result


def _moment(text: str | None, name: str) -> datetime:
    if not text:
        raise SimulationError(f"{name} is required")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SimulationError(f"{name}: not an RFC 3339 date-time: {text!r}") from None
    if moment.tzinfo is None:
        raise SimulationError(f"{name} must carry a time zone")
    return moment.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _usage_item(
    start: datetime,
    stop: datetime,
    group: JSONObject,
    amounts: dict[str, int],
    requests: int,
    listed: dict[str, Decimal],
) -> list[JSONObject]:
    tokens = sum(amounts[name] for name in _CLASSES if name != "web_search")
    return [
        {
            "starting_at": _iso(start),
            "ending_at": _iso(stop),
            "group": group,
            "usage": {
                "uncached_input_tokens": amounts["input"],
                "cache_read_input_tokens": amounts["cache_read"],
                "cache_creation": {
                    "ephemeral_5m_input_tokens": amounts["cache_write_5m"],
                    "ephemeral_1h_input_tokens": amounts["cache_write_1h"],
                },
                "output_tokens": amounts["output"],
                "requests": requests,
                "server_tool_use": {"web_search_requests": amounts["web_search"]},
                "total_tokens": tokens,
            },
        }
    ]


def _cents(dollars: Decimal) -> str:
    return str(dollars * 100)


def _cost_item(
    start: datetime,
    stop: datetime,
    group: JSONObject,
    amounts: dict[str, int],
    requests: int,
    listed: dict[str, Decimal],
    fan_out: list[str],
    discount: Decimal,
) -> list[JSONObject]:
    """One bucket and group's cost rows: one, or one per cost type / token type asked for."""
    keep = Decimal(1) - Decimal(discount)

    def row(extra: JSONObject, money: Decimal, count: int | None) -> JSONObject:
        return {
            "starting_at": _iso(start),
            "ending_at": _iso(stop),
            "group": {**group, **extra},
            "cost": {
                "amount": _cents(money * keep),
                "currency": "USD",
                "list_amount": _cents(money),
                "requests": count,
            },
        }

    token_money = sum((listed.get(name, Decimal(0)) for name, _ in _TOKEN_CLASSES), Decimal(0))
    search = listed.get("web_search", Decimal(0))
    if not fan_out:
        return [row({}, token_money + search, requests)]
    rows: list[JSONObject] = []
    if "token_type" in fan_out:
        for name, token_type in _TOKEN_CLASSES:
            if amounts[name]:
                rows.append(
                    row({"cost_type": "tokens", "token_type": token_type}, listed.get(name, Decimal(0)), None)
                )
    else:
        rows.append(row({"cost_type": "tokens"}, token_money, None))
    if amounts["web_search"] and "cost_type" in fan_out:
        rows.append(row({"cost_type": "web_search"}, search, None))
    return rows
