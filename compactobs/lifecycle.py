"""How recording ends: a bounded shutdown (`shutdown()`, interpreter exit, SIGTERM) and forked workers.

**Bounded shutdown.** Everything the shutdown waits on shares one deadline, `COMPACTOBS_SHUTDOWN_TIMEOUT_S`
(or `configure(shutdown_timeout_s=...)`), 20 s by default: an orchestrator's grace period is 30 s
(Kubernetes' default) before SIGKILL, and the process still has to end. The calls are turned into spans
first, then the SQL store is flushed, and OTLP export gets whatever time is left: the store is the record
that `compactobs export otlp` can send again later, an OTLP endpoint that does not answer is not. Each step
runs on a thread of its own and is abandoned (a daemon thread) when the deadline passes. The calls the
OTLP exporter did not send by then are counted in one log line, with the command that sends them from the
store.

**Forked workers.** A forked child inherits the recorder, the store's processor and the exporters with
their state; each of those resets itself after a fork (`os.register_at_fork`: fresh locks, threads and
queues, the parent's pooled connections left to the parent). What the child must add is a flush at its
exit: a child that ends normally runs the inherited atexit hook, but a multiprocessing child (fork start
method, `Pool` workers) ends with `os._exit` once multiprocessing's own finalizers have run, so one of
those is registered in every such child. A process that calls `os._exit` itself runs neither: what only
memory held (see README, "Forked workers") is lost unless it calls `compactobs.flush()` first.
"""

from __future__ import annotations

import _thread
import atexit
import functools
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from compactobs.instrument import state

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

    from compactobs.store.exporter import StoreSpanProcessor

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "ENV_SHUTDOWN_TIMEOUT",
    "ExportTally",
    "adopt",
    "flush",
    "install_exit_hooks",
    "set_shutdown_timeout",
    "shutdown",
    "shutdown_timeout_s",
    "watch",
]

log = logging.getLogger("compactobs")

ENV_SHUTDOWN_TIMEOUT: Final = "COMPACTOBS_SHUTDOWN_TIMEOUT_S"
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 20.0
"""Within Kubernetes' default 30 s grace period, with 10 s left for the application's own shutdown."""


class Flushable(Protocol):
    """A provider or processor that flushes within a bound (OpenTelemetry's `force_flush`)."""

    def force_flush(self, timeout_millis: int = ...) -> object: ...


class Owned(Flushable, Protocol):
    """What compactobs made and so shuts down: a provider or the store's processor."""

    def shutdown(self) -> object: ...


_own: list[Owned] = []
"""What compactobs made itself (its providers when the application had none, the store's processor):
compactobs shuts these down. The application's own providers are only flushed."""
_flushables: list[Flushable] = []
_stores: list[StoreSpanProcessor] = []
"""The SQL store's processors (also in `_own` and `_flushables`): flushed before anything else."""
_tallies: list[ExportTally] = []
_loading: list[threading.Thread] = []
"""compactobs' threads that import or load what recording needs (price data, the store's schema)."""
_configured_timeout_s: float | None = None
_exit_hooks_installed = False


# --- what compactobs opened -------------------------------------------------------------------------------


def watch(flushable: Flushable) -> None:
    """Flush `flushable` (a provider or processor) at every flush and shutdown."""
    _flushables.append(flushable)


def adopt(owned: Owned, *, store: bool = False, tally: ExportTally | None = None) -> None:
    """Flush `owned` and shut it down at shutdown: compactobs made it. `store`: the SQL store's processor,
    flushed first; `tally`: what counts the OTLP export of a provider compactobs made."""
    _own.append(owned)
    if owned not in _flushables:
        _flushables.append(owned)
    if store:
        _stores.append(cast("StoreSpanProcessor", owned))
    if tally is not None:
        _tallies.append(tally)


def load_in_background(name: str, load: Callable[[], object]) -> None:
    """Run `load` (imports, data) off the caller's thread; a fork waits for it (see `_before_fork`)."""
    thread = threading.Thread(target=load, name=f"compactobs-{name}", daemon=True)
    thread.start()
    _loading.append(thread)


def loading(thread: threading.Thread | None) -> None:
    """A thread started elsewhere that imports or loads what recording needs: a fork waits for it."""
    if thread is not None:
        _loading.append(thread)


def check_shutdown_timeout(seconds: float | None) -> None:
    """Raises ValueError (one line) for a bound that is not a number of seconds > 0."""
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf")
    ):
        raise ValueError(f"shutdown_timeout_s must be a number of seconds > 0, not {seconds!r}")


