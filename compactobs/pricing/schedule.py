"""A source-neutral rate schedule: what genai-prices or the overrides file says for one model, date and
variant, before compactobs' own multipliers. Internal to `compactobs.pricing`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

__all__ = [
    "CACHE_DEFAULTS",
    "CLASSES",
    "HALF",
    "ClassRates",
    "Schedule",
    "complete",
    "scaled",
]

CLASSES: Final = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
"""Token classes, in the order every rate tuple uses."""

CACHE_DEFAULTS: Final = {
    "cache_read": Decimal("0.1"),
    "cache_write_5m": Decimal("1.25"),
    "cache_write_1h": Decimal("2"),
}
"""Anthropic's standard cache multipliers on the input rate, for a price list that leaves a class out."""

HALF: Final = Decimal("0.5")

ClassRates = tuple[Decimal, Decimal, Decimal, Decimal, Decimal]
"""USD per million tokens for (input, output, cache_read, cache_write_5m, cache_write_1h)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """Base rates and premium tiers (ascending `above`), in USD per million tokens."""

    model_id: str
    base: ClassRates
    tiers: tuple[tuple[int, ClassRates], ...]
    source: str
    by_overrides: bool
    variant: str
    effective_from: date | None = None
    notes: tuple[str, ...] = ()
    defaulted: frozenset[str] = frozenset()
    """Classes whose rate was derived from input by the standard multipliers (noted when used)."""
    web_search_per_1k: Decimal | None = None
    time_dependent: bool = False
    """The source has time-of-day prices: a resolution is only good for its exact timestamp."""


def complete(rates: Mapping[str, Decimal | None]) -> tuple[ClassRates, frozenset[str]] | None:
    """Fill missing cache rates from input with the standard multipliers; None if input/output is missing."""
    base_input, output = rates.get("input"), rates.get("output")
    if base_input is None or output is None:
        return None
    defaulted: set[str] = set()
    filled: dict[str, Decimal] = {"input": base_input, "output": output}
    for name, factor in CACHE_DEFAULTS.items():
        value = rates.get(name)
        if value is None:
            value = base_input * factor
            defaulted.add(name)
        filled[name] = value
    rates_tuple: ClassRates = (
        filled["input"],
        filled["output"],
        filled["cache_read"],
        filled["cache_write_5m"],
        filled["cache_write_1h"],
    )
    return rates_tuple, frozenset(defaulted)


def _map(rates: ClassRates, fn: Callable[[Decimal], Decimal]) -> ClassRates:
    return (fn(rates[0]), fn(rates[1]), fn(rates[2]), fn(rates[3]), fn(rates[4]))


def scaled(
    schedule: Schedule, factor: Decimal, *, variant: str | None = None, note: str | None = None
) -> Schedule:
    """Every token rate, base and tiers, times `factor` (web search untouched: it is never discounted)."""
    return Schedule(
        model_id=schedule.model_id,
        base=_map(schedule.base, lambda rate: rate * factor),
        tiers=tuple((above, _map(rates, lambda rate: rate * factor)) for above, rates in schedule.tiers),
        source=schedule.source,
        by_overrides=schedule.by_overrides,
        variant=variant or schedule.variant,
        effective_from=schedule.effective_from,
        notes=(*schedule.notes, note) if note else schedule.notes,
        defaulted=schedule.defaulted,
        web_search_per_1k=schedule.web_search_per_1k,
        time_dependent=schedule.time_dependent,
    )
