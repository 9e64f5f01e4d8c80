"""Normalise a Messages API response's usage into typed, billable per-iteration records.

The accounting rules (DESIGN.md section 3) live here as data shapes; prices live in `compactobs.pricing`.

- When `usage.iterations` is present, the bill is the sum over *every* entry: the top-level fields leave
  compaction (and advisor) entries out, so top-level and iterations are never added together.
- Without `iterations`, the top-level usage is the bill, as one `message` iteration.
- A `message` attempt declined before any output by a server-side fallback is kept, but marked
  `declined` so pricing bills it $0.

Responses are read defensively: the SDK does not validate responses unless told to, so any field can be
missing or of another type. Nothing here raises on odd input; it counts what it can and flags the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from compactobs.platforms import endpoint_of, model_of

if TYPE_CHECKING:
    from compactobs._types import JSON, OTelAttributes, SDKObject

__all__ = [
    "KNOWN_ITERATION_TYPES",
    "CallObservation",
    "CallUsage",
    "CompactionBlock",
    "IterationUsage",
    "RequestFacts",
    "StreamAccumulator",
    "TokenCounts",
    "compaction_blocks",
    "field_of",
    "normalise_message",
    "normalise_usage",
    "observe_batch_result",
    "observe_message",
    "request_facts",
]

KNOWN_ITERATION_TYPES: Final = frozenset({"message", "compaction", "advisor_message", "fallback_message"})
"""The `usage.iterations` entry types the installed SDK (2.10+) knows. Others are kept and flagged."""


_MAPPING_TYPES: dict[type, bool] = {dict: True}
"""Whether a type is a Mapping, per type: `isinstance` against the ABC costs more than the field read, and
field_of runs for every stream event and usage field."""
_MAPPING_TYPES_LIMIT: Final = 256


def _is_mapping(obj: object) -> bool:
    kind = type(obj)
    known = _MAPPING_TYPES.get(kind)
    if known is None:
        known = isinstance(obj, Mapping)
        if len(_MAPPING_TYPES) < _MAPPING_TYPES_LIMIT:
            _MAPPING_TYPES[kind] = known
    return known


def field_of(obj: object, name: str) -> SDKObject:
    """`obj[name]` for a mapping, `obj.name` for a model, else None. Never raises."""
    kind = type(obj)
    if kind is dict:  # decoded JSON and request bodies: no look-up of the type, no try
        return obj.get(name)  # type: ignore[attr-defined]
    if obj is None:
        return None
    # `_is_mapping`, inlined for a type already seen: this runs for every field of every SDK model read.
    known = _MAPPING_TYPES.get(kind)
    try:
        if known is None:
            known = _is_mapping(obj)
        if known:
            return obj.get(name)  # type: ignore[attr-defined]
        return getattr(obj, name, None)
    except Exception:
        return None


def _count(obj: object, name: str) -> int:
    """A token count: a non-negative int, else 0 (bool, float, str and negatives are not counts)."""
    value = obj.get(name) if type(obj) is dict else field_of(obj, name)
    if type(value) is int and value >= 0:
        return value
    return 0


def _text(obj: object, name: str) -> str | None:
    value = obj.get(name) if type(obj) is dict else field_of(obj, name)
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Billable token classes. `input` is uncached input only (Anthropic's `input_tokens`)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total_input(self) -> int:
        """Input including cache reads and writes: what tiers are judged on, and GenAI semconv's input."""
        return self.input + self.cache_read + self.cache_write_5m + self.cache_write_1h

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write_5m + other.cache_write_5m,
            self.cache_write_1h + other.cache_write_1h,
        )


