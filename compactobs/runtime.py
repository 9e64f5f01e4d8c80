"""The runtime: `configure()`/`instrument()` set up providers, the SQL store, the pricer, the guard and the
exit hooks; `flush()`/`shutdown()` end it. `compactobs/__init__.py` re-exports the public functions.

OpenTelemetry, the recorder, the store and the guard are imported when recording is set up, not with the
package: the CLI imports the package too, and its reports need none of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar, cast

from compactobs import lifecycle, otlp
from compactobs.configfile import ConfigError
from compactobs.instrument import state

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from opentelemetry.trace import TracerProvider

    from compactobs.guard import GuardPolicy
    from compactobs.recorder import Telemetry

__all__ = [
    "AUTO_INSTRUMENTATION",
    "configure",
    "flush",
    "instrument",
    "shutdown",
    "uninstrument",
]

log = logging.getLogger("compactobs")

_T = TypeVar("_T")


_lock = threading.Lock()

AUTO_INSTRUMENTATION: Final = "opentelemetry-instrument"
_configured_by: str | None = None
"""Who set up the recording in use: "compactobs.instrument()", "compactobs.configure()", AUTO_INSTRUMENTATION,
or None (the defaults a bare `Middleware()` set up on its first call, or nothing yet)."""
_auto_providers: tuple[TracerProvider | None, MeterProvider | None] = (None, None)
"""The providers opentelemetry-instrument handed compactobs' instrumentor (None: it handed none)."""
_DEFAULTS: Final = {"store": True}
"""configure()'s arguments whose default is not None."""


class _Settings(TypedDict, total=False):
    """configure()'s arguments, by name."""

    database_url: str | None
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    service_name: str | None
    store: bool
    guard: GuardPolicy | Mapping[str, Any] | None
    spool_max_bytes: int | None
    spool_dir: str | os.PathLike[str] | None
    shutdown_timeout_s: float | None


_settings_in_use: _Settings = {}
"""The arguments the recording in use was set up with."""


def _resource(service_name: str | None) -> Resource:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": service_name} if service_name else {})


def _named_elsewhere(provider: TracerProvider | MeterProvider, service_name: str | None) -> bool:
    """Whether `service_name` was given and the application's provider names another service."""
    if not service_name:
        return False
    # A TracerProvider shows its resource; a MeterProvider keeps it in its (private) configuration only, so
    # this is read guarded: a provider whose resource cannot be read counts as naming another service.
    resource = getattr(provider, "resource", None) or getattr(provider, "_sdk_config", None)
    resource = getattr(resource, "resource", resource)
    attributes = getattr(resource, "attributes", None) or {}
    return attributes.get("service.name") != service_name


