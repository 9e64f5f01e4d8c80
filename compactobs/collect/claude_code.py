"""Claude Code's OpenTelemetry log events as compactobs calls, recorded by compactobs' own recorder.

Claude Code (`CLAUDE_CODE_ENABLE_TELEMETRY=1`, `OTEL_LOGS_EXPORTER=otlp`) sends one `api_request` event per
API call, with its model, token counts by class, `request_id`, `session.id`, `query_source` and its own
`cost_usd`; `api_error` for a call that failed. Each becomes a `CallObservation`, which the same
`Telemetry` recorder as in-process recording prices (genai-prices, the overrides file) and turns into call
and iteration spans; those go to the store through the collector. So a Claude Code call is priced by the
same rules as an application's.

- service `claude-code` (the event's resource names it), conversation = `session.id`;
- a `query_source=compact` call (Claude Code summarising its context) is billed as one `compaction`
  iteration, so compaction spend and `report anomalies` count it like a server-side compaction;
- a `compaction` event (trigger auto or manual, `pre_tokens`, `post_tokens`, `success`) is that compaction's
  outcome: put on the session's last `query_source=compact` call before it, as its trigger (`pre_tokens`:
  the context it compacted at) and its context after (`post_tokens`), failed when `success` is false, so
  the loop rule of `report anomalies` (rules.py: a compaction leaving >= 80% of its trigger) judges it.
  That call may have come in an earlier batch (this process remembers each session's last one): it is sent
  again with its outcome, and the store replaces the copy it holds (`compactobs.store.writer.supersede`),
  so the compaction is counted once. A compaction event with no such call (a compaction that failed before
  its call; a call this process never saw) is a compaction of its own, of $0 and no tokens, keyed as the
  importer keys a transcript's `compact_boundary` (`compaction_key`), so the two paths store it once;
- ids: derived from the request id (else the session and the event's sequence number), so an event sent
  twice, or a call both collected and imported from a transcript (`call_key`), is stored once;
- tags (`compactobs.tag.*`, `--by tag:KEY`): the event's attribution, `agent.name` as `agent`,
  `skill.name` as `skill`, `plugin.name` as `plugin`, `mcp_server.name` as `mcp_server`, `mcp_tool.name`
  as `mcp_tool`, and its `user.*` attributes (`user.id`, `user.email`, `user.account_uuid`...) under their
  own names;
- no text: prompts and responses are never read from the events, even when Claude Code sends them.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from compactobs import semconv as t
from compactobs.collect.decode import LogRecord
from compactobs.pricing.pricer import Pricer, default_pricer
from compactobs.recorder import Telemetry
from compactobs.untrusted import bounded_tags
from compactobs.usage import CallObservation, CompactionBlock, RequestFacts, normalise_usage

__all__ = [
    "ATTRIBUTION_TAGS",
    "COMPACTION_KEY_PREFIX",
    "SERVICE",
    "CallRecorder",
    "ClaudeCodeEvents",
    "call_key",
    "compaction_key",
    "compaction_observation",
    "event_kind",
    "event_tags",
]

SERVICE: Final = t.SERVICE_CLAUDE_CODE
SCOPE: Final = "com.anthropic.claude_code.events"
API_REQUEST: Final = "api_request"
API_ERROR: Final = "api_error"
COMPACTION: Final = "compaction"
COMPACTION_KEY_PREFIX: Final = "compaction\x00"
COMPACT_SOURCE: Final = "compact"
ATTRIBUTION_TAGS: Final = {
    "agent.name": "agent",
    "skill.name": "skill",
    "plugin.name": "plugin",
    "mcp_server.name": "mcp_server",
    "mcp_tool.name": "mcp_tool",
}
"""Claude Code's attribution attributes on `api_request` (and `api_error`) and the tag each becomes."""
USER_PREFIX: Final = "user."
REMEMBERED_SESSIONS: Final = 10_000
"""Sessions whose last compact call `ClaudeCodeEvents` remembers for a `compaction` event of a later batch."""


