"""`compactobs reconcile` end to end: calls made through the real SDK to the simulator and recorded by
compactobs into the store, then the command, which reads the simulator's organisation usage and cost
reports through the real SDK (ANTHROPIC_BASE_URL) and sets them beside the store.

Prices (genai-prices): Sonnet 4.5 $3 in, $15 out, $0.30 cache read, $3.75 5m write, $6 1h write per MTok;
Haiku 4.5 $1 in, $5 out; web search $10 per 1,000.

A (Sonnet): in 1,000 -> 0.003; out 500 -> 0.0075; read 10,000 -> 0.003; 5m write 2,000 -> 0.0075. 0.021
B (Sonnet, beta, iterations, 2 web searches):
  compaction: in 20,000 -> 0.06; out 1,000 -> 0.015                                          0.075
  message: in 200 -> 0.0006; out 300 -> 0.0045; read 12,000 -> 0.0036; 1h write 1,000 -> 0.006  0.0147
  web search 2 -> 0.02                                                  0.075 + 0.0147 + 0.02 = 0.1097
C (Haiku, streamed): in 4,000 -> 0.004; out 1,000 -> 0.005                                    0.009
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from opentelemetry.sdk.trace import TracerProvider

import compactobs
from compactobs import anthropic_reports, store
from compactobs.collect import Collector
from compactobs.testing import ErrorReply, Reply, ReportScenario, Simulator, message
from tests.cli import one_line_error, run
from tests.collect.test_claude_code import _event, logs_request
from tests.collect.test_collect import post

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
D = Decimal
ADMIN = "sk-ant-admin-test"
ASK = {"max_tokens": 1024, "messages": [{"role": "user", "content": "hello"}]}

A_USAGE = {
    "input_tokens": 1000,
    "output_tokens": 500,
    "cache_read_input_tokens": 10000,
    "cache_creation_input_tokens": 2000,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 0},
    "service_tier": "standard",
}
B_USAGE = {
    "input_tokens": 200,
    "output_tokens": 300,
    "cache_read_input_tokens": 12000,
    "cache_creation_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
    "server_tool_use": {"web_search_requests": 2},
    "service_tier": "standard",
    "iterations": [
        {
            "type": "compaction",
            "input_tokens": 20000,
            "output_tokens": 1000,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 200,
            "output_tokens": 300,
            "cache_read_input_tokens": 12000,
            "cache_creation_input_tokens": 1000,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        },
    ],
}
C_USAGE = {"input_tokens": 4000, "output_tokens": 1000, "service_tier": "standard"}


def reply(model: str, usage: dict[str, Any]) -> Reply:
    content = [{"type": "text", "text": "Here you go."}]
    if "iterations" in usage:
        content.insert(0, {"type": "compaction", "content": "Summary so far."})
    return Reply(message(model=model, content=content, usage=usage))


@dataclass
class Recorded:
    """A simulator, a client compactobs records into `url`, and a client it does not see."""

    sim: Simulator
    url: str
    client: anthropic.Anthropic
    plain: anthropic.Anthropic

    def call_a(self, client: anthropic.Anthropic | None = None) -> None:
        self.sim.enqueue(reply(SONNET, A_USAGE))
        (client or self.client).messages.create(model=SONNET, **ASK)

    def reconcile(self, *args: str, env: dict[str, Any] | None = None) -> tuple[int, str, str]:
        """The command with the admin key and the simulator's address, as a user sets them."""
        environ = {"ANTHROPIC_ADMIN_KEY": ADMIN, "ANTHROPIC_BASE_URL": self.sim.base_url, **(env or {})}
        return run("--db", self.url, "reconcile", *args, env=environ)

    def json(self, *args: str) -> dict[str, Any]:
        code, out, err = self.reconcile("--since", "1d", "--format", "json", *args)
        assert code == 0, err
        return json.loads(out)


