"""The values pricing hands out: rate cards and priced calls. Money is `Decimal` throughout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Final

from compactobs.errors import UserError

__all__ = ["PricedCall", "PricedIteration", "PricingError", "RateTier", "Rates", "to_json_number"]

_SIX_DP: Final = Decimal("0.000001")


class PricingError(UserError, ValueError):
    """A pricing configuration problem (e.g. a bad overrides file). The message is one line."""


@dataclass(frozen=True, slots=True)
class RateTier:
    """Rates, in USD per million tokens, that bill *every* token of a request whose total input
    (uncached + cache read + cache write) exceeds `above`."""

    above: int
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal


@dataclass(frozen=True, slots=True)
class Rates:
    """The rates in force for one model, date and variant, in USD per million tokens.

    `input` .. `cache_write_1h` are the rates for the `total_input_tokens` asked about (the base rates
    when that is 0); `tiers` is the full list of premium tiers, with variants and multipliers applied.
    """

    model: str
    """The model id as asked."""
    model_id: str
    """What it matched: the genai-prices model id, or the overrides file's model key."""
    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    tier_above: int | None
    """The tier threshold crossed by `total_input_tokens`, None for base rates."""
    tiers: tuple[RateTier, ...]
    source: str
    """E.g. "genai-prices 0.2.3" or "overrides 1a2b3c4d"."""
    effective_from: date | None
    """The start date of the price (or variant) in force, when the source dates it."""
    variant: str
    """"standard", "batch", "fast" or "fast+batch": the price list the rates were taken from."""
    multiplier: Decimal
    """Applied on top of every token rate: 1.1 for US-only inference on Claude 4.6 and later, else 1."""
    web_search_per_1k: Decimal
    """USD per 1,000 web searches (never discounted or multiplied)."""
    notes: tuple[str, ...] = ()
    by_overrides: bool = False
    """Whether the overrides file priced the model (else genai-prices did)."""


@dataclass(frozen=True, slots=True)
class PricedIteration:
    """The cost of one `usage.iterations` entry (or of a call without them)."""

    cost_usd: Decimal | None
    """None when the iteration could not be priced (unknown model): never a made-up $0."""
    input_usd: Decimal
    output_usd: Decimal
    cache_read_usd: Decimal
    cache_write_5m_usd: Decimal
    cache_write_1h_usd: Decimal
    priced: bool
    model: str | None
    source: str
    note: str | None = None
    tier_above: int | None = None
    """The tier threshold this iteration's total input crossed, None at base rates."""


@dataclass(frozen=True, slots=True)
class PricedCall:
    """The billed cost of one API call: the sum over its iterations plus server-tool fees."""

    cost_usd: Decimal | None
    """None if any billable iteration is unpriced."""
    iterations: tuple[PricedIteration, ...]
    """In the same order as `CallUsage.iterations`."""
    server_tools_usd: Decimal
    input_usd: Decimal
    """Component totals below are over the priced iterations only."""
    output_usd: Decimal
    cache_read_usd: Decimal
    cache_write_5m_usd: Decimal
    cache_write_1h_usd: Decimal
    priced: bool
    pricing_version: str
    """What priced it, e.g. "genai-prices==0.2.3" or "genai-prices==0.2.3+overrides:1a2b3c4d"."""
    unpriced_models: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def to_json_number(value: Decimal | int | float | None) -> int | float | None:
    """A number for JSON: ints as they are; money and ratios rounded half-even to 6 decimal places
    (never -0.0); None stays None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    exact = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not exact.is_finite():
        return None
    rounded = float(exact.quantize(_SIX_DP, rounding=ROUND_HALF_EVEN))
    return 0.0 if rounded == 0 else rounded
