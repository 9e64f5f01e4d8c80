"""Instrument every client of the installed SDK that serves the Messages API (first-party, Bedrock, Vertex,
Foundry, ...; sync and async: `compactobs.instrument.platforms.CLIENT_CLASSES`), those made later and those
that exist.

New clients: the constructor is wrapped to pass compactobs' middleware and an `open_telemetry` option with
the SDK's own spans off, both through the constructor's public parameters. compactobs then owns the one
token-carrying span per call (DESIGN.md section 4). A client whose `open_telemetry` explicitly enables
traces keeps the SDK's span, and compactobs' span becomes its child.

Existing clients are found once, at `instrument()`, and given the same middleware. The SDK has no public
way to change an existing client's middleware, so this uses its private `_middleware` attributes, guarded:
if they change, those clients are skipped with a warning and new clients are still instrumented.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import weakref
from collections.abc import Callable

from compactobs._types import JSONObject, SDKObject
from compactobs.instrument import state
from compactobs.instrument.middleware import Middleware
from compactobs.instrument.platforms import CLIENT_CLASSES

log = logging.getLogger("compactobs")

_ROOT_CLASSES: tuple[type[SDKObject], ...] = tuple(
    cls
    for cls in CLIENT_CLASSES
    if not any(cls is not base and issubclass(cls, base) for base in CLIENT_CLASSES)
)
"""The constructors to wrap: a subclass (AnthropicFoundry, AnthropicAWS, ...) passes its middleware through
its base's constructor, so wrapping both would give it two middleware."""

_lock = threading.Lock()
_original_inits: dict[type[SDKObject], Callable[..., None]] = {}
_clients: weakref.WeakSet[SDKObject] = weakref.WeakSet()
_original_options: weakref.WeakKeyDictionary[SDKObject, SDKObject] = weakref.WeakKeyDictionary()
"""The `open_telemetry` option each client had, or was given, before compactobs switched its SDK spans off:
`unpatch()` gives it back, to clients that existed at `patch()` and to those constructed since."""


def _keeps_sdk_spans(option: object) -> bool:
    """Whether the caller explicitly turned the SDK's traces on."""
    if not isinstance(option, dict):
        return False
    traces = option.get("traces")
    return traces is True or (isinstance(traces, dict) and traces.get("enabled") is True)


def _without_sdk_spans(option: object) -> JSONObject:
    """The option with the SDK's traces off; conversation id, tracer provider and propagation kept."""
    if not isinstance(option, dict):
        return {"traces": False}
    traces = option.get("traces")
    traces = dict(traces) if isinstance(traces, dict) else {}
    traces["enabled"] = False
    return {**option, "traces": traces}


def _wrap_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: SDKObject, *args: SDKObject, **kwargs: SDKObject) -> None:
        ours: Middleware | None = None
        given_option: SDKObject = None
        replaced_option = False
        try:
            # A copy (`with_options`) passes the original's middleware: ours is re-bound to the new client.
            given = [
                m for m in (kwargs.get("middleware") or ()) if not (isinstance(m, Middleware) and m._auto)
            ]
            # A client given compactobs.Middleware() explicitly is the application's to configure.
            if state.active and not any(isinstance(m, Middleware) for m in given):
                ours = Middleware(_auto=True)
                kwargs["middleware"] = [*given, ours]
                given_option = kwargs.get("open_telemetry")
                if not _keeps_sdk_spans(given_option):
                    kwargs["open_telemetry"] = _without_sdk_spans(given_option)
                    replaced_option = True
        except Exception:
            log.debug("compactobs could not prepare a client", exc_info=True)
        original(self, *args, **kwargs)
        if ours is not None:
            try:
                ours.bind(self)
                _clients.add(self)
                if replaced_option:
                    # What the application asked for (None: the SDK's defaults and environment), for unpatch.
                    _original_options[self] = given_option
            except Exception:
                log.debug("compactobs could not bind a client", exc_info=True)

    __init__.__compactobs_original__ = original  # type: ignore[attr-defined]
    return __init__


def _instrument_existing(client: SDKObject) -> None:
    if any(isinstance(m, Middleware) for m in client._middleware):
        return
    ours = Middleware(_auto=True)
    ours.bind(client)
    client._middleware = (*client._middleware, ours)
    client._middleware_chain = client._build_middleware_chain()
    # An existing client's option is already resolved, so an explicit choice cannot be told from the
    # default: switch its spans off (given back at uninstrument) to keep one token-carrying span per call.
    option = client.open_telemetry
    _original_options[client] = option
    client._set_open_telemetry(_without_sdk_spans(option))
    _clients.add(client)


def patch() -> None:
    """Instrument new clients from now on, and every client that exists. Idempotent."""
    with _lock:
        state.active = True
        for cls in _ROOT_CLASSES:
            if cls not in _original_inits:
                _original_inits[cls] = cls.__init__
                cls.__init__ = _wrap_init(cls.__init__)
        try:
            existing = [
                obj for obj in gc.get_objects() if isinstance(obj, CLIENT_CLASSES) and obj not in _clients
            ]
        except Exception:
            existing = []
        for client in existing:
            try:
                _instrument_existing(client)
            except Exception:
                log.warning("compactobs could not instrument an existing %s client", type(client).__name__)


def unpatch() -> None:
    """Undo `patch()`: constructors restored, middleware removed, SDK span settings given back."""
    with _lock:
        state.active = False
        for cls, original in _original_inits.items():
            cls.__init__ = original
        _original_inits.clear()
        for client in list(_clients):
            try:
                client._middleware = tuple(m for m in client._middleware if not isinstance(m, Middleware))
                client._middleware_chain = client._build_middleware_chain()
                if client in _original_options:
                    client._set_open_telemetry(_original_options.pop(client))
            except Exception:
                log.debug("compactobs could not uninstrument a client", exc_info=True)
        _clients.clear()