def _recorded(url: str, upgrade: bool = True) -> Iterator[Recorded]:
    if upgrade:
        store.upgrade_database(url)
    compactobs.configure(url, tracer_provider=TracerProvider())
    with Simulator() as sim:
        client = anthropic.Anthropic(
            base_url=sim.base_url, api_key="k", middleware=[compactobs.Middleware()], max_retries=0
        )
        plain = anthropic.Anthropic(base_url=sim.base_url, api_key="k", max_retries=0)
        try:
            yield Recorded(sim, url, client, plain)
        finally:
            compactobs.shutdown()


@pytest.fixture
def recorded(sqlite_url: str, data_home: Any) -> Iterator[Recorded]:
    yield from _recorded(sqlite_url)


def explanations(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in document["explanations"] if e["kind"] == kind]


def test_recorded_traffic_and_the_reports_agree_to_the_token_and_the_cent(
    database_url: str, data_home: Any
) -> None:
    for rec in _recorded(database_url):
        rec.call_a()
        rec.sim.enqueue(reply(SONNET, B_USAGE))
        rec.client.beta.messages.create(model=SONNET, betas=["compact-2026-01-12"], **ASK)
        rec.sim.enqueue(reply(HAIKU, C_USAGE))
        with rec.client.messages.stream(model=HAIKU, **ASK) as stream:
            stream.get_final_message()
        compactobs.flush()

        document = rec.json("--group", "model")
        assert document["explanations"] == []
        assert document["gap_pct"] == 0
        rows = {row["model"]: row for row in document["rows"]}
        assert set(rows) == {SONNET, HAIKU}
        assert all(row["status"] == "match" for row in rows.values())
        sonnet, haiku = rows[SONNET], rows[HAIKU]
        # Sonnet: A + B, every iteration; both sides, to the token.
        for side in ("", "compactobs_"):
            assert sonnet[f"{side}requests"] == 2
            assert sonnet[f"{side}input"] == 1000 + 20000 + 200
            assert sonnet[f"{side}output"] == 500 + 1000 + 300
            assert sonnet[f"{side}cache_read"] == 10000 + 12000
            assert sonnet[f"{side}cache_write_5m"] == 2000
            assert sonnet[f"{side}cache_write_1h"] == 1000
            assert sonnet[f"{side}web_search"] == 2
            assert haiku[f"{side}input"] == 4000 and haiku[f"{side}output"] == 1000
        # To the cent (and below): 0.021 + 0.1097 on Sonnet, 0.009 on Haiku; no discount.
        assert D(str(sonnet["list_usd"])) == D("0.1307") == D(str(sonnet["compactobs_cost_usd"]))
        assert D(str(sonnet["amount_usd"])) == D("0.1307")
        assert D(str(haiku["list_usd"])) == D("0.009") == D(str(haiku["compactobs_cost_usd"]))
        assert D(str(document["totals"]["list_usd"])) == D("0.1397")
        assert D(str(document["totals"]["delta_list_usd"])) == 0

        # Ungrouped, by hour, as a table and as CSV: the same agreement.
        code, out, err = rec.reconcile("--since", "2h", "--by", "hour")
        assert code == 0, err
        assert "Differences and what explains them" not in out and " match" in out
        code, out, err = rec.reconcile("--since", "1d", "--format", "csv", "--fail-over", "0")
        assert code == 0, err
        header, line = out.splitlines()
        assert header.startswith("bucket,requests,compactobs_requests,delta_requests,input,")
        assert line.endswith(",match,")


