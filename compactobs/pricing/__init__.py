"""Pricing: usage → billed USD per iteration, from genai-prices under a user overrides file.

```python
from compactobs.pricing import default_pricer

pricer = default_pricer()                 # reads COMPACTOBS_PRICING_FILE, if set
priced = pricer.price_call(usage, when)   # usage: compactobs.usage.CallUsage; when: request time (UTC)
priced.cost_usd                           # Decimal, or None when a model is unknown (never a made-up $0)
pricer.rates("claude-opus-4-8", when, speed="fast")   # the rates in force, Decimal USD per MTok
rate_card(pricer, "claude-opus-4-8", day).to_json()  # with its source, for `compactobs pricing show`
```

(`rate_card` is in `compactobs.pricing.card`.)

The accounting rules are in `compactobs.pricing.pricer`; the overrides file format (TOML) is in
`compactobs.pricing.overrides`; what genai-prices provides, and what is added to it, in
`compactobs.pricing.catalog`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compactobs.pricing.records import PricedCall, PricedIteration, PricingError, Rates, RateTier

if TYPE_CHECKING:
    from compactobs.pricing.overrides import load_overrides
    from compactobs.pricing.pricer import PRICING_FILE_ENV, Pricer, default_pricer

_LAZY = {
    "load_overrides": "compactobs.pricing.overrides",
    "PRICING_FILE_ENV": "compactobs.pricing.pricer",
    "Pricer": "compactobs.pricing.pricer",
    "default_pricer": "compactobs.pricing.pricer",
}


def __getattr__(name: str) -> object:
    # genai-prices (and pydantic under it) take a few hundred ms to import: loaded when a price is needed,
    # not by a report that only reads stored costs (`compactobs.pricing.records`).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRICING_FILE_ENV",
    "PricedCall",
    "PricedIteration",
    "Pricer",
    "PricingError",
    "RateTier",
    "Rates",
    "default_pricer",
    "load_overrides",
]