def _tracer_provider(
    given: TracerProvider | None, service_name: str | None, export: bool = True
) -> TracerProvider:
    """The application's TracerProvider when it has one, else one of compactobs' own (not made global,
    so other libraries' tracing is not switched on behind the application's back). A `service_name` given
    explicitly wins: when the application's provider names another service, compactobs' spans go to a
    provider of its own under that name (exported as the OTEL_* variables say, as without a provider)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if given is not None:
        return given
    app = trace.get_tracer_provider()
    if isinstance(app, TracerProvider) and not _named_elsewhere(app, service_name):
        return app
    # compactobs shuts it down itself, within the shutdown bound: the SDK's own exit hook would wait on an
    # OTLP endpoint that does not answer for as long as the exporter's timeout and retries take.
    provider = TracerProvider(resource=_resource(service_name), shutdown_on_exit=False)
    tally = None
    if export and otlp.export_requested("TRACES"):
        from compactobs import semconv as t

        # The exporter reads endpoint, headers, timeout and compression from the standard OTEL_* variables;
        # the tally counts what it has not sent when the shutdown's bound ends the wait.
        tally = lifecycle.ExportTally(t.INSTRUMENTATION_SCOPE, t.SPAN_KIND, t.SPAN_KIND_CALL)
        tally.endpoint = otlp.configured_endpoint("TRACES")
        tally.protocol = otlp.protocol("TRACES")
        provider.add_span_processor(tally.processor())
        provider.add_span_processor(BatchSpanProcessor(tally.exporter(otlp.span_exporter())))
    lifecycle.adopt(provider, tally=tally)
    return provider


def _meter_provider(
    given: MeterProvider | None, service_name: str | None, export: bool = True
) -> MeterProvider:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    if given is not None:
        return given
    app = metrics.get_meter_provider()
    if isinstance(app, MeterProvider) and not _named_elsewhere(app, service_name):
        return app
    if not (export and otlp.export_requested("METRICS")):
        return metrics.NoOpMeterProvider()
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    provider = MeterProvider(
        resource=_resource(service_name),
        metric_readers=[PeriodicExportingMetricReader(otlp.metric_exporter())],
        shutdown_on_exit=False,  # compactobs shuts it down, within the shutdown bound (see _tracer_provider)
    )
    lifecycle.adopt(provider)
    return provider


def _unless_bad(load: Callable[[], _T], lenient: bool) -> _T | None:
    """`load()`; where `lenient` (auto-instrumentation: no application code runs first to catch it), a bad
    configuration file is logged in its one line and left out (None) instead of raised."""
    try:
        return load()
    except ConfigError as err:
        if not lenient:
            raise
        log.error("compactobs: %s; running without that file", err)
        return None


def _setup(
    database_url: str | None,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    service_name: str | None,
    store: bool,
    export: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    *,
    lenient: bool = False,
) -> Telemetry:
    """Providers, the SQL store on the tracer provider, the pricer and the guard. Raises on bad
    configuration (`lenient`: a bad pricing or budgets file is logged and left out instead)."""
    from compactobs.pricing import Pricer, default_pricer
    from compactobs.recorder import Telemetry

    pricer = _unless_bad(default_pricer, lenient) or Pricer()
    lifecycle.load_in_background("load-prices", pricer.load)
    if store:
        from compactobs.store import default_database_url, parse_url

        parse_url(database_url or default_database_url())  # a bad URL or an unusable driver: raise here
    _install_guard(guard, database_url if store else False, lenient=lenient)
    tracer = _tracer_provider(tracer_provider, service_name, export)
    meter = _meter_provider(meter_provider, service_name, export)
    for provider in (tracer, meter):
        if hasattr(provider, "force_flush"):
            lifecycle.watch(provider)
    if store:
        from compactobs.store import install

        # `install` adds a span processor, which the SDK's TracerProvider takes: compactobs' own and the
        # application's found above are the SDK's; one given as `tracer_provider` must be too.
        sdk_tracer = cast("SDKTracerProvider", tracer)
        processor = install(sdk_tracer, database_url, spool_max_bytes=spool_max_bytes, spool_dir=spool_dir)
        lifecycle.adopt(processor, store=True)
        lifecycle.loading(processor.preparing)
    lifecycle.install_exit_hooks()
    return Telemetry(tracer, meter, pricer)


def _lazy_setup() -> Telemetry:
    """For a bare `Middleware()` used without `instrument()`: defaults, and never raise into a call."""
    try:
        return _setup(None, None, None, None, store=True, lenient=True)
    except Exception as err:
        from compactobs.pricing import Pricer
        from compactobs.recorder import Telemetry

        if isinstance(err, otlp.OtlpConfigError):
            log.error("compactobs: %s; recording without OTLP export", err)
            try:
                return _setup(None, None, None, None, store=True, export=False, lenient=True)
            except Exception as second:
                err = second
        log.error("compactobs: %s; recording without the SQL store", err)
        from compactobs import guard as guard_module

        if guard_module.installed() is None:
            guard_module.install(guard_module.Guard())
        return Telemetry(
            _tracer_provider(None, None, export=False), _meter_provider(None, None, export=False), Pricer()
        )


state.set_factory(_lazy_setup)


def _install_guard(
    policy: GuardPolicy | Mapping[str, Any] | None, database_url: str | bool | None, *, lenient: bool = False
) -> None:
    """The runtime guard: the service-wide policy, the budgets file (COMPACTOBS_BUDGETS_FILE) and, with a
    store (`database_url` not False), conversations' earlier spend read from it. Raises on a bad file or
    policy (`lenient`: a bad file is logged and left out)."""
    from compactobs import guard as guard_module
    from compactobs.rules import ENV_BUDGETS_FILE, load_budgets

    if isinstance(policy, Mapping):
        policy = guard_module.GuardPolicy.of(**policy)
    elif policy is not None and not isinstance(policy, guard_module.GuardPolicy):
        raise TypeError(f"guard must be a compactobs.GuardPolicy or a dict of its fields, not {policy!r}")
    path = os.environ.get(ENV_BUDGETS_FILE)
    budgets = _unless_bad(lambda: load_budgets(path), lenient) if path else None
    timeout_ms = os.environ.get(guard_module.ENV_READ_TIMEOUT_MS, "").strip()
    try:
        read_timeout_s = float(timeout_ms) / 1000 if timeout_ms else guard_module.READ_TIMEOUT_S
        if not 0 <= read_timeout_s <= 60:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{guard_module.ENV_READ_TIMEOUT_MS} must be milliseconds from 0 to 60000, not {timeout_ms!r}"
        ) from None
    spend_store = None
    if isinstance(database_url, str) or database_url is None:
        from compactobs.guard.store import StoreSpend

        spend_store = StoreSpend(database_url)
    previous = guard_module.installed()
    if previous is not None:
        previous.close()
    guard_module.install(
        guard_module.Guard(
            policy, budgets, store=spend_store, read_timeout_s=read_timeout_s, budgets_file=path or None
        )
    )


def _configure(origin: str, settings: _Settings) -> None:
    """Set up recording with `settings` (configure()'s arguments) on behalf of `origin`, replacing any
    setup in place. Over opentelemetry-instrument's setup, the settings given here win, the rest (its
    providers) are kept, and one line says which came from where."""
    global _configured_by, _settings_in_use
    given = [name for name, value in settings.items() if value != _DEFAULTS.get(name)]
    asked = settings.copy()
    with _lock:
        previous = _configured_by if state.get_telemetry_if_set() is not None else None
        if previous == AUTO_INSTRUMENTATION and origin != AUTO_INSTRUMENTATION:
            # What the application leaves unset stays as opentelemetry-instrument set it: its providers.
            kept = [name for name in ("tracer_provider", "meter_provider") if settings[name] is None]
            settings["tracer_provider"] = settings["tracer_provider"] or _auto_providers[0]
            settings["meter_provider"] = settings["meter_provider"] or _auto_providers[1]
            meeting = (
                f"compactobs: settings from {origin}: {', '.join(given) or 'none'}; from "
                f"{AUTO_INSTRUMENTATION}: {', '.join(kept) or 'none'}; the rest are defaults"
            )
        else:
            meeting = None
        lifecycle.check_shutdown_timeout(settings["shutdown_timeout_s"])
        if origin != AUTO_INSTRUMENTATION:
            _check_files()  # a bad file raises here, and the setup in place goes on recording
        if state.get_telemetry_if_set() is not None:
            shutdown()
        lifecycle.set_shutdown_timeout(settings.pop("shutdown_timeout_s"))
        state.set_telemetry(
            _setup(
                settings.pop("database_url"),
                settings.pop("tracer_provider"),
                settings.pop("meter_provider"),
                settings.pop("service_name"),
                settings.pop("store"),
                lenient=origin == AUTO_INSTRUMENTATION,
                guard=settings.get("guard"),
                spool_max_bytes=settings.get("spool_max_bytes"),
                spool_dir=settings.get("spool_dir"),
            )
        )
        _configured_by = origin
        _settings_in_use = asked
        if meeting is not None:
            log.warning("%s", meeting)


def _check_files() -> None:
    """Read the pricing and budgets files as `_setup` will. Raises ConfigError."""
    from compactobs.pricing import default_pricer
    from compactobs.rules import ENV_BUDGETS_FILE, load_budgets

    default_pricer()
    path = os.environ.get(ENV_BUDGETS_FILE)
    if path:
        load_budgets(path)


def configure(
    database_url: str | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    service_name: str | None = None,
    store: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    shutdown_timeout_s: float | None = None,
) -> None:
    """Set where compactobs records (see `instrument`) without instrumenting any client.

    For applications that add `compactobs.Middleware()` to chosen clients. Without it, the first
    recorded call sets up the defaults. Calling it again replaces the previous setup.
    """
    _configure("compactobs.configure()", cast("_Settings", dict(locals())))


def instrument(
    database_url: str | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    service_name: str | None = None,
    store: bool = True,
    guard: GuardPolicy | Mapping[str, Any] | None = None,
    spool_max_bytes: int | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    shutdown_timeout_s: float | None = None,
) -> None:
    """Record the Messages calls of every client of the SDK, sync and async: Anthropic, Bedrock, Vertex,
    Foundry, ... (`compactobs.instrument.platforms.CLIENT_CLASSES`). Idempotent.

    `database_url`: the SQL store (default `COMPACTOBS_DATABASE_URL`, else SQLite in the user data
    directory); `store=False` records to OpenTelemetry only. Spans go to the application's TracerProvider
    when it has one (or `tracer_provider`), else to compactobs' own, exported over OTLP when
    `OTEL_EXPORTER_OTLP_ENDPOINT` is set, by gRPC or HTTP as `OTEL_EXPORTER_OTLP_PROTOCOL` says (see
    `compactobs.otlp`); `service_name` names the service on compactobs' spans (a provider of its own when
    the application's names another). `guard`: a service-wide `GuardPolicy` (or a dict of its fields) for
    the runtime guard, which also reads the budgets file `COMPACTOBS_BUDGETS_FILE` (see `compactobs.guard`).
    `spool_max_bytes`: the bound of the on-disk spool that keeps rows while the database is away (default
    `COMPACTOBS_SPOOL_MAX_BYTES`, else 256 MiB). `spool_dir`: where that spool lives (default
    `COMPACTOBS_SPOOL_DIR`, else `spool/` in the data directory; each database gets a subdirectory).
    `shutdown_timeout_s`: how long `shutdown()`, interpreter exit and SIGTERM may take in all (default
    `COMPACTOBS_SHUTDOWN_TIMEOUT_S`, else 20 s).

    Under `opentelemetry-instrument`, compactobs is set up before the application's code runs; a call here
    that gives settings then replaces that setup, its settings winning (see the log's one line). Raises on
    bad configuration once, here, never inside a call: `ConfigError` for a malformed pricing or budgets
    file (one line: the file, the line, the problem), `StoreError` for a bad database URL or a PostgreSQL
    driver that is not installed.
    """
    settings = cast("_Settings", dict(locals()))
    given = {name: value for name, value in settings.items() if value != _DEFAULTS.get(name)}
    if state.get_telemetry_if_set() is None or (_configured_by in (None, AUTO_INSTRUMENTATION) and given):
        _configure("compactobs.instrument()", settings)
    else:
        ignored = sorted(name for name, value in given.items() if _settings_in_use.get(name) != value)
        if ignored:
            log.warning(
                "compactobs: already set up by %s; instrument() leaves it as it is and ignores %s "
                "(compactobs.configure(...) replaces a setup)",
                _configured_by,
                ", ".join(ignored),
            )
    from compactobs.instrument import auto

    auto.patch()


def _auto_instrument(tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None) -> None:
    """compactobs' OpenTelemetry instrumentor: the defaults, before any application code runs. A bad
    pricing or budgets file is logged in one line and left out, since no application code could catch it;
    the application's own `instrument(...)` later replaces this setup (and raises for such a file)."""
    global _auto_providers
    _auto_providers = (tracer_provider, meter_provider)
    if state.get_telemetry_if_set() is None:
        settings = _Settings(
            database_url=None,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            service_name=None,
            store=True,
            guard=None,
            spool_max_bytes=None,
            spool_dir=None,
            shutdown_timeout_s=None,
        )
        _configure(AUTO_INSTRUMENTATION, settings)
    from compactobs.instrument import auto

    auto.patch()


def uninstrument() -> None:
    """Stop recording the clients `instrument()` reached: they lose compactobs' middleware and get their
    SDK span setting back, those that existed before `instrument()` and those constructed since alike.
    Middleware the application added itself keeps recording."""
    from compactobs.instrument import auto

    auto.unpatch()


def flush(timeout_millis: int = 30_000) -> None:
    """Export everything recorded so far: calls into spans, then rows to the SQL store, then spans to their
    other exporters (OTLP), within `timeout_millis` in all."""
    lifecycle.flush(timeout_millis)


def shutdown() -> None:
    """Flush, then close what compactobs opened, within the shutdown bound (`configure(shutdown_timeout_s=
    ...)`, `COMPACTOBS_SHUTDOWN_TIMEOUT_S`, else 20 s): the SQL store first, OTLP export with the time left.
    Runs by itself at interpreter exit, on SIGTERM and at a forked child's exit."""
    global _configured_by, _settings_in_use
    lifecycle.shutdown(final=False)
    _configured_by, _settings_in_use = None, {}
