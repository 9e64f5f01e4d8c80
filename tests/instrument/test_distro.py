"""`opentelemetry-instrument python app.py` with opentelemetry-distro installed and its default settings
(OTLP exporters for every signal, protocol grpc): the app's calls are stored and exported, with no change to
the app's code; the app's own `compactobs.instrument(...)` settings win over the auto-instrumentation's
defaults; a bad budgets file neither stops the app nor hides from the app's own call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from compactobs import semconv as t
from compactobs import store
from compactobs.store import calls
from compactobs.testing import Reply, Simulator, message
from tests.otlp_receiver import OtlpReceiver

APP = textwrap.dedent(
    """
    import os, anthropic

    client = anthropic.Anthropic(base_url=os.environ["APP_API_URL"], api_key="k")
    reply = client.messages.create(
        model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    print("app got", reply.usage.input_tokens, reply.usage.output_tokens)
    """
)


def test_opentelemetry_instrument_with_the_distro(tmp_path: Path) -> None:
    """One run (a subprocess that imports the SDK and the exporters takes seconds): the distro's default
    protocol, gRPC. HTTP/protobuf chosen by OTEL_EXPORTER_OTLP_PROTOCOL is tested in-process (test_otlp)."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    database = tmp_path / "store.db"
    with OtlpReceiver("grpc") as receiver, Simulator() as sim:
        sim.enqueue(Reply(message(usage={"input_tokens": 1000, "output_tokens": 200})))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COMPACTOBS_"))
        }  # the distro's defaults, but for where to send
        env.update(
            APP_API_URL=sim.base_url,
            COMPACTOBS_DATABASE_URL=f"sqlite:///{database}",
            XDG_DATA_HOME=str(tmp_path / "xdg"),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="distro-app",
        )
        instrument = Path(sys.executable).parent / "opentelemetry-instrument"
        done = subprocess.run(
            [str(instrument), sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    assert "app got 1000 200" in done.stdout
    assert "Failed to auto initialize" not in done.stderr, done.stderr
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            (row,) = connection.execute(select(calls)).all()
    finally:
        engine.dispose()
    # $ = 1,000 x 5/M + 200 x 25/M = 0.005 + 0.005 = 0.01
    assert row.service_name == "distro-app" and float(row.cost_usd) == pytest.approx(0.01, abs=1e-12)
    (span,) = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_CALL]
    assert span["span_id"] == row.call_id and span["trace_id"] == row.trace_id
    assert span["resource"]["service.name"] == "distro-app"
    assert span["attributes"][t.USAGE_INPUT_TOKENS] == 1000
    assert t.METRIC_COST in receiver.metrics


EXPLICIT_APP = textwrap.dedent(
    """
    import os, anthropic, compactobs

    compactobs.instrument(
        os.environ["APP_DB"], service_name="billing-agent", guard={"budget_usd": 0.015, "on_breach": "raise"}
    )
    client = anthropic.Anthropic(base_url=os.environ["APP_API_URL"], api_key="k")

    def call():
        client.messages.create(
            model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )

    for conversation in ("ticket-1", "ticket-2"):  # ticket-2's budget comes from the budgets file
        with compactobs.conversation(conversation):
            try:
                for _ in range(3):
                    call()
                print(conversation, "not stopped")
            except compactobs.BudgetExceeded as stop:
                print(conversation, "stopped at", f"{stop.spent_usd:.6f}")
    """
)


def run_under_distro(
    app_text: str, tmp_path: Path, sim: Simulator, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(app_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COMPACTOBS_"))}
    env.update(APP_API_URL=sim.base_url, XDG_DATA_HOME=str(tmp_path / "xdg"), **env_vars)
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    return subprocess.run(
        [str(instrument), sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=120
    )


def stored_calls(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(calls).order_by(calls.c.start_ms)).all())
    finally:
        engine.dispose()


def test_the_apps_own_settings_win_under_opentelemetry_instrument(database_url: str, tmp_path: Path) -> None:
    """Store, service name, guard and budgets file work as under plain `python`: before, the calls went to
    the default store as unknown_service:python and the guard never raised."""
    store.upgrade_database(database_url)
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[budgets."ticket-2"]\nusd = 0.005\non_breach = "raise"\n')
    with OtlpReceiver("grpc") as receiver, Simulator() as sim:
        sim.enqueue(*[Reply(message(usage={"input_tokens": 1000, "output_tokens": 200}))] * 6)
        done = run_under_distro(
            EXPLICIT_APP,
            tmp_path,
            sim,
            APP_DB=database_url,
            COMPACTOBS_BUDGETS_FILE=str(budgets),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        )
    assert done.returncode == 0, done.stderr
    # Each call: 1,000 x $5/M + 200 x $25/M = $0.01. ticket-1 ($0.015, from the code) stops before its
    # third call, at $0.02; ticket-2 ($0.005, from the file) before its second, at $0.01.
    assert done.stdout.splitlines() == ["ticket-1 stopped at 0.020000", "ticket-2 stopped at 0.010000"]
    rows = stored_calls(database_url)
    assert [(row.conversation_id, row.service_name) for row in rows] == [
        ("ticket-1", "billing-agent"),
        ("ticket-1", "billing-agent"),
        ("ticket-2", "billing-agent"),
    ]
    assert sum(Decimal(str(row.cost_usd)) for row in rows) == Decimal("0.03")  # 3 calls x $0.01
    default_store = tmp_path / "xdg" / "compactobs" / "compactobs.db"  # set up before the app's code ran
    assert not default_store.exists() or stored_calls(f"sqlite:///{default_store}") == []
    (line,) = [line for line in done.stderr.splitlines() if "settings from" in line]
    assert line == (
        "compactobs: settings from compactobs.instrument(): database_url, service_name, guard; "
        "from opentelemetry-instrument: tracer_provider, meter_provider; the rest are defaults"
    )
    spans = [s for s in receiver.spans if s["attributes"].get(t.SPAN_KIND) == t.SPAN_KIND_CALL]
    assert [s["resource"]["service.name"] for s in spans] == ["billing-agent"] * 3


BAD_BUDGETS_APP = textwrap.dedent(
    """
    import os, anthropic, compactobs

    client = anthropic.Anthropic(base_url=os.environ["APP_API_URL"], api_key="k")
    client.messages.create(
        model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    print("recorded without the file")
    try:
        compactobs.instrument(os.environ["APP_DB"])
    except compactobs.ConfigError as err:
        print("the app caught:", err)
    """
)


def test_a_bad_budgets_file_under_opentelemetry_instrument(tmp_path: Path) -> None:
    """No application code runs before the auto-instrumentation: it logs the file's one line and records
    without it. The application's own instrument() raises the same line, where it can catch it."""
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[budgets."t"]\nusd = 1\non_breach = "stop"\n')
    database = f"sqlite:///{tmp_path / 'store.db'}"
    with Simulator() as sim:
        sim.enqueue(Reply(message(usage={"input_tokens": 1000, "output_tokens": 200})))
        done = run_under_distro(
            BAD_BUDGETS_APP,
            tmp_path,
            sim,
            APP_DB=database,
            COMPACTOBS_DATABASE_URL=database,
            COMPACTOBS_BUDGETS_FILE=str(budgets),
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
    assert done.returncode == 0, done.stderr
    problem = (
        f'budgets file {budgets}, line 3: [budgets."t"].on_breach must be one of warn, pause, raise, '
        "not 'stop'"
    )
    assert done.stdout.splitlines() == ["recorded without the file", f"the app caught: {problem}"]
    assert done.stderr.splitlines() == [f"compactobs: {problem}; running without that file"]
    assert len(stored_calls(database)) == 1
