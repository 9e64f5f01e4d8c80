"""A malformed budgets or pricing file is one `ConfigError` line (the file, the line, the problem), raised
by `instrument()` / `configure()` where the application can catch it; where no application code can (a
bare `Middleware()` setting itself up inside a call, as the auto-instrumentation does before the app
runs), the line is logged and compactobs records without that file. Never a traceback.

The call bills 1,000 input and 200 output tokens at claude-opus-4-8's list price ($5/$25 per MTok):
1,000 x 5/1e6 + 200 x 25/1e6 = 0.005 + 0.005 = $0.01.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anthropic
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import compactobs
from compactobs import semconv as t
from compactobs.instrument import state
from compactobs.testing import Reply, Simulator, message

BAD_PRICES = '[models."claude-opus-4-8"]\ninput = 5\noutput = "lots"\n'
BAD_BUDGETS = '# budgets\n[budgets."t"]\nusd = -1\n'


def one_call(sim: Simulator, client: anthropic.Anthropic) -> None:
    sim.enqueue(Reply(message(usage={"input_tokens": 1000, "output_tokens": 200})))
    client.messages.create(model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}])


def test_instrument_raises_one_line_naming_file_and_line_and_keeps_the_setup_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    compactobs.configure(store=False, tracer_provider=provider, meter_provider=NoOpMeterProvider())
    prices = tmp_path / "prices.toml"
    prices.write_text(BAD_PRICES)
    monkeypatch.setenv("COMPACTOBS_PRICING_FILE", str(prices))
    try:
        with pytest.raises(compactobs.ConfigError) as raised:
            compactobs.configure(store=False, tracer_provider=provider, service_name="other")
        assert str(raised.value) == (
            f"pricing overrides {prices} (from COMPACTOBS_PRICING_FILE), line 3: "
            'models."claude-opus-4-8".output: must be a number (USD per million tokens), '
            "got the string 'lots'"
        )
        # The setup in place goes on recording, at genai-prices' rates.
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            one_call(sim, client)
        compactobs.flush()
        (call,) = [s for s in exporter.get_finished_spans() if s.attributes[t.SPAN_KIND] == t.SPAN_KIND_CALL]
        assert call.attributes[t.COST_USD] == pytest.approx(0.01, abs=1e-12)
    finally:
        compactobs.shutdown()


def test_instrument_raises_for_a_bad_budgets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(BAD_BUDGETS)
    monkeypatch.setenv("COMPACTOBS_BUDGETS_FILE", str(budgets))
    with pytest.raises(compactobs.ConfigError) as raised:
        compactobs.instrument(
            store=False, tracer_provider=TracerProvider(), meter_provider=NoOpMeterProvider()
        )
    assert (
        str(raised.value)
        == f'budgets file {budgets}, line 3: [budgets."t"].usd must be a finite number >= 0, not -1'
    )
    assert state.get_telemetry_if_set() is None  # nothing half set up


@pytest.mark.parametrize("variable", ["COMPACTOBS_PRICING_FILE", "COMPACTOBS_BUDGETS_FILE"])
def test_set_up_inside_a_call_logs_the_line_and_records_without_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str
) -> None:
    """A bare Middleware() sets compactobs up on its first call, where raising would break the call."""
    bad = tmp_path / "config.toml"
    bad.write_text(BAD_PRICES if variable == "COMPACTOBS_PRICING_FILE" else BAD_BUDGETS)
    monkeypatch.setenv(variable, str(bad))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("COMPACTOBS_DATABASE_URL", raising=False)
    assert state.get_telemetry_if_set() is None
    try:
        with Simulator() as sim, caplog.at_level(logging.WARNING, logger="compactobs"):
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            one_call(sim, client)
            compactobs.flush()
        lines = [r.getMessage() for r in caplog.records if r.name == "compactobs"]
        assert len(lines) == 1 and lines[0].startswith("compactobs: ") and "\n" not in lines[0]
        assert (
            f"{bad}" in lines[0]
            and ", line 3: " in lines[0]
            and lines[0].endswith("; running without that file")
        )
        assert not any(r.exc_info for r in caplog.records)  # no traceback
    finally:
        compactobs.shutdown()
    from sqlalchemy import create_engine, select

    from compactobs.store import calls

    engine = create_engine(f"sqlite:///{tmp_path / 'xdg' / 'compactobs' / 'compactobs.db'}")
    try:
        with engine.connect() as connection:
            (cost,) = connection.execute(select(calls.c.cost_usd)).scalars().all()
    finally:
        engine.dispose()
    assert float(cost) == pytest.approx(0.01, abs=1e-12)  # genai-prices' $5/$25: the bad file left out


def test_a_second_instrument_with_other_settings_says_they_are_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """instrument() is idempotent: settings it cannot apply are named, never dropped in silence."""
    provider, meters = TracerProvider(), NoOpMeterProvider()
    try:
        compactobs.instrument(store=False, tracer_provider=provider, meter_provider=meters, service_name="a")
        with caplog.at_level(logging.WARNING, logger="compactobs"):
            compactobs.instrument(
                store=False, tracer_provider=provider, meter_provider=meters, service_name="a"
            )
            assert caplog.records == []  # the same settings again: nothing to say
            compactobs.instrument(store=False, tracer_provider=provider, service_name="b")
        assert [r.getMessage() for r in caplog.records] == [
            "compactobs: already set up by compactobs.instrument(); instrument() leaves it as it is and "
            "ignores service_name (compactobs.configure(...) replaces a setup)"
        ]
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()
