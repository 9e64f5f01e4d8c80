"""`compactobs tune`: conversations recorded through the real SDK against the simulator, replayed at other
triggers and cache TTLs, with every predicted cost worked by hand here from Sonnet 4.6's rates ($3 input,
$3.75 5-minute write, $6 1-hour write, $0.30 cache read, $15 output, per million tokens); the recorded
setting re-predicted; the budget's stop; each compaction's all-in cost; bad input as one line, exit 2."""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from typing import Any

import anthropic
import pytest

import compactobs
from compactobs import store
from compactobs.reports.model import ReportInputError
from compactobs.reports.replay.model import UnsupportedEstimate, summary_model
from compactobs.reports.times import build_filters
from compactobs.reports.tune import TuneOptions, TuneResult, tune
from compactobs.testing import ConversationScenario, IdleClock
from tests.cli import one_line_error, run
from tests.recording import recording

MODEL = "claude-sonnet-4-6"
M = Decimal(1_000_000)
IN, OUT, READ, W5, W1 = Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6)


def _text(tokens: int, lead: str) -> str:
    """Exactly `tokens` tokens under the simulator's rule (4 characters each)."""
    return (lead + " " + "word " * tokens)[: 4 * tokens]


def _chat(
    client: anthropic.Anthropic,
    conversation: str,
    turns: list[int],
    trigger: int,
    ttl: str | None = None,
    clock: IdleClock | None = None,
    idle_before: dict[int, float] | None = None,
) -> None:
    """A conversation that sends its whole history each turn (the blocks back with `to_dict()`); each turn
    adds a user message of `turns[i]` tokens; with `ttl`, one cache breakpoint on the newest user message."""
    history: list[dict[str, Any]] = []
    for index, tokens in enumerate(turns):
        if clock is not None and idle_before and index in idle_before:
            clock.idle(idle_before[index])
        for entry in history:
            if entry["role"] == "user":
                entry["content"] = [{"type": "text", "text": entry["content"][0]["text"]}]
        block: dict[str, Any] = {"type": "text", "text": _text(tokens, f"{conversation} turn {index}")}
        if ttl is not None:
            block["cache_control"] = {"type": "ephemeral", "ttl": ttl}
        history.append({"role": "user", "content": [block]})
        with compactobs.conversation(conversation):
            result = client.beta.messages.create(
                model=MODEL,
                max_tokens=4096,
                messages=history,  # type: ignore[arg-type]
                betas=["compact-2026-01-12"],
                context_management={
                    "edits": [
                        {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": trigger}}
                    ]
                },
            )
        history.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})


def _tune(url: str, options: TuneOptions) -> TuneResult:
    engine = store.open_database(url)
    try:
        return tune(engine, build_filters(None, None, "UTC"), options)
    finally:
        engine.dispose()


def _setting(result: TuneResult, trigger: int | None, ttl: str | None = None) -> Any:
    return next(s for s in result.settings if s.setting.trigger == trigger and s.setting.cache_ttl == ttl)


# -- a conversation at trigger 60,000, no cache --------------------------------------------------------------
#
# Six turns of 20,000 tokens each, replies of 1,000, summaries of 2,000 (the simulator's knob, given to tune
# as --summary-tokens so the hand work needs no estimate). Recorded at trigger 60,000:
#   turn 1: 20,000 in                 turn 4: 2,000 + 1,000 + 20,000 = 23,000 (the turn that compacted drops)
#   turn 2: 20,000 + 1,000 + 20,000   turn 5: 44,000
#   turn 3: 62,000 -> compaction (62,000 in, 2,000 out), reply on 2,000 + 20,000 = 22,000
#   turn 6: 65,000 -> compaction (65,000 in, 2,000 out), reply on 22,000
# input 20+41+62+22+23+44+65+22 = 299k -> $0.897; output 6 x 1,000 + 2 x 2,000 = 10,000 -> $0.15: $1.047.

RECORDED_60K = (Decimal(299_000) * IN + Decimal(10_000) * OUT) / M


@pytest.fixture
def sixty_k(database_url: str) -> str:
    with recording(database_url) as (sim, client):
        sim.scenario = ConversationScenario(reply_tokens=1_000, summary_tokens=2_000)
        _chat(client, "c60", [20_000] * 6, 60_000)
    return database_url


