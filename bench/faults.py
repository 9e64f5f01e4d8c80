"""The store under faults: tried / stored / lost / doubled / spooled per fault, at 100 and 1,000 calls/s.

Each run makes real calls (the real `anthropic` SDK, in-process, against compactobs.testing's simulator),
recorded by compactobs into a real database, before, during and after a fault:
  pg-lock     LOCK TABLE calls IN ACCESS EXCLUSIVE MODE held by another session
  pg-frozen   the PostgreSQL server stops answering (a loopback proxy that stops forwarding)
  sqlite-lock another process holds the SQLite file's write lock (BEGIN EXCLUSIVE)
  pg-sigterm  SIGTERM to an application (3 threads at the rate) writing to PostgreSQL, after 2 s of calls;
              "tried" is the calls that returned to it, "spooled" those that ended after the store closed
then drains the spool and counts, per call tried, what the store holds (tests/faults.py). Two more rows
(`--rows fork silent-otlp`), each an application in a fresh interpreter:
  fork         a multiprocessing Pool (fork start method, 4 workers) making --fork-calls calls, plus the
               parent's one: calls made against calls stored, on SQLite and PostgreSQL
               (tests/runtime/test_fork.py)
  silent-otlp  `compactobs.shutdown()` after 200 calls, exporting over OTLP/gRPC to an endpoint that accepts
               connections and never answers, with the default shutdown bound: how long shutdown() took,
               the process's whole exit, and the calls stored and counted as not exported
               (tests/runtime/test_shutdown.py)
"incomplete" is
calls stored without all their iterations. Client threads (--threads, default 4) share the rate: on a
shared 2-core machine, with the simulator in the same process, they may not reach 1,000 calls/s; "tried"
says how many calls were made.

    python bench/faults.py [--rate 100 --rate 1000] [--during 5] [--write-timeout 2] [--rows store fork ...]

PostgreSQL is COMPACTOBS_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test), in a
schema of its own per run, dropped after.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import make_url

from compactobs import store
from tests.conftest import postgres_schema
from tests.faults import (
    FreezingProxy,
    Outcome,
    outcome,
    postgres_table_lock,
    run_fault,
    sigterm_under_load,
    sqlite_locked_by_another_process,
)

ROWS = ("store", "fork", "silent-otlp")


def fork_rows(driver: str, calls: int) -> None:
    from tests.runtime.test_fork import POOL, run_app, stored

    workers = 4
    each = max(1, calls // workers)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        targets = [("sqlite", lambda: contextlib.nullcontext(f"sqlite:///{work / 'fork.db'}"))]
        targets.append(("postgresql", lambda: postgres_schema(driver)))
        for name, target in targets:
            with target() as url:
                store.upgrade_database(url)
                started = time.monotonic()
                run_app(POOL, url, work / name, children=workers, calls_each=each)
                took = time.monotonic() - started
                made = 1 + workers * each
                count, cost = stored(url)
                print(
                    f"fork  {name:<10}  Pool({workers}, fork): made {made:>5}  stored {count:>5}  "
                    f"lost {made - count:>4}  cost ${cost}  ({took:.1f} s)",
                    flush=True,
                )


def silent_otlp_row(driver: str) -> None:
    from compactobs.lifecycle import DEFAULT_SHUTDOWN_TIMEOUT_S
    from tests.otlp_receiver import SilentEndpoint
    from tests.runtime.test_shutdown import killed_if_left, start
    from tests.store.test_exporter import count

    calls = 200
    with tempfile.TemporaryDirectory() as tmp, postgres_schema(driver) as url, SilentEndpoint() as silent:
        store.upgrade_database(url)
        app = start(url, "shutdown", silent.endpoint, "grpc", Path(tmp), bound_s=None, calls=calls)
        with killed_if_left(app):
            assert app.stdout is not None
            said = app.stdout.readline().split()
            shut_down = time.monotonic()
            _, err = app.communicate(timeout=120)
            exited = time.monotonic() - shut_down
        counted = [line for line in err.splitlines() if "not exported over OTLP" in line]
        print(
            f"silent-otlp  postgresql  shutdown() took {said[3] if len(said) > 3 else '?'} s against the "
            f"{DEFAULT_SHUTDOWN_TIMEOUT_S:g} s bound, the process exited {exited:.1f} s later; calls "
            f"{calls}, stored {count(url)[0]}, counted as not exported: "
            f"{counted[0].split(' calls ')[0].split()[-1] if counted else 'none'}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, action="append", help="calls/s (repeatable; default 100 and 1000)"
    )
    parser.add_argument("--during", type=float, default=5.0, help="seconds the fault lasts (1-60, default 5)")
    parser.add_argument("--write-timeout", type=float, default=2.0, help="the exporter's bound (default 2 s)")
    parser.add_argument("--threads", type=int, default=4, help="client threads making the calls (1-16)")
    parser.add_argument("--driver", default="psycopg", choices=["psycopg", "psycopg2"])
    parser.add_argument(
        "--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows (default: all)"
    )
    parser.add_argument("--fork-calls", type=int, default=400, help="calls the fork pool's workers make")
    args = parser.parse_args()
    if "fork" in args.rows:
        fork_rows(args.driver, args.fork_calls)
    if "silent-otlp" in args.rows:
        silent_otlp_row(args.driver)
    if "store" not in args.rows:
        return
    if not 1 <= args.during <= 60:
        parser.error("--during must be 1 to 60 seconds")
    rates = args.rate or [100.0, 1000.0]
    if any(not 1 <= rate <= 5000 for rate in rates):
        parser.error("--rate must be 1 to 5000 calls/s")
    # A frozen server is noticed after one export pause (1 s), the transaction bound and a reconnect (2 s).
    frozen_for = max(args.during, 2 * args.write_timeout + 1 + 1 + 2 + 1)

    print(
        f"fault table: the fault lasts {args.during:g} s (pg-frozen {frozen_for:g} s), write timeout "
        f"{args.write_timeout:g} s, 1 s of traffic before and after; shared 2-core machine"
    )
    for rate in rates:

        def measure(url: str, spool: Path, fault: Any, during_s: float, rate: float = rate) -> Outcome:
            return run_fault(
                url,
                spool,
                fault,
                rate=rate,
                before_s=1,
                during_s=during_s,
                after_s=1,
                write_timeout_s=args.write_timeout,
                threads=args.threads,
            )

        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            results = []
            with postgres_schema(args.driver) as url:
                store.upgrade_database(url)
                held = lambda url=url: postgres_table_lock(url)  # noqa: E731
                lock = measure(url, work / "spool-lock", held, args.during)
                results.append(("pg-lock", lock))
            with postgres_schema(args.driver) as url:
                store.upgrade_database(url)
                direct = make_url(url)
                proxy = FreezingProxy((direct.host or "127.0.0.1", direct.port or 5432))

                @contextlib.contextmanager
                def frozen(proxy: FreezingProxy = proxy):  # type: ignore[no-untyped-def]
                    proxy.freeze()
                    try:
                        yield
                    finally:
                        proxy.thaw()

                stalled = measure(proxy.url(url), work / "spool-frozen", frozen, frozen_for)
                results.append(("pg-frozen", stalled))
                proxy.close()
            sqlite_url = f"sqlite:///{work / 'store.db'}"
            store.upgrade_database(sqlite_url)
            locked = measure(
                sqlite_url,
                work / "spool-sqlite",
                lambda url=sqlite_url: sqlite_locked_by_another_process(url),
                args.during,
            )
            results.append(("sqlite-lock", locked))
            with postgres_schema(args.driver) as url:
                store.upgrade_database(url)
                after = max(100, int(2 * rate))
                run = sigterm_under_load(url, work / "sigterm", after_calls=after, rate=rate)
                if run.returncode != -signal.SIGTERM:
                    sys.exit(f"pg-sigterm: the app exited {run.returncode}, not by SIGTERM:\n{run.stderr}")
                results.append(("pg-sigterm", outcome(url, run.returned, run.spooled)))
            for name, result in results:
                print(f"{rate:>6g} calls/s  {name:<12} {result.row()}", flush=True)


def _timed_main() -> None:
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    import _harness

    _harness.run(_timed_main)
