"""The platform and region of an SDK client: Bedrock, Vertex, Foundry, or Anthropic's own API.

Every client class of the installed SDK that serves the Messages API, sync and async, is listed in
`CLIENT_CLASSES`; `instrument()` wraps the constructors of the roots among them (the others subclass
`Anthropic` / `AsyncAnthropic` and pass through theirs). The middleware sees every one of them the same
way: the SDK runs middleware before a platform client rewrites the request for its platform (Bedrock and
Vertex put the model in the URL), so the request is still `POST /v1/messages` with the model in its body.

| client (and its Async twin) | gen_ai.provider.name | cloud.region |
| --- | --- | --- |
| Anthropic | anthropic | - |
| AnthropicBedrock, AnthropicBedrockMantle | aws.bedrock | `aws_region` |
| AnthropicVertex | gcp.vertex_ai | `region` |
| AnthropicFoundry | azure.ai.foundry | - (a Foundry resource's URL names no region) |
| AnthropicAWS (Claude Platform on AWS) | anthropic | `aws_region` |
| AnthropicGoogleCloud (Claude on Google Cloud, Anthropic managed) | anthropic | its location |

The last two are Anthropic's own API served through a cloud's gateway (the SDK names them `anthropic`
too), billed at Anthropic's prices.
"""

from __future__ import annotations

from typing import Any, Final

import anthropic

from compactobs.platforms import ANTHROPIC, AWS_BEDROCK, AZURE_FOUNDRY, GCP_VERTEX

__all__ = ["CLIENT_CLASSES", "platform_of"]


def _classes(*names: str) -> tuple[type[Any], ...]:
    # An older SDK (2.10+ is supported) may lack a platform client: it is simply not there to instrument.
    found = (getattr(anthropic, name, None) for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


_BEDROCK: Final = _classes(
    "AnthropicBedrock", "AsyncAnthropicBedrock", "AnthropicBedrockMantle", "AsyncAnthropicBedrockMantle"
)
_VERTEX: Final = _classes("AnthropicVertex", "AsyncAnthropicVertex")
_FOUNDRY: Final = _classes("AnthropicFoundry", "AsyncAnthropicFoundry")
_AWS: Final = _classes("AnthropicAWS", "AsyncAnthropicAWS")
_GOOGLE_CLOUD: Final = _classes("AnthropicGoogleCloud", "AsyncAnthropicGoogleCloud")

CLIENT_CLASSES: Final[tuple[type[Any], ...]] = (
    anthropic.Anthropic,
    anthropic.AsyncAnthropic,
    *_BEDROCK,
    *_VERTEX,
    *_FOUNDRY,
    *_AWS,
    *_GOOGLE_CLOUD,
)
"""Every client class that serves the Messages API, sync and async."""


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def platform_of(client: object) -> tuple[str, str | None]:
    """(gen_ai.provider.name, region) of a client. Never raises."""
    try:
        if isinstance(client, _BEDROCK):
            return AWS_BEDROCK, _text(getattr(client, "aws_region", None))
        if isinstance(client, _VERTEX):
            return GCP_VERTEX, _text(getattr(client, "region", None))
        if isinstance(client, _FOUNDRY):
            return AZURE_FOUNDRY, None
        if isinstance(client, _AWS):
            return ANTHROPIC, _text(getattr(client, "aws_region", None))
        if isinstance(client, _GOOGLE_CLOUD):
            # The SDK keeps the location it resolved (argument, environment, else `global`) privately.
            return ANTHROPIC, _text(getattr(client, "_location", None))
    except Exception:
        pass
    return ANTHROPIC, None
