"""Re-pricing stored calls, and which stored models have a price: `compactobs reprice` and `pricing check`.

```python
from compactobs.pricing import default_pricer
from compactobs.store.reprice import reprice_database, stored_models

result = reprice_database("sqlite:///...", default_pricer(), since=datetime(2026, 11, 1, tzinfo=timezone.utc))
result.calls, result.changed, result.cost_before, result.cost_after
```

Every priced call keeps what priced it (`calls.pricing_version`, DESIGN.md section 3, rule 8). Re-pricing
rebuilds each call's usage from its stored iteration rows (type, model, token classes, declined flag) and
the call's variants (service tier, speed, inference geo), web searches and start time, prices it with the
given `Pricer` exactly as telemetry does at record time, and rewrites the cost columns of the call and its
iterations. Calls go in batches ordered by (start_ms, call_id), each batch in its own transaction, so
memory stays flat and concurrent writers wait at most one batch. Unchanged prices give unchanged rows:
money is stored the way the exporter stores it (the float the pricer's Decimal becomes), and only rows
whose values change are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    and_,
    bindparam,
    case,
    cast,
    false,
    func,
    null,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from compactobs._types import JSONObject, SQLExpr, SQLRow
from compactobs._words import aligned, counted
from compactobs.platforms import endpoint_of
from compactobs.pricing import PRICING_FILE_ENV, PricedCall, PricedIteration, Pricer
from compactobs.store import database_status, default_database_url, open_database
from compactobs.store.engine import display_url, explain_error, make_engine
from compactobs.store.errors import StoreError
from compactobs.store.models import calls, epoch_ms, iterations
from compactobs.store.schema import ensure_schema
from compactobs.untrusted import escape
from compactobs.usage import CallUsage, IterationUsage, TokenCounts

__all__ = [
    "ModelCheck",
    "PriceCheck",
    "RepriceResult",
    "StoredModel",
    "check_prices",
    "reprice",
    "reprice_database",
    "stored_models",
]

BATCH_SIZE: Final = 500
"""Calls per transaction."""

_COST_COLUMNS: Final = (
    "cost_usd",
    "cost_input_usd",
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
)
_CALL_COLUMNS: Final = (*_COST_COLUMNS, "cost_server_tools_usd", "priced", "pricing_version")
_ITERATION_COLUMNS: Final = (*_COST_COLUMNS, "priced")
_TEN_PLACES: Final = Decimal("1e-10")


# --- models seen in the store --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model named by stored calls (request or response model) or iterations."""

    model: str
    calls: int
    """Calls that name it, as request model, response model or an iteration's model."""
    unpriced_calls: int
    """Of those, the calls recorded unpriced because of it: with an iteration at it left unpriced."""


def stored_models(connection: Connection) -> list[StoredModel]:
    """Every model the store has seen, by name, with its call counts."""
    # A call is unpriced because of the model of an unpriced iteration (the one pricing looks at), not because
    # of its request or response model: an unpriced fallback model leaves the requested model priced.
    no_flag = cast(null(), Boolean).label("priced")
    named = union(
        select(calls.c.request_model.label("model"), calls.c.call_id, no_flag),
        select(calls.c.response_model, calls.c.call_id, no_flag),
        select(iterations.c.model, iterations.c.call_id, iterations.c.priced),
    ).subquery()
    unpriced_call = func.count(func.distinct(case((named.c.priced == false(), named.c.call_id))))
    query = (
        select(named.c.model, func.count(func.distinct(named.c.call_id)), unpriced_call)
        .where(named.c.model.is_not(None))
        .group_by(named.c.model)
        .order_by(named.c.model)
    )
    return [StoredModel(model, count, unpriced) for model, count, unpriced in connection.execute(query)]


