"""`compactobs serve` over a large store: the overview and a conversation of ~1,000 calls, on SQLite and
PostgreSQL, against the issue's budget of 1 s each at 1M calls.

The overview's anomalies are computed by serve's worker thread, not on the request: the first overview is
fetched while the worker's first computation runs (`worker busy`), then the worker's time to its findings
is printed (`first`: from when the server first answered; `median`: the computation alone; `direct`: `report
anomalies` in this process), then the overview with its findings.

The store is bench/reports.py's (1,000,000 calls over 90 days, 10,000 conversations, rollups built; the
same generated database, reused when its parameters match). The server is the real application under
uvicorn on loopback, read-only as `compactobs serve` opens it; each page is fetched over HTTP once
(`first`), then --repeat more times (`median`). Beside each page, the same reports called directly in
this process (`direct`): the ratio says what serving adds to the reports' own time.

Run: `python bench/serve.py` (1M calls, both databases), or e.g. `python bench/serve.py --calls 100000
--no-postgres`. PostgreSQL is COMPACTOBS_TEST_POSTGRES_URL (default as bench/reports.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.serving: the tests' loopback server

BUDGET_S = 1.0
"""The issue's bound for the overview and a 1,000-call conversation at 1M calls."""


def _timed(action: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(first run's seconds, median of `repeat` more)."""
    start = time.perf_counter()
    action()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs) if runs else first


def _fetch(url: str) -> None:
    with urllib.request.urlopen(url) as response:
        assert response.status == 200, url
        response.read()


def main(argv: Sequence[str] | None = None) -> None:
    from reports import DEFAULT_POSTGRES, Params, conversation_near, prepare

    from compactobs import store
    from compactobs.reports.catalog import run_report
    from compactobs.serve.app import create_app, read_only
    from tests.serving import serving

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1_000, help="calls of the conversation shown")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the first (median)")
    default_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compactobs-bench"
    parser.add_argument("--data-dir", type=Path, default=default_dir, help=f"default {default_dir}")
    parser.add_argument("--db", help="measure this store instead of generating one (any size)")
    args = parser.parse_args(argv)
    if args.db:
        databases: list[Any] = [SimpleNamespace(backend=args.db.split(":", 1)[0].split("+")[0], url=args.db)]
    else:
        args.data_dir.mkdir(parents=True, exist_ok=True)
        pg = None if args.no_postgres else os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
        databases = prepare(Params(args.calls, args.days, args.conversations), args.data_dir, pg)

    print(
        f"{'database':<11} {'page':<24} {'first s':>8} {'median s':>9} {'direct s':>9} {'serve/direct':>13}"
        f" {'of budget':>10}"
    )
    for database in databases:
        engine = store.open_database(database.url, create=False)
        try:
            conversation = conversation_near(engine, args.size)
            read_only(engine)

            def overview_direct(engine: Any = engine) -> None:
                # The overview's reports (its anomalies are computed off the request path, by the worker).
                for options in ({"by": ["day"]}, {"by": ["model"]}):
                    run_report(engine, "cost", options, refresh=False)

            def conversation_direct(engine: Any = engine, conversation: str = conversation) -> None:
                only = {"conversation": [conversation]}
                run_report(engine, "conversation", {}, conversation, refresh=False)
                run_report(engine, "cost", {**only, "by": ["iteration-type"]}, refresh=False)
                run_report(engine, "cache", {**only, "by": ["model"]}, refresh=False)
                run_report(engine, "anomalies", only, refresh=False)

            app = create_app(engine)
            with serving(app) as base:
                # The first overview while the worker computes the anomalies: the page must not wait.
                started = time.perf_counter()
                busy, _ = _timed(lambda: _fetch(base + "/"), 0)
                still_busy = app.state.anomalies.latest().findings is None
                print(
                    f"{database.backend:<11} {'overview (worker busy)':<24} {busy:>8.3f} {'':>9} {'':>9} "
                    f"{'':>13} {busy / BUDGET_S:>9.0%}" + ("" if still_busy else "  (worker already done)")
                )
                while (
                    app.state.anomalies.latest().findings is None
                    and app.state.anomalies.latest().error is None
                ):
                    time.sleep(0.05)
                latest = app.state.anomalies.latest()
                if latest.error is not None:
                    raise SystemExit(f"the anomalies worker failed: {latest.error}")
                ready = time.perf_counter() - started
                _, direct_s = _timed(
                    lambda engine=engine: run_report(engine, "anomalies", {}, refresh=False), 0
                )
                print(
                    f"{database.backend:<11} {'anomalies (worker)':<24} {ready:>8.3f} {latest.seconds:>9.3f} "
                    f"{direct_s:>9.3f} {latest.seconds / direct_s:>12.2f}x {'off-path':>10}"
                    f"  ({len(latest.findings):,} findings)"
                )
                pages = [
                    ("overview", "/", overview_direct),
                    (
                        f"conversation ({args.size:,})",
                        f"/conversation/{quote(conversation, safe='')}",
                        conversation_direct,
                    ),
                ]
                for name, path, direct in pages:
                    first, median = _timed(lambda path=path: _fetch(base + path), args.repeat)
                    _, direct_s = _timed(direct, args.repeat)
                    print(
                        f"{database.backend:<11} {name:<24} {first:>8.3f} {median:>9.3f} {direct_s:>9.3f} "
                        f"{median / direct_s:>12.2f}x {median / BUDGET_S:>9.0%}"
                    )
        finally:
            engine.dispose()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    what = (
        f"store {args.db}"
        if args.db
        else f"{args.calls:,} calls, {args.days} days, {args.conversations:,} conversations"
    )
    print(f"\n{what}; {os.cpu_count()} CPUs (load average {load} at the end); budget {BUDGET_S} s a page.")


if __name__ == "__main__":
    import _harness

    _harness.run(main)
