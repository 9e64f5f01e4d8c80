"""compactobs: what your Claude traffic really costs, where the cache pays, when compaction runs away.

```python
import compactobs
compactobs.instrument()                       # every Anthropic / AsyncAnthropic client, new and existing
with compactobs.conversation("ticket-42"):
    client.beta.messages.create(...)
compactobs.flush(); compactobs.shutdown()     # shutdown also runs at interpreter exit and on SIGTERM
client = anthropic.Anthropic(middleware=[compactobs.Middleware()])   # or explicitly, per client
```
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compactobs import guard as guard_module
from compactobs import otlp
from compactobs._version import __version__
from compactobs.checkpoint import Checkpoint, checkpoint
from compactobs.guard import (
    BudgetExceeded,
    CompactionLoopDetected,
    GuardError,
    GuardPolicy,
    SpendUnknown,
    wrap_up_message,
)
from compactobs.instrument import state
from compactobs.instrument.conversation import conversation

# OpenTelemetry and compactobs.telemetry are imported when recording is set up, not with the package: the
# CLI imports the package too, and its reports need neither.
if TYPE_CHECKING:
    from compactobs.instrument.middleware import Middleware
    from compactobs.telemetry import Telemetry

__all__ = [
    "BudgetExceeded",
    "Checkpoint",
    "CompactionLoopDetected",
    "GuardError",
    "GuardPolicy",
    "Middleware",
    "SpendUnknown",
    "__version__",
    "checkpoint",
    "configure",
    "conversation",
    "flush",
    "instrument",
    "shutdown",
    "uninstrument",
    "wrap_up_message",
]

log = logging.getLogger("compactobs")


def __getattr__(name: str) -> Any:
    # The SDK is imported with `Middleware`, not with the package: `compactobs report ...` and the other
    # commands that never touch a client start in a quarter of the time (`import anthropic` is ~1.3 s).
    if name == "Middleware":
        from compactobs.instrument.middleware import Middleware

        return Middleware
    raise AttributeError(f"module 'compactobs' has no attribute {name!r}")


_lock = threading.Lock()
_own_providers: list[Any] = []
"""What compactobs made itself (its providers when the application had none, the store's processor):
compactobs shuts these down. The application's own providers are only flushed."""
_flushables: list[Any] = []
_exit_hooks_installed = False


def _resource(service_name: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": service_name} if service_name else {})


def _tracer_provider(given: Any, service_name: str | None, export: bool = True) -> Any:
    """The application's TracerProvider when it has one, else one of compactobs' own (not made global,
    so other libraries' tracing is not switched on behind the application's back)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if given is not None:
        return given
    app = trace.get_tracer_provider()
    if isinstance(app, TracerProvider):
        return app
    provider = TracerProvider(resource=_resource(service_name))
    if export and otlp.export_requested("TRACES"):
        # The exporter reads endpoint, headers, timeout and compression from the standard OTEL_* variables.
        provider.add_span_processor(BatchSpanProcessor(otlp.span_exporter()))
    _own_providers.append(provider)
    return provider


def _meter_provider(given: Any, service_name: str | None, export: bool = True) -> Any:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    if given is not None:
        return given
    app = metrics.get_meter_provider()
    if isinstance(app, MeterProvider):
        return app
    if not (export and otlp.export_requested("METRICS")):
        return metrics.NoOpMeterProvider()
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    provider = MeterProvider(
        resource=_resource(service_name),
        metric_readers=[PeriodicExportingMetricReader(otlp.metric_exporter())],
    )
    _own_providers.append(provider)
    return provider


def _setup(
    database_url: str | None,
    tracer_provider: Any,
    meter_provider: Any,
    service_name: str | None,
    store: bool,
    export: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
) -> Telemetry:
    """Providers, the SQL store on the tracer provider, the pricer and the guard. Raises on bad
    configuration."""
    from compactobs.pricing import default_pricer
    from compactobs.telemetry import Telemetry

    pricer = default_pricer()
    if store:
        from compactobs.store import default_database_url, parse_url

        parse_url(database_url or default_database_url())  # a bad URL or an unusable driver: raise here
    _install_guard(guard, database_url if store else False)
    tracer = _tracer_provider(tracer_provider, service_name, export)
    meter = _meter_provider(meter_provider, service_name, export)
    _flushables.extend(p for p in (tracer, meter) if hasattr(p, "force_flush"))
    if store:
        from compactobs.store import install

        processor = install(tracer, database_url, spool_max_bytes=spool_max_bytes)
        _flushables.append(processor)
        _own_providers.append(processor)
    _install_exit_hooks()
    return Telemetry(tracer, meter, pricer)


def _lazy_setup() -> Telemetry:
    """For a bare `Middleware()` used without `instrument()`: defaults, and never raise into a call."""
    try:
        return _setup(None, None, None, None, store=True)
    except Exception as err:
        from compactobs.pricing import Pricer
        from compactobs.telemetry import Telemetry

        if isinstance(err, otlp.OtlpConfigError):
            log.error("compactobs: %s; recording without OTLP export", err)
            try:
                return _setup(None, None, None, None, store=True, export=False)
            except Exception as second:
                err = second
        log.error("compactobs: %s; recording without the SQL store", err)
        if guard_module.installed() is None:
            guard_module.install(guard_module.Guard())
        return Telemetry(
            _tracer_provider(None, None, export=False), _meter_provider(None, None, export=False), Pricer()
        )


state.set_factory(_lazy_setup)


def _install_guard(policy: GuardPolicy | Mapping[str, Any] | None, database_url: str | bool | None) -> None:
    """The runtime guard: the service-wide policy, the budgets file (COMPACTOBS_BUDGETS_FILE) and, with a
    store (`database_url` not False), conversations' earlier spend read from it. Raises on a bad file or
    policy."""
    from compactobs.rules import ENV_BUDGETS_FILE, load_budgets

    if isinstance(policy, Mapping):
        policy = GuardPolicy.of(**policy)
    elif policy is not None and not isinstance(policy, GuardPolicy):
        raise TypeError(f"guard must be a compactobs.GuardPolicy or a dict of its fields, not {policy!r}")
    path = os.environ.get(ENV_BUDGETS_FILE)
    budgets = load_budgets(path) if path else None
    timeout_ms = os.environ.get(guard_module.ENV_READ_TIMEOUT_MS, "").strip()
    try:
        read_timeout_s = float(timeout_ms) / 1000 if timeout_ms else guard_module.READ_TIMEOUT_S
        if not 0 <= read_timeout_s <= 60:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{guard_module.ENV_READ_TIMEOUT_MS} must be milliseconds from 0 to 60000, not {timeout_ms!r}"
        ) from None
    spend_store = None
    if database_url is not False:
        from compactobs.guard_store import StoreSpend

        spend_store = StoreSpend(database_url)
    previous = guard_module.installed()
    if previous is not None:
        previous.close()
    guard_module.install(
        guard_module.Guard(
            policy, budgets, store=spend_store, read_timeout_s=read_timeout_s, budgets_file=path or None
        )
    )


def configure(
    database_url: str | None = None,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    service_name: str | None = None,
    store: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
) -> None:
    """Set where compactobs records (see `instrument`) without instrumenting any client.

    For applications that add `compactobs.Middleware()` to chosen clients. Without it, the first
    recorded call sets up the defaults. Calling it again replaces the previous setup.
    """
    with _lock:
        if state.get_telemetry_if_set() is not None:
            shutdown()
        state.set_telemetry(
            _setup(
                database_url,
                tracer_provider,
                meter_provider,
                service_name,
                store,
                guard=guard,
                spool_max_bytes=spool_max_bytes,
            )
        )


def instrument(
    database_url: str | None = None,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    service_name: str | None = None,
    store: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
) -> None:
    """Record every Anthropic and AsyncAnthropic client's Messages calls. Idempotent.

    `database_url`: the SQL store (default `COMPACTOBS_DATABASE_URL`, else SQLite in the user data
    directory); `store=False` records to OpenTelemetry only. Spans go to the application's TracerProvider
    when it has one (or `tracer_provider`), else to compactobs' own, exported over OTLP when
    `OTEL_EXPORTER_OTLP_ENDPOINT` is set, by gRPC or HTTP as `OTEL_EXPORTER_OTLP_PROTOCOL` says (see
    `compactobs.otlp`). `guard`: a service-wide `GuardPolicy` (or a dict of its fields) for the runtime
    guard, which also reads the budgets file `COMPACTOBS_BUDGETS_FILE` (see `compactobs.guard`).
    `spool_max_bytes`: the bound of the on-disk spool that keeps rows while the database is away (default
    `COMPACTOBS_SPOOL_MAX_BYTES`, else 256 MiB). Raises on bad configuration (a malformed pricing or
    budgets file, a bad database URL, a PostgreSQL driver that is not installed), once, here, never inside
    a call.
    """
    if state.get_telemetry_if_set() is None:
        configure(
            database_url,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            service_name=service_name,
            store=store,
            guard=guard,
            spool_max_bytes=spool_max_bytes,
        )
    from compactobs.instrument import auto

    auto.patch()


def uninstrument() -> None:
    """Stop recording the clients `instrument()` reached: they lose compactobs' middleware and get their
    SDK span setting back, those that existed before `instrument()` and those constructed since alike.
    Middleware the application added itself keeps recording."""
    from compactobs.instrument import auto

    auto.unpatch()


def flush(timeout_millis: int = 30_000) -> None:
    """Export everything recorded so far (spans to their exporters, rows to the store)."""
    telemetry = state.get_telemetry_if_set()
    if telemetry is not None and not telemetry.drain(timeout_millis / 1000):
        log.warning("compactobs: calls were still being recorded when flush timed out")
    for flushable in list(_flushables):
        try:
            flushable.force_flush(timeout_millis)
        except Exception:
            log.warning("compactobs: flushing %s failed", type(flushable).__name__, exc_info=True)


def shutdown() -> None:
    """Flush, then close what compactobs opened. Runs by itself at interpreter exit and on SIGTERM."""
    _shutdown(final=False)


def _final_shutdown() -> None:
    """Interpreter exit and SIGTERM: the process ends once this returns, while its other threads may still
    make calls. Calls that return during the flush are recorded as usual; from the last drain on, each
    call is recorded before it returns, and what ends after the store has closed goes to its spool (the
    next compactobs to reach that database writes it). Recording stays in place, never set up anew."""
    _shutdown(final=True)


def _shutdown(final: bool) -> None:
    flush()
    telemetry = state.get_telemetry_if_set()
    if final and telemetry is not None:
        telemetry.close()
        telemetry.drain(5.0)
    for owned in list(_own_providers):
        try:
            owned.shutdown()
        except Exception:
            log.debug("compactobs: shutdown of %s failed", type(owned).__name__, exc_info=True)
    _flushables.clear()
    _own_providers.clear()
    if final:
        return  # recording (and its guard) stays in place for the calls that return while the process ends
    state.set_telemetry(None)
    guard = guard_module.installed()
    if guard is not None:
        guard.close()
    guard_module.install(None)


def _install_exit_hooks() -> None:
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(_final_shutdown)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return  # the application handles SIGTERM (and, we trust, exits through atexit)

    def on_sigterm(signum: int, frame: Any) -> None:
        # The handler interrupts the main thread wherever it is, perhaps holding a lock the flush needs (the
        # recorder's wake-up Event, mid hand-over): flushing here could wait on itself forever. So the flush
        # runs on a thread of its own, started with `_thread` because `threading` takes a module lock the
        # interrupted thread may hold too, and SIGTERM's default action follows it. A second SIGTERM kills.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            _thread.start_new_thread(_shutdown_then_terminate, ())
        except RuntimeError:  # no new thread (the interpreter is finalizing): terminate as by default
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _shutdown_then_terminate() -> None:
    try:
        _final_shutdown()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