# --- re-pricing ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepriceResult:
    """What `reprice` did. Costs are summed over the calls that were priced (before, resp. after)."""

    calls: int
    """Calls re-priced (those carrying usage, in the time range)."""
    changed: int
    """Of those, calls whose stored cost, priced flag or pricing version changed."""
    skipped: int
    """Calls left as they were: their iteration rows are missing, so their usage cannot be rebuilt."""
    cost_before: Decimal
    cost_after: Decimal
    unpriced_before: int
    unpriced_after: int
    pricing_versions: tuple[str, ...]
    """The pricing versions the re-priced calls now carry."""
    without_usage: int = 0
    """Calls in the range that carried no usage (failed before any): nothing to price, left out."""
    without_usage_ids: tuple[str, ...] = ()
    """The first few of them (call ids: span ids), to name them."""

    def lines(self) -> list[str]:
        """What `compactobs reprice` says it did: calls, cost before and after, unpriced calls, and the
        error calls it left out (the calls left as they were are a warning of the caller's)."""
        if not self.calls and not self.skipped:
            return ["no recorded calls to reprice"]
        versions = ", ".join(self.pricing_versions) or "-"
        delta = self.cost_after - self.cost_before
        sign = "-" if delta < 0 else "+"
        lines = [
            f"repriced {self.calls:,} calls with {versions}: {self.changed:,} changed",
            f"cost: ${self.cost_before:,.6f} before, ${self.cost_after:,.6f} after "
            f"({sign}${abs(delta):,.6f})",
        ]
        if self.unpriced_before or self.unpriced_after:
            lines.append(
                f"unpriced calls: {self.unpriced_before:,} before, {self.unpriced_after:,} after "
                "(see `compactobs pricing check`)"
            )
        if self.without_usage:
            more = ", ..." if self.without_usage > len(self.without_usage_ids) else ""
            lines.append(
                f"not repriced: {counted(self.without_usage, 'error call')} that failed before any usage, "
                f"with no cost to price: {', '.join(self.without_usage_ids)}{more}"
            )
        return lines