def test_other_triggers_worked_by_hand(sixty_k: str) -> None:
    result = _tune(sixty_k, TuneOptions(triggers=(50_000, 75_000, 100_000), summary_tokens=2_000))
    assert Decimal("1.047") == RECORDED_60K
    assert result.recorded_usd == RECORDED_60K
    # The recorded setting re-predicted is the bill, exactly.
    recorded = _setting(result, None)
    assert recorded.predicted_usd == RECORDED_60K and recorded.compactions == 2
    assert result.residual == 0
    # 50,000: no turn starts between 50,000 and 60,000, so it compacts on the same turns: the same bill.
    assert _setting(result, 50_000).predicted_usd == RECORDED_60K
    # 75,000: 20, 41, 62, 83 -> compaction (83,000 in, 2,000 out), reply on 22,000; then 23, 44.
    # input 20+41+62+83+22+23+44 = 295k -> $0.885; output 6,000 + 2,000 -> $0.12.
    at_75k = _setting(result, 75_000)
    assert at_75k.predicted_usd == (Decimal(295_000) * IN + Decimal(8_000) * OUT) / M == Decimal("1.005")
    assert at_75k.compactions == 1
    # 100,000: 20, 41, 62, 83, 104 -> compaction (104,000 in), reply on 22,000; then 23.
    # input 20+41+62+83+104+22+23 = 355k -> $1.065; output 8,000 -> $0.12.
    at_100k = _setting(result, 100_000)
    assert at_100k.predicted_usd == (Decimal(355_000) * IN + Decimal(8_000) * OUT) / M == Decimal("1.185")
    # A given summary size and an exact replay leave nothing to widen the interval with.
    assert at_100k.low_usd == at_100k.high_usd == at_100k.predicted_usd
    (advice,) = result.advice
    assert advice.best == "trigger 75,000, recorded TTL"
    assert advice.saving_usd == Decimal("0.042")  # 1.047 - 1.005
    assert advice.advice.startswith("the trigger matters")


def test_each_compaction_all_in_and_its_signals(sixty_k: str) -> None:
    result = _tune(sixty_k, TuneOptions(summary_tokens=2_000))
    first, second = result.taxes
    # The summarising iteration: 62,000 in, 2,000 out -> $0.186 + $0.03; no cache, so no rebuild.
    assert first.summary_usd == Decimal("0.216") and first.rebuild_usd == 0 and first.unread_usd == 0
    assert (first.turn, first.pre_tokens, first.post_tokens, first.calls_to_next) == (3, 62_000, 22_000, 3)
    assert first.post_pre_ratio == pytest.approx(22 / 62)
    assert second.summary_usd == Decimal("0.225") and second.calls_to_next is None  # 65,000 in
    assert not first.failed and not second.failed


def test_budget_stop_by_the_guards_rules(sixty_k: str) -> None:
    result = _tune(
        sixty_k, TuneOptions(summary_tokens=2_000, pause_after_compaction=True, budget_usd=Decimal("0.30"))
    )
    (outcome,) = result.guard
    # Turn costs: 1: 20k in + 1k out = $0.075; 2: 41k = $0.138 (spent $0.213); 3: compaction $0.216 + reply
    # 22k $0.081 = $0.297 -> spent $0.51, over $0.30: crossed at turn 3. The guard then pauses at the next
    # compaction, turn 6: spent before it 0.51 + 4: $0.084 + 5: $0.147 = $0.741, plus the paused
    # compaction (65k in, 2k out: $0.225) = $0.966; its reply ($0.081) is what the guard saves.
    assert (outcome.crossed_at, outcome.stopped_at) == (3, 6)
    assert outcome.guarded_usd == Decimal("0.966")
    assert outcome.saved_usd == Decimal("0.081")


