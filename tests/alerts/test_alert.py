"""`compactobs alert` against real loopback receivers: each sink's body checked against its documented
schema (a webhook's, Slack's blocks, PagerDuty Events API v2); a first pass sends one message per group, a
second nothing, a finding that clears one resolve; a destination that is down makes the run exit 4 with one
line and gets what it missed on the next run, while the others get theirs; re-notify; hostile conversation
ids; secrets masked; two processes at once send each finding once (SQLite and PostgreSQL).

The demo store (the real SDK against the simulator) gives the findings of the end-to-end test; hand-built
rows (tests/reports/test_anomalies.py's helpers) give findings the test controls exactly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from compactobs import store
from compactobs.alerts.evaluate import AlertRules, alert_key
from compactobs.alerts.run import run_pass
from compactobs.alerts.sinks import DeliveryError, WebhookSink, post_json, slack_message
from compactobs.demo import run_demo
from compactobs.reports.times import build_filters
from tests.alert_receiver import Receiver, closed_port_url
from tests.cli import one_line_error, run
from tests.reports.test_anomalies import BASE_MS, call, failed_call, store_rows

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefSECRET"
"""32 characters, as PagerDuty's routing keys."""

# -- the documented schemas ------------------------------------------------------------------------------

FINDING_KEYS = {
    "kind",
    "severity",
    "conversation_id",
    "service",
    "cost_usd",
    "message",
    "evidence",
    "call_ids",
}


