"""The simulator's platform routes: Amazon Bedrock, Google Vertex AI, and the `/anthropic` base path that
Microsoft Foundry and Bedrock Mantle use. Each answers like `/v1/messages` (queued replies, else the
simulated conversation), in the platform's own wire shape, so the SDK's platform clients run unchanged:

```python
import anthropic
from compactobs.testing import Simulator

with Simulator() as sim:
    bedrock = anthropic.AnthropicBedrock(
        base_url=sim.base_url, aws_region="us-east-1", aws_access_key="AKIDEXAMPLE", aws_secret_key="secret"
    )  # or api_key="..." (a Bedrock API key); SigV4 signing runs locally, nothing leaves the machine
    vertex = anthropic.AnthropicVertex(
        base_url=sim.base_url, region="us-east5", project_id="my-project", access_token="token"
    )
    foundry = anthropic.AnthropicFoundry(base_url=f"{sim.base_url}/anthropic", api_key="key")
```

**Bedrock** (`AnthropicBedrock`, which needs `anthropic[bedrock]`, that is boto3 and botocore, to sign
requests and decode streams): `POST /model/{model id}/invoke` answers JSON;
`POST /model/{model id}/invoke-with-response-stream` answers the AWS event stream
(`application/vnd.amazon.eventstream`): one `chunk` event per Messages stream event, its JSON base64 in
`bytes`, the last one (`message_stop`) carrying `amazon-bedrock-invocationMetrics`. The model comes from
the URL (the SDK moves it there), `anthropic_beta` from the body (where the SDK puts the beta header);
`anthropic_version` is dropped. A `Reply` is answered with Bedrock's `x-amzn-requestid` (`req_sim_<n>`)
instead of `request-id`; `Reply(..., cut_after_events=n)` ends the event stream after n events,
unterminated. An `ErrorReply` is answered as on `/v1/messages` (Anthropic's error body).

**Vertex** (`AnthropicVertex`; pass `access_token` and `project_id` so google-auth is never asked):
`POST [/v1]/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict` (JSON)
and `:streamRawPredict` (server-sent events, as first-party). The model comes from the URL.

**`/anthropic/v1/messages`**: Foundry's `https://{resource}.services.ai.azure.com/anthropic/` and Bedrock
Mantle's `https://bedrock-mantle.{region}.api.aws/anthropic` shape; give the client
`base_url=f"{sim.base_url}/anthropic"`.

The response's `model` is the model id the request named, as sent (a Bedrock id stays a Bedrock id).
Calls through these routes are billed by the cloud, not by Anthropic: the simulator's organisation usage
and cost reports leave them out. `sim.requests` records each request with its real path and body.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Final, TypeVar
from urllib.parse import unquote

from compactobs._types import JSON, JSONObject
from compactobs.testing._replies import Reply, stream_events

__all__ = ["PlatformRequest", "platform_request"]

_BEDROCK: Final = re.compile(r"^/model/(?P<model>[^/]+)/(?P<op>invoke|invoke-with-response-stream)$")
_VERTEX: Final = re.compile(
    r"^(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/(?P<model>[^/:]+)"
    r":(?P<op>rawPredict|streamRawPredict)$"
)
_ANTHROPIC_BASE: Final = "/anthropic"
_MESSAGES: Final = "/v1/messages"
EVENT_STREAM: Final = "application/vnd.amazon.eventstream"


@dataclass(frozen=True)
class PlatformRequest:
    """A platform request seen as the Messages request it stands for."""

    route: str
    """The first-party route it answers as (`/v1/messages`, or another `/v1/...` under `/anthropic`)."""
    body: JSONObject
    """The Messages body: the model (and, for Bedrock, `stream`) put back, platform-only fields taken out."""
    betas: tuple[str, ...] = ()
    """Betas the body carried (Bedrock's `anthropic_beta`), for the `anthropic-beta` header."""
    bedrock: bool = False
    """Answered in Bedrock's shape (`write_bedrock`)."""

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        """The request headers with the body's betas added to `anthropic-beta`."""
        if not self.betas:
            return headers
        given = [b for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
        return {**headers, "anthropic-beta": ",".join([*given, *self.betas])}


def platform_request(route: str, body: JSONObject) -> PlatformRequest | None:
    """The Messages request a platform route stands for; None for a first-party route."""
    match = _BEDROCK.match(route)
    if match is not None:
        betas = body.get("anthropic_beta")
        rest = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
        streaming = match["op"] == "invoke-with-response-stream"
        messages = {**rest, "model": unquote(match["model"]), "stream": streaming}
        beta_list = tuple(b for b in betas if isinstance(b, str)) if isinstance(betas, list) else ()
        return PlatformRequest(_MESSAGES, messages, beta_list, bedrock=True)
    match = _VERTEX.match(route)
    if match is not None:
        rest = {k: v for k, v in body.items() if k != "anthropic_version"}
        return PlatformRequest(_MESSAGES, {**rest, "model": unquote(match["model"])})
    if route.startswith(_ANTHROPIC_BASE + "/v1/"):
        return PlatformRequest(route[len(_ANTHROPIC_BASE) :], body)
    return None


def _header(name: str, value: str) -> bytes:
    encoded = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(encoded)) + encoded


def event_stream_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One message of the AWS event stream encoding: prelude (total and headers length, CRC32), string
    headers, payload, CRC32 of everything before it."""
    encoded_headers = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded_headers) + len(payload) + 4, len(encoded_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _chunk(event: Mapping[str, JSON]) -> bytes:
    data = json.dumps(event, separators=(",", ":")).encode()
    payload = json.dumps({"bytes": base64.b64encode(data).decode()}).encode()
    headers = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
    return event_stream_message(headers, payload)


def _with_invocation_metrics(event: JSONObject, body: Mapping[str, JSON]) -> JSONObject:
    usage = body.get("usage") if isinstance(body.get("usage"), Mapping) else {}
    assert isinstance(usage, Mapping)
    metrics = {
        "inputTokenCount": usage.get("input_tokens", 0),
        "outputTokenCount": usage.get("output_tokens", 0),
        "invocationLatency": 1,
        "firstByteLatency": 1,
    }
    return {**event, "amazon-bedrock-invocationMetrics": metrics}


_H = TypeVar("_H", bound=BaseHTTPRequestHandler)


def write_bedrock(
    handler: _H,
    reply: Reply,
    request_id: str,
    streaming: bool,
    head: Callable[[_H, int, dict[str, str]], bytes],
) -> None:
    """Answer a Bedrock request with `reply`: JSON, or the AWS event stream (chunked, like the SSE route)."""
    base = {"x-amzn-requestid": request_id}
    extra = {str(k).lower(): str(v) for k, v in (reply.headers or {}).items()}
    if not streaming:
        data = json.dumps(reply.body, separators=(",", ":")).encode()
        headers = {**base, "content-type": "application/json", "content-length": str(len(data)), **extra}
        if reply.cut_after_events is not None:
            data = data[: len(data) // 2]
            handler.close_connection = True
        handler.wfile.write(head(handler, 200, headers) + data)
        return
    events = stream_events(reply.body)
    if events and events[-1].get("type") == "message_stop":
        events[-1] = _with_invocation_metrics(events[-1], reply.body)
    cut = reply.cut_after_events
    if cut is not None:
        events = events[: max(cut, 0)]
        handler.close_connection = True
    headers = {**base, "content-type": EVENT_STREAM, "transfer-encoding": "chunked", **extra}
    parts = [head(handler, 200, headers)]
    for event in events:
        if event.get("type") == "ping":
            continue  # Bedrock sends no pings
        chunk = _chunk(event)
        parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    if cut is None:
        parts.append(b"0\r\n\r\n")
    handler.wfile.write(b"".join(parts))
