"""Claude Code's telemetry through `compactobs collect`: the real Claude Code CLI (npm) against the
loopback simulator, its OpenTelemetry log events sent to a real collector, and hand-built events for the
cases a short session does not show (compaction, errors, resends, prompt text)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compactobs.collect import Collector
from compactobs.testing import Reply, Simulator, message
from tests.conftest import postgres_schema

from .test_collect import _attrs, post, prepared, rows

NPM_CACHE = Path(os.environ.get("COMPACTOBS_NPM_CACHE", Path.home() / ".cache" / "compactobs-npm"))
CLAUDE = NPM_CACHE / "node_modules" / ".bin" / "claude"


def _claude_or_skip() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Claude Code CLI needs it")
    if not CLAUDE.exists():
        reason = f"the Claude Code CLI is not installed in {NPM_CACHE} (.ci/run installs it with npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CLAUDE


USAGE = {
    "input_tokens": 120,
    "output_tokens": 7,
    "cache_read_input_tokens": 30,
    "cache_creation_input_tokens": 10,
}
# Per million tokens (genai-prices): sonnet 4.5 $3 in, $15 out, $0.30 cache read, $3.75 cache write (5 min);
# haiku 4.5 $1, $5, $0.10, $1.25. Claude Code reports the same figures as its cost_usd.
SONNET_COST = Decimal("0.0005115")  # 120 x 3 + 7 x 15 + 30 x 0.3 + 10 x 3.75 = 511.5 micro-dollars
HAIKU_COST = Decimal("0.0001705")  # 120 x 1 + 7 x 5 + 30 x 0.1 + 10 x 1.25 = 170.5 micro-dollars


def run_claude(sim: Simulator, endpoint: str, home: Path, model: str, prompt: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OTEL_", "CLAUDE_"))}
    env.update(
        ANTHROPIC_BASE_URL=sim.base_url,
        ANTHROPIC_API_KEY="sk-ant-test",
        HOME=str(home),
        CLAUDE_CONFIG_DIR=str(home / ".claude"),
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_ENABLE_TELEMETRY="1",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_LOGS_EXPORT_INTERVAL="200",
    )
    result = subprocess.run(
        [str(CLAUDE), "-p", prompt, "--model", model],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_claude_code_calls_are_stored_once_and_priced_from_their_tokens(
    sqlite_url: str, tmp_path: Path
) -> None:
    _claude_or_skip()
    home = tmp_path / "home"
    home.mkdir()
    with (
        Simulator() as sim,
        Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector,
    ):
        for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
            sim.enqueue(Reply(message(model=model, content=[{"type": "text", "text": "hi"}], usage=USAGE)))
            run_claude(sim, collector.endpoint, home, model, "say hi")
        assert collector.stats.refused == 0
    call_rows, iteration_rows = rows(sqlite_url)
    by_model = {row["request_model"]: row for row in call_rows}
    assert sorted(by_model) == ["claude-haiku-4-5", "claude-sonnet-4-5"] and len(call_rows) == 2
    sessions = {p.stem for p in (home / ".claude" / "projects").glob("*/*.jsonl")}
    for model, cost in (("claude-sonnet-4-5", SONNET_COST), ("claude-haiku-4-5", HAIKU_COST)):
        row = by_model[model]
        assert row["service_name"] == "claude-code" and row["conversation_id"] in sessions
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (120, 7, 30)
        assert row["cache_write_5m_tokens"] == 10 and row["priced"] is True
        assert Decimal(str(row["cost_usd"])) == cost
        assert Decimal(str(row["source_cost_usd"])) == cost  # Claude Code's own figure agrees
        assert row["request_id"].startswith("req_")
    assert len(iteration_rows) == 2


# --- hand-built events: what the two models' short sessions do not show ---------------------------------

SESSION = "8f14e45f-ceea-467f-a0b7-2f1f6b1a7e02"


def _event(name: str, sequence: int, **attributes: Any) -> dict[str, Any]:
    common = {
        "session.id": SESSION,
        "event.name": name,
        "event.sequence": sequence,
        "event.timestamp": "2026-11-30T10:00:00.000Z",
        "user.id": "u-1",
        "prompt.id": "p-1",
    }
    return {
        "timeUnixNano": "1796032800000000000",
        "body": {"stringValue": f"claude_code.{name}"},
        "attributes": _attrs({**common, **attributes}),
    }


def logs_request(*records: dict[str, Any]) -> bytes:
    document = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": _attrs({"service.name": "claude-code", "service.version": "2.1.197"})
                },
                "scopeLogs": [
                    {"scope": {"name": "com.anthropic.claude_code.events"}, "logRecords": list(records)}
                ],
            }
        ]
    }
    return json.dumps(document).encode()


def test_events_become_calls_once_compaction_counted_errors_kept_and_no_text(
    sqlite_url: str, tmp_path: Path
) -> None:
    body = logs_request(
        _event("user_prompt", 0, prompt="MY SECRET PROMPT", prompt_length="16"),
        _event(
            "api_request",
            1,
            model="claude-sonnet-4-5",
            input_tokens=1000,
            output_tokens=200,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_usd=0.006,
            duration_ms=1500,
            request_id="req_a",
            query_source="main",
        ),
        _event(
            "api_request",
            2,
            model="claude-sonnet-4-5",
            input_tokens=50000,
            output_tokens=2000,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_usd=0.18,
            duration_ms=9000,
            request_id="req_compact",
            query_source="compact",
        ),
        _event(
            "api_error",
            3,
            model="claude-sonnet-4-5",
            error="Overloaded",
            status_code="529",
            duration_ms=300,
            attempt=2,
        ),
        _event("assistant_response", 4, response="MY SECRET ANSWER", request_id="req_a"),
    )
    headers = {"Content-Type": "application/json"}
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        for _ in range(2):  # resent: stored once
            status, _, answer = post(collector.endpoint, body, headers, path="/v1/logs")
            assert status == 200 and "api_request and api_error events" in answer.decode()
    call_rows, iteration_rows = rows(sqlite_url)
    assert len(call_rows) == 3
    by_request = {row["request_id"]: row for row in call_rows}
    main, compact, error = by_request["req_a"], by_request["req_compact"], by_request[None]
    # 1,000 x $3/M + 200 x $15/M = $0.003 + $0.003.
    assert Decimal(str(main["cost_usd"])) == Decimal("0.006") and main["compactions_count"] == 0
    assert Decimal(str(main["source_cost_usd"])) == Decimal("0.006")
    # Claude Code's own compaction: 50,000 x $3/M + 2,000 x $15/M = $0.15 + $0.03, as compaction spend.
    assert Decimal(str(compact["cost_usd"])) == Decimal("0.18") and compact["compactions_count"] == 1
    (compaction,) = [r for r in iteration_rows if r["call_id"] == compact["call_id"]]
    assert compaction["type"] == "compaction" and (
        compaction["input_tokens"],
        compaction["output_tokens"],
    ) == (50000, 2000)
    assert (error["status"], error["error_type"], error["http_status"], error["attempts"]) == (
        "ERROR",
        "529",
        529,
        2,
    )
    assert error["cost_usd"] is None and error["input_tokens"] is None
    assert {row["conversation_id"] for row in call_rows} == {SESSION}
    assert main["duration_ms"] == 1500.0
    stored = json.dumps([*call_rows, *iteration_rows], default=str)
    assert "SECRET" not in stored


def test_transcripts_of_the_same_sessions_import_the_same_calls_and_nothing_doubles(
    sqlite_url: str, tmp_path: Path
) -> None:
    _claude_or_skip()
    from compactobs.importers.claude_code import import_transcripts

    home = tmp_path / "home"
    home.mkdir()
    with (
        Simulator() as sim,
        Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector,
    ):
        for model in ("claude-sonnet-4-5", "claude-haiku-4-5"):
            sim.enqueue(Reply(message(model=model, content=[{"type": "text", "text": "hi"}], usage=USAGE)))
            run_claude(sim, collector.endpoint, home, model, "say hi")
    collected = rows(sqlite_url)
    projects = home / ".claude" / "projects"
    # Into the store collect filled: the same calls, nothing doubled.
    assert import_transcripts(sqlite_url, [projects], spool_dir=tmp_path / "spool").calls == 2
    assert rows(sqlite_url)[0] == collected[0]
    # Into an empty store: the same call ids, tokens and costs, from the transcripts alone.
    fresh = prepared(f"sqlite:///{tmp_path / 'imported.db'}")
    import_transcripts(fresh, [projects], spool_dir=tmp_path / "spool2")
    keys = (
        "call_id",
        "conversation_id",
        "request_id",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_5m_tokens",
        "cost_usd",
    )
    assert [[r[k] for k in keys] for r in rows(fresh)[0]] == [[r[k] for k in keys] for r in collected[0]]


LOOP_SESSION = "0c8e2b8a-1d55-4c7e-9d0a-5f3b2e7c9a11"


def _loop_events() -> list[dict[str, Any]]:
    """A session whose auto-compactions free too little, three times in a row, from a subagent: each
    `query_source=compact` call, then its `compaction` event (pre 160,000 tokens, post 150,000); then a
    manual compaction that failed before any call; and a main call with Claude Code's attribution."""
    events: list[dict[str, Any]] = []
    attribution = {
        "agent.name": "Explore",
        "skill.name": "pdf",
        "mcp_server.name": "github",
        "mcp_tool.name": "create_issue",
        "user.email": "dev@example.com",
    }
    sequence = 0
    for n in range(3):
        events.append(
            _event(
                "api_request",
                sequence,
                model="claude-sonnet-4-5",
                input_tokens=160000,
                output_tokens=1000,
                cache_read_tokens=0,
                cache_creation_tokens=0,
                cost_usd=0.495,
                duration_ms=5000,
                request_id=f"req_compact_{n}",
                query_source="compact",
                **attribution,
            )
        )
        events.append(
            _event(
                "compaction",
                sequence + 1,
                trigger="auto",
                success="true",
                duration_ms="5000",
                pre_tokens="160000",
                post_tokens="150000",
            )
        )
        sequence += 2
    events.append(
        _event(
            "compaction", sequence, trigger="manual", success="false", duration_ms="10", pre_tokens="90000"
        )
    )
    events.append(
        _event(
            "api_request",
            sequence + 1,
            model="claude-sonnet-4-5",
            input_tokens=1000,
            output_tokens=200,
            cache_read_tokens=0,
            cache_creation_tokens=0,
            cost_usd=0.006,
            duration_ms=1500,
            request_id="req_main",
            query_source="main",
            **attribution,
        )
    )
    for event in events:
        for attribute in event["attributes"]:
            if attribute["key"] == "session.id":
                attribute["value"] = {"stringValue": LOOP_SESSION}
    return events