def check_webhook(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The README's webhook body; returns its events."""
    assert set(body) == {"source", "kind", "events"} and body["source"] == "compactobs"
    assert body["events"]
    for event in body["events"]:
        assert set(event) == {"source", "event", "key", "finding"}
        assert event["source"] == "compactobs" and event["event"] in ("trigger", "resolve")
        assert event["key"].startswith(event["finding"]["kind"] + ":")
        finding = event["finding"]
        assert set(finding) == FINDING_KEYS
        assert finding["kind"] == body["kind"] and finding["severity"] in ("warning", "critical")
        assert isinstance(finding["message"], str) and isinstance(finding["evidence"], dict)
        assert finding["cost_usd"] is None or isinstance(finding["cost_usd"], (int, float))
    return list(body["events"])


def check_text_object(text: dict[str, Any], limit: int) -> None:
    assert text["type"] in ("plain_text", "mrkdwn") and 0 < len(text["text"]) <= limit
    if text["type"] == "plain_text":
        assert set(text) <= {"type", "text", "emoji"}
    else:
        assert set(text) <= {"type", "text", "verbatim"}


def check_slack(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Slack's incoming-webhook message with Block Kit blocks (header, section, context; 50 blocks at most,
    a header's plain text <= 150 characters, a section's <= 3000, a context's elements 1-10)."""
    assert set(message) == {"text", "blocks"} and message["text"]
    blocks = message["blocks"]
    assert 1 <= len(blocks) <= 50
    assert blocks[0]["type"] == "header" and blocks[0]["text"]["type"] == "plain_text"
    for block in blocks:
        assert block["type"] in ("header", "section", "context")
        if block["type"] == "header":
            check_text_object(block["text"], 150)
        elif block["type"] == "section":
            check_text_object(block["text"], 3000)
        else:
            assert 1 <= len(block["elements"]) <= 10
            for element in block["elements"]:
                check_text_object(element, 3000)
    return list(blocks)


def check_pagerduty(event: dict[str, Any]) -> dict[str, Any]:
    """PagerDuty Events API v2 (POST /v2/enqueue): routing_key, event_action, dedup_key (<= 255); a trigger's
    payload has summary (<= 1024), source, severity (critical, error, warning, info)."""
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] in ("trigger", "resolve")
    assert 0 < len(event["dedup_key"]) <= 255
    if event["event_action"] == "resolve":
        assert set(event) == {"routing_key", "event_action", "dedup_key"}
        return event
    assert set(event) <= {
        "routing_key",
        "event_action",
        "dedup_key",
        "payload",
        "client",
        "client_url",
        "links",
    }
    payload = event["payload"]
    assert {"summary", "source", "severity"} <= set(payload)
    assert set(payload) <= {
        "summary",
        "source",
        "severity",
        "timestamp",
        "component",
        "group",
        "class",
        "custom_details",
    }
    assert 0 < len(payload["summary"]) <= 1024 and payload["severity"] in (
        "critical",
        "error",
        "warning",
        "info",
    )
    datetime.fromisoformat(payload["timestamp"])
    assert isinstance(payload["custom_details"], dict)
    return event


# -- the demo store: findings recorded through the real SDK ------------------------------------------


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alert-demo") / "demo.db"
    run_demo(f"sqlite:///{path}")
    return path


@pytest.fixture
def demo_url(demo_file: Path, tmp_path: Path) -> str:
    copy = tmp_path / "demo.db"
    shutil.copy(demo_file, copy)
    return f"sqlite:///{copy}"


def test_first_pass_groups_second_is_quiet_a_cleared_finding_resolves(demo_url: str, tmp_path: Path) -> None:
    with Receiver() as webhook, Receiver() as slack, Receiver(202, b'{"status":"success"}') as pagerduty:
        args = [
            "--db", demo_url, "alert",
            "--webhook", webhook.url,
            "--slack-webhook", slack.url,
            "--pagerduty-routing-key", ROUTING_KEY,
            "--pagerduty-url", pagerduty.url,
        ]  # fmt: skip
        code, out, err = run(*args)
        assert code == 0, err
        kinds = [body["kind"] for body in webhook.bodies]
        # The demo's findings, one group per kind, the critical ones first.
        assert kinds == [
            "compaction_loop",
            "budget_exceeded",
            "ineffective_compaction",
            "failed_compaction",
            "compaction_cost_share",
            "cache_miss_after_compaction",
            "unpriced_model",
        ]
        events = [event for body in webhook.bodies for event in check_webhook(body)]
        assert {event["event"] for event in events} == {"trigger"}
        assert len({event["key"] for event in events}) == len(events)
        budget = next(e for e in events if e["finding"]["kind"] == "budget_exceeded")
        assert budget["finding"]["service"] == "compactobs-demo"
        assert budget["finding"]["conversation_id"].endswith("-research-loop")
        # The demo's loop conversation is over its $2 budget: cost_usd is what it spent.
        assert budget["finding"]["cost_usd"] == budget["finding"]["evidence"]["spent_usd"] > 2

        assert len(slack.bodies) == len(kinds)
        headers = [check_slack(message)[0]["text"]["text"] for message in slack.bodies]
        assert headers[0] == "compactobs CRITICAL compaction_loop: 1 new"
        assert headers[2].startswith("compactobs WARNING ineffective_compaction: ")

        triggers = [check_pagerduty(event) for event in pagerduty.bodies]
        assert [event["payload"]["class"] for event in triggers] == kinds
        assert [event["payload"]["severity"] for event in triggers[:2]] == ["critical", "critical"]
        dedup = {event["payload"]["class"]: event["dedup_key"] for event in triggers}

        for secret in ("s3cr3tPath", ROUTING_KEY, ROUTING_KEY[-8:]):
            assert secret not in out + err
        assert "pagerduty ****CRET: 7 message(s), " in out

        # Second pass: nothing new, nothing sent.
        for receiver in (webhook, slack, pagerduty):
            receiver.clear()
        code, out, err = run(*args)
        assert code == 0, err
        assert webhook.bodies == slack.bodies == pagerduty.bodies == []
        assert out.count(": nothing new") == 3

        # A budgets file that lifts the loop conversation's budget: budget_exceeded clears, one resolve each.
        budgets = tmp_path / "budgets.toml"
        budgets.write_text('[budgets."demo-*"]\nusd = 1000\n', encoding="utf-8")
        code, out, err = run(*args, "--budgets", str(budgets))
        assert code == 0, err
        (body,) = webhook.bodies
        (event,) = check_webhook(body)
        assert (event["event"], event["key"]) == ("resolve", budget["key"])
        assert event["finding"] == budget["finding"]
        (message,) = slack.bodies
        blocks = check_slack(message)
        assert blocks[0]["text"]["text"] == "compactobs RESOLVED budget_exceeded: 1 resolved"
        assert blocks[1]["text"]["text"].startswith("resolved: conversation demo-")
        (resolve,) = pagerduty.bodies
        assert check_pagerduty(resolve) == {
            "routing_key": ROUTING_KEY,
            "event_action": "resolve",
            "dedup_key": dedup["budget_exceeded"],
        }


# -- hand-built findings --------------------------------------------------------------------------------


def over_budget(count: int, prefix: str = "c") -> list[dict[str, Any]]:
    """`count` conversations, each one call of $3 against a $2 budget stored with it: one budget_exceeded
    (critical) each."""
    return [
        call(f"{i:016x}", i, f"{prefix}{i:03d}", cost_usd=3, priced=True, budget_usd=2, service_name="api")
        for i in range(count)
    ]


def error_hour() -> list[dict[str, Any]]:
    """20 calls in one hour, 3 of them HTTP 429: 15% > 10% of >= 20 calls, one error_burst (warning)."""
    rows = [call(f"e{i:015x}", 600 + i) for i in range(17)]
    return rows + [failed_call(f"f{i:015x}", 620 + i, 429) for i in range(3)]


def test_fifty_findings_make_one_message_per_sink(sqlite_url: str) -> None:
    store_rows(sqlite_url, over_budget(50) + error_hour())
    with Receiver() as webhook, Receiver() as slack:
        code, _, err = run(
            "--db", sqlite_url, "alert", "--webhook", webhook.url, "--slack-webhook", slack.url
        )
        assert code == 0, err
        assert [body["kind"] for body in webhook.bodies] == ["budget_exceeded", "error_burst"]
        assert len(check_webhook(webhook.bodies[0])) == 50
        (burst,) = check_webhook(webhook.bodies[1])
        assert (
            burst["finding"]["evidence"]["error_calls"] == 3 and burst["finding"]["evidence"]["calls"] == 20
        )
        budget_message, burst_message = slack.bodies
        blocks = check_slack(budget_message)
        assert blocks[0]["text"]["text"] == "compactobs CRITICAL budget_exceeded: 50 new"
        # 15 listed (a section and the commands each), then the count of the rest.
        assert len(blocks) == 1 + 15 * 2 + 1
        assert blocks[-1]["elements"][0]["text"] == "and 35 more: compactobs report anomalies lists all"
        assert blocks[2]["elements"][0]["text"] == (
            "compactobs report conversation 'c000'   compactobs report call '0000000000000000'"
        )
        check_slack(burst_message)


def test_a_destination_that_is_down_fails_the_run_and_gets_it_next_time(sqlite_url: str) -> None:
    store_rows(sqlite_url, over_budget(3))
    with Receiver() as webhook, Receiver(status=503) as slack:
        args = ["--db", sqlite_url, "alert", "--webhook", webhook.url, "--slack-webhook", slack.url]
        code, out, err = run(*args)
        assert code == 4
        assert err.count("\n") == 1 and err.startswith("Error: 1 of 2 destination(s) failed: slack ")
        assert "answered HTTP 503: 3 finding(s) kept for the next run" in err
        assert "s3cr3tPath" not in out + err
        # The other destination got its message.
        (body,) = webhook.bodies
        assert len(check_webhook(body)) == 3
        assert len(slack.bodies) == 1  # it was tried

        webhook.clear()
        slack.clear()
        slack.status = 200
        code, out, err = run(*args)
        assert code == 0, err
        assert webhook.bodies == []
        (message,) = slack.bodies
        assert check_slack(message)[0]["text"]["text"] == "compactobs CRITICAL budget_exceeded: 3 new"

    # Nothing listening at all: the same.
    down = closed_port_url()
    code, _, err = run("--db", sqlite_url, "alert", "--webhook", down)
    assert code == 4 and err.count("\n") == 1
    assert "could not be reached" in err and "/hook/down" not in err


def test_renotify_and_a_finding_that_comes_back(sqlite_url: str, tmp_path: Path) -> None:
    """Through the library, with the pass's clock given: no timed waits."""
    store_rows(sqlite_url, over_budget(1))
    engine = store.open_database(sqlite_url)
    writer = store.make_engine(sqlite_url, writer=True)
    filters = build_filters(None, None, "UTC")
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    try:
        with Receiver() as webhook:
            sinks = [WebhookSink(webhook.url)]

            def at(hours: float, rules: AlertRules | None = None) -> list[tuple[str, str]]:
                webhook.clear()
                now = start + timedelta(hours=hours)
                run_pass(engine, writer, filters, rules or AlertRules(), sinks, "s", timedelta(hours=4), now)
                return [(e["event"], e["finding"]["kind"]) for b in webhook.bodies for e in check_webhook(b)]

            assert at(0) == [("trigger", "budget_exceeded")]
            assert at(3.9) == []
            assert at(4) == [("trigger", "budget_exceeded")]  # 4 hours after it was sent
            assert at(5) == []
            # Cleared (a budgets file lifts the budget), then back: a resolve, then a new trigger.
            budgets = tmp_path / "b.toml"
            budgets.write_text('[budgets."c*"]\nusd = 10\n', encoding="utf-8")
            from compactobs.rules import load_budgets

            assert at(6, AlertRules(budgets=load_budgets(budgets))) == [("resolve", "budget_exceeded")]
            assert at(7, AlertRules(budgets=load_budgets(budgets))) == []
            assert at(8) == [("trigger", "budget_exceeded")]
    finally:
        engine.dispose()
        writer.dispose()


HOSTILE = "<!channel> *pay* `now` <https://evil.example/x|click here> & <@U123>|>"


def test_hostile_conversation_ids_do_not_steer_slack(sqlite_url: str) -> None:
    store_rows(sqlite_url, [call("a" * 16, 0, HOSTILE, cost_usd=3, priced=True, budget_usd=2)])
    with Receiver() as slack:
        code, _, err = run(
            "--db",
            sqlite_url,
            "alert",
            "--slack-webhook",
            slack.url,
            "--link-base",
            "https://obs.example/x?a=1&b=2",
        )
        assert code == 0, err
        (message,) = slack.bodies
    blocks = check_slack(message)
    texts = [message["text"]] + [
        element["text"]
        for block in blocks
        for element in ([block["text"]] if "text" in block else block["elements"])
    ]
    mrkdwn = [
        e["text"] for b in blocks if b["type"] == "context" for e in b["elements"] if e["type"] == "mrkdwn"
    ]
    # The id is shown only in plain text, escaped; the only mrkdwn is the two links, the id percent-encoded.
    assert mrkdwn == [
        "<https://obs.example/x?a=1&amp;b=2/conversation/"
        "%3C%21channel%3E%20%2Apay%2A%20%60now%60%20%3Chttps%3A%2F%2Fevil.example%2Fx%7Cclick%20here%3E"
        "%20%26%20%3C%40U123%3E%7C%3E|report conversation> · "
        "<https://obs.example/x?a=1&amp;b=2/call/aaaaaaaaaaaaaaaa|report call>"
    ]
    plain = [t for t in texts if t not in mrkdwn]
    assert not any("<" in t or ">" in t for t in plain)
    assert any(
        "conversation &lt;!channel&gt; *pay* `now` &lt;https://evil.example/x|click here&gt; "
        "&amp; &lt;@U123&gt;|&gt;" in t
        for t in plain
    )
    assert all(
        block["text"]["type"] == "plain_text" for block in blocks if block["type"] in ("header", "section")
    )


def test_slack_fallback_text_carries_no_stored_text() -> None:
    from compactobs.alerts.evaluate import Alert
    from compactobs.alerts.sinks import Group

    alert = Alert(
        alert_key("compaction_loop", HOSTILE, None, None),
        "compaction_loop",
        "critical",
        HOSTILE,
        None,
        None,
        HOSTILE,
    )
    message = slack_message(Group("compaction_loop", triggers=[alert], open=[alert]))
    assert message["text"] == "compactobs CRITICAL compaction_loop: 1 new"


def test_slack_texts_stay_within_slacks_limits_after_escaping() -> None:
    """Escaping lengthens text (`<` becomes `&lt;`): a long id of `<` is cut after escaping, within Slack's
    limits (header 150, section and context 3000), and never inside an entity."""
    from compactobs.alerts.evaluate import Alert
    from compactobs.alerts.sinks import Group

    hostile = "<" * 1400
    alert = Alert(
        alert_key("compaction_loop", hostile, None, None),
        "compaction_loop",
        "critical",
        hostile,
        None,
        None,
        hostile,
    )
    blocks = slack_message(Group("compaction_loop", triggers=[alert], open=[alert]))["blocks"]
    texts = [block["text"] for block in blocks if "text" in block]
    texts += [element for block in blocks for element in block.get("elements", ())]
    assert texts
    for text in texts:
        limit = 150 if text is blocks[0]["text"] else 3000
        assert len(text["text"]) <= limit, (len(text["text"]), limit)
        body = text["text"].removesuffix("…")
        assert body.replace("&lt;", "").replace("&gt;", "").replace("&amp;", "").count("&") == 0
        assert "<" not in body


def test_secrets_from_a_file_or_the_environment_and_bad_input(sqlite_url: str, tmp_path: Path) -> None:
    store_rows(sqlite_url, over_budget(1))
    with Receiver() as slack, Receiver(202) as pagerduty:
        secret = tmp_path / "slack-url"
        secret.write_text(slack.url + "\n", encoding="utf-8")
        code, out, err = run(
            "--db", sqlite_url, "alert", "--slack-webhook", f"@{secret}", "--pagerduty-url", pagerduty.url,
            env={"COMPACTOBS_PAGERDUTY_ROUTING_KEY": ROUTING_KEY},
        )  # fmt: skip
        assert code == 0, err
        assert len(slack.bodies) == 1 and check_pagerduty(pagerduty.bodies[0])["event_action"] == "trigger"
        assert f"slack http://127.0.0.1:{slack.url.split(':')[2].split('/')[0]}/****: 1 message(s)" in out
        assert "s3cr3tPath" not in out and ROUTING_KEY[:-4] not in out

    one_line_error(*run("--db", sqlite_url, "alert")[::2])
    code, _, err = run("--db", sqlite_url, "alert", "--webhook", "x", "--renotify", "soon")
    one_line_error(code, err)
    code, _, err = run("--db", sqlite_url, "alert", "--webhook", f"@{tmp_path / 'missing'}")
    assert "cannot read" in one_line_error(code, err)
    code, _, err = run("--db", sqlite_url, "alert", "--webhook", "ftp://x")
    one_line_error(code, err)


def test_dry_run_lists_findings_and_sends_nothing(sqlite_url: str) -> None:
    store_rows(sqlite_url, over_budget(2) + error_hour())
    code, out, err = run("--db", sqlite_url, "alert", "--dry-run", "--severity", "critical")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "2 finding(s): 2 critical, 0 warning"
    assert (
        lines[1].startswith("critical budget_exceeded budget_exceeded:") and " conversation c000 " in lines[1]
    )


# -- two processes at once ----------------------------------------------------------------------------------


def test_two_processes_at_once_send_each_finding_once(database_url: str) -> None:
    store_rows(database_url, over_budget(40) + error_hour())
    with Receiver() as webhook:
        command = [
            sys.executable,
            "-m",
            "compactobs",
            "--db",
            database_url,
            "alert",
            "--webhook",
            webhook.url,
        ]
        env = {**os.environ, "NO_COLOR": "1"}
        processes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)
        ]
        outcomes = [process.communicate(timeout=300) for process in processes]
        for process, (_, err) in zip(processes, outcomes, strict=True):
            assert process.returncode == 0, err
        keys = Counter(event["key"] for body in webhook.bodies for event in check_webhook(body))
    assert len(keys) == 41 and set(keys.values()) == {1}