def _token_counts(entry: object) -> TokenCounts:
    """Token classes of a usage object or an iteration entry.

    Cache writes split by `cache_creation` when it is there; without the breakdown every write is 5-minute
    (the API's default TTL). A breakdown that adds up to less than the total puts the rest in 5-minute.
    """
    uncached = _count(entry, "input_tokens")
    output = _count(entry, "output_tokens")
    cache_read = _count(entry, "cache_read_input_tokens")
    written = _count(entry, "cache_creation_input_tokens")
    breakdown = field_of(entry, "cache_creation")
    one_hour = _count(breakdown, "ephemeral_1h_input_tokens") if breakdown is not None else 0
    five_min = _count(breakdown, "ephemeral_5m_input_tokens") if breakdown is not None else 0
    if breakdown is None or five_min + one_hour == 0:
        five_min, one_hour = written, 0
    elif five_min + one_hour < written:
        five_min += written - five_min - one_hour
    return TokenCounts(uncached, output, cache_read, five_min, one_hour)


@dataclass(frozen=True, slots=True)
class IterationUsage:
    """One billed sampling step: a `usage.iterations` entry, or the whole call when it has none."""

    index: int
    type: str
    model: str | None
    """The model that served it: the entry's own `model`, else the response's."""
    tokens: TokenCounts
    known_type: bool = True
    """False for an entry type the installed SDK does not know; it is still billed, at `model`."""
    declined: bool = False
    """A `message` attempt declined before any output by a server-side fallback: kept, priced $0."""


@dataclass(frozen=True, slots=True)
class CallUsage:
    """The billed usage of one API call."""

    iterations: tuple[IterationUsage, ...]
    has_iterations: bool
    """Whether the response carried `usage.iterations` (if not, the top level is the bill)."""
    response_model: str | None = None
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    thinking_tokens: int | None = None
    """Reasoning tokens, already inside `output`: shown apart, never billed twice."""
    top_level: TokenCounts = field(default_factory=TokenCounts)
    """What the top-level fields say (compaction left out): kept to show what other tools under-report."""
    provider: str | None = None
    """Where the call ran (`gen_ai.provider.name`); None: first-party, or not known."""
    endpoint: str | None = None
    """A Bedrock or Vertex call's endpoint scope (`compactobs.platforms.endpoint_of`), which prices it."""

    @property
    def totals(self) -> TokenCounts:
        """The billed totals: the sum over every iteration."""
        uncached = output = cache_read = write_5m = write_1h = 0
        for iteration in self.iterations:
            tokens = iteration.tokens
            uncached += tokens.input
            output += tokens.output
            cache_read += tokens.cache_read
            write_5m += tokens.cache_write_5m
            write_1h += tokens.cache_write_1h
        return TokenCounts(uncached, output, cache_read, write_5m, write_1h)

    @property
    def compactions(self) -> int:
        count = 0
        for iteration in self.iterations:
            if iteration.type == "compaction":
                count += 1
        return count

    @property
    def context_tokens(self) -> int | None:
        """Context size after the call: total input of the last `message`-like iteration.

        A compaction entry reports the cost of summarising, not the context size, so it never counts here.
        """
        for iteration in reversed(self.iterations):
            if iteration.type in ("message", "fallback_message") and not iteration.declined:
                return iteration.tokens.total_input
        return None

    @property
    def unknown_types(self) -> tuple[str, ...]:
        for iteration in self.iterations:
            if not iteration.known_type:
                return tuple(sorted({i.type for i in self.iterations if not i.known_type}))
        return ()


def _model(obj: object, name: str) -> str | None:
    """A model id, as the first-party model behind a platform's id (`compactobs.platforms.model_of`)."""
    value = _text(obj, name)
    return model_of(value) if value is not None else None