def set_shutdown_timeout(seconds: float | None) -> None:
    """The bound `configure(shutdown_timeout_s=...)` sets (None: the variable's, else the default)."""
    global _configured_timeout_s
    check_shutdown_timeout(seconds)
    _configured_timeout_s = seconds


def shutdown_timeout_s() -> float:
    """The bound: `configure(shutdown_timeout_s=...)`, else COMPACTOBS_SHUTDOWN_TIMEOUT_S, else 20 s."""
    if _configured_timeout_s is not None:
        return _configured_timeout_s
    raw = os.environ.get(ENV_SHUTDOWN_TIMEOUT, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if value > 0 and value != float("inf"):
            return value
        log.warning(
            "compactobs: %s=%r is not a number of seconds > 0; using %g s",
            ENV_SHUTDOWN_TIMEOUT,
            raw,
            DEFAULT_SHUTDOWN_TIMEOUT_S,
        )
    return DEFAULT_SHUTDOWN_TIMEOUT_S


# --- counting what OTLP export did not send ---------------------------------------------------------------

_TALLY_CALLS_LIMIT: Final = 100_000
"""Calls whose export is awaited that are remembered one by one; beyond, only their count and the earliest
start (a long outage must not grow memory without bound)."""


class ExportTally:
    """Counts compactobs' call spans ended on a provider compactobs made against those its OTLP exporter
    sent: `processor()` goes on the provider before the batch processor, `exporter(inner)` wraps the OTLP
    exporter. Never raises."""

    def __init__(self, scope: str, kind_attribute: str, call_kind: str) -> None:
        self._scope, self._kind_attribute, self._call_kind = scope, kind_attribute, call_kind
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}
        """span id -> start time (ns) of each call span ended and not yet exported."""
        self._overflow = 0
        self._overflow_earliest_ns: int | None = None
        self.endpoint: str | None = None
        self.protocol: str | None = None

    def _is_call(self, span: ReadableSpan) -> bool:
        scope = span.instrumentation_scope
        if scope is None or scope.name != self._scope or span.context is None:
            return False
        attributes = span.attributes
        return attributes is not None and attributes.get(self._kind_attribute) == self._call_kind

    def ended(self, span: ReadableSpan) -> None:
        try:
            if not self._is_call(span):
                return
            with self._lock:
                if len(self._waiting) < _TALLY_CALLS_LIMIT:
                    self._waiting[span.context.span_id] = span.start_time or 0
                    return
                self._overflow += 1
                earliest = self._overflow_earliest_ns
                if earliest is None or (span.start_time or 0) < earliest:
                    self._overflow_earliest_ns = span.start_time or 0
        except Exception:
            log.debug("compactobs: could not count a span for OTLP export", exc_info=True)

    def exported(self, spans: Sequence[ReadableSpan]) -> None:
        try:
            with self._lock:
                for span in spans:
                    if span.context is not None:
                        self._waiting.pop(span.context.span_id, None)
        except Exception:
            log.debug("compactobs: could not count exported spans", exc_info=True)

    def unexported(self) -> tuple[int, int | None]:
        """(calls ended and not exported, the earliest one's start time in ns or None)."""
        with self._lock:
            starts = list(self._waiting.values())
            if self._overflow_earliest_ns is not None:
                starts.append(self._overflow_earliest_ns)
            return len(self._waiting) + self._overflow, min(starts) if starts else None

    def processor(self) -> SpanProcessor:
        from opentelemetry.sdk.trace import SpanProcessor

        tally = self

        class _Counting(SpanProcessor):
            def on_end(self, span: ReadableSpan) -> None:
                tally.ended(span)

        return _Counting()

    def exporter(self, inner: SpanExporter) -> SpanExporter:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        tally = self

        class _Tallied(SpanExporter):
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                result = inner.export(spans)
                if result is SpanExportResult.SUCCESS:
                    tally.exported(spans)
                return result

            def shutdown(self) -> None:
                inner.shutdown()

            def force_flush(self, timeout_millis: int = 30_000) -> bool:
                return bool(inner.force_flush(timeout_millis))

        return _Tallied()


# --- flush and shutdown ------------------------------------------------------------------------------------


def _force_flush(flushable: Flushable, deadline: float) -> object:
    return flushable.force_flush(_millis(deadline))


