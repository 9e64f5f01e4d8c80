"""The service's tags: `compactobs.instrument(guard=GuardPolicy(tags=...))` / `configure(...)` through the
real SDK against the simulator into an SQLite store: on every call of the service, under a conversation's own
tags key by key, grouping `report cost --by tag:KEY`.

Every call below is Sonnet 4.5 ($3 in, $15 out per MTok) answering 1,000 input and 200 output tokens:
1,000 x $3/M = $0.003, 200 x $15/M = $0.003, so $0.006 a call.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

import compactobs
from compactobs import guard, store
from compactobs.semconv import TAG_PREFIX
from compactobs.store.models import calls
from compactobs.testing import Reply, Simulator, message
from tests.cli import run
from tests.instrument.test_batches import CUSTOM_IDS, make_batch, read_results, stored_calls
from tests.recording import recording

SONNET = "claude-sonnet-4-5"
USAGE = {"input_tokens": 1000, "output_tokens": 200}
SERVICE = compactobs.GuardPolicy(tags={"team": "search", "env": "prod"})


def _ask(client: Any) -> None:
    client.messages.create(model=SONNET, max_tokens=8, messages=[{"role": "user", "content": "hi"}])


def _record(url: str, exporter: InMemorySpanExporter | None = None) -> None:
    """2 calls outside any conversation, 2 in c1 (tagged team=ads, agent=planner), 1 in c2 (no tags)."""
    processors = [SimpleSpanProcessor(exporter)] if exporter is not None else []
    with recording(url, service_name="app", processors=processors, guard=SERVICE) as (sim, client):
        sim.enqueue(*[Reply(message(usage=USAGE, model=SONNET))] * 5)
        _ask(client)
        _ask(client)
        with compactobs.conversation("c1", tags={"team": "ads", "agent": "planner"}):
            _ask(client)
            _ask(client)
        with compactobs.conversation("c2"):
            _ask(client)
        # A policy that only tags guards nothing: no conversation was counted by the guard.
        assert guard.spend("c1") is None and guard.spend("c2") is None


def test_service_tags_on_every_call_under_the_conversations_own(sqlite_url: str) -> None:
    exporter = InMemorySpanExporter()
    _record(sqlite_url, exporter)
    service = {"env": "prod", "team": "search"}
    c1 = {"agent": "planner", "env": "prod", "team": "ads"}  # c1's team wins; the service's env stays
    spans = [
        span
        for span in exporter.get_finished_spans()
        if any(k == TAG_PREFIX + "team" for k in span.attributes or {})
    ]
    on_spans = sorted(
        json.dumps(
            {k[len(TAG_PREFIX) :]: v for k, v in (span.attributes or {}).items() if k.startswith(TAG_PREFIX)}
        )
        for span in spans
    )
    assert on_spans == sorted([json.dumps(service)] * 3 + [json.dumps(c1)] * 2)
    engine = store.open_database(sqlite_url)
    try:
        with engine.connect() as connection:
            stored = sorted(row.tags for row in connection.execute(select(calls.c.tags)))
    finally:
        engine.dispose()
    # One compact JSON object a call, keys sorted.
    assert (
        stored
        == ['{"agent":"planner","env":"prod","team":"ads"}'] * 2 + ['{"env":"prod","team":"search"}'] * 3
    )


def test_report_cost_groups_by_a_service_tag(sqlite_url: str) -> None:
    _record(sqlite_url)
    code, out, err = run("--db", sqlite_url, "report", "cost", "--by", "tag:team", "--format", "json")
    assert code == 0, err
    rows = {row["tag:team"]: (row["calls"], Decimal(str(row["cost_usd"]))) for row in json.loads(out)["rows"]}
    # search: the 2 calls outside and c2's 1, 3 x $0.006 = $0.018; ads: c1's 2, 2 x $0.006 = $0.012.
    assert rows == {"search": (3, Decimal("0.018")), "ads": (2, Decimal("0.012"))}
    code, out, err = run("--db", sqlite_url, "report", "cost", "--by", "tag:env", "--format", "json")
    assert code == 0, err
    rows = {row["tag:env"]: (row["calls"], Decimal(str(row["cost_usd"]))) for row in json.loads(out)["rows"]}
    assert rows == {"prod": (5, Decimal("0.03"))}  # every call: 5 x $0.006 = $0.030


def test_over_merges_tags_key_by_key() -> None:
    upper = compactobs.GuardPolicy.of(budget_usd=1, tags={"team": "ads", "agent": "planner"})
    merged = upper.over(compactobs.GuardPolicy(tags={"team": "search", "env": "prod"}, loop=False))
    assert merged.tags == (("agent", "planner"), ("env", "prod"), ("team", "ads"))
    assert merged.budget_usd == Decimal("1") and merged.loop is False
    assert not merged.only_tags and SERVICE.only_tags and not compactobs.GuardPolicy().only_tags


def test_a_conversations_own_tags_are_never_crowded_out_by_its_services() -> None:
    """16 tags at most: the conversation's 10 all stay; 6 of the service's 10 fill the room, by key."""
    service = compactobs.GuardPolicy(tags={f"s{n:02d}": "service" for n in range(10)})
    own = compactobs.GuardPolicy.of(tags={f"z{n:02d}": "own" for n in range(10)})
    merged = dict(own.over(service).tags)
    assert [key for key in merged if key.startswith("z")] == [f"z{n:02d}" for n in range(10)]
    assert [key for key in merged if key.startswith("s")] == [f"s{n:02d}" for n in range(6)]


@pytest.mark.parametrize(
    "tags",
    [
        {"a b": "x"},
        {"": "x"},
        {"k" * 65: "x"},
        {"agent": ""},
        {"agent": 3},
        {"agent": "a\x00b"},
        {"agent": "caf\udce9"},  # a lone surrogate (os.fsdecode of a Latin-1 name): no database keeps it
        {f"k{n}": "v" for n in range(17)},
        ["agent"],
        "agent",
    ],
)
def test_bad_tags_in_a_policy_are_one_value_error_line(tags: Any) -> None:
    for make in (
        lambda: compactobs.GuardPolicy(tags=tags),
        lambda: compactobs.GuardPolicy.of(tags=tags),
        lambda: compactobs.configure(store=False, guard={"tags": tags}),
    ):
        with pytest.raises(ValueError) as raised:
            make()
        assert str(raised.value) and "\n" not in str(raised.value)
    compactobs.shutdown()


def test_batch_results_carry_the_service_tags(sqlite_url: str) -> None:
    store.upgrade_database(sqlite_url)
    with Simulator() as sim:
        batch_id = make_batch(sim)  # 5 results: tests/instrument/test_batches.py
        compactobs.configure(sqlite_url, tracer_provider=TracerProvider(), guard=SERVICE)
        try:
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()]
            )
            read_results(client, batch_id)
        finally:
            compactobs.shutdown()
    stored = {row["custom_id"]: row["tags"] for row in stored_calls(sqlite_url).values()}
    assert stored == dict.fromkeys(CUSTOM_IDS, '{"env":"prod","team":"search"}')
