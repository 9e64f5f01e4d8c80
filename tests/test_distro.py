"""`opentelemetry-instrument python app.py` with opentelemetry-distro installed and its default settings
(OTLP exporters for every signal, protocol grpc): the app's calls are stored and exported, with no change to
the app's code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from compactobs import telemetry as t
from compactobs.store import calls
from compactobs.testing import Reply, Simulator, message

from .otlp_receiver import OtlpReceiver

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