def _within(deadline: float, step: Callable[[], object], name: str) -> bool:
    """Run `step` on a thread of its own and wait for it until `deadline`; False if it did not finish (it is
    left to run on, a daemon thread). Where no thread can start, it runs here, unbounded."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    done = threading.Event()

    def run() -> None:
        try:
            step()
        except Exception:
            log.warning("compactobs: %s failed", name, exc_info=True)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name=f"compactobs-{name}", daemon=True).start()
    except RuntimeError:  # the interpreter is finalizing
        run()
        return True
    return done.wait(remaining)


def _millis(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def flush(timeout_millis: int = 30_000) -> bool:
    """Turn the calls recorded so far into spans, then flush the SQL store, then the rest (OTLP), all
    within `timeout_millis`. True when everything finished in time."""
    deadline = time.monotonic() + timeout_millis / 1000
    complete = True
    telemetry = state.get_telemetry_if_set()
    if telemetry is not None and not telemetry.drain(max(0.0, deadline - time.monotonic())):
        log.warning("compactobs: calls were still being recorded when flush timed out")
        complete = False
    ordered = [*_stores, *(f for f in _flushables if f not in _stores)]
    for flushable in ordered:
        name = f"flush-{type(flushable).__name__}"
        finished = _within(deadline, functools.partial(_force_flush, flushable, deadline), name)
        complete = complete and finished
    return complete


def shutdown(*, final: bool, timeout_s: float | None = None) -> None:
    """Flush, then close what compactobs opened, all within the shutdown bound. `final` (interpreter exit,
    SIGTERM, a forked child's exit): recording stays in place for the calls that return while the process
    ends, each recorded before it returns; what ends after the store has closed goes to its spool."""
    bound = shutdown_timeout_s() if timeout_s is None else timeout_s
    started = time.monotonic()
    deadline = started + bound
    telemetry = state.get_telemetry_if_set()
    complete = telemetry is None or telemetry.drain(max(0.0, deadline - time.monotonic()))
    if final and telemetry is not None:
        telemetry.close()
        complete = telemetry.drain(max(0.0, deadline - time.monotonic())) and complete
    # The store first, whole: what it has written `compactobs export otlp` can send again later.
    stores_done = all([_within(deadline, processor.shutdown, "shutdown-store") for processor in _stores])
    for flushable in [f for f in _flushables if f not in _stores]:
        name = f"flush-{type(flushable).__name__}"
        complete = _within(deadline, functools.partial(_force_flush, flushable, deadline), name) and complete
    for item in [o for o in _own if o not in _stores]:
        complete = _within(deadline, item.shutdown, f"shutdown-{type(item).__name__}") and complete
    tallies = list(_tallies)
    stores = list(_stores)
    _own.clear()
    _flushables.clear()
    _stores.clear()
    _tallies.clear()
    if not stores_done:
        for processor in stores:
            log.warning(
                "compactobs: the SQL store %s did not finish within the %g s shutdown bound (%s): the "
                "calls it has not written when the process ends are lost, unless they reached its spool %s",
                processor.exporter.database_url,
                bound,
                ENV_SHUTDOWN_TIMEOUT,
                processor.exporter.spool.directory,
            )
    elif not complete:
        _report_unfinished(bound, tallies, stores, started)
    # The guard, if one was ever set up: not imported for a process that never recorded.
    guard_module = sys.modules.get("compactobs.guard")
    if final:
        # Recording (and its guard) stays in place for the calls that return while the process ends; the
        # guard's last counts (up to its publishing interval) go to the shared row within the bound.
        guard = guard_module.installed() if guard_module is not None else None
        if guard is not None:
            guard.send_counted(max(0.0, deadline - time.monotonic()))
        return
    for processor in stores:
        processor.retire()
    state.set_telemetry(None)
    if guard_module is not None:
        guard = guard_module.installed()
        if guard is not None:
            guard.close()
        guard_module.install(None)


def _export_command(stores: Sequence[StoreSpanProcessor], since_ns: int, tally: ExportTally | None) -> str:
    """The `compactobs export otlp` line that sends the calls started since `since_ns` from the store."""
    from compactobs.store import default_database_url, display_url

    words = ["compactobs"]
    if stores:
        shown = stores[0].exporter.database_url
        if shown != display_url(default_database_url()):
            words += ["--db", shown]
    since = datetime.fromtimestamp(since_ns // 1_000_000_000, tz=timezone.utc)
    words += ["export", "otlp", "--since", since.strftime("%Y-%m-%dT%H:%M:%SZ")]
    if tally is not None and tally.endpoint:
        words += ["--endpoint", tally.endpoint]
    if tally is not None and tally.protocol:
        words += ["--protocol", "grpc" if tally.protocol == "grpc" else "http"]
    return shlex.join(words)


_PROCESS_START_NS: Final = time.time_ns()


def _report_unfinished(
    bound: float, tallies: Sequence[ExportTally], stores: Sequence[StoreSpanProcessor], started: float
) -> None:
    """One line per shortfall: the OTLP export compactobs owns (counted), or the application's providers'."""
    where = "they are in the SQL store" if stores else "no SQL store was configured to keep them"
    reported = False
    for tally in tallies:
        calls, earliest = tally.unexported()
        if not calls or earliest is None:
            continue
        reported = True
        line = (
            f"compactobs: {calls} calls were not exported over OTLP within the {bound:g} s shutdown bound "
            f"({ENV_SHUTDOWN_TIMEOUT}); {where}"
        )
        if stores:
            line += f"; to send them: {_export_command(stores, earliest, tally)}"
        log.warning("%s", line)
    if not reported:
        line = (
            f"compactobs: shutdown stopped waiting after its {bound:g} s bound ({ENV_SHUTDOWN_TIMEOUT}), "
            f"{time.monotonic() - started:.1f} s in; spans of this process may not have reached the "
            f"application's exporters; {where}"
        )
        if stores:
            line += f"; to send them again: {_export_command(stores, _PROCESS_START_NS, None)}"
        log.warning("%s", line)


# --- exit hooks: interpreter exit, SIGTERM, forked children ------------------------------------------------


def _final_shutdown() -> None:
    """Interpreter exit, SIGTERM and a forked child's exit: the process ends once this returns, while its
    other threads may still make calls."""
    shutdown(final=True)


FORK_WAIT_S: Final = 5.0
"""How long a fork waits, at most, for compactobs' threads to finish what they are doing."""


def _before_fork() -> None:
    """In the parent, just before `os.fork()`: let compactobs' threads finish their imports and the calls
    handed over so far. A child inherits every lock as it was, but only the forking thread: a lock held by
    another thread at that moment (a module's import lock mid-import, say, on the recording thread pricing
    its first call) stays held in the child, and its first call would wait on it forever. Never raises."""
    try:
        deadline = time.monotonic() + FORK_WAIT_S
        for thread in list(_loading):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        _loading[:] = [thread for thread in _loading if thread.is_alive()]
        telemetry = state.get_telemetry_if_set()
        if telemetry is not None and not threading.current_thread().name.startswith("compactobs-"):
            telemetry.drain(max(0.0, deadline - time.monotonic()))
    except Exception:
        log.debug("compactobs: preparing for a fork failed", exc_info=True)


class _ForkToken:
    """What multiprocessing's after-fork registry holds (weakly) to call `_in_multiprocessing_child`."""


_FORK_TOKEN: Final = _ForkToken()


def _in_multiprocessing_child(_token: _ForkToken) -> None:
    # Registered here, not in os.register_at_fork's hook: multiprocessing clears its finalizers in the child
    # after that hook has run, and only then calls its after-fork functions. Priority >= 0: run before
    # multiprocessing joins the child's own children, and before `os._exit`.
    from multiprocessing import util

    util.Finalize(None, _final_shutdown, exitpriority=10)


def install_exit_hooks() -> None:
    """Flush at interpreter exit, on SIGTERM (unless the application handles it) and at the exit of a
    multiprocessing child. Once."""
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(_final_shutdown)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    from multiprocessing import util

    util.register_after_fork(_FORK_TOKEN, _in_multiprocessing_child)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return  # the application handles SIGTERM (and, we trust, exits through atexit)
    _look_up_setsig()
    signal.signal(signal.SIGTERM, _on_sigterm)


# --- SIGTERM ---------------------------------------------------------------------------------------------
# SIGTERM's default action ends a process at once, whatever its threads are doing; compactobs' handler first
# flushes, then ends the process as the default action would. A Python handler, though, runs only when the
# main thread next runs Python code, and a forked child's main thread may never do so again: a `Pool` worker
# waiting for its next task is blocked inside a lock of the task queue that `Pool.terminate()` takes and
# never gives back, and then sends it SIGTERM. When the kernel hands that signal to another thread (any
# thread may take a process's signal), or it arrives just before the main thread blocks, the handler never
# runs and the worker waits forever, and its parent with it. So in a forked child the signal also reaches a
# thread of compactobs' own, through the interpreter's wake-up fd (written by its C-level handler whatever
# thread took the signal), and that thread flushes and ends the process. The main thread may still run the
# handler too: whichever comes first flushes, once.

_terminating = _thread.allocate_lock()
"""Taken by whichever of the handler and the watching thread flushes first: the flush runs once."""
_sigterm_pipe: tuple[int, int] | None = None
"""(read end, write end) of the wake-up fd compactobs set in this process, if any."""
_setsig: Any = None
"""`PyOS_setsig` through ctypes: only the main thread may call `signal.signal`, so the watching thread sets
SIGTERM's default action back with this. Looked up when the handler is installed, never in a forked child (an
import there could wait on a module lock another thread of the parent held at the fork)."""


def _look_up_setsig() -> None:
    global _setsig
    try:
        import ctypes

        setsig = ctypes.pythonapi.PyOS_setsig
        setsig.argtypes, setsig.restype = (ctypes.c_int, ctypes.c_void_p), ctypes.c_void_p
        _setsig = setsig
    except Exception:  # no ctypes (or no C API) here: the watching thread then ends the process with _exit
        log.debug("compactobs: PyOS_setsig is not available", exc_info=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The handler interrupts the main thread wherever it is, perhaps holding a lock the flush needs (the
    # recorder's wake-up Event, mid hand-over): flushing here could wait on itself forever. So the flush runs
    # on a thread of its own, started with `_thread` because `threading` takes a module lock the interrupted
    # thread may hold too, and SIGTERM's default action follows it. A second SIGTERM kills.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _terminating.acquire(blocking=False):
        return  # the watching thread is flushing already, and ends the process when it is done
    try:
        _thread.start_new_thread(_shutdown_then_terminate, ())
    except RuntimeError:  # no new thread (the interpreter is finalizing): terminate as by default
        os.kill(os.getpid(), signal.SIGTERM)


def _shutdown_then_terminate() -> None:
    try:
        _final_shutdown()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    """In a forked child (its only thread, now its main thread) that inherited compactobs' SIGTERM handler: a
    thread that hears SIGTERM through a wake-up fd (see above), unless the application set a wake-up fd of
    its own (asyncio's signal handlers do): it keeps it. Never raises."""
    global _terminating, _sigterm_pipe
    _terminating = _thread.allocate_lock()  # perhaps taken in the parent: that flush is not this process's
    inherited, _sigterm_pipe = _sigterm_pipe, None
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            _watch_sigterm(inherited)
        if inherited is not None:  # the parent's pipe, whose reading thread is not in this process
            current = signal.set_wakeup_fd(-1)
            if current != inherited[1]:
                signal.set_wakeup_fd(current)  # this process's own, or the application's
            for fd in inherited:  # closed once no signal can be written to it any more
                os.close(fd)
    except Exception:
        log.debug("compactobs: could not watch for SIGTERM in a forked child", exc_info=True)


def _watch_sigterm(inherited: tuple[int, int] | None) -> None:
    global _sigterm_pipe
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    if previous not in (-1, inherited[1] if inherited is not None else -1):
        signal.set_wakeup_fd(previous)  # the application's: it keeps it, and SIGTERM goes to the handler
        os.close(read_end)
        os.close(write_end)
        return
    _sigterm_pipe = (read_end, write_end)
    threading.Thread(target=_hear_sigterm, args=(read_end,), name="compactobs-sigterm", daemon=True).start()


def _hear_sigterm(read_end: int) -> None:
    """The watching thread: on SIGTERM, while the handler is compactobs', flush and end the process."""
    while True:
        try:
            signals = os.read(read_end, 64)  # a byte per signal (its number) that a Python handler is set for
        except OSError:
            return
        if not signals:
            return
        if (
            signal.SIGTERM in signals
            and signal.getsignal(signal.SIGTERM) is _on_sigterm
            and _terminating.acquire(blocking=False)
        ):
            break
    # As the handler does first: SIGTERM's default action back, so that a second SIGTERM ends the process at
    # once, and so that the one sent after the flush does.
    try:
        _setsig(signal.SIGTERM, int(signal.SIG_DFL))
    except Exception:  # no PyOS_setsig here: end with the status a shell gives a process SIGTERM ended
        try:
            _final_shutdown()
        finally:
            os._exit(128 + signal.SIGTERM)
    _shutdown_then_terminate()
