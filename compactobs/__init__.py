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
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from compactobs._version import __version__
from compactobs.instrument import state
from compactobs.instrument.conversation import conversation
from compactobs.telemetry import Telemetry

if TYPE_CHECKING:
    from compactobs.instrument.middleware import Middleware

__all__ = [
    "Middleware",
    "__version__",
    "configure",
    "conversation",
    "flush",
    "instrument",
    "shutdown",
    "uninstrument",
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


def _otlp_configured(signal_name: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal_name}_ENDPOINT")
    )


def _resource(service_name: str | None) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": service_name} if service_name else {})


def _tracer_provider(given: Any, service_name: str | None) -> Any:
    """The application's TracerProvider when it has one, else one of compactobs' own (not made global,
    so other libraries' tracing is not switched on behind the application's back)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if given is not None:
        return given
    app = trace.get_tracer_provider()
    if isinstance(app, TracerProvider):
        return app
    provider = TracerProvider(resource=_resource(service_name))
    if _otlp_configured("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _own_providers.append(provider)
    return provider


def _meter_provider(given: Any, service_name: str | None) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider

    if given is not None:
        return given
    app = metrics.get_meter_provider()
    if isinstance(app, MeterProvider):
        return app
    if not _otlp_configured("METRICS"):
        return metrics.NoOpMeterProvider()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    provider = MeterProvider(
        resource=_resource(service_name), metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    _own_providers.append(provider)
    return provider


def _setup(
    database_url: str | None,
    tracer_provider: Any,
    meter_provider: Any,
    service_name: str | None,
    store: bool,
) -> Telemetry:
    """Providers, the SQL store on the tracer provider, and the pricer. Raises on bad configuration."""
    from compactobs.pricing import default_pricer

    pricer = default_pricer()
    tracer = _tracer_provider(tracer_provider, service_name)
    meter = _meter_provider(meter_provider, service_name)
    _flushables.extend(p for p in (tracer, meter) if hasattr(p, "force_flush"))
    if store:
        from compactobs.store import install

        processor = install(tracer, database_url)
        _flushables.append(processor)
        _own_providers.append(processor)
    _install_exit_hooks()
    return Telemetry(tracer, meter, pricer)


def _lazy_setup() -> Telemetry:
    """For a bare `Middleware()` used without `instrument()`: defaults, and never raise into a call."""
    try:
        return _setup(None, None, None, None, store=True)
    except Exception as err:
        log.error("compactobs: %s; recording without the SQL store", err)
        from compactobs.pricing import Pricer

        return Telemetry(_tracer_provider(None, None), _meter_provider(None, None), Pricer())


state.set_factory(_lazy_setup)


def configure(
    database_url: str | None = None,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    service_name: str | None = None,
    store: bool = True,
) -> None:
    """Set where compactobs records (see `instrument`) without instrumenting any client.

    For applications that add `compactobs.Middleware()` to chosen clients. Without it, the first
    recorded call sets up the defaults. Calling it again replaces the previous setup.
    """
    with _lock:
        if state.get_telemetry_if_set() is not None:
            shutdown()
        state.set_telemetry(_setup(database_url, tracer_provider, meter_provider, service_name, store))


def instrument(
    database_url: str | None = None,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    service_name: str | None = None,
    store: bool = True,
) -> None:
    """Record every Anthropic and AsyncAnthropic client's Messages calls. Idempotent.

    `database_url`: the SQL store (default `COMPACTOBS_DATABASE_URL`, else SQLite in the user data
    directory); `store=False` records to OpenTelemetry only. Spans go to the application's TracerProvider
    when it has one (or `tracer_provider`), else to compactobs' own, exported over OTLP when
    `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Raises on bad configuration (a malformed pricing file, a bad
    database URL), once, here, never inside a call.
    """
    if state.get_telemetry_if_set() is None:
        configure(
            database_url,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            service_name=service_name,
            store=store,
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
    flush()
    for owned in list(_own_providers):
        try:
            owned.shutdown()
        except Exception:
            log.debug("compactobs: shutdown of %s failed", type(owned).__name__, exc_info=True)
    _flushables.clear()
    _own_providers.clear()
    state.set_telemetry(None)


def _install_exit_hooks() -> None:
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(shutdown)
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
        shutdown()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
