"""The README's examples run, and the CLI stays light: against a demo store, every `compactobs ...` line
of the README's code blocks (read at test time, so an example added later is checked too) exits as
documented; no command that makes no API call imports the Anthropic SDK.

The examples that name a server get a real one on loopback: `export otlp` a gRPC or HTTP OTLP receiver
(tests/otlp_receiver.py) in place of `collector:4317` or the default endpoint; `reconcile` the simulator's
usage and cost reports (ANTHROPIC_BASE_URL, as the SDK reads it); a ClickHouse `--db` the demo's spans
written into otel_traces (and the README's `my_traces`) in chdb, the in-process ClickHouse engine running
the same SQL a clickhouse:// server would (Debian's clickhouse-server is too old for the Map type)."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import compactobs
from compactobs.demo import run_demo
from compactobs.reports.sources.clickhouse.source import ClickHouseSource
from compactobs.testing import Reply, Simulator, message
from tests.alert_receiver import Receiver
from tests.cli import run
from tests.otel_traces import write_spans
from tests.otlp_receiver import OtlpReceiver

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[tuple[list[str], str]]:
    """(arguments after `compactobs`, the line's comment) of every line of a fenced code block that starts
    with `compactobs `."""
    commands = []
    in_block = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block and line.startswith("compactobs "):
            command, _, comment = line.partition("  #")
            commands.append((shlex.split(command)[1:], comment.strip()))
    return commands


def allowed_codes(args: list[str], comment: str) -> set[int]:
    """0, or what the README says the command exits with: `(exit code N)` in its comment, 3 for a finding
    at the `--fail-on` level (README: `anomalies` exits 3 with --fail-on)."""
    documented = {int(code) for code in re.findall(r"exit code (\d+)", comment)}
    if "--fail-on" in args:
        documented.add(3)
    return documented or {0}


_CHDB_KEY = "chdb"


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store holding a demo run, and the README's own `ticket-42` conversation (its "Use" example); the
    demo's spans are also written into otel_traces and my_traces in a chdb directory (`_servers`)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('readme') / 'demo.db'}"
    kept = InMemorySpanExporter()
    run_demo(url, span_processors=[SimpleSpanProcessor(kept)])
    directory = tmp_path_factory.mktemp("readme-chdb")
    source = ClickHouseSource(f"chdb://{directory}")
    try:
        for table in ("otel_traces", "my_traces"):
            write_spans(source, kept.get_finished_spans(), table)
    finally:
        source.close()
    _servers[_CHDB_KEY] = f"chdb://{directory}"
    provider = TracerProvider()
    compactobs.configure(url, tracer_provider=provider, meter_provider=NoOpMeterProvider())
    try:
        with Simulator() as sim:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            sim.enqueue(
                Reply(message(model="claude-opus-4-8", usage={"input_tokens": 10, "output_tokens": 5}))
            )
            with compactobs.conversation("ticket-42"):
                client.messages.create(
                    model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
                )
    finally:
        compactobs.shutdown()
        provider.shutdown()
    yield url


def test_the_readme_has_examples() -> None:
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize(
    ("args", "comment"), readme_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_a_readme_example_runs(demo_store: str, args: list[str], comment: str, tmp_path: Path) -> None:
    if args[:1] == ["serve"]:
        _serve_example(demo_store, args, tmp_path)
        return
    with _world(args) as (args, env):
        code, _, err = run("--db", demo_store, *args, env=env)
    assert code in allowed_codes(args, comment), f"compactobs {' '.join(args)} exited {code}: {err}"
    assert "Traceback" not in err


def _serve_example(database_url: str, args: list[str], where: Path) -> None:
    """`compactobs serve ...` as typed, in a process of its own (it serves until stopped) on a free port in
    place of the README's, a token file where the README names one: it answers the API, then stops."""
    import socket
    import time
    import urllib.error
    import urllib.request

    token = "readme-token"
    if "--token-file" in args:
        (where / args[args.index("--token-file") + 1]).write_text(token + "\n", encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if "--port" in args:
        args = [*args[: args.index("--port")], *args[args.index("--port") + 2 :]]
    command = [sys.executable, "-m", "compactobs", "--db", database_url, *args, "--port", str(port)]
    server = subprocess.Popen(command, cwd=where, stderr=subprocess.PIPE, text=True)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/report/ops", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        deadline = time.monotonic() + 120  # only a bound on a server that never comes up
        while True:
            assert server.poll() is None, f"compactobs {' '.join(args)} exited: {server.communicate()[1]}"
            try:
                with urllib.request.urlopen(request) as response:
                    assert json.loads(response.read())["report"] == "ops"
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.1)
    finally:
        server.terminate()
        server.communicate(timeout=60)


_servers: dict[str, str] = {}
"""What `demo_store` set up beside the store: the chdb URL."""


@contextmanager
def _world(args: list[str]) -> Iterator[tuple[list[str], dict[str, str | None]]]:
    """The example's arguments and environment, with the servers it names standing on loopback."""
    env: dict[str, str | None] = {}
    args = [_servers[_CHDB_KEY] if arg.startswith(("clickhouse://", "chdb://")) else arg for arg in args]
    with contextlib.ExitStack() as stack:
        if args[:2] == ["export", "otlp"]:
            protocol = "grpc" if "grpc" in args else "http/protobuf"
            receiver = stack.enter_context(OtlpReceiver(protocol))
            if "--endpoint" in args:
                args[args.index("--endpoint") + 1] = receiver.endpoint
            else:
                env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        if args[:1] == ["reconcile"]:
            sim = stack.enter_context(Simulator())
            env.update(ANTHROPIC_ADMIN_KEY="sk-ant-admin-test", ANTHROPIC_BASE_URL=sim.base_url)
        if args[:1] == ["alert"]:
            # Every destination is a loopback receiver; a routing key read from a file gets a file.
            receiver = stack.enter_context(Receiver(202))
            for option in ("--webhook", "--slack-webhook"):
                if option in args:
                    args[args.index(option) + 1] = receiver.url
            if "--pagerduty-routing-key" in args:
                at = args.index("--pagerduty-routing-key") + 1
                if args[at].startswith("@"):
                    key_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "pagerduty.key"
                    key_file.write_text("R0UT1NGKEY0123456789abcdef012345\n", encoding="utf-8")
                    args[at] = f"@{key_file}"
                args += ["--pagerduty-url", receiver.url]
        yield args, env


# -- no SDK where no call is made --------------------------------------------------------------------------

LIGHT_COMMANDS = (
    ("--help",),
    ("report", "--help"),
    ("report", "cost"),
    ("report", "cost", "--by", "day", "--by", "model", "--compare", "prev"),
    ("report", "cache"),
    ("report", "anomalies"),
    ("alert", "--dry-run"),
    ("report", "ops"),
    ("report", "conversation", "ticket-42"),
    ("db", "status"),
    ("pricing", "show", "claude-opus-4-8"),
    ("pricing", "check"),
)

_CHILD = """
import json, sys
from compactobs.cli import main
try:
    main(sys.argv[1:], prog_name="compactobs")
except SystemExit as done:
    code = done.code
heavy = ("anthropic", "alembic", "sqlalchemy.orm", "opentelemetry", "rich.progress")
loaded = sorted({h for h in heavy for m in sys.modules if m == h or m.startswith(h + ".")})
print(json.dumps({"code": code, "loaded": loaded}))
"""


def test_commands_that_make_no_call_do_not_import_the_sdk(demo_store: str) -> None:
    """Nor what start-up cannot afford for them (bench/cli_startup.py measures it): Alembic (a report reads
    the schema revision without it), SQLAlchemy's ORM (the store is Core tables), OpenTelemetry (nothing is
    recorded), or rich's progress bar when stderr is not a terminal."""
    for command in LIGHT_COMMANDS:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, "--db", demo_store, *command],
            capture_output=True,
            text=True,
            timeout=120,
        )
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["code"] in (0, 1, None), (command, done.stderr)  # pricing check: 1, unpriced models
        # db status reads the spool, whose rows are named by compactobs.semconv's OpenTelemetry attributes.
        allowed = ["opentelemetry"] if command == ("db", "status") else []
        assert [m for m in result["loaded"] if m not in allowed] == [], command