def normalise_usage(usage: object, response_model: str | None) -> CallUsage:
    """Typed records from a `usage` object (Usage, BetaUsage, BetaMessageDeltaUsage or a decoded dict).
    Model ids are the first-party model's (a Bedrock or Vertex id is normalised)."""
    if response_model is not None:
        response_model = model_of(response_model)
    top_level = _token_counts(usage)
    entries = field_of(usage, "iterations")
    iterations: list[IterationUsage] = []
    has_iterations = isinstance(entries, (list, tuple)) and len(entries) > 0
    if has_iterations:
        assert isinstance(entries, (list, tuple))
        types = [_text(entry, "type") or "unknown" for entry in entries]
        fallback_served = "fallback_message" in types
        for index, (entry, kind) in enumerate(zip(entries, types, strict=True)):
            tokens = _token_counts(entry)
            declined = (
                fallback_served
                and kind == "message"
                and index < types.index("fallback_message")
                and tokens.output == 0
                and tokens.cache_write == 0
            )
            iterations.append(
                IterationUsage(
                    index=index,
                    type=kind,
                    model=_model(entry, "model") or response_model,
                    tokens=tokens,
                    known_type=kind in KNOWN_ITERATION_TYPES,
                    declined=declined,
                )
            )
    else:
        iterations.append(IterationUsage(index=0, type="message", model=response_model, tokens=top_level))

    server_tools = field_of(usage, "server_tool_use")
    details = field_of(usage, "output_tokens_details")
    thinking = field_of(details, "thinking_tokens")
    return CallUsage(
        iterations=tuple(iterations),
        has_iterations=has_iterations,
        response_model=response_model,
        service_tier=_text(usage, "service_tier"),
        speed=_text(usage, "speed"),
        inference_geo=_text(usage, "inference_geo"),
        web_search_requests=_count(server_tools, "web_search_requests"),
        web_fetch_requests=_count(server_tools, "web_fetch_requests"),
        thinking_tokens=thinking if type(thinking) is int and thinking >= 0 else None,
        top_level=top_level,
    )


def normalise_message(message: object) -> CallUsage:
    """Typed records from a Message, BetaMessage, or decoded response body. Never raises."""
    return normalise_usage(field_of(message, "usage"), _model(message, "model"))


@dataclass(frozen=True, slots=True)
class CompactionBlock:
    """A compaction content block as seen in the response: `failed` when its summary is null."""

    index: int
    failed: bool


def compaction_blocks(content: object) -> tuple[CompactionBlock, ...]:
    """The compaction blocks of a response's `content` list. Never raises."""
    if not isinstance(content, (list, tuple)):
        return ()
    blocks = []
    for index, block in enumerate(content):
        if field_of(block, "type") == "compaction":
            # A block that carries only `encrypted_content` still holds a summary.
            summary = field_of(block, "content")
            failed = not (isinstance(summary, str) and summary) and not field_of(block, "encrypted_content")
            blocks.append(CompactionBlock(index=index, failed=failed))
    return tuple(blocks)