def test_too_few_summaries_is_said_not_guessed(sqlite_url: str) -> None:
    with recording(sqlite_url) as (sim, client):
        sim.scenario = ConversationScenario(reply_tokens=1_000, summary_tokens=2_000)
        _chat(client, "once", [20_000] * 4, 60_000)  # one compaction, at turn 3
    result = _tune(sqlite_url, TuneOptions(triggers=(75_000,)))
    at_75k = _setting(result, 75_000)
    assert at_75k.predicted_usd is None and at_75k.low_usd is None
    assert at_75k.unsupported is not None and "too few to measure its summaries" in at_75k.unsupported
    assert any("--summary-tokens" in warning for warning in result.warnings)
    # Given a summary size, it is estimated: 20, 41, 62, 83 -> compaction (83,000 in, 2,000 out), reply on
    # 22,000: input 20+41+62+83+22 = 228k -> $0.684; output 4,000 + 2,000 -> $0.09.
    given = _tune(sqlite_url, TuneOptions(triggers=(75_000,), summary_tokens=2_000))
    assert _setting(given, 75_000).predicted_usd == Decimal("0.774")
    with pytest.raises(UnsupportedEstimate, match="too few to measure its summaries"):
        summary_model(MODEL, [(62_000, 2_000)])


# -- a conversation with a cache and an idle gap -------------------------------------------------------------
#
# Four turns of 10,000 tokens, replies of 1,000, a 5-minute breakpoint on the newest user message, and 400 s
# of idle before turn 3 (longer than 5 minutes). Recorded:
#   turn 1: writes 10,000        turn 3: the entry expired: writes 32,000
#   turn 2: reads 10,000, writes 11,000   turn 4: reads 32,000, writes 11,000
#   writes 64,000 x $3.75 = $0.24; reads 42,000 x $0.30 = $0.0126; output 4,000 x $15 = $0.06: $0.3126.
# --cache-ttl 1h: turn 3 reads 21,000 and writes 11,000: writes 43,000 x $6 = $0.258; reads 63,000 x $0.30
# = $0.0189; output $0.06: $0.3369. The 1-hour TTL costs more here, gap and all.


def test_cache_ttl_and_idle_gaps_worked_by_hand(sqlite_url: str) -> None:
    with recording(sqlite_url) as (sim, client), IdleClock(sim) as clock:
        sim.scenario = ConversationScenario(reply_tokens=1_000)
        _chat(client, "cached", [10_000] * 4, 100_000, "5m", clock, {2: 400.0})
    result = _tune(sqlite_url, TuneOptions(triggers=(100_000,), cache_ttls=("5m", "1h")))
    assert result.recorded_usd == Decimal("0.3126")
    assert _setting(result, None).predicted_usd == Decimal("0.3126")
    assert _setting(result, 100_000, "5m").predicted_usd == Decimal("0.3126")
    assert _setting(result, 100_000, "1h").predicted_usd == Decimal("0.3369")
    assert _setting(result, 100_000, "1h").compactions == 0
    # 43,000 tokens never reach 100,000: said, and no trigger changes anything.
    assert (
        "1 of 1 conversation(s) too short to reach trigger 100,000: it changes nothing for them"
        in result.notes
    )
    (advice,) = result.advice
    assert advice.best == "the recorded setting"  # nothing tried is cheaper than what ran
    assert "no trigger changes the bill by more than the interval" in advice.advice
    assert "the cache TTL does" in advice.advice


# -- self-consistency on a longer, cached, compacting workload -----------------------------------------------


def test_the_recorded_setting_re_predicted_is_the_bill(sqlite_url: str) -> None:
    """Summaries at the simulator's default size (2% of the trigger, a rule tune does not know), a system
    prompt and a moving breakpoint, an idle gap: replayed at its own setting, the model lands on the bill
    within its interval, and the residual is what widens every interval."""
    with recording(sqlite_url) as (sim, client), IdleClock(sim) as clock:
        sim.scenario = ConversationScenario(reply_tokens=500)
        for n in range(2):
            _chat(client, f"long{n}", [6_000 + 1_000 * n] * 24, 60_000, "5m", clock, {12: 420.0})
    result = _tune(sqlite_url, TuneOptions(triggers=(50_000, 100_000), cache_ttls=("5m", "1h")))
    recorded = _setting(result, None)
    assert recorded.compactions is not None and recorded.compactions >= 4
    assert recorded.low_usd <= result.recorded_usd <= recorded.high_usd
    assert abs(recorded.predicted_usd - result.recorded_usd) / result.recorded_usd < Decimal("0.005")
    for item in result.settings:
        assert item.low_usd <= item.predicted_usd <= item.high_usd
    (summaries,) = result.summaries
    assert summaries.constant == 1_200  # 2% of 60,000, measured


