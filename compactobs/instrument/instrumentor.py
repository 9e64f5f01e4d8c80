"""An OpenTelemetry Instrumentor, so `opentelemetry-instrument python app.py` picks compactobs up."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

__all__ = ["CompactobsInstrumentor"]


class CompactobsInstrumentor(BaseInstrumentor):
    """Instruments every Anthropic client with compactobs (`tracer_provider`, `meter_provider` honoured)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("anthropic >= 2.10",)

    def _instrument(self, **kwargs: Any) -> None:  # BaseInstrumentor's keywords: untyped there
        from compactobs import runtime

        # Not `instrument()`: the application's own call to it, later, must win over these defaults.
        runtime._auto_instrument(kwargs.get("tracer_provider"), kwargs.get("meter_provider"))

    def _uninstrument(self, **kwargs: object) -> None:
        from compactobs import runtime

        runtime.uninstrument()
