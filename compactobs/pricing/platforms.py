"""Platform terms: what Amazon Bedrock and Google Vertex AI bill on top of Anthropic's list prices.

The rule: on Bedrock and Vertex, Claude Sonnet 4.5, Haiku 4.5, Opus 4.5 and every later model bill at
list x 1.1 through regional endpoints (a Bedrock in-region id, a Vertex region) and multi-region ones (a
Bedrock geographic inference profile such as `us.` or `eu.`, the Vertex multi-regions `us` and `eu`), and
at list through global endpoints (a Bedrock `global.` profile, the Vertex `global` region). Earlier models
have no global endpoint and bill at list everywhere.

Sources: Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing, "Third-party platform
pricing": regional endpoints carry a 10% premium over global ones from the 4.5 models on). genai-prices'
AWS table shows the same (`regional.anthropic.claude-opus-4-6-v1:0` at 5.5/27.5, `global.` at 5/25), and
tests/instrument/test_platforms.py checks this rule against every Claude model in it. Its Google table
holds list prices only, silent on regional endpoints; its Azure table has no Claude model, and no source
found gives Microsoft Foundry its own Claude rates, so Foundry calls are priced at list.

One rule, applied to the first-party schedule (tiers, batch, cache multipliers and the overrides file all
follow), rather than two price tables that could drift apart.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

from compactobs.platforms import AWS_BEDROCK, GCP_VERTEX

__all__ = ["REGIONAL_PREMIUM", "premium_eligible", "regional_terms"]

REGIONAL_PREMIUM: Final = Decimal("1.1")

_PREMIUM_PROVIDERS: Final = frozenset({AWS_BEDROCK, GCP_VERTEX})
# Claude 4.5 and later.
_PREMIUM_MODELS: Final = re.compile(
    r"claude-(?:(?:opus|sonnet|haiku)-4[-.][5-9](?!\d)|(?:opus|sonnet|haiku|fable|mythos)-(?:[5-9]|[1-9]\d)(?!\d)"
    r"|mythos-preview)"
)


def regional_terms(provider: str | None, endpoint: str | None) -> tuple[bool, str | None]:
    """(whether the regional premium applies to eligible models, a note for the rate card or None)."""
    if provider not in _PREMIUM_PROVIDERS:
        return False, None
    if endpoint in ("regional", "multi-region"):
        return True, None
    if endpoint is None:
        return False, f"{provider}: endpoint not known from the model id; priced as a global endpoint (list)"
    return False, None


def premium_eligible(model_id: str) -> bool:
    """Whether the regional premium applies to this model (Claude 4.5 and later)."""
    return bool(_PREMIUM_MODELS.search(model_id.lower()))
