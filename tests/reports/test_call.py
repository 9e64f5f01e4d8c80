"""`report call ID`: one call down to its iterations, each priced at the rates that priced it, summing to the
call's cost, beside what the top-level usage said. Found by request id, message id or span id; linked from
`report conversation`. Through the real SDK, on SQLite and PostgreSQL.

claude-opus-4-8: $5 input, $25 output, $0.50 cache read per MTok; web search $10 per 1,000 requests.
One call that compacted and searched the web twice:
  compaction iteration: 180,000 in x $5/M + 3,500 out x $25/M          = $0.9    + $0.0875          = $0.9875
  message iteration:     23,000 in x $5/M + 1,000 out x $25/M
                         + 10,000 cache read x $0.50/M                  = $0.115  + $0.025 + $0.005  = $0.145
  web search: 2 x $0.01                                                                              = $0.02
  the call: 0.9875 + 0.145 + 0.02 = $1.1525
Top level: 23,000 in, 1,000 out; priced alone it says 1.1525 - 0.9875 = $0.165 (web search included);
billed input 180,000 + 23,000 = 203,000, output 3,500 + 1,000 = 4,500.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import anthropic
import pytest

import compactobs
from compactobs.testing import ErrorReply, Reply, message
from tests.cli import one_line_error, run
from tests.recording import recording

OPUS = "claude-opus-4-8"
USAGE = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "cache_read_input_tokens": 10000,
    "server_tool_use": {"web_search_requests": 2},
    "iterations": [
        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
        {"type": "message", "input_tokens": 23000, "output_tokens": 1000, "cache_read_input_tokens": 10000},
    ],
}
ASK = {
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "x"}],
    "betas": ["compact-2026-01-12"],
    "context_management": {"edits": [{"type": "compact_20260112"}]},
}


@dataclass
class Recorded:
    url: str
    request_id: str
    message_id: str
    error_request_id: str


@pytest.fixture
def recorded(database_url: str) -> Recorded:
    with recording(database_url) as (sim, client):
        sim.enqueue(Reply(message(model=OPUS, usage=USAGE)))
        with compactobs.conversation("ticket-7"):
            response = client.beta.messages.create(model=OPUS, **ASK)
            sim.enqueue(ErrorReply(529))
            with pytest.raises(anthropic.APIStatusError) as failed:
                client.beta.messages.create(model=OPUS, **ASK)
    assert response._request_id and failed.value.request_id
    return Recorded(database_url, response._request_id, response.id, failed.value.request_id)


def _json(url: str, reference: str) -> dict:
    code, out, err = run("--db", url, "report", "call", reference, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_a_call_by_request_message_or_span_id(recorded: Recorded) -> None:
    by_request = _json(recorded.url, recorded.request_id)
    span_id = by_request["call"]["call_id"]
    assert by_request["call"]["request_id"] == recorded.request_id
    assert by_request["call"]["message_id"] == recorded.message_id
    assert _json(recorded.url, recorded.message_id) == by_request
    assert _json(recorded.url, span_id) == by_request


def test_iterations_each_priced_sum_to_the_call(recorded: Recorded) -> None:
    document = _json(recorded.url, recorded.request_id)
    compaction, message_row, search = document["rows"]
    assert (compaction["type"], compaction["model"], compaction["idx"]) == ("compaction", OPUS, 0)
    assert (compaction["input_tokens"], compaction["output_tokens"]) == (180000, 3500)
    assert (compaction["input_rate"], compaction["output_rate"], compaction["cost_usd"]) == (5, 25, 0.9875)
    assert (message_row["type"], message_row["cache_read_input_tokens"], message_row["cache_read_rate"]) == (
        "message",
        10000,
        0.5,
    )
    assert message_row["cost_usd"] == 0.145
    assert (search["type"], search["cost_usd"], search["note"]) == ("web search", 0.02, "2 request(s)")
    # 0.9875 + 0.145 + 0.02
    assert document["totals"]["cost_usd"] == 1.1525
    assert document["top_level"] == {"input_tokens": 23000, "output_tokens": 1000, "cost_usd": 0.165}
    assert document["billed"] == {"input_tokens": 203000, "output_tokens": 4500, "cost_usd": 1.1525}


def test_every_format(recorded: Recorded) -> None:
    code, out, err = run("--db", recorded.url, "report", "call", recorded.request_id)
    assert code == 0, err
    lines = out.splitlines()
    compaction = next(line for line in lines if "compaction" in line)
    assert compaction.split() == [
        *["0", "compaction", OPUS, "180,000", "3,500", "0", "0", "0"],
        *["$5.0000", "$25.0000", "-", "-", "-", "$0.9875", "-"],  # rates, cost, no note
    ]
    total = next(line for line in lines if line.strip().startswith("Total"))
    assert total.split()[-1] == "$1.1525"
    cost = next(line for line in lines if line.strip().startswith("cost"))
    assert cost.split() == ["cost", "$0.1650", "$1.1525", "$0.9875"]  # top level, billed, hidden
    code, out, _ = run("--db", recorded.url, "report", "call", recorded.request_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["cost_usd"] for row in rows] == ["0.9875", "0.145", "0.02"]
    code, out, _ = run("--db", recorded.url, "report", "call", recorded.request_id, "--format", "md")
    assert "| 0 | compaction | claude-opus-4-8 | 180,000 |" in out and "**$1.1525**" in out
    assert "### Top-level usage beside the bill" in out


def test_a_call_without_usage(recorded: Recorded) -> None:
    code, out, err = run("--db", recorded.url, "report", "call", recorded.error_request_id)
    assert code == 0, err
    assert "No usage: the call ended before any (nothing billed)." in out
    assert _json(recorded.url, recorded.error_request_id)["rows"] == []


def test_an_unknown_id_is_one_line(recorded: Recorded) -> None:
    code, _, err = run("--db", recorded.url, "report", "call", "req_nope")
    assert "unknown call 'req_nope'" in one_line_error(code, err)


def test_the_conversation_shows_the_id_to_use(recorded: Recorded) -> None:
    span_id = _json(recorded.url, recorded.request_id)["call"]["call_id"]
    code, out, err = run("--db", recorded.url, "report", "conversation", "ticket-7")
    assert code == 0, err
    assert span_id in out and "compactobs report call SPAN_ID" in out
