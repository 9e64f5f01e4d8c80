"""Where a call ran: the platform (`gen_ai.provider.name`), its region, and the model behind a platform id.

A leaf module (it imports nothing of compactobs): the instrumentation, usage, pricing and the store's
re-pricing all read platform facts through these few functions, so each rule is written once.

- Model ids are normalised to the first-party model: Bedrock `anthropic.claude-opus-4-6-v1:0` and its
  inference profiles (`us.`, `eu.`, `apac.`, `global.`, ..., and ARNs that end in one) become
  `claude-opus-4-6`; Vertex `claude-sonnet-4-5@20250929` becomes `claude-sonnet-4-5-20250929`, and
  `claude-3-5-sonnet-v2@20241022` the first-party `claude-3-5-sonnet-20241022`. Any other id
  (first-party ids, Foundry deployment names) is kept as it is.
- The endpoint scope decides the price on Bedrock and Vertex (see `compactobs.pricing.platforms`): on
  Bedrock the request's model id says it (a `global.` profile: global; another geographic profile:
  multi-region; a bare `anthropic.` id: in-region); on Vertex the client's region does (`global`; the
  multi-regions `us` and `eu`; any other region).
"""

from __future__ import annotations

import functools
import re
from typing import Final, Literal

__all__ = [
    "ANTHROPIC",
    "AWS_BEDROCK",
    "AZURE_FOUNDRY",
    "GCP_VERTEX",
    "Endpoint",
    "endpoint_of",
    "model_of",
]

# gen_ai.provider.name values (OpenTelemetry GenAI conventions' well-known providers).
ANTHROPIC: Final = "anthropic"
AWS_BEDROCK: Final = "aws.bedrock"
GCP_VERTEX: Final = "gcp.vertex_ai"
AZURE_FOUNDRY: Final = "azure.ai.foundry"

Endpoint = Literal["global", "multi-region", "regional"]

# `[arn:...:inference-profile/|foundation-model/]` `[geo.]` `anthropic.` model `[-vN[:M]]`
_BEDROCK_ID: Final = re.compile(
    r"^(?:arn:[^/]*/)?(?:(?P<geo>[a-z]{2,6}(?:-[a-z]+)?)\.)?anthropic\.(?P<model>claude-[a-z0-9.-]+?)"
    r"(?:-v\d+(?::\d+)?)?$"
)
_VERTEX_ID: Final = re.compile(r"^(?P<model>claude-[a-z0-9.-]+?)(?:-v\d+)?@(?P<date>\d{8})$")
_VERTEX_MULTI_REGIONS: Final = frozenset({"us", "eu"})


@functools.lru_cache(maxsize=512)
def model_of(model_id: str) -> str:
    """The first-party model id behind a platform's model id; any other id unchanged. Never raises."""
    if "anthropic." in model_id:
        match = _BEDROCK_ID.match(model_id)
        if match is not None:
            return match["model"]
    elif "@" in model_id:
        match = _VERTEX_ID.match(model_id)
        if match is not None:
            return f"{match['model']}-{match['date']}"
    return model_id


def endpoint_of(provider: str | None, region: str | None, request_model: str | None) -> Endpoint | None:
    """The endpoint scope of a Bedrock or Vertex call; None elsewhere, or when the id does not say (an
    application inference profile's ARN names no model)."""
    if provider == AWS_BEDROCK:
        match = _BEDROCK_ID.match(request_model or "")
        if match is None:
            return None
        geo = match["geo"]
        return "regional" if geo is None else "global" if geo == "global" else "multi-region"
    if provider == GCP_VERTEX and region:
        if region == "global":
            return "global"
        return "multi-region" if region in _VERTEX_MULTI_REGIONS else "regional"
    return None
