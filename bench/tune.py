"""How well `compactobs tune` predicts: one simulated workload run at four triggers and two cache TTLs, each
into a store of its own; tune reads the store of one setting and predicts the other seven. Printed side by
side: each setting's actual billed cost, tune's prediction and interval, the error, and whether tune ranks
the settings as the actual costs do.

Two workloads of different shapes:
- `steady`: every turn brings the same amount of content, calls 20 s apart;
- `bursty`: bursts of turns with tool results of varied size, and idle gaps of 6 to 12 minutes between
  bursts (longer than the 5-minute cache TTL).

Traffic goes through the real anthropic SDK to compactobs.testing.Simulator (its default summary size, 2%
of the trigger in effect: a rule tune does not know), recorded by compactobs into SQLite. Idle gaps are
`IdleClock`'s: the simulator's cache and the recorded call times both move, so no waiting.

Run: `python bench/tune.py` (both workloads; `--workload steady`, `--from 100000:5m` to pick the setting
tune reads; `--markdown` prints the README's table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider

import compactobs
from compactobs import store
from compactobs.reports.times import build_filters
from compactobs.reports.tune import TuneOptions, tune
from compactobs.testing import ConversationScenario, IdleClock, Simulator

TRIGGERS = (50_000, 75_000, 100_000, 150_000)
TTLS = ("5m", "1h")
MODEL = "claude-sonnet-4-6"


def _text(tokens: int, lead: str) -> str:
    """About `tokens` tokens under the simulator's 4-characters rule."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    text = lead
    i = 0
    while len(text) < 4 * tokens:
        text += " " + words[i % len(words)]
        i += 1
    return text[: 4 * tokens]