def test_uninstrumented_calls_price_drift_and_a_discount_each_explained(recorded: Recorded) -> None:
    """Two A calls recorded, one more made by a client compactobs does not instrument; the report's output
    rate is 1.2 x compactobs' ($18 against $15 per MTok) and 10% comes off its list amount.

    Report: 3 requests; A at $18 output: 0.003 + 0.009 + 0.003 + 0.0075 = 0.0225; list 3 x 0.0225 = 0.0675,
    amount 0.0675 x 0.9 = 0.06075. compactobs: 2 requests, 2 x 0.021 = 0.042.
    Explained: uninstrumented 1 request, its tokens, 0.0225 at the report's rates; drift (18 - 15) / 1e6 x
    1,000 output tokens = 0.003; 0.042 + 0.0225 + 0.003 = 0.0675. Discount 0.0675 - 0.06075 = 0.00675.
    """
    recorded.call_a()
    recorded.call_a()
    recorded.call_a(recorded.plain)
    compactobs.flush()
    recorded.sim.report_scenario = ReportScenario(price_factors={"output": D("1.2")}, discount=D("0.1"))

    document = recorded.json("--group", "model")
    (row,) = document["rows"]
    assert (row["requests"], row["compactobs_requests"], row["delta_requests"]) == (3, 2, 1)
    assert D(str(row["list_usd"])) == D("0.0675")
    assert D(str(row["amount_usd"])) == D("0.06075")
    assert D(str(row["compactobs_cost_usd"])) == D("0.042")
    assert D(str(row["delta_amount_usd"])) == D("0.01875")
    assert row["status"] == "explained"
    assert row["explained"] == "uninstrumented;price_drift;discount"

    (extra,) = explanations(document, "uninstrumented")
    assert extra["figures"]["requests"] == 1
    assert extra["figures"]["amounts"] == {
        "input": 1000,
        "cache_read": 10000,
        "cache_write_5m": 2000,
        "cache_write_1h": 0,
        "output": 500,
        "web_search": 0,
    }
    assert D(str(extra["figures"]["list_usd"])) == D("0.0225")
    (drift,) = explanations(document, "price_drift")
    assert drift["figures"]["class"] == "output"
    assert D(str(drift["figures"]["report_rate"])) == 18
    assert D(str(drift["figures"]["compactobs_rate"])) == 15
    assert D(str(drift["figures"]["usd"])) == D("0.003")
    assert "$18/MTok" in drift["message"] and "$15/MTok" in drift["message"]
    (discount,) = explanations(document, "discount")
    assert D(str(discount["figures"]["usd"])) == D("0.00675")
    assert D(str(discount["figures"]["share"])) == D("0.1")

    code, out, err = recorded.reconcile("--since", "1d", "--group", "model")
    assert code == 0, err
    assert "Differences and what explains them" in out
    assert "price_drift" in out and "$18/MTok" in out and "discount of 10.00%" in out

    # --fail-over: requests differ by 1 in 3 (33.3%), the list by 0.0255 in 0.0675 (37.8%).
    assert D(str(document["gap_pct"])) == (D("0.0255") / D("0.0675") * 100).quantize(D("0.000001"))
    code, _, err = recorded.reconcile("--since", "1d", "--fail-over", "10")
    assert code == 3 and "more than --fail-over 10%" in err
    code, _, err = recorded.reconcile("--since", "1d", "--fail-over", "40")
    assert code == 0, err


def test_other_workspaces_are_set_apart_when_compactobs_names_its_own(recorded: Recorded) -> None:
    recorded.call_a()
    recorded.sim.report_scenario = ReportScenario(keys={"sk-other": ("apikey_other", "wrkspc_other")})
    other = anthropic.Anthropic(base_url=recorded.sim.base_url, api_key="sk-other", max_retries=0)
    recorded.call_a(other)
    compactobs.flush()

    # Without a scope, the other workspace's call is one compactobs did not see.
    (unseen,) = explanations(recorded.json(), "uninstrumented")
    assert unseen["figures"]["requests"] == 1

    document = recorded.json("--workspace", "wrkspc_sim")
    (row,) = document["rows"]
    assert (row["requests"], row["compactobs_requests"]) == (2, 1)
    assert row["explained"] == "other_scope"
    (outside,) = explanations(document, "other_scope")
    assert outside["figures"]["requests"] == 1
    assert D(str(outside["figures"]["list_usd"])) == D("0.021")
    assert document["gap_pct"] == 0  # in scope, the two agree

    grouped = recorded.json("--group", "workspace", "--workspace", "wrkspc_sim")
    rows = {row["workspace"]: row for row in grouped["rows"]}
    assert rows["wrkspc_sim"]["status"] == "match"
    assert (rows["wrkspc_other"]["requests"], rows["wrkspc_other"]["compactobs_requests"]) == (1, 0)
    assert rows["wrkspc_other"]["explained"] == "other_scope"

    code, _, err = recorded.reconcile("--since", "1d", "--group", "workspace")
    assert "--workspace" in one_line_error(code, err)


