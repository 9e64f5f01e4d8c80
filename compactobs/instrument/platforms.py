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

from typing import TYPE_CHECKING, Final

import anthropic

from compactobs.platforms import ANTHROPIC, AWS_BEDROCK, AZURE_FOUNDRY, GCP_VERTEX

if TYPE_CHECKING:
    from compactobs._types import SDKObject

__all__ = ["CLIENT_CLASSES", "platform_of"]


def _classes(*names: str) -> tuple[type[SDKObject], ...]:
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

CLIENT_CLASSES: Final[tuple[type[SDKObject], ...]] = (
    anthropic.Anthropic,
    anthropic.AsyncAnthropic,
    *_BEDROCK,
    *_VERTEX,
    *_FOUNDRY,
    *_AWS,
    *_GOOGLE_CLOUD,
)
"""Every client class that serves the Messages API, sync and async."""


_PLATFORMS: Final[tuple[tuple[tuple[type[SDKObject], ...], str, str | None], ...]] = (
    (_BEDROCK, AWS_BEDROCK, "aws_region"),
    (_VERTEX, GCP_VERTEX, "region"),
    (_FOUNDRY, AZURE_FOUNDRY, None),
    (_AWS, ANTHROPIC, "aws_region"),
    # The SDK keeps the location it resolved (argument, environment, else `global`) privately.
    (_GOOGLE_CLOUD, ANTHROPIC, "_location"),
)
"""(classes, gen_ai.provider.name, the client attribute that holds its region)."""

_by_class: dict[type[SDKObject], tuple[str, str | None]] = {}
"""`_PLATFORMS` resolved per client class: a call's lookup is one dict read."""


def platform_of(client: object) -> tuple[str, str | None]:
    """(gen_ai.provider.name, region) of a client. Never raises."""
    try:
        cls = type(client)
        found = _by_class.get(cls)
        if found is None:
            matches = (entry[1:] for entry in _PLATFORMS if issubclass(cls, entry[0]))
            found = next(matches, (ANTHROPIC, None))
            _by_class[cls] = found
        provider, attribute = found
        region = getattr(client, attribute, None) if attribute is not None else None
        return provider, region if isinstance(region, str) and region else None
    except Exception:
        return ANTHROPIC, None
