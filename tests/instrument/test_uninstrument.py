"""`uninstrument()` gives every client its SDK tracing back: those that existed before `instrument()` and
those constructed (or copied) while instrumented. With a global TracerProvider, as applications have it.

The global provider can be set once per process, so the scenario runs in a child interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import anthropic
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import compactobs
    from compactobs.testing import Reply, Simulator, message

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    usage = {"input_tokens": 10, "output_tokens": 5}
    args = dict(model="claude-opus-4-8", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    out = {}
    with Simulator() as sim:
        before = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        compactobs.instrument(store=False)
        during = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        copied = during.with_options(max_retries=0)
        sim.enqueue(Reply(message(model="claude-opus-4-8", usage=usage)))
        during.messages.create(**args)
        compactobs.flush()
        out["while"] = sorted(s.name for s in exporter.get_finished_spans())
        exporter.clear()
        compactobs.uninstrument()
        for name, client in (("before", before), ("during", during), ("copied", copied)):
            out[name + "_enabled"] = client.open_telemetry["traces"]["enabled"]
            sim.enqueue(Reply(message(model="claude-opus-4-8", usage=usage)))
            client.messages.create(**args)
        compactobs.flush()
    out["after"] = [s.name for s in exporter.get_finished_spans()]
    print(json.dumps(out))
    """
)


def test_uninstrument_gives_sdk_tracing_back_to_clients_made_while_instrumented() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    # While instrumented: compactobs' call and iteration spans only (the SDK's is switched off).
    assert out["while"] == ["chat claude-opus-4-8", "message claude-opus-4-8"]
    # After: every client has the SDK's span again, the one made while instrumented and its copy too.
    assert out["before_enabled"] is out["during_enabled"] is out["copied_enabled"] is True
    assert out["after"] == ["anthropic.messages.create"] * 3
