"""Unpriced is never zero: a model with no price is one row, labelled, in every grouping of `report cost`
and `report cache`, in every format (null in JSON and CSV, "unpriced" in table and md), even when a call
of that model failed before any usage (an error: no price looked up, nothing billed). Through the real SDK,
on SQLite and PostgreSQL.

The store (claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 5m write per MTok):
  conversation a: sonnet, in 1,000 out 100 read 5,000 write 2,000
                  = 0.003 + 0.0015 + 0.0015 + 0.0075 = $0.0135
  conversation b: mystery-1 (no price), in 1,000 out 100, no cache
  conversation b: mystery-1, a 400 before any usage (an error call)
  conversation a: mystery-2 (no price), in 1,000 out 100 read 5,000 write 2,000
"""

from __future__ import annotations

import csv
import io
import json

import anthropic
import pytest

import compactobs
from compactobs.testing import ErrorReply, Reply, message
from tests.cli import run
from tests.recording import recording

CACHED = {
    "input_tokens": 1000,
    "output_tokens": 100,
    "cache_read_input_tokens": 5000,
    "cache_creation_input_tokens": 2000,
}
PLAIN = {"input_tokens": 1000, "output_tokens": 100}


def _call(client: anthropic.Anthropic, model: str, conversation: str) -> None:
    with compactobs.conversation(conversation):
        client.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "x"}])


@pytest.fixture
def recorded(database_url: str) -> str:
    with recording(database_url) as (sim, client):
        sim.enqueue(Reply(message(model="claude-sonnet-4-5", usage=CACHED)))
        _call(client, "claude-sonnet-4-5", "a")
        sim.enqueue(Reply(message(model="mystery-1", usage=PLAIN)))
        _call(client, "mystery-1", "b")
        sim.enqueue(ErrorReply(400))
        with pytest.raises(anthropic.BadRequestError):
            _call(client, "mystery-1", "b")
        sim.enqueue(Reply(message(model="mystery-2", usage=CACHED)))
        _call(client, "mystery-2", "a")
    return database_url


MONEY = {
    "cost": ("cost_usd", "top_level_cost_usd", "hidden_cost_usd"),
    "cache": ("saved_usd", "write_premium_usd", "net_usd", "wasted_premium_usd"),
}


def _report(url: str, name: str, by: str, fmt: str) -> str:
    code, out, err = run("--db", url, "report", name, "--by", by, "--format", fmt)
    assert code == 0, err
    return out


@pytest.mark.parametrize("name", ["cost", "cache"])
def test_an_unpriced_model_is_one_row_never_zero(recorded: str, name: str) -> None:
    rows = json.loads(_report(recorded, name, "model", "json"))["rows"]
    by_model = {row["model"]: row for row in rows}
    assert len(by_model) == len(rows) == 3, rows  # one row a model, the error call inside mystery-1's
    mystery = by_model["mystery-1"]
    assert (mystery["calls"], mystery["unpriced_calls"]) == (2, 1)
    assert all(mystery[column] is None for column in MONEY[name]), mystery
    assert all(by_model["mystery-2"][column] is None for column in MONEY[name])
    # The priced model keeps its figures: $0.0135 cost; cache saved 5,000 x (3 - 0.3)/M = $0.0135.
    sonnet = by_model["claude-sonnet-4-5"]
    assert sonnet["cost_usd" if name == "cost" else "saved_usd"] == 0.0135

    table = _report(recorded, name, "model", "table")
    for model in ("mystery-1", "mystery-2"):
        (line,) = [line for line in table.splitlines() if model in line and "Warning" not in line]
        assert f"{model} (unpriced)" in line and "$" not in line, line
    md = _report(recorded, name, "model", "md")
    (line,) = [line for line in md.splitlines() if "mystery-1" in line and "Warning" not in line]
    assert "mystery-1 (unpriced)" in line and "$" not in line and "unpriced |" in line, line
    (record,) = [
        r
        for r in csv.DictReader(io.StringIO(_report(recorded, name, "model", "csv")))
        if r["model"] == "mystery-1"
    ]
    assert all(record[column] == "" for column in MONEY[name]), record


@pytest.mark.parametrize("name", ["cost", "cache"])
@pytest.mark.parametrize("by", ["day", "conversation", "service", "iteration-type", "model,day"])
def test_no_grouping_shows_unpriced_money_as_zero(recorded: str, name: str, by: str) -> None:
    """A row holding unpriced calls has its dollars unknown unless priced calls with usage are in it: never
    a $0 made of nothing but unpriced usage."""
    document = json.loads(_report(recorded, name, by, "json"))
    for row in document["rows"]:
        if row["unpriced_calls"] and row["input_tokens"] == 1000 * row["unpriced_calls"]:
            # Every token of the row is an unpriced call's (each has 1,000 input).
            assert all(row[column] is None for column in MONEY[name]), row
    if name == "cost":  # cost sets unpriced calls apart in every grouping
        assert "(unpriced)" in _report(recorded, name, by, "table")


def test_an_unpriced_call_and_its_conversation_say_so(recorded: str) -> None:
    """`report conversation` and `report call`: the mystery-1 call's cost is unknown, never $0."""
    code, out, err = run("--db", recorded, "report", "conversation", "b", "--format", "json")
    assert code == 0, err
    first, _failed_call = json.loads(out)["rows"]
    assert first["model"] == "mystery-1" and first["cost_usd"] is None
    code, out, err = run("--db", recorded, "report", "call", first["call_id"], "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    ((row),) = document["rows"]
    assert (row["input_tokens"], row["cost_usd"], row["input_rate"]) == (1000, None, None)
    assert document["totals"]["cost_usd"] is None and document["top_level"]["cost_usd"] is None
    code, out, err = run("--db", recorded, "report", "call", first["call_id"])
    (line,) = [line for line in out.splitlines() if line.strip().startswith("0 ")]
    assert "unpriced" in line and "$" not in line, line
    assert "no price for mystery-1" in out