def test_the_state_table_is_in_the_store(sqlite_url: str) -> None:
    store_rows(sqlite_url, over_budget(1))
    with Receiver() as webhook:
        assert run("--db", sqlite_url, "alert", "--webhook", webhook.url)[0] == 0
    engine = store.open_database(sqlite_url)
    try:
        from sqlalchemy import select

        with engine.connect() as connection:
            rows = connection.execute(
                select(
                    store.alert_state.c.kind,
                    store.alert_state.c.conversation_id,
                    store.alert_state.c.first_seen_ms,
                    store.alert_state.c.last_sent_ms,
                    store.alert_state.c.resolved_ms,
                    store.alert_state.c.claimed_by,
                )
            ).all()
    finally:
        engine.dispose()
    ((kind, conversation, first_seen, last_sent, resolved, claimed),) = rows
    assert (kind, conversation, resolved, claimed) == ("budget_exceeded", "c000", None, None)
    assert last_sent >= first_seen > BASE_MS


def test_budgets_check_reads_the_monthly_table(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text(
        '[monthly]\nusd = 1000\n[monthly.service."search"]\nusd = 200\n[budgets."t-*"]\nusd = 5\n',
        encoding="utf-8",
    )
    code, out, err = run("budgets", "check", str(budgets))
    assert code == 0, err
    assert out == f"{budgets}: valid, 0 exact conversation ids and 1 glob, monthly budgets for 2 scope(s)\n"
    budgets.write_text('[monthly]\nusd = 1000\n\n[monthly.tag."team=x"]\nusd = 5\n', encoding="utf-8")
    code, _, err = run("budgets", "check", str(budgets))
    assert "'team=x' is no tag key" in one_line_error(code, err)
    budgets.write_text(
        '[monthly.tag.team."a b"]\nusd = 5\n[monthly.tag.team."c"]\nusd = 6\n', encoding="utf-8"
    )
    code, out, err = run("budgets", "check", str(budgets))
    assert code == 0, err
    assert out.endswith("monthly budgets for 2 scope(s)\n")
    budgets.write_text("[monthly]\nusd = -1\n", encoding="utf-8")
    assert "must be a finite number >= 0" in one_line_error(*run("budgets", "check", str(budgets))[::2])


def test_a_claimed_finding_is_not_claimed_again_until_released_or_lapsed(database_url: str) -> None:
    """The claim itself, step by step (the two-process test races real processes; this one cannot miss)."""
    from compactobs.alerts.evaluate import evaluate
    from compactobs.alerts.state import LEASE_MS, AlertState

    store_rows(database_url, over_budget(3))
    engine = store.open_database(database_url)
    writer = store.make_engine(database_url, writer=True)
    try:
        alerts = evaluate(
            engine, build_filters(None, None, "UTC"), AlertRules(), datetime(2026, 3, 1, tzinfo=timezone.utc)
        )
        first, second = AlertState(writer, "first"), AlertState(writer, "second")
        t0 = 1_800_000_000_000
        mine = first.claim("d", alerts, t0, None)
        assert [a.key for a in mine.triggers] == [a.key for a in alerts] and len(alerts) == 3
        assert not second.claim("d", alerts, t0 + 1, None)  # held by `first`
        first.release("d", [alerts[0].key])
        assert [a.key for a in second.claim("d", alerts, t0 + 2, None).triggers] == [alerts[0].key]
        second.sent("d", [alerts[0].key], t0 + 3)
        first.sent("d", [alerts[0].key], t0 + 3)  # not its claim any more: no effect
        # `first` died holding the other two: after the lease they are due again, to anyone.
        assert not second.claim("d", alerts, t0 + LEASE_MS, None)
        late = second.claim("d", alerts, t0 + LEASE_MS + 1, None)
        assert [a.key for a in late.triggers] == [a.key for a in alerts[1:]]
    finally:
        engine.dispose()
        writer.dispose()


def _garbage_server() -> tuple[socket.socket, threading.Thread]:
    """A loopback port that answers any request with bytes that are not HTTP, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"garbage\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("broken", ["not http", "no scheme", "space in the path"])
def test_a_broken_destination_is_one_delivery_error_that_never_shows_its_url(broken: str) -> None:
    """urllib's own errors carry the URL, and a webhook's URL is its secret: what a failed delivery says
    names the sink as shown (masked) and the kind of failure, never the URL."""
    listener = None
    if broken == "not http":
        listener, thread = _garbage_server()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/T0/B0/SECRETX"
    elif broken == "no scheme":
        url = "hooks.example/services/T0/B0/SECRETX"
    else:
        url = "http://127.0.0.1:9/services/T0/B0/SECRETX X"
    try:
        with pytest.raises(DeliveryError) as raised:
            post_json(url, {"text": "x"}, "webhook https://hooks.example/…")
    finally:
        if listener is not None:
            thread.join(timeout=10)
            listener.close()
    message = str(raised.value)
    assert message.startswith("webhook https://hooks.example/… could not be reached (")
    assert "SECRETX" not in message and "\n" not in message