# -- the command ---------------------------------------------------------------------------------------------


def test_formats(sixty_k: str) -> None:
    code, out, err = run(
        "--db", sixty_k, "tune", "--trigger", "75K,100000", "--summary-tokens", "2000", "--format", "json"
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["recorded_cost_usd"] == 1.047
    rows = {row["trigger"]: row for row in document["settings"]}
    assert set(rows[75_000]) >= {
        "trigger",
        "cache_ttl",
        "predicted_cost_usd",
        "low_usd",
        "high_usd",
        "compactions",
    }
    assert rows[75_000]["predicted_cost_usd"] == 1.005 and rows[75_000]["compactions"] == 1
    assert rows[100_000]["predicted_cost_usd"] == 1.185
    assert document["compactions"][0]["summary_usd"] == 0.216
    code, out, _ = run(
        "--db", sixty_k, "tune", "--trigger", "75000", "--summary-tokens", "2000", "--format", "csv"
    )
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["predicted_cost_usd"] for r in table] == ["1.047", "1.005"]
    code, out, _ = run(
        "--db", sixty_k, "tune", "--trigger", "75000", "--summary-tokens", "2000", "--format", "md"
    )
    assert code == 0 and "| trigger 75,000, recorded TTL |" in out.replace("  ", " ")
    code, out, _ = run("--db", sixty_k, "tune", "--trigger", "75000", "--summary-tokens", "2000")
    assert code == 0 and "$1.0050" in out and "tune cannot judge what a summary lost" in out
    code, out, _ = run(
        "--db", sixty_k, "tune", "--summary-tokens", "2000", "--pause-after-compaction", "--budget-usd", "0.3"
    )
    assert code == 0 and "$0.9660" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--trigger", "10"], "below the API's minimum of 50,000"),
        (["--trigger", "lots"], "not a whole number"),
        (["--cache-ttl", "2h"], "use 5m or 1h"),
        (["--budget-usd", "1"], "needs --pause-after-compaction"),
        (["--pause-after-compaction"], "needs --budget-usd"),
        (["--pause-after-compaction", "--budget-usd", "x"], "not a number"),
        (["--by", "tag:a b"], "a tag key is 1 to 64"),
        (["--by", "colour"], "use service, conversation or tag:KEY"),
        (["--summary-tokens", "0"], "at least 1"),
        (["--since", "yesterdayish"], "invalid date or time"),
    ],
)
def test_bad_input_is_one_line(sqlite_url: str, args: list[str], says: str) -> None:
    store.upgrade_database(sqlite_url)
    code, _, err = run("--db", sqlite_url, "tune", *args)
    assert says in one_line_error(code, err)


def test_parse_errors_are_report_input_errors() -> None:
    from compactobs.reports.tune import parse_triggers

    with pytest.raises(ReportInputError):
        parse_triggers("49999")
    assert parse_triggers("75K, 75000,100k") == (75_000, 100_000)


def test_report_conversation_shows_each_compaction_all_in(sixty_k: str) -> None:
    code, out, err = run("--db", sixty_k, "report", "conversation", "c60", "--format", "json")
    assert code == 0, err
    taxes = json.loads(out)["compaction_tax"]
    # Calls 3 and 6 compacted: 62,000 in + 2,000 out = $0.216; 65,000 in + 2,000 out = $0.225; no cache.
    assert [(t["n"], t["summary_usd"], t["rebuild_usd"], t["unread_usd"], t["total_usd"]) for t in taxes] == [
        (3, 0.216, 0, 0, 0.216),
        (6, 0.225, 0, 0, 0.225),
    ]
    assert taxes[0]["post_pre_ratio"] == pytest.approx(22 / 62, abs=1e-6)
    code, out, _ = run("--db", sixty_k, "report", "conversation", "c60")
    assert code == 0 and "Each compaction, all in" in out