def test_calls_dated_across_a_bucket_edge(recorded: Recorded) -> None:
    """The report counts each call an hour after it was served: an hour short by one request, the next
    over by one, the window agreeing."""
    recorded.call_a()
    compactobs.flush()
    recorded.sim.report_scenario = ReportScenario(shift_s=3600)
    until = (datetime.now(timezone.utc) + timedelta(hours=3)).isoformat()
    code, out, err = recorded.reconcile("--since", "3h", "--until", until, "--by", "hour", "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    edges = explanations(document, "bucket_edge")
    assert [e["figures"]["requests"] for e in edges] == [-1, 1]
    assert edges[0]["figures"]["amounts"]["cache_read"] == -10000
    assert {row["status"] for row in document["rows"]} == {"explained"}
    assert document["gap_pct"] == 0


def test_calls_waiting_in_the_spool(postgres_url: str, data_home: Any) -> None:
    """The store is not upgraded when the calls are recorded, so they wait in the spool."""
    for rec in _recorded(postgres_url, upgrade=False):
        rec.call_a()
        rec.call_a()
        compactobs.flush()
        store.upgrade_database(postgres_url)
        document = rec.json()
        (row,) = document["rows"]
        assert (row["requests"], row["compactobs_requests"]) == (2, 0)
        (waiting,) = explanations(document, "spool")
        assert waiting["figures"]["requests"] == 2
        assert waiting["figures"]["amounts"]["input"] == 2000
        assert D(str(waiting["figures"]["list_usd"])) == D("0.042")
        assert row["explained"] == "spool"  # nothing else: no uninstrumented call, nothing unexplained


def test_recorded_calls_missing_from_the_report(recorded: Recorded) -> None:
    recorded.call_a()
    compactobs.flush()
    recorded.sim.reset()  # the simulator forgets what it served
    document = recorded.json()
    (missing,) = explanations(document, "not_in_report")
    assert missing["figures"]["requests"] == -1
    assert "Anthropic's data was refreshed at" in missing["message"]


def test_paging_and_chunks_through_the_sdk(recorded: Recorded) -> None:
    """Every page (1 row a page here) and every 31-day chunk of a 40-day window is read."""
    recorded.call_a()
    recorded.sim.enqueue(reply(HAIKU, C_USAGE))
    recorded.client.messages.create(model=HAIKU, **ASK)
    compactobs.flush()
    admin = anthropic.Anthropic(base_url=recorded.sim.base_url, api_key=ADMIN, max_retries=0)
    now = datetime.now(timezone.utc)
    start = now - timedelta(days=40)
    paged = anthropic_reports.fetch(admin, start, now, "1d", ("model",), page_rows=1)
    usage_calls = [r for r in recorded.sim.requests if r.path.startswith("/v1/organizations/analytics/usage")]
    assert len({r.path.split("starting_at=")[1][:10] for r in usage_calls}) == 2  # two chunks
    assert len(usage_calls) == 3  # the second chunk holds both models' rows: two pages
    assert any("page=page_1" in r.path for r in usage_calls)
    whole = anthropic_reports.fetch(admin, start, now, "1d", ("model",))
    assert paged.figures == whole.figures
    models = {dict(key[1])["model"]: figure for key, figure in whole.figures.items()}
    assert models[HAIKU].requests == 1 and models[HAIKU].list_usd == D("0.009")


def test_errors_a_user_meets(recorded: Recorded) -> None:
    code, _, err = recorded.reconcile("--since", "1d", env={"ANTHROPIC_ADMIN_KEY": None})
    assert "ANTHROPIC_ADMIN_KEY" in one_line_error(code, err)

    recorded.sim.enqueue(ErrorReply(401, message="invalid x-api-key"))
    code, _, err = recorded.reconcile("--since", "1d")
    assert "401" in one_line_error(code, err) and "Admin API key" in err

    recorded.sim.enqueue(ErrorReply(403, message="missing read:analytics"))
    code, _, err = recorded.reconcile("--since", "1d")
    assert "403" in one_line_error(code, err) and "read:analytics" in err

    # A range the API refuses: the simulator, as the API, reports nothing before 2026-01-01.
    code, _, err = recorded.reconcile("--since", "2025-06-01", "--until", "2025-06-02")
    assert "400" in one_line_error(code, err) and "2026-01-01" in err

    # A rate limit: retried by the SDK, waiting what retry-after says (10 ms here; without it, an
    # exponential backoff), then reported.
    before = len(recorded.sim.requests)
    recorded.sim.enqueue(*[ErrorReply(429, retry_after=0.01)] * (anthropic_reports.MAX_RETRIES + 1))
    code, _, err = recorded.reconcile("--since", "1d")
    assert "429" in one_line_error(code, err) and "wait a minute" in err
    assert len(recorded.sim.requests) - before == anthropic_reports.MAX_RETRIES + 1
    recorded.sim.enqueue(ErrorReply(429, retry_after=0.01))
    code, _, err = recorded.reconcile("--since", "1d")
    assert code == 0, err  # one 429, then the retry is answered

    # Five groups and the model reconcile always works per: six dimensions, one too many.
    code, _, err = recorded.reconcile(
        "--since", "1d", "--group", "service_tier,speed,inference_geo,workspace,api_key",
        "--workspace", "wrkspc_sim", "--api-key", "apikey_sim",
    )  # fmt: skip
    assert "always asks for the model" in one_line_error(code, err)
    code, _, err = recorded.reconcile("--since", "1d", "--group", "colour")
    assert "cannot group by 'colour'" in one_line_error(code, err)
    code, _, err = recorded.reconcile("--since", "someday")
    assert "invalid date" in one_line_error(code, err)


def test_unpriced_calls_are_named(recorded: Recorded) -> None:
    """A model neither side has a price for: the tokens agree, and compactobs says its cost is missing."""
    recorded.sim.enqueue(reply("mystery-1", C_USAGE))
    recorded.client.messages.create(model="mystery-1", **ASK)
    compactobs.flush()
    document = recorded.json("--group", "model")
    (row,) = document["rows"]
    assert row["input"] == row["compactobs_input"] == 4000
    assert row["output"] == row["compactobs_output"] == 1000
    (unpriced,) = explanations(document, "unpriced")
    assert unpriced["figures"]["calls"] == 1
    assert row["explained"] == "unpriced"


def test_ungrouped_rows_are_explained_model_by_model(recorded: Recorded) -> None:
    """Without --group model, each model is still priced at its own rates: a Sonnet call and a Haiku call
    recorded, one more Haiku call made by a client compactobs does not instrument.

    Haiku C: in 4,000 x $1/MTok = 0.004; out 1,000 x $5/MTok = 0.005; 0.009. Sonnet A: 0.021.
    Report: 3 requests, list 0.021 + 2 x 0.009 = 0.039; compactobs: 2 requests, 0.021 + 0.009 = 0.030.
    The one call compactobs did not see is a Haiku call worth 0.009 at Haiku's rates; nothing drifted (a
    blend of both models' rates would value it at another price and see drift that is not there)."""
    recorded.call_a()
    recorded.sim.enqueue(reply(HAIKU, C_USAGE))
    recorded.client.messages.create(model=HAIKU, **ASK)
    recorded.sim.enqueue(reply(HAIKU, C_USAGE))
    recorded.plain.messages.create(model=HAIKU, **ASK)
    compactobs.flush()

    document = recorded.json()
    (row,) = document["rows"]
    assert (row["requests"], row["compactobs_requests"]) == (3, 2)
    assert D(str(row["list_usd"])) == D("0.039")
    assert D(str(row["compactobs_cost_usd"])) == D("0.030")
    assert row["explained"] == "uninstrumented"
    assert explanations(document, "price_drift") == []
    (extra,) = explanations(document, "uninstrumented")
    assert extra["model"] == HAIKU and extra["message"].startswith(f"{HAIKU}: ")
    assert extra["figures"]["requests"] == 1
    assert (extra["figures"]["amounts"]["input"], extra["figures"]["amounts"]["output"]) == (4000, 1000)
    assert D(str(extra["figures"]["list_usd"])) == D("0.009")

    # A price drift on one model is named with that model and valued on its tokens alone: the report's
    # output rate 1.2 x: Haiku $6 against $5 on the 1,000 tokens compactobs recorded = 0.001; Sonnet $18
    # against $15 on 500 = 0.0015.
    recorded.sim.report_scenario = ReportScenario(price_factors={"output": D("1.2")})
    drifts = {e["model"]: e for e in explanations(recorded.json(), "price_drift")}
    assert set(drifts) == {SONNET, HAIKU}
    assert D(str(drifts[HAIKU]["figures"]["usd"])) == D("0.001")
    assert D(str(drifts[SONNET]["figures"]["usd"])) == D("0.0015")
    assert "$6/MTok" in drifts[HAIKU]["message"] and "$5/MTok" in drifts[HAIKU]["message"]


def test_server_side_telemetry_names_the_requests_no_client_recorded(
    recorded: Recorded, tmp_path: Path
) -> None:
    """Two A calls compactobs records in process, one Claude Code call collected from its events, one call
    from a client nothing records; the API's telemetry reports those four (req_sim_1 to 4) and 23 more no
    client saw (22 plain ids and a hostile one).

    Coverage: 4 + 23 = 27 requests reached the API; recorded by a client: req_sim_1, 2 (in process) and 3
    (Claude Code) = 3; not: 27 - 3 = 24, of which the first 20 are named. Sources: 3 calls with usage, 1 of
    them Claude Code's."""
    recorded.call_a()
    recorded.call_a()
    recorded.call_a(recorded.plain)  # req_sim_3: the call Claude Code made, as its event says below
    recorded.call_a(recorded.plain)  # req_sim_4: nobody records it
    compactobs.flush()
    now = datetime.now(timezone.utc)
    event = _event(
        "api_request",
        1,
        model=SONNET,
        input_tokens=1000,
        output_tokens=500,
        cache_read_tokens=0,
        cache_creation_tokens=0,
        duration_ms=100,
        request_id="req_sim_3",
        **{"event.timestamp": now.isoformat().replace("+00:00", "Z")},
    )
    hostile = "req_\x1b[31mevil\u202e"
    at_ns = time.time_ns()
    for n in range(22):
        recorded.sim.telemetry.record(message(model=SONNET), f"req_gone_{n:02d}", {}, at_ns, at_ns)
    # A second earlier than the 22: listed among the first 20, by time.
    recorded.sim.telemetry.record(message(model=SONNET), hostile, {}, at_ns - 10**9, at_ns - 10**9)
    with Collector(recorded.url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        status, _, _ = post(
            collector.endpoint, logs_request(event), {"Content-Type": "application/json"}, "/v1/logs"
        )
        assert status == 200
        assert recorded.sim.telemetry.send(collector.endpoint) == 200

    document = recorded.json()
    assert document["sources"] == {"calls": 3, "claude_code": 1}
    cover = document["coverage"]
    assert (cover["requests"], cover["recorded"], cover["not_recorded"]) == (27, 3, 24)
    listed = [row["request_id"] for row in cover["listed"]]
    assert len(listed) == 20 and "req_sim_4" in listed and hostile in listed
    assert not {"req_sim_1", "req_sim_2", "req_sim_3"} & set(listed)

    code, out, err = recorded.reconcile("--since", "1d")
    assert code == 0, err
    assert "27 requests reached the API; 3 recorded by a client, 24 not (the first 20 listed)" in out
    assert "1 from Claude Code (collected or imported)" in out
    assert "Requests that reached the API and no client recorded" in out
    assert hostile in listed  # JSON keeps it exact; the table shows it escaped
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[31mevil\\u202e" in out


def test_without_server_side_telemetry_coverage_is_said_not_measured(recorded: Recorded) -> None:
    recorded.call_a()
    compactobs.flush()
    document = recorded.json()
    assert document["coverage"] is None
    code, out, err = recorded.reconcile("--since", "1d")
    assert code == 0, err
    assert "which requests no client recorded is not measured" in out