def test_compaction_events_give_the_loop_rule_its_figures_and_attribution_becomes_tags(
    sqlite_url: str, tmp_path: Path
) -> None:
    from compactobs import store
    from compactobs.reports.anomalies import anomalies_report
    from compactobs.reports.cost import cost_report
    from compactobs.reports.render import render
    from compactobs.reports.times import build_filters

    headers = {"Content-Type": "application/json"}
    with Collector(prepared(sqlite_url), http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        for _ in range(2):  # resent: stored once
            status, _, _ = post(collector.endpoint, logs_request(*_loop_events()), headers, path="/v1/logs")
            assert status == 200
    call_rows, _ = rows(sqlite_url)
    by_request = {row["request_id"]: row for row in call_rows}
    # 3 compaction calls, the failed compaction of its own, the main call.
    assert len(call_rows) == 5
    for n in range(3):
        row = by_request[f"req_compact_{n}"]
        assert (row["compactions_count"], row["compactions_failed"]) == (1, 0)
        assert (row["compaction_trigger"], row["context_tokens"]) == (160000, 150000)
        # 160,000 x $3/M + 1,000 x $15/M = $0.48 + $0.015
        assert Decimal(str(row["cost_usd"])) == Decimal("0.495")
    failed = by_request[None]
    assert (failed["compactions_count"], failed["compactions_failed"], failed["compaction_trigger"]) == (
        1,
        1,
        90000,
    )
    assert failed["context_tokens"] is None and Decimal(str(failed["cost_usd"])) == 0
    tags = json.loads(by_request["req_main"]["tags"])
    assert tags == {
        "agent": "Explore",
        "mcp_server": "github",
        "mcp_tool": "create_issue",
        "skill": "pdf",
        "user.email": "dev@example.com",
        "user.id": "u-1",
    }
    engine = store.open_database(sqlite_url)
    try:
        filters = build_filters(None, None, "UTC")
        findings = json.loads(render(anomalies_report(engine, filters), "json"))["rows"]
        loops = [f for f in findings if f["kind"] == "compaction_loop"]
        # 150,000 >= 0.8 x 160,000 = 128,000: three ineffective compactions in three consecutive calls.
        assert len(loops) == 1 and loops[0]["conversation_id"] == LOOP_SESSION, findings
        by_agent = json.loads(render(cost_report(engine, filters, ["service", "tag:agent"]), "json"))
        groups = {(r["service"], r["tag:agent"]): r["calls"] for r in by_agent["rows"]}
        assert groups == {("claude-code", "Explore"): 4, ("claude-code", None): 1}
    finally:
        engine.dispose()


def test_claude_code_shows_beside_an_app_by_service_provider_and_tag(sqlite_url: str, tmp_path: Path) -> None:
    """An application's call (service app, tag agent=planner) and Claude Code's five in one store."""
    import compactobs
    from compactobs import store
    from compactobs.reports.cost import cost_report
    from compactobs.reports.render import render
    from compactobs.reports.times import build_filters
    from tests.recording import recording

    url = prepared(sqlite_url)
    with recording(url, service_name="app") as (sim, client):
        sim.enqueue(Reply(message(usage={"input_tokens": 10, "output_tokens": 1})))
        with compactobs.conversation("c1", tags={"agent": "planner"}):
            client.messages.create(
                model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
    with Collector(url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        post(
            collector.endpoint,
            logs_request(*_loop_events()),
            {"Content-Type": "application/json"},
            path="/v1/logs",
        )
    engine = store.open_database(url)
    try:
        filters = build_filters(None, None, "UTC")

        def groups(by: str) -> dict[Any, int]:
            data = json.loads(render(cost_report(engine, filters, [by]), "json"))
            return {row[data["by"][0]]: row["calls"] for row in data["rows"]}

        assert groups("service") == {"app": 1, "claude-code": 5}
        assert groups("provider") == {"anthropic": 6}
        assert groups("tag:agent") == {"planner": 1, "Explore": 4, None: 1}
    finally:
        engine.dispose()


def test_a_transcript_boundary_of_a_compaction_collect_paired_is_not_stored_again(
    sqlite_url: str, tmp_path: Path
) -> None:
    from compactobs.importers.claude_code import import_transcripts

    url = prepared(sqlite_url)
    with Collector(url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        post(
            collector.endpoint,
            logs_request(*_loop_events()),
            {"Content-Type": "application/json"},
            path="/v1/logs",
        )
    before = rows(url)
    transcript = tmp_path / "projects" / "-work" / f"{LOOP_SESSION}.jsonl"
    transcript.parent.mkdir(parents=True)
    boundary = {
        "type": "system",
        "subtype": "compact_boundary",
        "sessionId": LOOP_SESSION,
        "timestamp": "2026-11-30T10:00:05.000Z",
        "compactMetadata": {"trigger": "auto", "preTokens": 160000, "postTokens": 150000},
    }
    other = {**boundary, "compactMetadata": {"trigger": "auto", "preTokens": 170000, "postTokens": 20000}}
    transcript.write_text(json.dumps(boundary) + "\n" + json.dumps(other) + "\n")
    import_transcripts(url, [tmp_path / "projects"], spool_dir=tmp_path / "spool")
    after = rows(url)
    # The paired one is already a compacting call; the other compaction is new: one more row.
    assert len(after[0]) == len(before[0]) + 1
    added = [row for row in after[0] if row["call_id"] not in {r["call_id"] for r in before[0]}]
    assert [(r["compaction_trigger"], r["context_tokens"]) for r in added] == [(170000, 20000)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_compaction_whose_events_come_in_separate_requests_is_counted_once(
    backend: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Every event of the loop session in a request of its own (each compact call's `compaction` event in the
    request after it), all of them sent twice, then the first compaction event once more: the same rows as
    when they come in one request."""
    from compactobs import store
    from compactobs.reports.anomalies import anomalies_report
    from compactobs.reports.render import render
    from compactobs.reports.times import build_filters

    headers = {"Content-Type": "application/json"}
    with contextlib.ExitStack() as stack:
        url = sqlite_url if backend == "sqlite" else stack.enter_context(postgres_schema())
        url = prepared(url)
        with Collector(url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
            for _ in range(2):  # the second time, each compact call's request is less than the stored copy
                for event in _loop_events():
                    status, _, _ = post(collector.endpoint, logs_request(event), headers, path="/v1/logs")
                    assert status == 200
            # The first compaction event alone again (its answer lost, say): its call already has it.
            status, _, _ = post(collector.endpoint, logs_request(_loop_events()[1]), headers, path="/v1/logs")
            assert status == 200
        call_rows, iteration_rows = rows(url)
        by_request = {row["request_id"]: row for row in call_rows}
        # 3 compaction calls, the failed compaction of its own (no call before it), the main call: no $0
        # compaction of model "unknown" beside each compact call.
        assert len(call_rows) == 5
        # 3 compact calls of 1 compaction each + the failed one of its own = 4.
        assert sum(row["compactions_count"] for row in call_rows) == 4
        for n in range(3):
            row = by_request[f"req_compact_{n}"]
            assert (row["compactions_count"], row["compactions_failed"]) == (1, 0)
            assert (row["compaction_trigger"], row["context_tokens"]) == (160000, 150000)
            # 160,000 x $3/M + 1,000 x $15/M = $0.48 + $0.015
            assert Decimal(str(row["cost_usd"])) == Decimal("0.495")
            assert len([i for i in iteration_rows if i["call_id"] == row["call_id"]]) == 1
        failed = by_request[None]
        assert (failed["compactions_count"], failed["compactions_failed"]) == (1, 1)
        engine = store.open_database(url)
        try:
            findings = json.loads(render(anomalies_report(engine, build_filters(None, None, "UTC")), "json"))
        finally:
            engine.dispose()
        loops = [f for f in findings["rows"] if f["kind"] == "compaction_loop"]
        # 150,000 >= 0.8 x 160,000 = 128,000: three ineffective compactions, one finding.
        assert len(loops) == 1 and loops[0]["conversation_id"] == LOOP_SESSION, findings


def test_a_batch_mapped_record_by_record_pairs_a_compaction_with_its_call(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch with a record that breaks the mapping is mapped again record by record: the compaction is
    still its call's outcome, counted once, and the unreadable record alone is rejected."""
    from compactobs.collect.claude_code import ClaudeCodeEvents
    from compactobs.collect.decode import LogRecord

    observation = ClaudeCodeEvents.observation

    # No event value makes the mapping raise today (see tests/collect/test_limits.py): the fault is put in.
    def breaks_on_the_marked_record(record: LogRecord, kind: str) -> Any:
        if record.attributes.get("request_id") == "req_bad":
            raise OverflowError("cannot convert float infinity to integer")
        return observation(record, kind)

    monkeypatch.setattr(ClaudeCodeEvents, "observation", staticmethod(breaks_on_the_marked_record))
    headers = {"Content-Type": "application/json"}
    broken = _event("api_request", 9, request_id="req_bad", model="claude-sonnet-4-5", output_tokens=1)
    url = prepared(sqlite_url)
    with Collector(url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        body = logs_request(*_loop_events()[:2], broken)  # the compact call, its compaction, the bad one
        status, _, _ = post(collector.endpoint, body, headers, path="/v1/logs")
        assert status == 200
    call_rows, _ = rows(url)
    assert [
        (r["request_id"], r["compactions_count"], r["compaction_trigger"], r["context_tokens"])
        for r in call_rows
    ] == [("req_compact_0", 1, 160000, 150000)]


def test_a_boundary_imported_before_collect_pairs_its_compaction_is_replaced_by_the_call(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The transcript first: its boundary (pre 160,000, post 150,000) is a compaction of its own. Then
    collect gets the loop session, whose compact calls carry that outcome: the boundary's row goes, so the
    compaction is counted once."""
    from compactobs.importers.claude_code import import_transcripts

    url = prepared(sqlite_url)
    transcript = tmp_path / "projects" / "-work" / f"{LOOP_SESSION}.jsonl"
    transcript.parent.mkdir(parents=True)
    boundary = {
        "type": "system",
        "subtype": "compact_boundary",
        "sessionId": LOOP_SESSION,
        "timestamp": "2026-11-30T10:00:05.000Z",
        "compactMetadata": {"trigger": "auto", "preTokens": 160000, "postTokens": 150000},
    }
    transcript.write_text(json.dumps(boundary) + "\n")
    assert import_transcripts(url, [tmp_path / "projects"], spool_dir=tmp_path / "spool").calls == 1
    ((alone,), _) = rows(url)
    assert (alone["input_tokens"], alone["compactions_count"]) == (0, 1)
    with Collector(url, http="127.0.0.1:0", spool_dir=tmp_path / "spool") as collector:
        body = logs_request(*_loop_events())
        post(collector.endpoint, body, {"Content-Type": "application/json"}, path="/v1/logs")
    call_rows, iteration_rows = rows(url)
    # As collect alone: 3 compact calls, the failed compaction of its own, the main call; 3 + 1 compactions.
    assert alone["call_id"] not in {row["call_id"] for row in call_rows}
    assert alone["call_id"] not in {row["call_id"] for row in iteration_rows}
    assert len(call_rows) == 5 and sum(row["compactions_count"] for row in call_rows) == 4
