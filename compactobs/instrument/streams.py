"""Observe a streamed response as the caller reads it, without buffering its body.

The SDK's `Stream` looks for a `stream_observer` on its response's byte stream and hands it every parsed
event (`begin`, `item`, `end`): the hook the SDK's own tracing uses. compactobs wraps the byte stream with
an observer of its own, so it sees the typed events the caller sees, parsed once.

When the SDK's own tracing is also on for the client, the SDK wraps the byte stream again after the
middleware returns and its observer takes the slot. The bytes still flow through compactobs' wrapper, so
then it reads the server-sent events itself from the bytes, decoding only the few events that carry usage.
Bedrock streams are not server-sent events but the AWS event stream encoding (one `chunk` message per
Messages event, its JSON base64-encoded): those bytes are read with botocore's decoder, which the SDK needs
for them anyway.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

import httpx2

from compactobs.usage import StreamAccumulator

if TYPE_CHECKING:
    from compactobs._types import SDKObject

log = logging.getLogger("compactobs")

# Events whose payload changes the usage; every other event (text deltas, pings) is skipped undecoded.
_USAGE_EVENTS = frozenset({b"message_start", b"message_delta", b"content_block_start", b"content_block_stop"})

StreamDone = Callable[["StreamObserver", str, "BaseException | None"], None]


class BodyObserver(Protocol):
    """What the byte-stream wrappers below report to: `chunk` for each piece of the body unless `begun`
    (the SDK's own events then report the body), and `end` once, with how reading ended."""

    begun: bool

    def chunk(self, chunk: bytes) -> None: ...

    def end(self, how: str, error: BaseException | None = None) -> None: ...


class SseScanner:
    """Incremental server-sent-events reader over raw bytes that feeds a StreamAccumulator.

    Keeps only the event being read, never the body.
    """

    __slots__ = ("_accumulator", "_buffer", "_data", "_event")

    def __init__(self, accumulator: StreamAccumulator) -> None:
        self._accumulator = accumulator
        self._buffer = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        buffer = self._buffer + chunk
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                self._dispatch()
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            elif line.startswith(b"data:"):
                self._data.append(line[5:].lstrip(b" "))

    def _dispatch(self) -> None:
        event, data = self._event, self._data
        self._event, self._data = b"", []
        if not data:
            return
        wanted = event in _USAGE_EVENTS or event == b"message_stop" or event == b"error"
        if event == b"content_block_delta":
            wanted = any(b"compaction_delta" in part for part in data)
        if not wanted:
            return
        with contextlib.suppress(ValueError):
            self._accumulator.event(json.loads(b"\n".join(data)))


class EventStreamScanner:
    """Incremental reader of a Bedrock response stream (AWS event stream encoding) over raw bytes that feeds
    a StreamAccumulator, as SseScanner does for server-sent events."""

    __slots__ = ("_accumulator", "_buffer")

    def __init__(self, accumulator: StreamAccumulator) -> None:
        from botocore.eventstream import EventStreamBuffer  # the SDK's Bedrock streams need it too

        self._accumulator = accumulator
        self._buffer = EventStreamBuffer()

    def feed(self, chunk: bytes) -> None:
        self._buffer.add_data(chunk)
        for message in self._buffer:
            headers = message.headers
            if headers.get(":message-type") != "event" or headers.get(":event-type") != "chunk":
                continue  # an exception message: the SDK raises it to the caller, and the call fails
            with contextlib.suppress(ValueError, TypeError):
                data = base64.b64decode(json.loads(message.payload)["bytes"])
                if any(kind in data for kind in _USAGE_EVENT_TYPES):
                    self._accumulator.event(json.loads(data))


_USAGE_EVENT_TYPES = (
    b'"message_start"',
    b'"message_delta"',
    b'"message_stop"',
    b'"content_block_start"',
    b'"content_block_stop"',
    b'"compaction_delta"',
)
"""An event stream chunk is decoded only when its event may carry usage (text deltas are skipped)."""


class StreamObserver:
    """Receives the SDK's stream callbacks, or scans bytes when the SDK's tracing holds the callbacks."""

    __slots__ = (
        "_done",
        "_ended",
        "_scanner",
        "accumulator",
        "begun",
        "body_parts",
        "event_stream",
        "events",
        "first_event_ns",
    )

    def __init__(self, done: StreamDone, *, json_body: bool = False) -> None:
        self.accumulator = StreamAccumulator()
        self.events: list[object] = []
        """The SDK's events that may carry usage, kept for the accumulator (fed later, elsewhere)."""
        self._done = done
        self._ended = False
        self._scanner: SseScanner | EventStreamScanner | None = None
        self.event_stream = False
        """The body is an AWS event stream (Bedrock), not server-sent events."""
        self.begun = False
        self.first_event_ns: int | None = None
        self.body_parts: list[bytes] | None = [] if json_body else None
        """A non-streamed body read by the caller as raw bytes (`with_streaming_response`): kept to decode."""

    # The SDK's StreamObserver protocol. None of these raise.
    def begin(self) -> None:
        self.begun = True

    def item(self, item: object, /) -> None:
        if self.first_event_ns is None:
            self.first_event_ns = time.time_ns()
        # Most of a stream is text deltas, which carry no usage: two attribute reads on the SDK's typed
        # event skip one. The rest are kept, not read: the SDK's events are its parsed models, made for
        # this stream, and the recording thread reads them later.
        if getattr(item, "type", None) == "content_block_delta":
            kind = getattr(getattr(item, "delta", None), "type", None)
            if kind is not None and kind != "compaction_delta":
                return
        self.events.append(item)

    def end(self, how: str, error: BaseException | None = None) -> None:
        # The stream and the body both report the end; only the first one counts.
        if self._ended:
            return
        self._ended = True
        try:
            self._done(self, how, error)
        except Exception:
            log.debug("compactobs could not finish a stream observation", exc_info=True)

    # Byte-level fallback, used only when the SDK's own observer holds the slot.
    def chunk(self, chunk: bytes) -> None:
        if self.begun:
            return
        if self.body_parts is not None:
            self.body_parts.append(chunk)
            return
        try:
            if self._scanner is None:
                scanner = EventStreamScanner if self.event_stream else SseScanner
                self._scanner = scanner(self.accumulator)
                self.first_event_ns = time.time_ns()
            self._scanner.feed(chunk)
        except Exception:
            log.debug("compactobs could not scan a stream chunk", exc_info=True)


class ObservedStream(httpx2.SyncByteStream):
    """The response body, unchanged, reporting to `stream_observer` how it was read."""

    def __init__(self, body: httpx2.SyncByteStream, observer: BodyObserver) -> None:
        self._body = body
        self.stream_observer = observer

    @property
    def elapsed(self) -> timedelta | None:
        # httpx2.Response.elapsed is read from the byte stream.
        return getattr(self._body, "elapsed", None)

    def __iter__(self) -> Iterator[bytes]:
        observer = self.stream_observer
        if observer.begun:
            # The SDK's stream reports every event: the bytes only pass through. A failed read is reported
            # here, before httpx closes the response (which would report "closed" first).
            try:
                yield from self._body
            except Exception as err:
                observer.end("failed", err)
                raise
            return
        try:
            for chunk in self._body:
                observer.chunk(chunk)
                yield chunk
        except Exception as err:
            observer.end("failed", err)
            raise
        observer.end("read")

    def close(self) -> None:
        self.stream_observer.end("closed")
        self._body.close()

    def __del__(self) -> None:
        # A caller may drop a stream without closing it, and without reading it.
        self.stream_observer.end("closed")


class AsyncObservedStream(httpx2.AsyncByteStream):
    """The async response body, unchanged, reporting to `stream_observer` how it was read."""

    def __init__(self, body: httpx2.AsyncByteStream, observer: BodyObserver) -> None:
        self._async_body = body
        self.stream_observer = observer

    @property
    def elapsed(self) -> timedelta | None:
        return getattr(self._async_body, "elapsed", None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        observer = self.stream_observer
        chunks = self._async_body.__aiter__()
        try:
            async for chunk in chunks:
                observer.chunk(chunk)
                yield chunk
        except Exception as err:
            observer.end("failed", err)
            raise
        finally:
            # Close a half-read body's generator in the task that read it.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        observer.end("read")

    async def aclose(self) -> None:
        self.stream_observer.end("closed")
        await self._async_body.aclose()

    def __del__(self) -> None:
        self.stream_observer.end("closed")


class BothObservedStream(ObservedStream, AsyncObservedStream):
    """For a body that is a sync and an async stream at once, as httpx2.ByteStream is."""

    def __init__(self, body: SDKObject, observer: BodyObserver) -> None:
        ObservedStream.__init__(self, body, observer)
        AsyncObservedStream.__init__(self, body, observer)


def observe_body(response: httpx2.Response, observer: BodyObserver) -> None:
    """Wrap `response`'s byte stream so `observer` sees it read; httpx2's sync/async kind checks stay true."""
    if isinstance(observer, StreamObserver):  # a Messages stream: SSE, or Bedrock's AWS event stream
        content_type = response.headers.get("content-type") or ""
        observer.event_stream = content_type.startswith("application/vnd.amazon.eventstream")
    body: SDKObject = response.stream
    if isinstance(body, httpx2.SyncByteStream) and isinstance(body, httpx2.AsyncByteStream):
        response.stream = BothObservedStream(body, observer)
    elif isinstance(body, httpx2.SyncByteStream):
        response.stream = ObservedStream(body, observer)
    else:
        response.stream = AsyncObservedStream(body, observer)