def _conversation(
    client: anthropic.Anthropic,
    clock: IdleClock,
    name: str,
    trigger: int,
    ttl: str,
    turns: list[tuple[int, float]],
) -> None:
    """One conversation: a cached system prompt, a moving breakpoint on the newest turn; `turns`: (new
    content tokens, idle seconds before the turn)."""
    control = {"type": "ephemeral", "ttl": ttl}
    system = [{"type": "text", "text": _text(2_000, f"System prompt of {name}."), "cache_control": control}]
    history: list[dict[str, Any]] = []
    for index, (tokens, idle) in enumerate(turns):
        if idle:
            clock.idle(idle)
        for entry in history:
            if entry["role"] == "user":
                entry["content"] = [
                    {k: v for k, v in b.items() if k != "cache_control"} for b in entry["content"]
                ]
        block = {"type": "text", "text": _text(tokens, f"{name} turn {index}:"), "cache_control": control}
        history.append({"role": "user", "content": [block]})
        with compactobs.conversation(f"{name}-{trigger}-{ttl}"):
            result = client.beta.messages.create(
                model=MODEL,
                max_tokens=1024,
                system=system,  # type: ignore[arg-type]
                messages=history,  # type: ignore[arg-type]
                betas=["compact-2026-01-12"],
                context_management={
                    "edits": [
                        {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": trigger}}
                    ]
                },
            )
        history.append({"role": "assistant", "content": [b.to_dict() for b in result.content]})


def steady(client: anthropic.Anthropic, clock: IdleClock, trigger: int, ttl: str) -> None:
    for n in range(3):
        _conversation(client, clock, f"steady{n}", trigger, ttl, [(5_000 + 500 * n, 20.0)] * 45)


def bursty(client: anthropic.Anthropic, clock: IdleClock, trigger: int, ttl: str) -> None:
    sizes = [2_000, 14_000, 6_000, 9_000, 3_000, 12_000, 4_000]
    gaps = [360.0, 480.0, 720.0, 400.0]
    for n in range(3):
        turns = []
        for index in range(40):
            idle = gaps[(index // 5 + n) % len(gaps)] if index % 5 == 0 and index else 15.0
            turns.append((sizes[(index * 3 + n) % len(sizes)], idle))
        _conversation(client, clock, f"bursty{n}", trigger, ttl, turns)


WORKLOADS: dict[str, Callable[[anthropic.Anthropic, IdleClock, int, str], None]] = {
    "steady": steady,
    "bursty": bursty,
}


def record(url: str, workload: str, trigger: int, ttl: str) -> Decimal:
    """Run the workload at one setting into `url`; its billed total."""
    store.upgrade_database(url)
    provider = TracerProvider()
    compactobs.configure(url, tracer_provider=provider, meter_provider=NoOpMeterProvider())
    try:
        with Simulator() as sim, IdleClock(sim) as clock:
            sim.scenario = ConversationScenario(reply_tokens=400)
            client = anthropic.Anthropic(
                base_url=sim.base_url, api_key="k", max_retries=0, middleware=[compactobs.Middleware()]
            )
            WORKLOADS[workload](client, clock, trigger, ttl)
    finally:
        compactobs.shutdown()
        provider.shutdown()
    engine = store.open_database(url)
    try:
        with engine.connect() as connection:
            total = connection.exec_driver_sql("SELECT SUM(cost_usd) FROM calls").scalar_one()
    finally:
        engine.dispose()
    return Decimal(str(total))


def run(workload: str, source: tuple[int, str], directory: Path) -> list[dict[str, Any]]:
    actual: dict[tuple[int, str], Decimal] = {}
    urls = {}
    for ttl in TTLS:
        for trigger in TRIGGERS:
            url = f"sqlite:///{directory / f'{workload}-{trigger}-{ttl}.db'}"
            urls[(trigger, ttl)] = url
            actual[(trigger, ttl)] = record(url, workload, trigger, ttl)
    engine = store.open_database(urls[source])
    try:
        result = tune(engine, build_filters(None, None, "UTC"), TuneOptions(TRIGGERS, TTLS))
    finally:
        engine.dispose()
    rows = []
    for item in result.settings:
        if item.recorded:
            continue
        key = (item.setting.trigger, item.setting.cache_ttl)
        real = actual[key]  # type: ignore[index]
        predicted = item.predicted_usd
        rows.append(
            {
                "setting": f"{key[0]:,} {key[1]}",
                "actual": real,
                "predicted": predicted,
                "low": item.low_usd,
                "high": item.high_usd,
                "error": None if predicted is None else float((predicted - real) / real),
                "source": key == source,
            }
        )
    return rows


def _ranked(rows: list[dict[str, Any]], key: str) -> list[str]:
    return [r["setting"] for r in sorted(rows, key=lambda r: r[key])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), action="append")
    parser.add_argument("--from", dest="source", default="100000:5m", help="TRIGGER:TTL tune reads")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    trigger, ttl = args.source.split(":")
    source = (int(trigger), ttl)
    worst = 0.0
    ranked_right = True
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workload or sorted(WORKLOADS, reverse=True):
            rows = run(workload, source, Path(tmp))
            same = _ranked(rows, "actual") == _ranked(rows, "predicted")
            ranked_right = ranked_right and same
            print(
                f"\n{workload}: tune reads the store of trigger {source[0]:,} {source[1]}; "
                f"ranking right: {same}"
            )
            if args.markdown:
                print("| setting | actual | predicted | interval | error |")
                print("|---|---:|---:|---:|---:|")
            for r in rows:
                worst = max(worst, abs(r["error"] or 0))
                mark = " (read)" if r["source"] else ""
                interval = f"${r['low']:.4f}-${r['high']:.4f}"
                if args.markdown:
                    print(
                        f"| {r['setting']}{mark} | ${r['actual']:.4f} | ${r['predicted']:.4f} | {interval} | "
                        f"{r['error']:+.2%} |"
                    )
                else:
                    print(
                        f"  {r['setting']:<10}{mark:<7} actual ${r['actual']:>8.4f}  predicted "
                        f"${r['predicted']:>8.4f}  [{interval}]  error {r['error']:+.2%}"
                    )
    print(f"\nworst error {worst:.2%} (target 5%); ranking right on every workload: {ranked_right}")
    return 0 if worst <= 0.05 and ranked_right else 1


if __name__ == "__main__":
    sys.exit(main())