def event_tags(attributes: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The tags of a Claude Code event's call: its attribution and `user.*` attributes (see the module),
    bounded as every tag is."""
    pairs = [(tag, attributes.get(name)) for name, tag in ATTRIBUTION_TAGS.items()]
    pairs += [(key, value) for key, value in attributes.items() if key.startswith(USER_PREFIX)]
    return tuple(bounded_tags(pairs).items())


def event_kind(record: LogRecord) -> str | None:
    """`api_request`, `api_error` or another Claude Code event's name; None for another program's record."""
    name = record.event_name.removeprefix("claude_code.")
    if record.scope == SCOPE or record.resource.get("service.name") == SERVICE or record.event_name != name:
        return name
    return None


def call_key(request_id: str | None, session_id: str | None, sequence: object) -> str:
    """The key all of a call's span ids derive from: the API's request id when there is one."""
    if request_id:
        return f"request\x00{request_id}"
    return f"event\x00{session_id}\x00{sequence}"


def compaction_key(session_id: str | None, trigger: str, pre_tokens: int, post_tokens: int | None) -> str:
    """The key of a compaction Claude Code reports without its call (a `compaction` event, a transcript's
    `compact_boundary`): the session, the trigger and the context before and after, which both carry."""
    return f"{COMPACTION_KEY_PREFIX}{session_id}\x00{trigger}\x00{pre_tokens}\x00{post_tokens}"


def compaction_observation(
    session_id: str | None,
    at_ns: int,
    trigger: str,
    pre_tokens: int,
    post_tokens: int | None,
    success: bool,
    tags: tuple[tuple[str, str], ...] = (),
    model: str | None = None,
) -> CallObservation:
    """A compaction seen without its call: one `compaction` iteration of no tokens ($0 at the session's
    `model`, unpriced when it is not known: its spend, if any, is its call's), its trigger the context it
    compacted at, its context after `post_tokens`."""
    tokens = {"input_tokens": 0, "output_tokens": 0}
    usage = normalise_usage({**tokens, "iterations": [{"type": "compaction", **tokens}]}, model)
    return CallObservation(
        request=RequestFacts(model=model, compaction_trigger=pre_tokens or None),
        response_model=model,
        start_ns=at_ns,
        end_ns=at_ns,
        usage=usage,
        compactions=() if success else (CompactionBlock(index=0, failed=True),),
        conversation_id=session_id,
        provider="anthropic",
        status_code=200,
        tags=tags,
        context_after=post_tokens,
    )


def _digest(key: str, part: int) -> tuple[int, int]:
    digest = hashlib.blake2b(f"claude-code\x00{key}\x00{part}".encode(), digest_size=24).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:], "big") or 1


class _KeyedIds(IdGenerator):
    """Ids from a key set for the thread: the call span's trace and span id, then one span id per iteration,
    in the order the recorder starts them. Without a key: random."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._random = RandomIdGenerator()

    def key(self, key: str | None) -> None:
        self._local.key, self._local.part = key, 0

    def generate_trace_id(self) -> int:
        key = getattr(self._local, "key", None)
        return _digest(key, 0)[0] if key is not None else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        key = getattr(self._local, "key", None)
        if key is None:
            return self._random.generate_span_id()
        part = self._local.part
        self._local.part = part + 1
        return _digest(key, part)[1]


class _Capture(SpanProcessor):
    """Keeps the spans ended on this thread, for the collector to store as one batch."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> None:
        self._local.spans = []

    def take(self) -> list[ReadableSpan]:
        spans: list[ReadableSpan] = self._local.spans
        self._local.spans = []
        return spans

    def on_end(self, span: ReadableSpan) -> None:
        self._local.spans.append(span)


def _int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float, as JSON may carry
        return 0
    return max(number, 0)


def _compaction_facts(attributes: Mapping[str, Any]) -> tuple[str, int, int | None, bool]:
    """(trigger, pre tokens, post tokens or None, success) of a `compaction` event (values are strings)."""
    trigger = attributes.get("trigger")
    post = attributes.get("post_tokens")
    return (
        trigger if trigger in ("auto", "manual") else "unknown",
        _int(attributes.get("pre_tokens")),
        None if post in (None, "") else _int(post),
        str(attributes.get("success")).lower() != "false",
    )


def _time_ns(record: LogRecord) -> int:
    stamp = record.attributes.get("event.timestamp")
    if isinstance(stamp, str):
        try:
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1_000_000) * 1000
        except ValueError:
            pass
    return record.time_unix_nano


class CallRecorder:
    """Observations to call and iteration spans through compactobs' own recorder and pricer (default: the
    overrides file named by COMPACTOBS_PRICING_FILE over genai-prices), each call's ids derived from its
    key (`call_key`). Thread-safe. Shared by `collect` and `import claude-code`, so a call both paths see
    gets the same span ids, and the store keeps it once."""

    def __init__(self, pricer: Pricer | None = None) -> None:
        self._ids = _KeyedIds()
        self._capture = _Capture()
        provider = TracerProvider(resource=Resource({"service.name": SERVICE}), id_generator=self._ids)
        provider.add_span_processor(self._capture)
        self._telemetry = Telemetry(provider, metrics.NoOpMeterProvider(), pricer or default_pricer())
        self._telemetry.close()  # record on the calling thread: the spans are wanted now, not later

    def spans(self, calls: Iterable[tuple[str, CallObservation]]) -> list[ReadableSpan]:
        """The spans of each (key, observation), in order."""
        self._capture.start()
        for key, observation in calls:
            self._ids.key(key)
            try:
                self._telemetry.record(observation, None, False)
            finally:
                self._ids.key(None)
        return self._capture.take()


class ClaudeCodeEvents:
    """Turns Claude Code's events into compactobs' spans (see the module). Thread-safe."""

    def __init__(self, pricer: Pricer | None = None, remembered: int = REMEMBERED_SESSIONS) -> None:
        self._recorder = CallRecorder(pricer)
        self._lock = threading.Lock()
        self._compacting: OrderedDict[object, tuple[str, CallObservation]] = OrderedDict()
        """Per session (the `remembered` most recent), its last `query_source=compact` call not yet given
        an outcome, with its key: a `compaction` event in a later batch is that call's outcome."""
        self._remembered = remembered

    def spans(self, records: Sequence[LogRecord]) -> tuple[list[ReadableSpan], int, int]:
        """(spans, calls, records not kept): the call and iteration spans of the records' API calls. Other
        Claude Code events (prompts, tool results...) and other records are not kept. A compaction whose call
        came in an earlier batch is that call again, with its outcome: the store keeps the fuller copy
        (`compactobs.store.writer.supersede`)."""
        with self._lock:
            calls, kept = self._calls(records)
        return self._recorder.spans(calls), len(calls), len(records) - kept

    def _calls(self, records: Sequence[LogRecord]) -> tuple[list[tuple[str, CallObservation]], int]:
        calls: list[tuple[str, CallObservation]] = []
        in_batch: set[int] = set()
        """This batch's observations (ids): given an outcome in place; an earlier batch's is sent again."""
        models: dict[object, str] = {}
        """Per session, the model of its last call in this batch."""
        kept = 0
        for record in records:
            kind = event_kind(record)
            attributes = record.attributes
            session = attributes.get("session.id")
            if kind == COMPACTION:
                kept += 1
                outcome = _compaction_facts(attributes)
                waiting = self._compacting.pop(session, None)
                if waiting is not None:
                    # One outcome per compaction: the session's last compact call takes it.
                    key, call = waiting
                    earlier = id(call) not in in_batch
                    if earlier:  # another thread may be recording it now: the outcome goes on a copy
                        call = copy.copy(call)
                    call.request = replace(call.request, compaction_trigger=outcome[1] or None)
                    call.context_after = outcome[2]
                    if not outcome[3]:
                        call.compactions = (CompactionBlock(index=0, failed=True),)
                    if earlier:
                        calls.append((key, call))
                    continue
                key = compaction_key(session if isinstance(session, str) else None, *outcome[:3])
                at = _time_ns(record)
                duration_ms = _int(attributes.get("duration_ms"))
                calls.append(
                    (
                        key,
                        compaction_observation(
                            session if isinstance(session, str) and session else None,
                            max(at - duration_ms * 1_000_000, 0),
                            *outcome,
                            tags=event_tags(attributes),
                            model=models.get(session),
                        ),
                    )
                )
                continue
            if kind not in (API_REQUEST, API_ERROR):
                continue
            kept += 1
            observation = self.observation(record, kind)
            key = call_key(observation.request_id, session, attributes.get("event.sequence"))
            calls.append((key, observation))
            in_batch.add(id(observation))
            if observation.request.model is not None:
                models[session] = observation.request.model
            if kind == API_REQUEST and attributes.get("query_source") == COMPACT_SOURCE:
                self._compacting.pop(session, None)
                self._compacting[session] = (key, observation)
                while len(self._compacting) > self._remembered:
                    self._compacting.popitem(last=False)
        return calls, kept

    @staticmethod
    def observation(record: LogRecord, kind: str) -> CallObservation:
        """The call an `api_request` or `api_error` event describes. Reads counts and ids only."""
        attributes = record.attributes
        model = attributes.get("model")
        model = model if isinstance(model, str) and model else None
        end_ns = _time_ns(record)
        duration_ms = _int(attributes.get("duration_ms"))
        request_id = attributes.get("request_id")
        session = attributes.get("session.id")
        observation = CallObservation(
            request=RequestFacts(model=model),
            start_ns=max(end_ns - duration_ms * 1_000_000, 0),
            end_ns=end_ns,
            request_id=request_id if isinstance(request_id, str) and request_id else None,
            response_model=model,
            conversation_id=session if isinstance(session, str) and session else None,
            provider="anthropic",
            tags=event_tags(attributes),
        )
        if kind == API_ERROR:
            status = attributes.get("status_code")
            observation.status_code = _int(status) or None
            error = attributes.get("error")
            observation.error_type = (
                str(status)
                if status not in (None, "", "undefined")
                else ("claude_code_api_error" if not isinstance(error, str) else error[:100])
            )
            observation.attempts = max(_int(attributes.get("attempt")), 1)
            return observation
        tokens = {
            "input_tokens": _int(attributes.get("input_tokens")),
            "output_tokens": _int(attributes.get("output_tokens")),
            "cache_read_input_tokens": _int(attributes.get("cache_read_tokens")),
            "cache_creation_input_tokens": _int(attributes.get("cache_creation_tokens")),
        }
        usage: dict[str, Any] = dict(tokens)
        if attributes.get("query_source") == COMPACT_SOURCE:
            # Claude Code's own compaction: the whole call is compaction spend.
            usage = {"input_tokens": 0, "output_tokens": 0, "iterations": [{"type": "compaction", **tokens}]}
        if attributes.get("speed") == "fast":
            usage["speed"] = "fast"
        observation.usage = normalise_usage(usage, model)
        cost = attributes.get("cost_usd")
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            observation.source_cost_usd = float(cost)
        observation.status_code = 200
        return observation