class StreamAccumulator:
    """Builds a call's usage from its stream events as the caller reads them, without keeping the body.

    `message_delta` usage is cumulative: each one overwrites, never adds, and a field it leaves out keeps
    its `message_start` value. `iterations` is replaced wholesale. Text deltas are ignored.
    """

    __slots__ = (
        "_compaction_open",
        "_usage",
        "compactions",
        "error_type",
        "first_event_ns",
        "message_id",
        "model",
        "saw_delta",
        "saw_stop",
        "stop_reason",
    )

    def __init__(self) -> None:
        self._usage: dict[str, JSON] = {}
        self.model: str | None = None
        self.message_id: str | None = None
        self.stop_reason: str | None = None
        self.saw_delta = False
        self.saw_stop = False
        self.first_event_ns: int | None = None
        self.compactions: list[CompactionBlock] = []
        self._compaction_open: dict[int, bool] = {}
        self.error_type: str | None = None
        """The `error` event's `error.type` (`overloaded_error`, ...), when the stream ended in one."""

    def event(self, event: object) -> None:
        """Take one stream event (a typed model or a decoded dict). Never raises."""
        # An odd event must not break the caller's stream. (try/except, not contextlib.suppress: this runs
        # for every event the caller reads.)
        try:
            self._event(event)
        except Exception:
            return

    def _merge_usage(self, usage: object, *, start: bool) -> None:
        if usage is None:
            return
        fields: Iterable[str] = (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
            "cache_creation",
            "iterations",
            "server_tool_use",
            "service_tier",
            "speed",
            "inference_geo",
            "output_tokens_details",
        )
        for name in fields:
            value = field_of(usage, name)
            if value is not None:
                self._usage[name] = value
        if start:
            # message_start's output_tokens is a placeholder; only message_delta makes it final.
            self._usage.setdefault("output_tokens", 0)

    def _event(self, event: object) -> None:
        kind = field_of(event, "type")
        if kind == "content_block_delta":
            # The bulk of a stream: text deltas, skipped after one look at the delta's type.
            delta = field_of(event, "delta")
            if field_of(delta, "type") == "compaction_delta":
                index = field_of(event, "index")
                key = index if type(index) is int else -1
                summary = field_of(delta, "content")
                if (isinstance(summary, str) and summary) or field_of(delta, "encrypted_content"):
                    self._compaction_open[key] = True
        elif kind == "message_start":
            message = field_of(event, "message")
            self.model = _model(message, "model")
            self.message_id = _text(message, "id")
            self._merge_usage(field_of(message, "usage"), start=True)
        elif kind == "message_delta":
            self.saw_delta = True
            self.stop_reason = _text(field_of(event, "delta"), "stop_reason") or self.stop_reason
            self._merge_usage(field_of(event, "usage"), start=False)
        elif kind == "content_block_start":
            block = field_of(event, "content_block")
            if field_of(block, "type") == "compaction":
                index = field_of(event, "index")
                summary = field_of(block, "content")
                # On-demand compaction arrives whole here; threshold compaction fills in with a delta.
                self._compaction_open[index if type(index) is int else -1] = bool(
                    (isinstance(summary, str) and summary) or field_of(block, "encrypted_content")
                )
        elif kind == "content_block_stop":
            index = field_of(event, "index")
            key = index if type(index) is int else -1
            if key in self._compaction_open:
                self.compactions.append(CompactionBlock(index=key, failed=not self._compaction_open.pop(key)))
        elif kind == "message_stop":
            self.saw_stop = True
        elif kind == "error":
            self.error_type = error_type_of(event) or "error"

    def compaction_blocks(self) -> tuple[CompactionBlock, ...]:
        """Compaction blocks seen so far, including one the stream was cut inside of."""
        still_open = [CompactionBlock(index=i, failed=not ok) for i, ok in self._compaction_open.items()]
        return (*self.compactions, *still_open)

    def usage(self) -> CallUsage:
        """The usage seen so far. Before `message_delta`, output is unknown and counted as 0."""
        return normalise_usage(self._usage, self.model)

    def usage_fields(self) -> dict[str, JSON]:
        """A copy of the usage fields seen so far, for `normalise_usage` (with `model`) later, elsewhere."""
        return dict(self._usage)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the request asked for, read off its JSON body and headers (no prompt text is kept)."""

    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    betas: tuple[str, ...] = ()
    compaction_trigger: int | None = None
    """The `compact_20260112` edit's input-token trigger (150,000 when the edit leaves it out)."""
    pause_after_compaction: bool | None = None
    on_demand_compaction: bool = False
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None


DEFAULT_COMPACTION_TRIGGER: Final = 150_000
"""The API's default trigger for `compact_20260112` (its param docstring: 150000 input tokens)."""


def request_facts(body: object, beta_header: str | None) -> RequestFacts:
    """Read the facts of a Messages request body. Never raises."""
    trigger: int | None = None
    pause: bool | None = None
    edits = field_of(field_of(body, "context_management"), "edits")
    if isinstance(edits, (list, tuple)):
        for edit in edits:
            if field_of(edit, "type") == "compact_20260112":
                value = field_of(field_of(edit, "trigger"), "value")
                trigger = value if type(value) is int else DEFAULT_COMPACTION_TRIGGER
                pause = field_of(edit, "pause_after_compaction") is True
    max_tokens = field_of(body, "max_tokens")
    betas = (
        tuple(b.strip() for b in beta_header.split(",") if b.strip()) if isinstance(beta_header, str) else ()
    )
    return RequestFacts(
        model=_text(body, "model"),
        stream=field_of(body, "stream") is True,
        max_tokens=max_tokens if type(max_tokens) is int else None,
        betas=betas,
        compaction_trigger=trigger,
        pause_after_compaction=pause,
        on_demand_compaction=field_of(field_of(body, "compaction"), "type") == "summarize",
        service_tier=_text(body, "service_tier"),
        speed=_text(body, "speed"),
        inference_geo=_text(body, "inference_geo"),
    )


