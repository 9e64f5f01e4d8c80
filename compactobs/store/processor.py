"""StoreSpanProcessor: the queue between the thread that ends compactobs' spans and the SQL store's exporter.

Not the SDK's BatchSpanProcessor, for two guarantees it cannot give:
- **whole calls**: iteration spans end just before their call span; they wait here, keyed by their parent,
  until the call ends, and the call then travels with its iterations as one unit. A batch never splits a
  call, so one transaction (or one spool line) holds a call and all its iterations;
- **nothing dropped silently**: the SDK's queue drops spans once it is full (a database that stalls). Here
  a call that would overflow the queue is written to the spool at once, on the thread that ended it (the
  recording thread, never the application's unless its recorder has fallen behind), and counted in the
  exporter's `stats.overflowed`. The same happens to calls that end after `shutdown`.

The exporter is an `SqlSpanExporter`, seen here through the `StoreExporter` protocol.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExportResult

from compactobs import semconv as t

if TYPE_CHECKING:
    from compactobs.store.spool import Spool

__all__ = [
    "DEFAULT_MAX_EXPORT_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_SCHEDULE_DELAY_MS",
    "StoreExporter",
    "StoreSpanProcessor",
]

log = logging.getLogger("compactobs.store")

DEFAULT_SCHEDULE_DELAY_MS: Final = 1000
"""The SDK's default is 5 s. Shorter: less is held in memory, where a hard kill would lose it."""
DEFAULT_MAX_QUEUE_SIZE: Final = 8192
DEFAULT_MAX_EXPORT_BATCH_SIZE: Final = 2048
"""The SDK's default is 512 spans: 2048 (512 calls of 1 + 3 spans) amortises each commit over more rows."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


class StoreExporter(Protocol):
    """What the processor asks of its exporter (`SqlSpanExporter`): named here, so that the exporter module,
    which builds the processor, is not imported back."""

    spool: Spool
    database_url: str
    """The database, as logs show it (no password)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult: ...

    def spill(self, spans: Sequence[ReadableSpan]) -> None: ...

    def force_flush(self, timeout_millis: int = 30_000) -> bool: ...

    def shutdown(self) -> None: ...


