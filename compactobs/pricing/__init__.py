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

from compactobs.pricing.overrides import load_overrides
from compactobs.pricing.pricer import PRICING_FILE_ENV, Pricer, default_pricer
from compactobs.pricing.records import PricedCall, PricedIteration, PricingError, Rates, RateTier

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