@dataclass(slots=True)
class CallObservation:
    """Everything compactobs learned about one API call, across all its HTTP attempts."""

    request: RequestFacts
    start_ns: int
    end_ns: int = 0
    attempts: int = 1
    status_code: int | None = None
    error_type: str | None = None
    request_id: str | None = None
    response_id: str | None = None
    response_model: str | None = None
    stop_reason: str | None = None
    usage: CallUsage | None = None
    compactions: tuple[CompactionBlock, ...] = ()
    time_to_first_chunk_s: float | None = None
    stream_end: str | None = None
    conversation_id: str | None = None
    server_address: str | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    budget_max_compactions: int | None = None
    body: bytes | None = None
    """The JSON body of a non-streamed response, not yet read: the caller's thread keeps only the bytes and
    the recording thread reads them (`complete`)."""
    stream: tuple[StreamAccumulator, list[object]] | None = None
    """A stream's accumulator and the usage-carrying events the caller read but nobody accumulated yet:
    `complete` feeds them in and takes the result (`take_stream`), off the caller's path."""
    request_body: object = None
    """The request's JSON body, not yet read: `complete` reads `request` (and, with `conversation_of`, the
    conversation id) from it on the recording thread. The SDK builds it for the request from the call's
    parameters (new dicts and lists) and never changes it afterwards, so reading it later reads what was
    sent; reading it never raises (`request_facts` and the fingerprint guard every step)."""
    beta_header: str | None = None
    """The request's `anthropic-beta` header, for `request_facts` with `request_body`."""
    conversation_of: Callable[[object], str | None] | None = None
    """How to derive the conversation id from `request_body` when nothing named one (a fingerprint)."""
    priced: Any = None
    """The call's PricedCall when the guard priced it (a guarded conversation's call): not priced again."""
    events: list[tuple[str, OTelAttributes]] | None = None
    """Span events (name, attributes) for the call span, e.g. the guard's breach."""
    guarded: Any = None
    """A guarded conversation's call: its `compactobs.guard.ReturnedCall`, settled before it is recorded."""
    batch_id: str | None = None
    """Message Batches: the batch a result was read from (then the observation is that result's call)."""
    custom_id: str | None = None
    """Message Batches: the result's `custom_id`, read from `batch_result` by `complete`."""
    batch_result: bytes | None = None
    """Message Batches: the result's JSON line, not yet read (`complete` reads it, on the recording
    thread)."""
    provider: str | None = None
    """The client's platform (`gen_ai.provider.name`), when the middleware knows its client."""
    source_cost_usd: float | None = None
    """A collected call's cost as its source reported it (Claude Code's `cost_usd`): kept beside the price."""
    region: str | None = None
    """The region the client targets (Bedrock, Vertex, Claude on AWS or Google Cloud); None elsewhere."""
    tags: tuple[tuple[str, str], ...] = ()
    """The call's tags (key, value), already bounded (`compactobs.untrusted.bounded_tags`)."""
    context_after: int | None = None
    """The context a compaction left, when its source says so (Claude Code's `post_tokens`): the call's
    context tokens, instead of the usage's."""
    guard_seen: tuple[Decimal, bool] | None = None
    """A guarded call: the conversation's billed USD the guard knew when it let the request go, and whether
    that included other processes' spend."""

    @property
    def failed_compactions(self) -> int:
        return sum(1 for block in self.compactions if block.failed)

    def complete(self) -> None:
        """Do, once, what the caller's thread left for the recording thread: read the request's facts from
        `request_body`, and the response's `body` (one that is not JSON leaves the call without usage:
        recorded, unpriced) or a stream's events (`stream`). Never raises."""
        request_body, self.request_body = self.request_body, None
        if request_body is not None:
            self.request = request_facts(request_body, self.beta_header)
            derive, self.conversation_of = self.conversation_of, None
            if self.conversation_id is None and derive is not None:
                self.conversation_id = derive(request_body)
        result, self.batch_result = self.batch_result, None
        if result is not None:
            observe_batch_result(self, result)
        body, self.body = self.body, None
        stream, self.stream = self.stream, None
        if stream is not None:
            accumulator, events = stream
            for event in events:
                accumulator.event(event)
            self.take_stream(accumulator)
        if body is not None:
            try:
                message = json.loads(body)
            except (ValueError, RecursionError):
                message = None
            if message is not None:
                observe_message(self, message)
        if self.provider is not None and self.usage is not None and self.usage.provider is None:
            # The platform's terms travel with the usage, which is what pricing reads (here, in the guard
            # and in `compactobs reprice`).
            endpoint = endpoint_of(self.provider, self.region, self.request.model)
            self.usage = replace(self.usage, provider=self.provider, endpoint=endpoint)

    def take_stream(self, accumulator: StreamAccumulator) -> None:
        """What a stream said: its message, usage and compactions; a stream read to its end without
        `message_stop` is an error (`incomplete_stream`): the server cut it short."""
        self.response_id = accumulator.message_id
        self.response_model = accumulator.model
        self.stop_reason = accumulator.stop_reason
        self.compactions = accumulator.compaction_blocks()
        if self.error_type is None and accumulator.error_type is not None:
            self.error_type = accumulator.error_type  # the byte scan saw the `error` event the SDK raised on
        if self.error_type is None and self.stream_end == "read" and not accumulator.saw_stop:
            self.error_type = "incomplete_stream"
        if self.error_type is not None:
            # An error call carries no cost: message_start's input and placeholder output are not a bill.
            # Its compaction blocks stay (counted, flagged `errored`), so loops and failures stay visible.
            return
        if accumulator.model is not None or accumulator.saw_delta:
            self.usage = normalise_usage(accumulator.usage_fields(), accumulator.model)


