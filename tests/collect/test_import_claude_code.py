"""`compactobs import claude-code`: a hand-written transcript with a compaction iteration, streaming
snapshots, a malformed line and a later append; and ccusage (npm) on the same folder, for the README."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from compactobs.importers.claude_code import import_transcripts
from compactobs.store.exporter import spool_for
from compactobs.store.spool import parse_line, split_lines
from tests.faults import sqlite_locked_by_another_process

from .test_claude_code import NPM_CACHE
from .test_collect import prepared, rows

SESSION = "0b7c4a52-5f0e-4c3e-9a53-6f1d2c3b4a59"
COMPACTED_USAGE = {
    "input_tokens": 2000,
    "output_tokens": 500,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
    "iterations": [
        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3000},
        {"type": "message", "input_tokens": 2000, "output_tokens": 500},
    ],
}
# claude-sonnet-4-5: $3 input, $15 output per million tokens (under its 200K-input tier).
# The compaction: 180,000 x 3 + 3,000 x 15 = $0.54 + $0.045 = $0.585; the message: 2,000 x 3 + 500 x 15 =
# $0.006 + $0.0075 = $0.0135. The call: $0.5985. The top-level usage alone says $0.0135.
CALL_COST = Decimal("0.5985")
TOP_LEVEL_COST = Decimal("0.0135")
# ccusage keeps the first streaming snapshot of a message: 2,000 x 3 + 1 x 15 = $0.006015.
FIRST_SNAPSHOT_COST = Decimal("0.006015")


def _assistant(message_id: str, request_id: str, usage: dict[str, Any], stamp: str) -> dict[str, Any]:
    return {
        "type": "assistant",
        "sessionId": SESSION,
        "requestId": request_id,
        "timestamp": stamp,
        "isSidechain": False,
        "uuid": f"u-{message_id}-{usage['output_tokens']}",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "SECRET REPLY"}],
            "stop_reason": "end_turn",
            "usage": usage,
        },
    }


def write_transcript(folder: Path, *, snapshots: bool = True) -> Path:
    path = folder / "projects" / "-work-app" / f"{SESSION}.jsonl"
    path.parent.mkdir(parents=True)
    # Streaming: a first snapshot with partial output, then the final one.
    partial = _assistant(
        "msg_1", "req_1", {**COMPACTED_USAGE, "output_tokens": 1}, "2026-11-30T10:00:00.000Z"
    )
    lines = [
        {"type": "user", "sessionId": SESSION, "message": {"role": "user", "content": "SECRET PROMPT"}},
        *([partial] if snapshots else []),
        _assistant("msg_1", "req_1", COMPACTED_USAGE, "2026-11-30T10:00:01.000Z"),
        {
            "type": "system",
            "subtype": "compact_boundary",
            "sessionId": SESSION,
            "compactMetadata": {"trigger": "auto", "preTokens": 180000},
        },
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    path.write_text(text)
    return path


def test_a_compaction_iteration_is_priced_once_and_a_second_run_reads_only_what_is_new(
    sqlite_url: str, tmp_path: Path
) -> None:
    path = write_transcript(tmp_path / "claude")
    url = prepared(sqlite_url)
    first = import_transcripts(url, [tmp_path / "claude" / "projects"], spool_dir=tmp_path / "spool")
    assert (first.calls, first.lines, first.malformed) == (1, 5, 1)
    (call,), iteration_rows = rows(url)
    assert Decimal(str(call["cost_usd"])) == CALL_COST and call["compactions_count"] == 1
    assert (call["input_tokens"], call["output_tokens"]) == (182000, 3500)
    assert [(r["type"], Decimal(str(r["cost_usd"]))) for r in iteration_rows] == [
        ("compaction", Decimal("0.585")),
        ("message", TOP_LEVEL_COST),
    ]
    assert call["service_name"] == "claude-code" and call["conversation_id"] == SESSION
    assert "SECRET" not in json.dumps([call, *iteration_rows], default=str)
    # Nothing new: nothing read. One more message appended: only that line is read.
    assert (
        import_transcripts(url, [tmp_path / "claude" / "projects"], spool_dir=tmp_path / "spool").lines == 0
    )
    with path.open("a") as handle:
        usage = {"input_tokens": 100, "output_tokens": 10}
        handle.write(json.dumps(_assistant("msg_2", "req_2", usage, "2026-11-30T10:05:00.000Z")) + "\n")
    again = import_transcripts(url, [tmp_path / "claude" / "projects"], spool_dir=tmp_path / "spool")
    assert (again.lines, again.calls) == (1, 1)
    assert len(rows(url)[0]) == 2


def test_ccusage_reports_the_same_transcript_without_the_compaction(sqlite_url: str, tmp_path: Path) -> None:
    """The README's side-by-side figure: ccusage reads only the top-level usage."""
    ccusage = NPM_CACHE / "node_modules" / ".bin" / "ccusage"
    if shutil.which("node") is None:
        pytest.skip("node is not installed: ccusage needs it")
    if not ccusage.exists():
        reason = f"ccusage is not installed in {NPM_CACHE} (.ci/run installs it with npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    url = prepared(sqlite_url)
    for snapshots, ccusage_figure in ((False, TOP_LEVEL_COST), (True, FIRST_SNAPSHOT_COST)):
        folder = tmp_path / f"claude-{snapshots}"
        write_transcript(folder, snapshots=snapshots)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_")}
        env.update(CLAUDE_CONFIG_DIR=str(folder), HOME=str(tmp_path), TZ="UTC")
        result = subprocess.run(
            [str(ccusage), "daily", "--json", "--offline"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        totals = json.loads(result.stdout)["totals"]
        assert Decimal(str(totals["totalCost"])).quantize(Decimal("0.000001")) == ccusage_figure
        import_transcripts(url, [folder / "projects"], spool_dir=tmp_path / "spool")
        ((call,), _) = rows(url)  # the same call both times: stored once
        assert Decimal(str(call["cost_usd"])) == CALL_COST  # README: $0.5985 (compactobs) beside ccusage's


def test_the_command_says_what_it_read_and_warns_once_for_malformed_lines(
    sqlite_url: str, tmp_path: Path
) -> None:
    from tests.cli import run

    write_transcript(tmp_path / "claude")
    url = prepared(sqlite_url)
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "CLAUDE_CONFIG_DIR": str(tmp_path / "claude")}
    code, out, err = run("--db", url, "import", "claude-code", env=env)  # the default: $CLAUDE_CONFIG_DIR
    assert code == 0
    assert out.startswith("1 call(s) from 5 new line(s) in 1 file(s)")
    assert err == "warning: 1 malformed line(s) skipped\n"
    code, out, _ = run("--db", url, "import", "claude-code", env=env)
    assert (code, out.split(" new line")[0]) == (0, "0 call(s) from 0")
    code, _, err = run("--db", url, "import", "claude-code", str(tmp_path / "nowhere"), env=env)
    assert code == 2 and "no such file or directory" in err


def test_a_later_run_replaces_an_incomplete_snapshot_never_a_complete_one(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Run 1 reads only the first streaming snapshot (1 output token); run 2 reads the final one: the stored
    call becomes the final one. Run 3 reads a stale partial snapshot again: nothing changes."""
    path = tmp_path / "claude" / "projects" / "-work-app" / f"{SESSION}.jsonl"
    path.parent.mkdir(parents=True)
    steps = [COMPACTED_USAGE["iterations"][0], {"type": "message", "input_tokens": 2000, "output_tokens": 1}]
    partial_usage = {**COMPACTED_USAGE, "output_tokens": 1, "iterations": steps}
    partial = _assistant("msg_1", "req_1", partial_usage, "2026-11-30T10:00:00.000Z")
    final = _assistant("msg_1", "req_1", COMPACTED_USAGE, "2026-11-30T10:00:01.000Z")
    url = prepared(sqlite_url)
    folder = [tmp_path / "claude" / "projects"]
    path.write_text(json.dumps(partial) + "\n")
    import_transcripts(url, folder, spool_dir=tmp_path / "spool")
    ((call,), _) = rows(url)
    # The partial snapshot: message output 1 instead of 500: 3,000 + 1 = 3,001 output tokens in all.
    assert call["output_tokens"] == 3001
    with path.open("a") as handle:
        handle.write(json.dumps(final) + "\n")
    import_transcripts(url, folder, spool_dir=tmp_path / "spool")
    ((call,), iteration_rows) = rows(url)
    assert call["output_tokens"] == 3500 and Decimal(str(call["cost_usd"])) == CALL_COST
    assert len(iteration_rows) == 2  # the partial's iterations went with it
    with path.open("a") as handle:
        handle.write(json.dumps(partial) + "\n")
    import_transcripts(url, folder, spool_dir=tmp_path / "spool")
    assert rows(url)[0] == [call]


def test_subagent_messages_are_tagged_and_compaction_boundaries_make_a_loop(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A subagent's transcript (`<session>/subagents/agent-<id>.jsonl`, its type in the `.meta.json` beside
    it) whose auto-compactions free too little three times: the loop rule finds them, on its agent."""
    from compactobs import store
    from compactobs.reports.anomalies import anomalies_report
    from compactobs.reports.render import render
    from compactobs.reports.times import build_filters

    folder = tmp_path / "claude" / "projects" / "-work-app" / SESSION / "subagents"
    folder.mkdir(parents=True)
    (folder / "agent-a1b2.meta.json").write_text(json.dumps({"agentType": "Explore"}))
    lines: list[dict[str, Any]] = []
    for n in range(3):
        reply = _assistant(
            f"msg_{n}", f"req_{n}", {"input_tokens": 100, "output_tokens": 10}, f"2026-11-30T10:0{n}:00.000Z"
        )
        boundary = {
            "type": "system",
            "subtype": "compact_boundary",
            "sessionId": SESSION,
            "timestamp": f"2026-11-30T10:0{n}:30.000Z",
            # 150,000 + 1,000n >= 0.8 x (160,000 + 1,000n): each leaves more than 80% of what it compacted.
            "compactMetadata": {
                "trigger": "auto",
                "preTokens": 160000 + 1000 * n,
                "postTokens": 150000 + 1000 * n,
            },
        }
        for entry in (reply, boundary):
            entry.update(isSidechain=True, agentId="a1b2")
        lines += [reply, boundary]
    (folder / "agent-a1b2.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    url = prepared(sqlite_url)
    assert (
        import_transcripts(url, [tmp_path / "claude" / "projects"], spool_dir=tmp_path / "spool").calls == 6
    )
    call_rows, _ = rows(url)
    assert {row["tags"] for row in call_rows} == {'{"agent":"Explore","agent_id":"a1b2"}'}
    compactions = sorted(
        (r["compaction_trigger"], r["context_tokens"]) for r in call_rows if r["compactions_count"]
    )
    assert compactions == [(160000, 150000), (161000, 151000), (162000, 152000)]
    # Imported again from the start (a new offsets file): the same ids, nothing doubles.
    import_transcripts(url, [tmp_path / "claude" / "projects"], spool_dir=tmp_path / "spool2")
    assert len(rows(url)[0]) == 6
    engine = store.open_database(url)
    try:
        findings = json.loads(render(anomalies_report(engine, build_filters(None, None, "UTC")), "json"))[
            "rows"
        ]
    finally:
        engine.dispose()
    assert [f["conversation_id"] for f in findings if f["kind"] == "compaction_loop"] == [SESSION]


def _closed_port() -> int:
    """A TCP port on the loopback that nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_store_spools_the_import(tmp_path: Path) -> None:
    """PostgreSQL on a closed port: the call and a compaction boundary (one not after a compacting call) go
    to the spool, nothing read from the store first (whether collect paired the boundary is the store's
    write's to judge, when the spool is replayed)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test"
    path = tmp_path / "projects" / "-work-app" / f"{SESSION}.jsonl"
    path.parent.mkdir(parents=True)
    plain = {**COMPACTED_USAGE, "iterations": None}
    boundary = {
        "type": "system",
        "subtype": "compact_boundary",
        "sessionId": SESSION,
        "compactMetadata": {"trigger": "manual", "preTokens": 90000, "postTokens": 8000},
    }
    lines = [_assistant("msg_1", "req_1", plain, "2026-11-30T10:00:00.000Z"), boundary]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = import_transcripts(url, [tmp_path / "projects"], spool_dir=tmp_path / "spool")
    assert (result.files, result.lines, result.calls, result.warnings) == (1, 2, 2, [])
    spooled = spool_for(url, tmp_path / "spool")
    assert spooled.has_replayable()
    waiting = [
        parse_line(line)
        for segment in sorted(spooled.directory.glob("*.jsonl"))
        for _, line in split_lines(segment.read_bytes())
    ]
    assert sum(len(batch[0]) for batch in waiting if isinstance(batch, tuple)) == 2
    # Nothing is read twice: the offsets were saved, the rows are durable in the spool.
    again = import_transcripts(url, [tmp_path / "projects"], spool_dir=tmp_path / "spool")
    assert (again.lines, again.calls, again.warnings) == (0, 0, [])


def test_a_fuller_snapshot_imported_while_sqlite_is_locked_waits_and_loses_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Run 1 stores the partial snapshot (3,001 output tokens). Run 2 reads the final one while another
    process holds SQLite's write lock: it returns, spooled; the stored call is still the partial one (not
    deleted ahead of a write that could not happen). Once the lock is gone, the spool replays and the final
    snapshot replaces the partial one in the same transaction."""
    from compactobs.store.exporter import SqlSpanExporter

    path = tmp_path / "claude" / "projects" / "-work-app" / f"{SESSION}.jsonl"
    path.parent.mkdir(parents=True)
    steps = [COMPACTED_USAGE["iterations"][0], {"type": "message", "input_tokens": 2000, "output_tokens": 1}]
    partial = _assistant(
        "msg_1",
        "req_1",
        {**COMPACTED_USAGE, "output_tokens": 1, "iterations": steps},
        "2026-11-30T10:00:00.000Z",
    )
    final = _assistant("msg_1", "req_1", COMPACTED_USAGE, "2026-11-30T10:00:01.000Z")
    url = prepared(sqlite_url)
    folder = [tmp_path / "claude" / "projects"]
    path.write_text(json.dumps(partial) + "\n")
    import_transcripts(url, folder, spool_dir=tmp_path / "spool")
    # The partial snapshot: 3,000 (compaction) + 1 (message) = 3,001 output tokens.
    assert rows(url)[0][0]["output_tokens"] == 3001
    with path.open("a") as handle:
        handle.write(json.dumps(final) + "\n")
    with sqlite_locked_by_another_process(url):
        result = import_transcripts(url, folder, spool_dir=tmp_path / "spool")
        assert (result.calls, result.warnings) == (1, [])
    ((call,), _) = rows(url)
    assert call["output_tokens"] == 3001
    exporter = SqlSpanExporter(url, spool_dir=tmp_path / "spool")
    try:
        assert exporter.force_flush()
    finally:
        exporter.shutdown()
    ((call,), iteration_rows) = rows(url)
    # The final snapshot: 3,000 + 500 = 3,500 output tokens, $0.5985 (see CALL_COST), its 2 iterations.
    assert call["output_tokens"] == 3500 and Decimal(str(call["cost_usd"])) == CALL_COST
    assert len(iteration_rows) == 2
