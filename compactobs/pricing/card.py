"""The rate card of one model on one date, as `compactobs pricing show` prints it.

```python
from compactobs.pricing import default_pricer
from compactobs.pricing.card import rate_card

card = rate_card(default_pricer(), "claude-opus-4-8", date(2026, 11, 20), speed="fast")
card.rates.input          # Decimal("10"): USD per million tokens
card.source.describe()    # "genai-prices 0.2.3", or "overrides file /path/prices.toml (sha256 1a2b...)"
card.to_json()            # plain JSON types, money rounded to 6 decimal places
card.lines()              # the card as `compactobs pricing show` prints it
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Final, Literal

from compactobs._types import JSONObject
from compactobs._words import aligned
from compactobs.pricing.pricer import PRICING_FILE_ENV, Pricer, _utc_day
from compactobs.pricing.records import PricingError, Rates, to_json_number

__all__ = ["PriceSource", "RateCard", "rate_card", "unknown_model_error", "usd_rate"]


@dataclass(frozen=True, slots=True)
class PriceSource:
    """Where a rate card's prices come from."""

    kind: Literal["genai-prices", "overrides"]
    name: str
    """As `Rates.source` says it: "genai-prices 0.2.3" (plus the data's date when auto-updated), or
    "overrides 1a2b3c4d"."""
    genai_prices_version: str
    """The installed genai-prices (consulted for every model the overrides file does not match)."""
    path: str | None = None
    """The overrides file, when it priced the model."""
    sha256: str | None = None

    def describe(self) -> str:
        if self.kind == "overrides":
            return f"overrides file {self.path} (sha256 {self.sha256})"
        return self.name

    def to_json(self) -> JSONObject:
        return {
            "kind": self.kind,
            "name": self.name,
            "genai_prices_version": self.genai_prices_version,
            "path": self.path,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class RateCard:
    """The rates in force for one model on one day, for the variants asked about."""

    day: date
    service_tier: str | None
    speed: str | None
    inference_geo: str | None
    rates: Rates
    """Base rates (no tier crossed); `rates.tiers` lists the premium tiers."""
    source: PriceSource

    def to_json(self) -> JSONObject:
        rates = self.rates
        return {
            "model": rates.model,
            "model_id": rates.model_id,
            "date": self.day.isoformat(),
            "service_tier": self.service_tier,
            "speed": self.speed,
            "inference_geo": self.inference_geo,
            "variant": rates.variant,
            "unit": "USD per million tokens",
            "input": to_json_number(rates.input),
            "output": to_json_number(rates.output),
            "cache_read": to_json_number(rates.cache_read),
            "cache_write_5m": to_json_number(rates.cache_write_5m),
            "cache_write_1h": to_json_number(rates.cache_write_1h),
            "tiers": [
                {
                    "above_input_tokens": tier.above,
                    "input": to_json_number(tier.input),
                    "output": to_json_number(tier.output),
                    "cache_read": to_json_number(tier.cache_read),
                    "cache_write_5m": to_json_number(tier.cache_write_5m),
                    "cache_write_1h": to_json_number(tier.cache_write_1h),
                }
                for tier in rates.tiers
            ],
            "web_search_per_1k": to_json_number(rates.web_search_per_1k),
            "multiplier": to_json_number(rates.multiplier),
            "source": self.source.to_json(),
            "effective_from": rates.effective_from.isoformat() if rates.effective_from else None,
            "notes": list(rates.notes),
        }

    def lines(self) -> list[str]:
        """The card as text: the model and day, its variants and source, the rates by token class (one
        column per tier), web search, and the source's notes."""
        rates = self.rates
        matched = "" if rates.model_id == rates.model else f" (priced as {rates.model_id})"
        multiplier = f", x{rates.multiplier} on every token rate" if rates.multiplier != 1 else ""
        effective = f"{rates.effective_from:%Y-%m-%d}" if rates.effective_from else "not dated by the source"
        lines = [
            f"{rates.model}{matched} on {self.day:%Y-%m-%d}",
            f"variants:       service tier {self.service_tier}, speed {self.speed}, "
            f"inference geo {self.inference_geo}",
            f"price list:     {rates.variant}{multiplier}",
            f"source:         {self.source.describe()}",
            f"in force since: {effective}",
            "",
        ]
        headers = ["USD per million tokens", "base"] + [f"input > {tier.above:,}" for tier in rates.tiers]
        rows = [
            [label, usd_rate(getattr(rates, name)), *(usd_rate(getattr(tier, name)) for tier in rates.tiers)]
            for label, name in (
                ("input", "input"),
                ("output", "output"),
                ("cache read", "cache_read"),
                ("cache write 5m", "cache_write_5m"),
                ("cache write 1h", "cache_write_1h"),
            )
        ]
        lines += aligned([headers, *rows], left=1)
        if rates.tiers:
            lines.append(
                "A tier bills every token of a request whose total input (cache included) exceeds it."
            )
        lines += ["", f"web search:     {usd_rate(rates.web_search_per_1k)} per 1,000 searches"]
        lines += [f"note: {note}" for note in rates.notes]
        return lines


def usd_rate(value: Decimal) -> str:
    """A USD rate as printed: at least 2 decimals, never rounded (3.125 stays 3.125)."""
    whole, _, fraction = f"{value.normalize():f}".partition(".")
    return f"${int(whole):,}.{fraction.ljust(2, '0')}"


def unknown_model_error(pricer: Pricer, model: str) -> PricingError:
    """The one-line error for a model no source prices, saying how to add a price."""
    where = f"genai-prices {pricer.genai_prices_version}"
    if pricer.overrides is not None:
        where += f" or the overrides file {pricer.overrides.path}"
    return PricingError(
        f"no price for model {model!r} in {where}: add one to a TOML file named by {PRICING_FILE_ENV}, "
        f'e.g. [models."{model}"] input = 3.0, output = 15.0 (USD per million tokens)'
    )


CLAUDE_LAUNCH: Final = date(2023, 3, 14)
"""The day Anthropic's API first served Claude: no Claude model had a price before it."""
_SNAPSHOT: Final = re.compile(r"[-@](20\d{2})(\d{2})(\d{2})(?=$|-v\d)")
"""A dated model id's snapshot: `claude-sonnet-4-5-20250929`, Vertex `@20250929`, Bedrock `-20250929-v1:0`."""


def _refuse_before_release(model: str, day: date) -> None:
    """Raise PricingError for a day the model did not exist yet: before Claude's launch, or before the
    snapshot date its id carries. genai-prices dates no release, so an undated id is priced from then on."""
    if day < CLAUDE_LAUNCH:
        raise PricingError(
            f"no price for {model!r} on {day:%Y-%m-%d}: Anthropic's API served no Claude model before "
            f"{CLAUDE_LAUNCH:%Y-%m-%d}; pass a later --date"
        )
    found = _SNAPSHOT.search(model)
    if found is None:
        return
    try:
        snapshot = date(*(int(part) for part in found.groups()))
    except ValueError:
        return  # eight digits that are no date: not a snapshot
    if day < snapshot:
        raise PricingError(
            f"no price for {model!r} on {day:%Y-%m-%d}: it is the snapshot of {snapshot:%Y-%m-%d} and did "
            "not exist before; pass a later --date"
        )


def rate_card(
    pricer: Pricer,
    model: str,
    day: date | datetime,
    *,
    service_tier: str | None = None,
    speed: str | None = None,
    inference_geo: str | None = None,
) -> RateCard:
    """The rates in force for `model` on `day` (a date is read as its start, UTC).

    Raises `PricingError` (one line, saying how to add a price) when neither genai-prices nor the
    overrides file prices the model."""
    when = day if isinstance(day, datetime) else datetime.combine(day, time(0), tzinfo=timezone.utc)
    _refuse_before_release(model, _utc_day(when))
    rates = pricer.rates(model, when, service_tier=service_tier, speed=speed, inference_geo=inference_geo)
    if rates is None:
        raise unknown_model_error(pricer, model)
    overrides = pricer.overrides
    if rates.by_overrides and overrides is not None:
        source = PriceSource(
            "overrides", rates.source, pricer.genai_prices_version, overrides.path, overrides.sha256
        )
    else:
        source = PriceSource("genai-prices", rates.source, pricer.genai_prices_version)
    return RateCard(_utc_day(when), service_tier, speed, inference_geo, rates, source)
