"""compactobs' SDK middleware: one observation per API call, across all its HTTP attempts.

The SDK runs middleware once per HTTP attempt, inside its retry loop. The attempts of one call share the
request's idempotency key, and run one after another in the same thread or task, so a ContextVar keyed by
that key carries the call from attempt to attempt. Whether an error attempt is the last one follows the
SDK's documented retry policy (`x-should-retry`, 408/409/429/5xx, connection errors, `max_retries`).

Never raises into the caller, never changes the request or what the SDK returns: every step that could
fail is guarded, and the response object is passed through as it came.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING

import anthropic
from anthropic import APIConnectionError
from opentelemetry import context as otel_context
from opentelemetry import trace

from compactobs import guard as guard_module
from compactobs.instrument import state
from compactobs.instrument.batches import observe_batch_response
from compactobs.instrument.conversation import current_conversation, fingerprint
from compactobs.instrument.platforms import platform_of
from compactobs.instrument.streams import StreamObserver, observe_body
from compactobs.semconv import CONVERSATION_ID
from compactobs.usage import CallObservation, RequestFacts, error_type_of, observe_message

if TYPE_CHECKING:
    import httpx2
    from anthropic._middleware import AsyncCallNext, CallNext
    from anthropic._request import APIRequest
    from anthropic._response import APIResponse, AsyncAPIResponse

    from compactobs._types import SDKObject
    from compactobs.recorder import Telemetry

__all__ = ["Middleware"]

log = logging.getLogger("compactobs")

_SDK_SCOPE_PREFIX = "com.anthropic.sdk"
_UNREAD = RequestFacts()
"""A call's request facts until the recording thread reads them from its body."""


class _Call:
    """One API call in flight: its observation and where its span goes."""

    __slots__ = ("guarded", "key", "observation", "parent", "under_sdk_span")

    def __init__(
        self, key: str, observation: CallObservation, parent: otel_context.Context, under_sdk: bool
    ) -> None:
        self.key = key
        self.observation = observation
        self.parent = parent
        self.under_sdk_span = under_sdk
        self.guarded: tuple[guard_module.Guard, str, guard_module.GuardPolicy] | None = None
        """The guard, conversation id and policy of a guarded conversation's call."""


# The call whose error attempt the SDK is about to retry, keyed by idempotency key.
_retrying: ContextVar[_Call | None] = ContextVar("compactobs_retrying_call", default=None)


def _is_messages_create(request: APIRequest) -> bool:
    url = request.url
    return request.method.lower() == "post" and (url == "/v1/messages" or url.startswith("/v1/messages?"))


def _sdk_would_retry(response: httpx2.Response) -> bool:
    """The SDK's retry policy for an error response (anthropic's README, `_should_retry`)."""
    header = response.headers.get("x-should-retry")
    if header == "true":
        return True
    if header == "false":
        return False
    status = response.status_code
    return status in (408, 409, 429) or status >= 500


def _sdk_parent(span: trace.Span) -> bool:
    """Whether the current span is the SDK's own call span (its tracing is on for this client)."""
    scope = getattr(span, "instrumentation_scope", None)
    name = getattr(scope, "name", None)
    return isinstance(name, str) and name.startswith(_SDK_SCOPE_PREFIX) and span.is_recording()