class StoreSpanProcessor(SpanProcessor):
    """Queues compactobs' spans as whole calls (others never take queue room) and exports them in batches
    of about `max_export_batch_size` spans, at least every `schedule_delay_millis`, off the ending thread.
    Its flush also empties the exporter's spool. The `OTEL_BSP_*` variables win over compactobs' defaults,
    as they do for any batch processor."""

    def __init__(
        self,
        exporter: StoreExporter,
        *,
        schedule_delay_millis: float | None = None,
        max_queue_size: int | None = None,
        max_export_batch_size: int | None = None,
    ) -> None:
        self.exporter = exporter
        self.schedule_delay_s = (
            schedule_delay_millis or _env_int("OTEL_BSP_SCHEDULE_DELAY") or DEFAULT_SCHEDULE_DELAY_MS
        ) / 1000
        self.max_queue_size = max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE") or DEFAULT_MAX_QUEUE_SIZE
        batch = max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        self.max_export_batch_size = min(batch or DEFAULT_MAX_EXPORT_BATCH_SIZE, self.max_queue_size)
        self._overflow_warned = False
        self._retired = False
        self.preparing: threading.Thread | None = None
        """The thread that loads the migrations and checks the schema ahead of the first export, if any."""
        self._reset()
        if hasattr(os, "register_at_fork"):
            reset = weakref.WeakMethod(self._reset)
            os.register_at_fork(after_in_child=lambda: (method := reset()) and method())

    def _reset(self) -> None:
        """Fresh state and worker (also in a forked child: the parent's queue is the parent's to export)."""
        self._pending: dict[int, list[ReadableSpan]] = {}
        self._queue: deque[list[ReadableSpan]] = deque()
        self._queued_spans = 0
        self._lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._wake = threading.Event()
        self._shutdown = False
        self._worker = threading.Thread(target=self._work, name="compactobs-store-export", daemon=True)
        self._worker.start()

    # --- SpanProcessor ------------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def retire(self) -> None:
        """After `shutdown`, for a processor left on a provider the application keeps (compactobs set up
        anew, or shut down for good): ignore every span from now on, instead of spooling it for a store
        that is no longer in use."""
        self._retired = True

    def on_end(self, span: ReadableSpan) -> None:
        """Never raises, never waits on the database."""
        if self._retired:
            return
        try:
            scope = span.instrumentation_scope
            if scope is None or scope.name != t.INSTRUMENTATION_SCOPE:
                return
            if not (span.context and span.context.trace_flags.sampled):
                return
            kind = span.attributes.get(t.SPAN_KIND) if span.attributes else None
            if kind == t.SPAN_KIND_ITERATION:
                if span.parent is not None:
                    self._pending.setdefault(span.parent.span_id, []).append(span)
                return
            if kind != t.SPAN_KIND_CALL:
                return
            group = self._pending.pop(span.context.span_id, [])
            group.append(span)
            self._enqueue(group)
        except Exception:
            log.warning("compactobs: could not queue a span for the SQL store", exc_info=True)

    def submit(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Store spans that ended in another process (`compactobs collect`), through the same exporter as the
        queued calls: committed, or spooled when the database cannot take them within its bounded wait.

        On the caller's thread, not queued: a receiver may acknowledge a batch only once it is durable, and
        the exporter's own lock orders it with the queued batches. SUCCESS once the rows are in the database
        or the spool; FAILURE when neither can keep them (the spool full or not writable), so that the
        sender retries rather than drops. Never raises."""
        if self._retired or self._shutdown:
            return SpanExportResult.FAILURE
        try:
            return self.exporter.export(spans)
        except Exception:
            log.warning("compactobs: storing %d received spans failed", len(spans), exc_info=True)
            return SpanExportResult.FAILURE

    def _enqueue(self, group: list[ReadableSpan]) -> None:
        with self._lock:
            room = not self._shutdown and self._queued_spans + len(group) <= self.max_queue_size
            if room:
                self._queue.append(group)
                self._queued_spans += len(group)
                full_batch = self._queued_spans >= self.max_export_batch_size
        if room:
            if full_batch and not self._wake.is_set():
                self._wake.set()
            return
        if not self._shutdown and not self._overflow_warned:
            self._overflow_warned = True
            log.warning(
                "compactobs: the SQL store's queue is full (%d spans; the database is slow): calls go "
                "straight to the spool %s until it catches up",
                self.max_queue_size,
                self.exporter.spool.directory,
            )
        self.exporter.spill(group)

    def force_flush(self, timeout_millis: int | None = 30_000) -> bool:
        timeout = 30_000 if timeout_millis is None else timeout_millis
        self._export_queued()
        return self.exporter.force_flush(timeout)

    def shutdown(self) -> None:
        """Export what is queued, then close the exporter. Calls that end later go to the spool."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        self._wake.set()
        if self._worker is not threading.current_thread():
            self._worker.join()
        self._export_queued()
        # Iterations whose call never ended (none in compactobs' own spans): stored rather than lost.
        leftovers = [group for group in self._pending.values() if group]
        self._pending.clear()
        if leftovers:
            self.exporter.export([span for group in leftovers for span in group])
        self.exporter.shutdown()

    # --- the export thread --------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._shutdown:
            self._wake.wait(self.schedule_delay_s)
            self._wake.clear()
            if self._shutdown:
                break
            self._export_queued()

    def _take_batch(self) -> list[ReadableSpan]:
        batch: list[ReadableSpan] = []
        with self._lock:
            while self._queue and len(batch) < self.max_export_batch_size:
                group = self._queue.popleft()
                batch.extend(group)
                self._queued_spans -= len(group)
        return batch

    def _export_queued(self) -> None:
        """Export every call queued now, in batches of whole calls. Never raises."""
        with self._export_lock:
            while batch := self._take_batch():
                try:
                    self.exporter.export(batch)
                except Exception:
                    log.warning("compactobs: exporting to the SQL store failed", exc_info=True)
                if not self._queue and self._overflow_warned:
                    self._overflow_warned = False
