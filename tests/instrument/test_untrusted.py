"""Hostile strings in a response are contained: escaped in the log, ids bounded in the spans and the store,
the cost still exact. Through the real SDK over real HTTP (JSON and SSE) against the simulator, stored on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

import compactobs
from compactobs import semconv as t
from compactobs import store
from compactobs.testing import Reply, Simulator, message
from compactobs.untrusted import MAX_ID_CHARS, bounded_id, escape
from tests.cli import run

HOSTILE_TYPE = "evil\x1b[31mRED\nWARNING:compactobs:forged line\x9b2J"
HOSTILE_MODEL = "claude-opus-4-8\x1b]0;owned\x07\nINJECT"
HOSTILE_STOP = "end_turn\x1b[2J\r\n"
HUGE_ID = "msg_" + "x" * 1_000_000  # 1,000,004 characters

# Each entry names its model, so each is priced at claude-opus-4-8 ($5 input, $25 output per MTok):
#   hostile type: 1,000 in x $5/M = $0.005  + 200 out x $25/M = $0.005  = $0.01
#   message:      2,000 in x $5/M = $0.01   + 400 out x $25/M = $0.01   = $0.02
#   call: $0.03, 3,000 in and 600 out.
USAGE = {
    "input_tokens": 2000,
    "output_tokens": 400,
    "iterations": [
        {"type": HOSTILE_TYPE, "model": "claude-opus-4-8", "input_tokens": 1000, "output_tokens": 200},
        {"type": "message", "model": "claude-opus-4-8", "input_tokens": 2000, "output_tokens": 400},
    ],
}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_hostile_response_strings_are_escaped_bounded_and_priced(
    database_url: str,
    tmp_path: Any,
    sim: Simulator,
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store.upgrade_database(database_url)
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    caplog.set_level(logging.DEBUG, logger="compactobs")
    compactobs.instrument(database_url, tracer_provider=provider, spool_dir=tmp_path / "spool")
    try:
        sim.enqueue(Reply(message(model=HOSTILE_MODEL, id=HUGE_ID, stop_reason=HOSTILE_STOP, usage=USAGE)))
        client = anthropic.Anthropic(base_url=sim.base_url, api_key="k")
        request: dict[str, Any] = {
            "model": "claude-opus-4-8", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]
        }
        if stream:
            with client.messages.stream(**request) as events:
                reply = events.get_final_message()
        else:
            reply = client.messages.create(**request)
        assert reply.id == HUGE_ID  # what the SDK returns is untouched
        compactobs.flush()
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()

    # The bounded id: 256 characters, the marker's 59 ("...[" 4 + "1000004" 7 + " chars, sha256:" 15 + 32 hex
    # digits + "]" 1) after the id's first 256 - 59 = 197.
    digest = hashlib.sha256(HUGE_ID.encode()).hexdigest()[:32]
    expected_id = HUGE_ID[:197] + f"...[1000004 chars, sha256:{digest}]"
    assert len(expected_id) == 256

    # The log: the unknown iteration type is named, escaped, on one line.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("compactobs")]
    warned = [line for line in lines if "entry types this SDK does not know" in line]
    assert len(warned) == 1
    assert "evil\\x1b[31mRED\\nWARNING:compactobs:forged line\\x9b2J" in warned[0]
    for line in lines:
        assert not any(char in line for char in "\x1b\x9b\x07\n\r"), line

    # The span every sink gets carries the bounded id.
    [call_span] = [s for s in spans.get_finished_spans() if (s.attributes or {}).get(t.SPAN_KIND) == "call"]
    assert call_span.attributes[t.RESPONSE_ID] == expected_id

    engine = store.make_engine(database_url, create=False)
    try:
        with engine.connect() as connection:
            [row] = connection.execute(select(store.calls)).mappings().all()
            types = connection.execute(
                select(store.iterations.c.type).order_by(store.iterations.c.idx)
            ).scalars().all()
    finally:
        engine.dispose()
    assert row["response_id"] == expected_id
    assert row["response_model"] == HOSTILE_MODEL  # stored as received; reports strip it when printing
    assert Decimal(str(row["cost_usd"])) == Decimal("0.03")
    assert (row["input_tokens"], row["output_tokens"]) == (3000, 600)
    assert types == [HOSTILE_TYPE, "message"]

    # `pricing check` lists the stored models: the hostile one escaped, on its own line.
    _, out, _ = run("--db", database_url, "pricing", "check", "--format", "table")
    assert "claude-opus-4-8\\x1b]0;owned\\x07\\nINJECT" in out
    assert not any(char in out for char in "\x1b\x07\r"), out


def test_escape() -> None:
    assert escape("claude-opus-4-8") == "claude-opus-4-8"
    assert escape("a\x1b[2Jb\nc\td\\e") == "a\\x1b[2Jb\\nc\\td\\\\e"
    assert escape("\u202eevil\u2028x\U000e0001") == "\\u202eevil\\u2028x\\U000e0001"  # bidi, separator, tag
    assert escape("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"  # printable text stays readable
    assert escape("x" * 250) == "x" * 200 + "... (250 chars)"
    assert escape(ValueError("no\nprice")) == "no\\nprice"


def test_bounded_id() -> None:
    assert bounded_id("msg_01XFDUDYJgAACzvnptvVoYEL") == "msg_01XFDUDYJgAACzvnptvVoYEL"
    exact = "i" * MAX_ID_CHARS
    assert bounded_id(exact) == exact
    longer = "i" * (MAX_ID_CHARS + 1)
    # 257 characters: a marker of 4 + 3 + 15 + 32 + 1 = 55 characters after the first 256 - 55 = 201.
    digest = hashlib.sha256(longer.encode()).hexdigest()[:32]
    assert bounded_id(longer) == "i" * 201 + f"...[257 chars, sha256:{digest}]"
    assert bounded_id(bounded_id(longer)) == bounded_id(longer)
    # Two long ids with the same start stay apart.
    assert bounded_id("j" * 300 + "a") != bounded_id("j" * 300 + "b")


def test_a_refusal_quoting_a_hostile_value_is_escaped(
    postgres_url: str, tmp_path: Any, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's error text can quote a row's value (here a DBA's trigger does): the log line and
    `spool status` show it escaped. (SQLite's RAISE takes a literal message only: no value to quote.)"""
    store.upgrade_database(postgres_url)
    engine = store.make_engine(postgres_url, create=False)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'refused stop reason %%', NEW.stop_reason; END $$ LANGUAGE plpgsql"
        )
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    engine.dispose()
    caplog.set_level(logging.ERROR, logger="compactobs.store")
    spool_dir = tmp_path / "spool"
    compactobs.instrument(postgres_url, spool_dir=spool_dir)
    try:
        sim.enqueue(Reply(message(stop_reason="\x1b]0;owned\x07stop")))
        anthropic.Anthropic(base_url=sim.base_url, api_key="k").messages.create(
            model="claude-opus-4-8", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        compactobs.flush()
    finally:
        compactobs.uninstrument()
        compactobs.shutdown()
    [refused] = [r.getMessage() for r in caplog.records if "refused 1 calls" in r.getMessage()]
    assert "refused stop reason \\x1b]0;owned\\x07stop" in refused
    assert "\x1b" not in refused and "\x07" not in refused
    _, out, _ = run("--db", postgres_url, "spool", "status", env={"COMPACTOBS_SPOOL_DIR": str(spool_dir)})
    assert "1 call(s): " in out and "refused stop reason \\x1b]0;owned\\x07stop" in out
    assert "\x1b" not in out and "\x07" not in out