class _Stored:
    """Money as the store holds it once written the exporter's way, for comparing with what it holds.

    The exporter writes the float the pricer's Decimal becomes: PostgreSQL parses its shortest repr as
    NUMERIC(20, 10) (rounding half away from zero), SQLite keeps the REAL, which SQLAlchemy reads back as
    a Decimal with 10 places."""

    def __init__(self, backend: str) -> None:
        self.sqlite = backend == "sqlite"

    @staticmethod
    def bind(value: Decimal | None) -> Decimal | None:
        return None if value is None else Decimal(repr(float(value)))

    def read(self, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        if self.sqlite:
            return Decimal(f"{float(value):.10f}")
        return Decimal(repr(float(value))).quantize(_TEN_PLACES, ROUND_HALF_UP)


def _iteration_usage(row: SQLRow) -> IterationUsage:
    return IterationUsage(
        index=row.idx,
        type=row.type or "unknown",
        model=row.model,
        tokens=TokenCounts(
            row.input_tokens or 0,
            row.output_tokens or 0,
            row.cache_read_tokens or 0,
            row.cache_write_5m_tokens or 0,
            row.cache_write_1h_tokens or 0,
        ),
        known_type=row.known_type is not False,
        declined=bool(row.declined),
    )


def _call_usage(call: SQLRow, rows: Sequence[SQLRow]) -> CallUsage:
    return CallUsage(
        iterations=tuple(_iteration_usage(row) for row in rows),
        # Not kept in the store, and pricing does not read it: a call without `usage.iterations` was
        # stored as one `message` iteration, priced the same way.
        has_iterations=len(rows) > 1,
        response_model=call.response_model,
        service_tier=call.service_tier,
        speed=call.speed,
        inference_geo=call.inference_geo,
        web_search_requests=call.web_search_requests or 0,
        # The platform's terms, from what was stored: the same rule as when the call was recorded.
        provider=call.provider,
        endpoint=endpoint_of(call.provider, call.region, call.request_model),
    )


def _iteration_values(priced: PricedIteration | PricedCall, stored: _Stored) -> dict[str, Any]:
    """The cost columns both tables share, from an iteration's or a call's prices."""
    return {
        "cost_usd": stored.bind(priced.cost_usd),
        "cost_input_usd": stored.bind(priced.input_usd),
        "cost_output_usd": stored.bind(priced.output_usd),
        "cost_cache_read_usd": stored.bind(priced.cache_read_usd),
        "cost_cache_write_5m_usd": stored.bind(priced.cache_write_5m_usd),
        "cost_cache_write_1h_usd": stored.bind(priced.cache_write_1h_usd),
        "priced": priced.priced,
    }


def _call_values(priced: PricedCall, stored: _Stored) -> dict[str, Any]:
    return {
        **_iteration_values(priced, stored),
        "cost_server_tools_usd": stored.bind(priced.server_tools_usd),
        "pricing_version": priced.pricing_version,
    }


def _differs(row: SQLRow, values: dict[str, Any], columns: Iterable[str], stored: _Stored) -> bool:
    for column in columns:
        old, new = getattr(row, column), values[column]
        if column.endswith("_usd"):
            new = stored.read(new)
        elif column == "priced" and old is not None:
            old = bool(old)
        if old != new:
            return True
    return False


_CALL_SET: Final[dict[str, SQLExpr]] = {column: bindparam(column) for column in _CALL_COLUMNS}
_UPDATE_CALL: Final = update(calls).where(calls.c.call_id == bindparam("key_call_id")).values(_CALL_SET)
_UPDATE_ITERATION: Final = (
    update(iterations)
    .where(and_(iterations.c.call_id == bindparam("key_call_id"), iterations.c.idx == bindparam("key_idx")))
    .values({column: bindparam(column) for column in _ITERATION_COLUMNS})
)


_NAMED: Final = 5
"""How many calls without usage `reprice` names."""


class _Tally:
    def __init__(self) -> None:
        self.calls = self.changed = self.skipped = self.unpriced_before = self.unpriced_after = 0
        self.cost_before = Decimal(0)
        self.cost_after = Decimal(0)
        self.versions: set[str] = set()


def _reprice_batch(
    connection: Connection,
    pricer: Pricer,
    stored: _Stored,
    batch: Sequence[SQLRow],
    tally: _Tally,
) -> None:
    ids = [call.call_id for call in batch]
    by_call: dict[str, list[SQLRow]] = {call_id: [] for call_id in ids}
    for row in connection.execute(
        select(iterations)
        .where(iterations.c.call_id.in_(ids))
        .order_by(iterations.c.call_id, iterations.c.idx)
    ):
        by_call[row.call_id].append(row)
    call_updates: list[dict[str, Any]] = []
    iteration_updates: list[dict[str, Any]] = []
    for call in batch:
        rows = by_call[call.call_id]
        if not rows or (call.iterations_count is not None and len(rows) != call.iterations_count):
            tally.skipped += 1
            continue
        when = datetime.fromtimestamp(call.start_ms / 1000, tz=timezone.utc)
        priced = pricer.price_call(_call_usage(call, rows), when)
        values = _call_values(priced, stored)
        tally.calls += 1
        tally.versions.add(priced.pricing_version)
        if call.cost_usd is not None:
            tally.cost_before += call.cost_usd
        else:
            tally.unpriced_before += 1
        new_cost = stored.read(values["cost_usd"])
        if new_cost is not None:
            tally.cost_after += new_cost
        else:
            tally.unpriced_after += 1
        changed = False
        for row, priced_iteration in zip(rows, priced.iterations, strict=True):
            iteration_values = _iteration_values(priced_iteration, stored)
            if _differs(row, iteration_values, _ITERATION_COLUMNS, stored):
                changed = True
                iteration_updates.append({**iteration_values, "key_call_id": row.call_id, "key_idx": row.idx})
        if _differs(call, values, _CALL_COLUMNS, stored):
            changed = True
            call_updates.append({**values, "key_call_id": call.call_id})
        tally.changed += changed
    if call_updates:
        connection.execute(_UPDATE_CALL, call_updates)
    if iteration_updates:
        connection.execute(_UPDATE_ITERATION, iteration_updates)


def reprice(
    engine: Engine,
    pricer: Pricer,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> RepriceResult:
    """Re-price the stored calls that started in [since, until) with `pricer`; see the module docstring.

    `engine` must be a writer engine on a database at this code's schema (see `reprice_database`)."""
    stored = _Stored(engine.url.get_backend_name())
    columns = [calls.c[name] for name in ("call_id", "start_ms", "iterations_count", *_CALL_COLUMNS)]
    columns += [calls.c[name] for name in ("response_model", "service_tier", "speed", "inference_geo")]
    columns += [calls.c[name] for name in ("provider", "region", "request_model")]
    columns.append(calls.c.web_search_requests)
    window = []
    if since is not None:
        window.append(calls.c.start_ms >= epoch_ms(since))
    if until is not None:
        window.append(calls.c.start_ms < epoch_ms(until))
    query = select(*columns).where(calls.c.priced.is_not(None), *window)  # NULL: the call carried no usage
    usageless = select(calls.c.call_id).where(calls.c.priced.is_(None), *window)
    first = usageless.order_by(calls.c.start_ms, calls.c.call_id).limit(_NAMED)
    with engine.connect() as connection:
        counting = select(func.count()).select_from(usageless.subquery())
        without_usage = connection.execute(counting).scalar_one()
        without_usage_ids = tuple(connection.execute(first).scalars())
    query = query.order_by(calls.c.start_ms, calls.c.call_id).limit(batch_size)
    tally = _Tally()
    last: tuple[int, str] | None = None
    while True:
        page = query
        if last is not None:
            last_ms, last_id = last
            page = query.where(
                or_(calls.c.start_ms > last_ms, and_(calls.c.start_ms == last_ms, calls.c.call_id > last_id))
            )
        with engine.begin() as connection:
            batch = connection.execute(page).all()
            if not batch:
                break
            _reprice_batch(connection, pricer, stored, batch, tally)
        last = (batch[-1].start_ms, batch[-1].call_id)
        if len(batch) < batch_size:
            break
    return RepriceResult(
        calls=tally.calls,
        changed=tally.changed,
        skipped=tally.skipped,
        cost_before=tally.cost_before,
        cost_after=tally.cost_after,
        unpriced_before=tally.unpriced_before,
        unpriced_after=tally.unpriced_after,
        pricing_versions=tuple(sorted(tally.versions)),
        without_usage=without_usage,
        without_usage_ids=without_usage_ids,
    )


def reprice_database(
    database_url: str | None,
    pricer: Pricer,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> RepriceResult:
    """`reprice` on the database at `database_url` (default: the library's). Raises StoreError when the
    database cannot be used (unreachable, schema not this code's). A missing SQLite file is not created:
    there is nothing to re-price."""
    if database_status(database_url) is None:
        return RepriceResult(0, 0, 0, Decimal(0), Decimal(0), 0, 0, ())
    engine = make_engine(database_url, writer=True)
    try:
        ensure_schema(engine, create=False)  # nothing to re-price in a database without a store
        return reprice(engine, pricer, since=since, until=until, batch_size=batch_size)
    except SQLAlchemyError as err:
        raise explain_error(err, engine.url) from None
    finally:
        engine.dispose()


# --- which models have a price -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """One model named by the store or by the user, and whether it has a price now."""

    model: str
    priced: bool
    source: str | None
    """What prices it (`Rates.source`), None when nothing does."""
    in_store: bool
    named: bool
    calls: int = 0
    unpriced_calls: int = 0


@dataclass(frozen=True, slots=True)
class PriceCheck:
    """The answer of `check_prices`."""

    models: tuple[ModelCheck, ...]
    database: str
    """The database looked at, password hidden."""
    database_exists: bool
    """False when there is no store yet (no SQLite file, or an empty PostgreSQL database)."""

    @property
    def unpriced(self) -> tuple[ModelCheck, ...]:
        return tuple(model for model in self.models if not model.priced)

    @property
    def repriceable_calls(self) -> int:
        """Stored calls recorded unpriced whose models all have a price now: `reprice` would price them."""
        return sum(model.unpriced_calls for model in self.models if model.priced and model.in_store)

    def to_json(self) -> JSONObject:
        """`compactobs pricing check --format json`."""
        return {
            "check": "pricing",
            "database": self.database,
            "database_exists": self.database_exists,
            "models": [
                {
                    "model": m.model,
                    "priced": m.priced,
                    "source": m.source,
                    "in_store": m.in_store,
                    "named": m.named,
                    "calls": m.calls,
                    "unpriced_calls": m.unpriced_calls,
                }
                for m in self.models
            ],
            "unpriced_models": [m.model for m in self.unpriced],
        }

    def lines(self) -> list[str]:
        """`compactobs pricing check` as text: the database, a row per model, and how to price the
        unpriced ones. Model names come from responses: escaped, so one cannot steer the terminal."""
        store = self.database if self.database_exists else f"{self.database} (no database yet)"
        lines = [f"database: {store}"]
        if not self.models:
            lines.append("no calls recorded yet: nothing to check")
        else:
            headers = ["model", "price", "stored calls", "recorded unpriced"]
            rows = [
                [escape(m.model, limit=100), m.source or "NONE", f"{m.calls:,}", f"{m.unpriced_calls:,}"]
                for m in self.models
            ]
            lines += aligned([headers, *rows], left=2)
        unpriced = self.unpriced
        if unpriced:
            lines += [
                "",
                f"{len(unpriced)} of {len(self.models)} models {'has' if len(unpriced) == 1 else 'have'} "
                "no price: "
                f"add them to a TOML file named by {PRICING_FILE_ENV} "
                f'(e.g. [models."{escape(unpriced[0].model, limit=100)}"] input = 3.0, output = 15.0, '
                "USD per million tokens)",
            ]
        if any(m.priced and m.unpriced_calls for m in self.models):
            lines.append(
                "Calls recorded without a price now have one: run `compactobs reprice` to price them."
            )
        return lines


def check_prices(
    pricer: Pricer,
    database_url: str | None,
    named: Sequence[str] = (),
    when: datetime | None = None,
) -> PriceCheck:
    """Which models seen in the store at `database_url`, and which `named` ones, `pricer` can price at
    `when` (default now). A store that does not exist yet is not created. Raises StoreError when the
    database cannot be read (unreachable, schema not this code's)."""
    when = when or datetime.now(timezone.utc)
    url = database_url or default_database_url()
    status = database_status(url)
    if status is not None and status.other_tables:
        raise StoreError(status.fix or f"{status.url} is not a compactobs store")
    exists = status is not None and status.state != "empty"
    seen: dict[str, StoredModel] = {}
    if exists:
        engine = open_database(url)
        try:
            with engine.connect() as connection:
                seen = {model.model: model for model in stored_models(connection)}
        except SQLAlchemyError as err:
            raise explain_error(err, engine.url) from None
        finally:
            engine.dispose()
    wanted = set(named)
    checks = []
    for model in sorted(seen.keys() | wanted):
        rates = pricer.rates(model, when)
        stored = seen.get(model)
        checks.append(
            ModelCheck(
                model=model,
                priced=rates is not None,
                source=rates.source if rates is not None else None,
                in_store=stored is not None,
                named=model in wanted,
                calls=stored.calls if stored else 0,
                unpriced_calls=stored.unpriced_calls if stored else 0,
            )
        )
    return PriceCheck(tuple(checks), display_url(url), exists)