def test_demo_ends_with_a_tune_line(sqlite_url: str, data_home: Any) -> None:
    """The demo's closing lines: tune's line (under its `Tune (compactobs ... tune ...):` header), then
    only the hint to open the store in `serve`."""
    code, out, err = run("--db", sqlite_url, "demo", "--no-reports")
    assert code == 0, err
    lines = out.rstrip().splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("Tune ("))
    last = lines[header + 1].strip()
    assert [line for line in lines[header + 2 :] if line.strip()] == [lines[-1]]
    assert lines[-1].startswith("To look at this store in a browser: ")
    found = re.fullmatch(
        r"trigger 75K would have cost \$([\d,.]+) \(([−+])(\d+)%\) against \$([\d,.]+) .*", last
    )
    assert found is not None, last
    prefix = re.search(r"tune --conversation '([^']+)'", out)
    assert prefix is not None
    code, text, err = run(
        "--db",
        sqlite_url,
        "tune",
        "--conversation",
        prefix.group(1),
        "--trigger",
        "75000",
        "--format",
        "json",
    )
    assert code == 0, err
    document = json.loads(text)
    (row,) = [s for s in document["settings"] if s["trigger"] == 75_000]
    assert found.group(1) == f"{row['predicted_cost_usd']:,.4f}"
    assert found.group(4) == f"{document['recorded_cost_usd']:,.4f}"
    change = (row["predicted_cost_usd"] - document["recorded_cost_usd"]) / document["recorded_cost_usd"]
    assert found.group(2) == ("−" if change < 0 else "+") and int(found.group(3)) == round(abs(change) * 100)


def test_advice_per_service_names_the_lever(sqlite_url: str) -> None:
    """Two services: `agent` runs the 60,000-trigger conversation (the trigger matters, no cache), `chat`
    the cached one with an idle gap (too short to compact: only the TTL can move its bill)."""
    with recording(sqlite_url, service_name="agent") as (sim, client):
        sim.scenario = ConversationScenario(reply_tokens=1_000, summary_tokens=2_000)
        _chat(client, "c60", [20_000] * 6, 60_000)
    with recording(sqlite_url, service_name="chat") as (sim, client), IdleClock(sim) as clock:
        sim.scenario = ConversationScenario(reply_tokens=1_000)
        _chat(client, "cached", [10_000] * 4, 100_000, "5m", clock, {2: 400.0})
    options = TuneOptions(
        triggers=(75_000, 100_000), cache_ttls=("5m", "1h"), summary_tokens=2_000, by="service"
    )
    result = _tune(sqlite_url, options)
    assert result.recorded_usd == Decimal("1.047") + Decimal("0.3126")
    agent, chat = result.advice
    # agent: $1.005 at 75,000 (either TTL: nothing is cached), $1.185 at 100,000: saving 1.047 - 1.005.
    assert (agent.group, agent.best, agent.best_usd, agent.saving_usd) == (
        "agent",
        "trigger 75,000, TTL 5m",
        Decimal("1.005"),
        Decimal("0.042"),
    )
    assert agent.advice == "the trigger matters: up to $0.1800 between triggers"  # 1.185 - 1.005
    # chat: $0.3126 at 5m whatever the trigger, $0.3369 at 1h: the TTL is the lever, and 5m the cheaper.
    assert (chat.group, chat.best, chat.best_usd, chat.saving_usd) == (
        "chat",
        "the recorded setting",
        Decimal("0.3126"),
        Decimal(0),
    )
    assert chat.advice == (
        "no trigger changes the bill by more than the interval (±$0.0000); the cache TTL does: $0.0243 "
        "between TTLs"
    )


def test_an_empty_window_says_so(sixty_k: str) -> None:
    code, out, err = run("--db", sixty_k, "tune", "--since", "2000-01-01", "--until", "2000-01-02")
    assert code == 0, err
    assert "No conversation with threshold compaction in this window." in out
    # Nothing was re-predicted: no "within 0.00%" claim about a model that never ran.
    assert "recorded: no priced conversation in this window, so nothing to re-predict" in out
    assert "re-predicts it within" not in out
    code, out, _ = run("--db", sixty_k, "tune", "--until", "2000-01-02", "--format", "json")
    document = json.loads(out)
    assert document["settings"] == [] and document["recorded_cost_usd"] == 0