class Middleware(anthropic.Middleware):
    """Records every Messages call of the client it is given to: `Anthropic(middleware=[Middleware()])`.

    Works for sync and async clients of every platform (`AnthropicBedrock(middleware=[Middleware()])`,
    Vertex, Foundry, ...), every call style (create, stream, create(stream=True), beta and GA, the tool
    runner), and Message Batches results as they are read (`compactobs.instrument.batches`).
    `compactobs.instrument()` adds one to every client for you.
    """

    def __init__(
        self, *, max_retries: int | None = None, conversation_id: str | None = None, _auto: bool = False
    ) -> None:
        """`max_retries`: the client's, if it is not the SDK default (only the client knows it)."""
        self._auto = _auto
        self._max_retries = max_retries
        self._client_conversation_id = conversation_id
        self._client_ref: weakref.ReferenceType[SDKObject] | None = None

    def bind(self, client: SDKObject) -> None:
        """Learn the client's retry budget and SDK conversation id (used by `instrument()`)."""
        self._client_ref = weakref.ref(client)
        try:
            self._client_conversation_id = client.open_telemetry.get("conversation_id")
        except Exception:
            self._client_conversation_id = None

    # -- the SDK's middleware interface --------------------------------------------------------------

    def handle(self, request: APIRequest, call_next: CallNext) -> APIResponse[SDKObject]:
        call = self._begin(request)
        if call is None:
            response = call_next(request)
            self._other_response(request, response)
            return response
        if call.guarded is not None:
            request = self._guard_request(call, request)  # may raise the guard's error, before sending
        try:
            response = call_next(request)
        except BaseException as err:
            self._raised(call, request, err)
            raise
        self._returned(call, request, response)
        return response

    async def handle_async(
        self, request: APIRequest, call_next: AsyncCallNext
    ) -> AsyncAPIResponse[SDKObject]:
        call = self._begin(request)
        if call is None:
            async_response = await call_next(request)
            self._other_response(request, async_response)
            return async_response
        if call.guarded is not None:
            guard, conversation_id, policy = call.guarded
            await guard.settled(conversation_id, policy)  # without blocking the loop on another thread
            request = self._guard_request(call, request, wait=False)  # may raise the guard's error
        try:
            response = await call_next(request)
        except BaseException as err:
            self._raised(call, request, err)
            raise
        self._returned(call, request, response)
        return response

    # -- one attempt -----------------------------------------------------------------------------------

    def _begin(self, request: APIRequest) -> _Call | None:
        """The call this attempt belongs to, or None when compactobs does not observe it. Never raises."""
        try:
            if (self._auto and not state.active) or not _is_messages_create(request):
                return None
            key = request.options.idempotency_key or ""
            retrying = _retrying.get()
            if retrying is not None and retrying.key == key and request.retries_taken > 0:
                retrying.observation.attempts = request.retries_taken + 1
                return retrying
            if state.get_telemetry() is None:
                return None
            headers: SDKObject = request.headers
            # The body is read on the recording thread (`CallObservation.complete`): here, only references.
            observation = CallObservation(
                request=_UNREAD, start_ns=time.time_ns(), attempts=request.retries_taken + 1
            )
            observation.request_body = request.json
            beta = headers.get("anthropic-beta") if hasattr(headers, "get") else None
            observation.beta_header = beta if isinstance(beta, str) else None
            parent = otel_context.get_current()
            current_span = trace.get_current_span(parent)
            under_sdk = _sdk_parent(current_span)
            conversation = current_conversation()
            if conversation is not None:
                observation.conversation_id = conversation.id
                observation.budget_usd = conversation.budget_usd
                observation.budget_tokens = conversation.budget_tokens
                observation.budget_max_compactions = conversation.max_compactions
            else:
                sdk_conversation = self._client_conversation_id
                if sdk_conversation is None and under_sdk:
                    attributes = getattr(current_span, "attributes", None) or {}
                    sdk_conversation = attributes.get(CONVERSATION_ID)
                if isinstance(sdk_conversation, str) and sdk_conversation:
                    observation.conversation_id = sdk_conversation
                else:
                    observation.conversation_of = fingerprint
            call = _Call(key, observation, parent, under_sdk)
            guard = guard_module.installed()
            own_tags = conversation.tags if conversation is not None else ()
            observation.tags = guard.tags_for(own_tags) if guard is not None else own_tags
            own = conversation.guard if conversation is not None else None
            if guard is not None and (own is not None or guard.watches_all):
                self._guard_call(guard, call, own)
            return call
        except Exception:
            log.debug("compactobs could not start observing a call", exc_info=True)
            return None

    def _other_response(self, request: APIRequest, response: SDKObject) -> None:
        """A request that is no Messages call: Message Batches results are calls too. Never raises."""
        if self._auto and not state.active:
            return
        observe_batch_response(request, response)

    # -- the runtime guard (compactobs.guard) ------------------------------------------------------------

    @staticmethod
    def _guard_call(guard: guard_module.Guard, call: _Call, own: guard_module.GuardPolicy | None) -> None:
        """Mark the call of a guarded conversation. Never raises."""
        try:
            observation = call.observation
            if observation.conversation_id is None and observation.conversation_of is not None:
                # A policy may match a fingerprinted conversation: it is needed now, not on the recorder.
                observation.conversation_id = observation.conversation_of(observation.request_body)
                observation.conversation_of = None
            conversation_id = observation.conversation_id
            policy = guard.policy_for(conversation_id, own)
            if policy is not None and conversation_id is not None:
                call.guarded = (guard, conversation_id, policy)
        except Exception:
            log.debug("compactobs could not look up a guard policy", exc_info=True)

    @staticmethod
    def _guard_request(call: _Call, request: APIRequest, *, wait: bool = True) -> APIRequest:
        """The request to send: as it is, or a copy with `pause_after_compaction: true` when the conversation
        is pausing. Raises the guard's error (on_breach="raise") before anything is sent; nothing else."""
        assert call.guarded is not None
        guard, conversation_id, policy = call.guarded
        first = request.retries_taken == 0
        try:
            verdict = guard.before_request(conversation_id, policy, first_attempt=first, wait=wait)
        except guard_module.GuardError:
            if not first:  # never stops a call already sent (before_request only raises on first attempts)
                return request
            _retrying.set(None)
            raise
        call.observation.guard_seen = (verdict.seen_usd, verdict.complete)
        if verdict.breaches:  # crossed by other processes' calls: reported on this process's next call
            call.observation.events = [guard_module.breach_event(breach) for breach in verdict.breaches]
        if not verdict.pausing:
            return request
        try:
            body = guard_module.with_pause(request.json)
            if body is None:
                if first and request.json is not None:
                    log.debug("compactobs guard: %r has no threshold compaction to pause", conversation_id)
                return request
            # The SDK's APIRequest is treated as immutable: `copy` gives the attempt a body of its own.
            paused = request.copy(body=body)
            call.observation.request_body = paused.json
            return paused
        except Exception:
            log.debug("compactobs guard: could not add pause_after_compaction", exc_info=True)
            return request

    def _remaining_retries(self, request: APIRequest) -> int:
        """Attempts the SDK may still make: the request's own `max_retries`, else its client's (learned from
        the responses, which know their client; a connection error brings none, so the last client seen
        answers), else the constructor's value, else the SDK default."""
        max_retries = request.max_retries
        if not isinstance(max_retries, int):
            client = self._client_ref() if self._client_ref is not None else None
            client_retries = getattr(client, "max_retries", None)
            if isinstance(client_retries, int):
                max_retries = client_retries
            elif self._max_retries is not None:
                max_retries = self._max_retries
            else:
                max_retries = anthropic.DEFAULT_MAX_RETRIES
        return max_retries - request.retries_taken

    def _raised(self, call: _Call, request: APIRequest, error: BaseException) -> None:
        """An attempt that raised: retried (connection errors) or the call's end. Never raises."""
        try:
            if isinstance(error, APIConnectionError) and self._remaining_retries(request) > 0:
                _retrying.set(call)
                return
            _retrying.set(None)
            observation = call.observation
            status = getattr(getattr(error, "response", None), "status_code", None)
            observation.status_code = status if isinstance(status, int) else None
            observation.error_type = str(status) if isinstance(status, int) else type(error).__name__
            self._finish(call)
        except Exception:
            log.debug("compactobs could not record a failed call", exc_info=True)

    def _returned(self, call: _Call, request: APIRequest, response: SDKObject) -> None:
        """An attempt that got an HTTP response. Never raises."""
        try:
            http = response.http_response
            client = getattr(response, "_client", None)
            if client is not None and (self._client_ref is None or self._client_ref() is not client):
                # One middleware may serve several clients (`with_options` copies pass it on).
                self._client_ref = weakref.ref(client)
            observation = call.observation
            observation.status_code = http.status_code
            # Read here, not on the recording thread: a header and the host cost about a microsecond, while
            # keeping the httpx response for the recorder kept some 75 container objects per call alive
            # through the batching window, which set off a garbage collection every few calls.
            try:
                # Bedrock answers with its own request id header.
                headers = http.headers
                observation.request_id = (
                    headers.get("request-id") or headers.get("x-amzn-requestid") or observation.request_id
                )
                if observation.server_address is None:
                    observation.server_address = http.request.url.host
            except Exception:  # an odd response object: the call is recorded without them
                pass
            if not http.is_success:
                if self._remaining_retries(request) > 0 and _sdk_would_retry(http):
                    _retrying.set(call)
                    return
                _retrying.set(None)
                observation.error_type = str(http.status_code)
                self._finish(call)
                return
            _retrying.set(None)
            if request.stream:
                observe_body(
                    http,
                    StreamObserver(lambda observer, how, err: self._stream_done(call, observer, how, err)),
                )
            elif http.is_stream_consumed:
                # The body is already buffered: keep its bytes (immutable, unlike the parsed model the caller
                # gets) and let the recording thread read them, off the caller's path.
                observation.body = http.content
                self._finish(call)
            else:
                # A raw streaming response of a non-streamed call: the caller reads the JSON body itself.
                observer = StreamObserver(
                    lambda obs, how, err: self._body_done(call, obs, how, err), json_body=True
                )
                observe_body(http, observer)
        except Exception:
            log.debug("compactobs could not observe a response", exc_info=True)

    # -- the end of a call -------------------------------------------------------------------------------

    def _message_done(self, call: _Call, message: object) -> None:
        observe_message(call.observation, message)
        self._finish(call)

    def _body_done(
        self, call: _Call, observer: StreamObserver, how: str, error: BaseException | None
    ) -> None:
        parts = observer.body_parts or []
        try:
            message = json.loads(b"".join(parts)) if how == "read" and error is None else None
        except ValueError:
            message = None
        if message is None:
            call.observation.stream_end = how
            call.observation.error_type = type(error).__name__ if error is not None else None
            self._finish(call)
            return
        self._message_done(call, message)

    def _stream_done(
        self, call: _Call, observer: StreamObserver, how: str, error: BaseException | None
    ) -> None:
        observation = call.observation
        observation.stream_end = how
        if observer.first_event_ns is not None:
            observation.time_to_first_chunk_s = (observer.first_event_ns - observation.start_ns) / 1e9
        if error is not None:
            # A stream's `error` event reaches the SDK's observer as the APIStatusError it raises, whose body
            # is the event: its `error.type` (`overloaded_error`) says more than the class name.
            observation.error_type = error_type_of(getattr(error, "body", None)) or type(error).__name__
        # Accumulated on the recording thread (`CallObservation.complete`), off the caller's path.
        observation.stream = (observer.accumulator, observer.events)
        self._finish(call)

    def _finish(self, call: _Call) -> None:
        observation = call.observation
        observation.end_ns = time.time_ns()
        client = self._client_ref() if self._client_ref is not None else None
        if client is not None:
            observation.provider, observation.region = platform_of(client)
        telemetry: Telemetry | None = state.get_telemetry()
        if call.guarded is not None:
            # Priced and counted off this thread: by the recording thread, which prices it before recording
            # it, or by the conversation's next request when that needs the figures first (pause, raise).
            guard, conversation_id, policy = call.guarded
            pricer = telemetry.pricer if telemetry is not None else None
            returned = guard.returned(conversation_id, policy, observation, pricer)
            observation.guarded = returned
            if returned is not None and telemetry is None:
                returned.settle()  # nobody would record it: count it now
        if telemetry is not None:
            telemetry.record(observation, call.parent, call.under_sdk_span)
