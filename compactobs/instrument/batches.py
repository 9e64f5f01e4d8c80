"""Message Batches results: one call per result, recorded as the caller reads the results.

`messages.batches.results(batch_id)` (GA and beta, sync and async) retrieves the batch, then GETs its
`results_url`: a JSON Lines body that the SDK decodes as the caller iterates. compactobs' middleware sees
both requests. The batch's record gives the results their time (its `ended_at`: a result carries no
timestamp, and compactobs never makes a request of its own to learn one); the results body is wrapped so
that each complete line becomes a CallObservation, handed to the recording thread, which decodes it there.
Only the line being read is kept, never the body (a batch can hold 100,000 results), and only lines that
arrive are recorded: a caller that stops reading early leaves the rest unrecorded.

Never raises into the caller, never changes the request or what the SDK returns.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context

from compactobs import guard as guard_module
from compactobs.instrument import state
from compactobs.instrument.streams import observe_body
from compactobs.usage import CallObservation, RequestFacts, field_of

if TYPE_CHECKING:
    from anthropic._request import APIRequest

    from compactobs._types import SDKObject
    from compactobs.recorder import Telemetry

__all__ = ["ResultLines", "observe_batch_response"]

log = logging.getLogger("compactobs")

_RESULTS_PATH = re.compile(r"/messages/batches/([^/]+)/results$")
_BATCH_PATH = re.compile(r"/messages/batches/([^/]+)$")
_NO_REQUEST = RequestFacts()
"""A result's request is not in its result line: its call has no request facts."""

_retrieved: ContextVar[tuple[str, int] | None] = ContextVar("compactobs_retrieved_batch", default=None)
"""The batch this thread or task last retrieved, with its `ended_at` (ns since the epoch): the SDK's
`results()` retrieves the batch just before it reads the results, in the same thread or task."""


class ResultLines:
    """Splits a results body into lines as the caller reads it, and records each line as a call."""

    __slots__ = ("_at_ns", "_batch_id", "_ended", "_parent", "_partial", "_tags", "_telemetry", "begun")

    def __init__(
        self, batch_id: str, at_ns: int | None, parent: otel_context.Context, telemetry: Telemetry
    ) -> None:
        self.begun = False  # no SDK events for a JSON Lines body: the bytes always come to `chunk`
        self._batch_id = batch_id
        self._at_ns = at_ns
        self._parent = parent
        self._telemetry = telemetry
        self._partial: list[bytes] = []
        """The line being read, in the pieces it came in."""
        self._ended = False
        guard = guard_module.installed()
        self._tags = guard.tags_for(()) if guard is not None else ()
        """The service's tags (its guard policy's), on every result: a result has no conversation's."""

    def chunk(self, chunk: bytes) -> None:
        """Never raises."""
        try:
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if start < len(chunk):
                        self._partial.append(chunk[start:])
                    return
                piece = chunk[start:end]
                if self._partial:
                    self._partial.append(piece)
                    piece = b"".join(self._partial)
                    self._partial.clear()
                self._line(piece)
                start = end + 1
        except Exception:
            log.debug("compactobs could not read a batch results chunk", exc_info=True)

    def end(self, how: str, error: BaseException | None = None) -> None:
        """The body ended: a last line without a newline counts when the body was read to its end."""
        if self._ended:
            return
        self._ended = True
        try:
            if how == "read" and self._partial:
                self._line(b"".join(self._partial))
            self._partial.clear()
        except Exception:
            log.debug("compactobs could not finish a batch results body", exc_info=True)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        at = self._at_ns if self._at_ns is not None else time.time_ns()
        observation = CallObservation(request=_NO_REQUEST, start_ns=at, end_ns=at)
        observation.batch_id = self._batch_id
        observation.batch_result = line
        observation.tags = self._tags
        self._telemetry.record(observation, self._parent, False)


def _iso_ns(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def observe_batch_response(request: APIRequest, response: SDKObject) -> None:
    """Observe a response that is not a Messages call: a batch's record (remembered for its results) or
    its results (recorded line by line). Anything else passes untouched. Never raises."""
    try:
        if request.method.lower() != "get":
            return
        path = urlsplit(request.url).path
        results = _RESULTS_PATH.search(path)
        batch = None if results else _BATCH_PATH.search(path)
        if results is None and batch is None:
            return
        http = response.http_response
        if not http.is_success:
            return
        if batch is not None:
            if http.is_stream_consumed:
                ended = _iso_ns(field_of(json.loads(http.content), "ended_at"))
                _retrieved.set((unquote(batch[1]), ended) if ended is not None else None)
            return
        assert results is not None
        telemetry = state.get_telemetry()
        if telemetry is None:
            return
        batch_id = unquote(results[1])
        retrieved = _retrieved.get()
        at_ns = retrieved[1] if retrieved is not None and retrieved[0] == batch_id else None
        lines = ResultLines(batch_id, at_ns, otel_context.get_current(), telemetry)
        if http.is_stream_consumed:  # read already (not what the SDK does): the lines are all there
            lines.chunk(http.content)
            lines.end("read")
        else:
            observe_body(http, lines)
    except Exception:
        log.debug("compactobs could not observe a Message Batches response", exc_info=True)
