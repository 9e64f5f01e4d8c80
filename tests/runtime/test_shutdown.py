"""Bounded shutdown: with an OTLP endpoint that never answers, or none at all, `shutdown()` and SIGTERM end
within `COMPACTOBS_SHUTDOWN_TIMEOUT_S`, every call is in the store first, and the calls OTLP did not get
are counted in one log line with the command that sends them later.

Each run is an application in a fresh interpreter exporting over OTLP (compactobs' own providers, as the
OTEL_* variables ask) to a loopback endpoint that accepts connections and never replies (a hung
collector) or to a port nothing listens on. The bounds asserted are generous (the shutdown bound plus
5 s, against an exporter that would wait 10 s per attempt): the tests are about the fault, not speed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from compactobs import store
from tests.otlp_receiver import SilentEndpoint
from tests.store.test_exporter import count

ROOT = Path(__file__).resolve().parent.parent.parent
BOUND_S = 3
CALLS = 25

APP = textwrap.dedent(
    """
    import sys, time
    import anthropic, compactobs
    from compactobs.testing import Reply, Simulator, message

    url, mode, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    compactobs.instrument(url)
    with Simulator() as sim:
        sim.enqueue(*[Reply(message(usage={"input_tokens": 10, "output_tokens": 2}))] * calls)
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        for _ in range(calls):
            client.messages.create(
                model="claude-opus-4-8", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
        if mode == "shutdown":
            started = time.monotonic()
            compactobs.shutdown()
            print(f"shut down in {time.monotonic() - started:.1f} s", flush=True)
        else:
            print("ready", flush=True)
            time.sleep(120)  # SIGTERM ends the process long before this
    """
)


@contextmanager
def endpoint(kind: str) -> Iterator[str]:
    if kind == "silent":
        with SilentEndpoint() as silent:
            yield silent.endpoint
        return
    probe = socket.create_server(("127.0.0.1", 0))  # a port that was free: nothing listens on it now
    port = probe.getsockname()[1]
    probe.close()
    yield f"http://127.0.0.1:{port}"


def start(
    url: str,
    mode: str,
    otlp_endpoint: str,
    protocol: str,
    tmp_path: Path,
    bound_s: float | None = BOUND_S,
    calls: int = CALLS,
) -> subprocess.Popen[str]:
    """The app (`mode` "shutdown": calls, then `compactobs.shutdown()`; else calls, then wait for SIGTERM),
    exporting to `otlp_endpoint`; `bound_s` None: the default shutdown bound."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COMPACTOBS_"))},
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    if bound_s is not None:
        env["COMPACTOBS_SHUTDOWN_TIMEOUT_S"] = str(bound_s)
    return subprocess.Popen(
        [sys.executable, "-c", APP, url, mode, str(calls)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def killed_if_left(app: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The app, killed on the way out if it is still running (a hang the test is about)."""
    try:
        yield app
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()


def assert_counted(stderr: str, url: str) -> None:
    """One line counts the calls OTLP never got and names the command that sends them from the store."""
    (line,) = [line for line in stderr.splitlines() if "not exported over OTLP" in line]
    assert line.startswith(f"compactobs: {CALLS} calls were not exported over OTLP within the {BOUND_S} s ")
    assert "they are in the SQL store; to send them: compactobs --db " in line
    assert " export otlp --since 20" in line and " --endpoint http://127.0.0.1:" in line
    assert "Traceback" not in stderr, stderr
    # Every call is in the store (each one message iteration: no iterations array in the reply).
    assert count(url) == (CALLS, CALLS)


@pytest.mark.parametrize(
    ("kind", "protocol"), [("silent", "grpc"), ("silent", "http/protobuf"), ("dead", "grpc")]
)
def test_shutdown_ends_within_its_bound_with_every_call_stored(
    database_url: str, tmp_path: Path, kind: str, protocol: str
) -> None:
    store.upgrade_database(database_url)
    with (
        endpoint(kind) as otlp_endpoint,
        killed_if_left(start(database_url, "shutdown", otlp_endpoint, protocol, tmp_path)) as app,
    ):
        assert app.stdout is not None
        said = app.stdout.readline().split()
        assert said[:3] == ["shut", "down", "in"], app.stderr.read() if app.stderr else ""
        assert float(said[3]) < BOUND_S + 5
        # ...and the interpreter's exit does not wait on the endpoint either.
        _, err = app.communicate(timeout=BOUND_S + 5)
    assert app.returncode == 0, err
    assert_counted(err, database_url)


def test_sigterm_ends_within_the_bound_with_every_call_stored(database_url: str, tmp_path: Path) -> None:
    store.upgrade_database(database_url)
    with (
        endpoint("silent") as otlp_endpoint,
        killed_if_left(start(database_url, "wait", otlp_endpoint, "grpc", tmp_path)) as app,
    ):
        assert app.stdout is not None
        assert app.stdout.readline().strip() == "ready", app.stderr.read() if app.stderr else ""
        signalled = time.monotonic()
        app.send_signal(signal.SIGTERM)
        _, err = app.communicate(timeout=60)
        took = time.monotonic() - signalled
    assert app.returncode == -signal.SIGTERM, err
    assert took < BOUND_S + 5, (took, err)
    assert_counted(err, database_url)