_ERROR_TYPE_CHARACTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def error_type_of(error: object) -> str | None:
    """The `error.type` of an Anthropic error body or `error` stream event (`{"type": "error", "error":
    {"type": "overloaded_error", ...}}`), when it is a plain identifier of at most 64 characters: a value
    from the server that becomes a span attribute and a store column is never taken as it came."""
    kind = field_of(field_of(error, "error"), "type")
    if isinstance(kind, str) and 0 < len(kind) <= 64 and set(kind) <= _ERROR_TYPE_CHARACTERS:
        return kind
    return None


def observe_message(observation: CallObservation, message: object) -> None:
    """Fill in what a non-streamed response (a Message model or its decoded JSON) says. Never raises."""
    observation.usage = normalise_message(message)
    response_id = field_of(message, "id")
    observation.response_id = response_id if isinstance(response_id, str) else None
    observation.response_model = observation.usage.response_model
    stop_reason = field_of(message, "stop_reason")
    observation.stop_reason = stop_reason if isinstance(stop_reason, str) else None
    observation.compactions = compaction_blocks(field_of(message, "content"))


BATCH_SERVICE_TIER: Final = "batch"


def observe_batch_result(observation: CallObservation, line: bytes) -> None:
    """Fill in what one Message Batches result line says. Never raises.

    `succeeded`: its message, billed at batch rates whatever its usage says (every result of a batch is a
    batch request). `errored`: an error call (`error_type` the API error's type, else `errored`), as are
    `expired` and `canceled` (`error_type` that word): none carries usage, so none is priced.
    """
    try:
        decoded = json.loads(line)
    except (ValueError, RecursionError):
        observation.error_type = "unreadable_result"
        return
    observation.custom_id = _text(decoded, "custom_id")
    result = field_of(decoded, "result")
    kind = _text(result, "type")
    if kind == "succeeded":
        observe_message(observation, field_of(result, "message"))
        usage = observation.usage
        if usage is not None and usage.service_tier != BATCH_SERVICE_TIER:
            observation.usage = replace(usage, service_tier=BATCH_SERVICE_TIER)
    elif kind == "errored":
        observation.error_type = error_type_of(field_of(result, "error")) or kind
    else:
        # `error.type` is stored and exported: a result type the API does not document is not taken as it came
        observation.error_type = kind if kind in ("expired", "canceled") else "unknown_result"
