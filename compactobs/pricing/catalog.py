"""Read one model's rates out of genai-prices' Anthropic table for a date and variant.

How genai-prices models Anthropic (0.2.3), and what is done here about it:

- Rates are USD per million tokens (`input_mtok`, `output_mtok`, `cache_read_mtok`, `cache_write_mtok`
  = the 5-minute write, `cache_write_1h_mtok`), as `Decimal`; web search is `web_searches_kcount`, USD per
  1,000. A model's `prices` is one `ModelPrice` or a list of `ConditionalPrice`s with start dates, the
  last active one winning (e.g. the >200K tier of Opus/Sonnet 4.6 ends on 2026-03-13).
- `TieredPrices` are "cliff" tiers: once the request's total input (genai-prices' `input_tokens`, which
  includes cache reads and writes) is *greater than* a tier's start, every token of that class bills at
  the tier rate. That is Anthropic's whole-request rule; it is kept here, but judged per iteration.
- `price_variants` select partial price lists by request context: `{"processing": "batch"}` (batch
  variants exist only from 2026-10-14; before that genai-prices silently returns standard prices) and
  `{"speed": "fast"}`. There is no variant for US-only inference (`inference_geo`).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from genai_prices import data_snapshot, types

from compactobs.pricing.schedule import CLASSES, HALF, ClassRates, Schedule, complete, scaled

__all__ = ["genai_schedule", "lookup_model"]

_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "output": ("output_mtok",),
    "cache_read": ("cache_read_mtok",),
    # genai-prices calls the 5-minute write `cache_write_mtok`; prefer an explicit 5m key should one appear.
    "cache_write_5m": ("cache_write_5m_mtok", "cache_write_mtok"),
    "cache_write_1h": ("cache_write_1h_mtok",),
}

_BATCH: dict[str, str] = {"processing": "batch"}
_FAST: dict[str, str] = {"speed": "fast"}


def lookup_model(snapshot: data_snapshot.DataSnapshot, model_ref: str) -> types.ModelInfo | None:
    """genai-prices' own matching (it accepts dated ids such as `claude-sonnet-4-5-20250929`)."""
    try:
        return snapshot.find_provider_model(model_ref, None, "anthropic", None)[1]
    except LookupError:
        return None


def _price_value(model_price: types.ModelPrice, name: str) -> object:
    for key in _PRICE_KEYS[name]:
        value = getattr(model_price, key, None)
        if value is not None:
            return value
    return None


def _rate_at(value: object, total_input: int) -> Decimal | None:
    """A class's rate for a request with `total_input` tokens, by genai-prices' rule (`>` the start)."""
    if isinstance(value, types.TieredPrices):
        rate = value.base
        for tier in reversed(value.tiers):
            if total_input > tier.start:
                rate = tier.price
                break
        return rate
    return value if isinstance(value, Decimal) else None


def _rates_from(
    model_price: types.ModelPrice,
) -> tuple[ClassRates, tuple[tuple[int, ClassRates], ...], frozenset[str]] | None:
    values = {name: _price_value(model_price, name) for name in CLASSES}
    # Classes may tier at different thresholds: take every threshold, and each class's rate just above it.
    thresholds = sorted(
        {
            tier.start
            for value in values.values()
            if isinstance(value, types.TieredPrices)
            for tier in value.tiers
        }
    )
    base = complete({name: _rate_at(value, 0) for name, value in values.items()})
    if base is None:
        return None
    tiers = []
    for start in thresholds:
        tier = complete({name: _rate_at(value, start + 1) for name, value in values.items()})
        if tier is not None:
            tiers.append((start, tier[0]))
    return base[0], tuple(tiers), base[1]


def _active_variant(model: types.ModelInfo, when: dict[str, str], at: datetime) -> types.PriceVariant | None:
    for variant in model.price_variants or ():
        if variant.when == when and (variant.constraint is None or variant.constraint.active(at)):
            return variant
    return None


def _standard_start(model: types.ModelInfo, at: datetime) -> date | None:
    if isinstance(model.prices, types.ModelPrice):
        return None
    for conditional in reversed(model.prices):
        if conditional.constraint is None or conditional.constraint.active(at):
            constraint = conditional.constraint
            return constraint.start_date if isinstance(constraint, types.StartDateConstraint) else None
    return None


def _time_dependent(model: types.ModelInfo) -> bool:
    constraints = [variant.constraint for variant in model.price_variants or ()]
    if not isinstance(model.prices, types.ModelPrice):
        constraints.extend(conditional.constraint for conditional in model.prices)
    return any(isinstance(constraint, types.TimeOfDateConstraint) for constraint in constraints)


def genai_schedule(
    model: types.ModelInfo, at: datetime, *, batch: bool, fast: bool, source: str
) -> Schedule | None:
    """The model's schedule at `at`; None if genai-prices has no input/output price for it.

    Batch without a genai-prices batch price for the date is 50% of every standard token rate: the
    documented discount, with the cache multipliers stacking on the discounted input. Fast without a
    fast price is standard: the API runs and bills such models at standard speed.
    """
    fast_variant = _active_variant(model, _FAST, at) if fast else None
    batch_variant = _active_variant(model, _BATCH, at) if batch and fast_variant is None else None
    chosen = fast_variant or batch_variant
    model_price = model.get_prices(at, chosen.when if chosen is not None else None)
    resolved = _rates_from(model_price)
    if resolved is None:
        return None
    base, tiers, defaulted = resolved

    starts = [_standard_start(model, at)]
    if chosen is not None and isinstance(chosen.constraint, types.StartDateConstraint):
        starts.append(chosen.constraint.start_date)
    known_starts = [start for start in starts if start is not None]
    web_search = getattr(model.get_prices(at), "web_searches_kcount", None)

    notes: list[str] = []
    if fast and fast_variant is None:
        notes.append(f"fast mode: {source} has no fast price for {model.id}; billed at standard rates")
    schedule = Schedule(
        model_id=model.id,
        base=base,
        tiers=tiers,
        source=source,
        by_overrides=False,
        variant="fast" if fast_variant is not None else "batch" if batch_variant is not None else "standard",
        effective_from=max(known_starts) if known_starts else None,
        notes=tuple(notes),
        defaulted=defaulted,
        web_search_per_1k=web_search if isinstance(web_search, Decimal) else None,
        time_dependent=_time_dependent(model),
    )
    if batch and fast_variant is not None:
        return scaled(
            schedule,
            HALF,
            variant="fast+batch",
            note="fast with batch is not offered by the API; fast rates halved",
        )
    if batch and batch_variant is None:
        return scaled(
            schedule,
            HALF,
            variant="batch",
            note=f"batch: {source} has no batch price for {model.id} on {at.date()}; 50% of standard",
        )
    return schedule
