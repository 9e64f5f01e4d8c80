"""Report latency and memory over a large store: 1,000,000 calls (~3M iterations), 90 days, 10,000
conversations, on SQLite and PostgreSQL.

Data: a deterministic generator (seeded) that simulates conversations call by call, the way the store
receives them from the exporter (same columns, same value conventions: money as the pricer's float,
`start_time` as UTC text, booleans, NULL tokens on failed calls):
  - models: claude-sonnet-4-6, claude-opus-4-8, claude-haiku-4-5, claude-sonnet-4-5, claude-opus-4-6 and
    one unpriced model (cost NULL, priced false, never $0); some sonnet calls consult an opus advisor
    (an `advisor_message` iteration at its own model);
  - 5 services; conversation sizes heavy-tailed (a few conversations with thousands of calls);
  - contexts that grow turn by turn; threshold compaction (triggers 100k/150k) when they cross it, with
    the context after compaction (tools + summary + last turn), a few failed compactions (null summary),
    pause_after_compaction conversations (a paused call then its follow-up), on-demand compactions, and
    loop-prone conversations whose turns are near the trigger, so every turn compacts;
  - prompt caching (5-minute and 1-hour), with reads, writes, and expiry after idle gaps;
  - agentic calls with server tools: several `message` iterations per call and web search requests;
  - a streaming mix, retries (attempts > 1), errors (429, 529, 500, 400, with bursts in a few hours);
  - conversation budgets, some exceeded.
Costs are computed from the same rate cards compactobs prices with (genai-prices via compactobs.pricing),
per iteration, and the call's cost is the sum of its iterations' plus its web searches.

Loading: SQLite through the sqlite3 module's executemany in one transaction (journal off while loading,
WAL restored after; no ANALYZE, as a user's store has none); PostgreSQL with COPY (psycopg), then VACUUM
ANALYZE (what autovacuum does soon after a bulk load). A generated database is kept and reused when its
parameters and the schema revision match (SQLite: a file under --data-dir; PostgreSQL: a schema named
after the parameters), so only the first run pays for generation. The load fires the store's triggers, which
mark every slot; the rollups are then built once, timed (`rollups first built in`), as the first report
after a bulk load would build them; `rollup-1-day` times the refresh a day of new calls costs.

Measurement: each report runs in a fresh subprocess per (database, report): the engine is opened and the
schema checked before the clock, and a raw full scan of `calls` (RAW_SCAN) is timed (median of 3):
`raw scans` is the report's median over it, a figure that the machine's load moves less than seconds;
the report function runs once (`first`), then --repeat more times
(`median`); then once more under tracemalloc for the peak of Python allocations (`py peak`). `rss Δ` is
the process's peak resident set after all the runs (VmHWM) less its resident set before the first (VmRSS,
both from /proc/self/status), which also counts what the drivers allocate outside Python (SQLite's page cache,
libpq's result buffers). Memory that does not grow from 100k to 1M calls is memory that does not depend
on the number of calls.

Run: `python bench/reports.py` (both sizes, both databases), or e.g.
`python bench/reports.py --calls 1000000 --no-postgres`. PostgreSQL is COMPACTOBS_TEST_POSTGRES_URL
(default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from sqlalchemy import make_url

from compactobs.store import head_revision, upgrade_database
from compactobs.store.mapping import CALL_COLUMNS, ITERATION_COLUMNS

GENERATOR_VERSION = 1
"""Bump when the generated data changes: cached databases of another version are regenerated."""
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BATCH = 20_000
"""Calls per insert batch (with their iterations)."""
SQLITE_TARGETS = {"cost-day": 0.5, "cost-model-day": 0.5, "cache-model": 1.0, "anomalies": 10.0}
"""Seconds, on SQLite (issue 4); the other reports have none."""

# -- the generator ------------------------------------------------------------------------------------------

UNPRICED_MODEL = "claude-preview-2027"
ADVISOR_MODEL = "claude-opus-4-8"
MODELS: tuple[tuple[str, float], ...] = (
    ("claude-sonnet-4-6", 0.42),
    ("claude-haiku-4-5", 0.24),
    ("claude-opus-4-8", 0.20),
    ("claude-sonnet-4-5", 0.08),
    ("claude-opus-4-6", 0.04),
    (UNPRICED_MODEL, 0.02),
)
SERVICES: tuple[tuple[str, float], ...] = (
    ("support-bot", 0.35),
    ("coding-agent", 0.25),
    ("research-agent", 0.15),
    ("batch-summariser", 0.15),
    ("internal-tools", 0.10),
)
ERRORS: tuple[tuple[int, float], ...] = ((429, 0.55), (529, 0.25), (500, 0.12), (400, 0.08))
PRICING_VERSION = "genai-prices==bench"
WINDOW_LIMIT = 180_000
"""A conversation without compaction starts its context over past this many tokens (client-side)."""


# The generator fills the columns up to `calls.budget_tokens` and `iterations.cost_cache_write_1h_usd`; the
# columns added after them (out_of_range, ...) are NULL: no generated value is out of range.
_UNSET_CALL_TAIL: Final = (None,) * (len(CALL_COLUMNS) - 1 - CALL_COLUMNS.index("budget_tokens"))
_UNSET_ITERATION_TAIL: Final = (None,) * (
    len(ITERATION_COLUMNS) - 1 - ITERATION_COLUMNS.index("cost_cache_write_1h_usd")
)


@dataclass(frozen=True)
class Params:
    calls: int
    days: int
    conversations: int
    seed: int = 42

    @property
    def key(self) -> str:
        return f"c{self.calls}_d{self.days}_v{self.conversations}_s{self.seed}_g{GENERATOR_VERSION}"


@dataclass(frozen=True)
class Rates:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float
    write_5m: float
    write_1h: float


def rate_cards(models: Sequence[str], when: datetime) -> dict[str, Rates | None]:
    """The rates compactobs prices these models with (None: no price, the model is unpriced)."""
    from compactobs.pricing import default_pricer

    pricer = default_pricer()
    cards: dict[str, Rates | None] = {}
    for model in models:
        rates = pricer.rates(model, when) if pricer.known_model(model, when) else None
        cards[model] = (
            None
            if rates is None
            else Rates(
                float(rates.input),
                float(rates.output),
                float(rates.cache_read),
                float(rates.cache_write_5m),
                float(rates.cache_write_1h),
            )
        )
    return cards


WEB_SEARCH_USD = 10.0 / 1000
"""Per web search request."""


@dataclass
class GenStats:
    calls: int = 0
    iterations: int = 0
    errors: int = 0
    compactions: int = 0
    largest_conversation: str = ""
    largest_calls: int = 0
    loop_conversation: str = ""


def _pick(rng: random.Random, table: Sequence[tuple[Any, float]]) -> Any:
    x = rng.random()
    for value, weight in table:
        x -= weight
        if x < 0:
            return value
    return table[-1][0]


def conversation_sizes(params: Params, rng: random.Random) -> list[int]:
    """Calls per conversation: heavy-tailed (Pareto), at least 1 each, summing to `params.calls`."""
    count = min(params.conversations, params.calls)
    weights = [rng.paretovariate(1.3) for _ in range(count)]
    # cap the tail so one conversation holds at most ~1% of the calls
    cap = sum(weights) * 0.01
    weights = [min(w, cap) for w in weights]
    scale = (params.calls - count) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    short = params.calls - sum(sizes)
    order = sorted(range(count), key=lambda i: -weights[i])
    i = 0
    while short > 0:
        sizes[order[i % count]] += 1
        short -= 1
        i += 1
    return sizes


class Generator:
    """Simulates the conversations and yields row batches in the store's column order."""

    def __init__(self, params: Params, end: datetime) -> None:
        self.params = params
        self.end_ms = int(end.timestamp() * 1000)
        self.start_ms = self.end_ms - params.days * 86_400_000
        self.rates = rate_cards([m for m, _ in MODELS], end)
        self.stats = GenStats()
        rng = random.Random(params.seed)
        hours = params.days * 24
        self.burst_hours = {rng.randrange(hours) for _ in range(max(1, params.days // 30))}

    def batches(self, size: int = BATCH) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        rng = random.Random(self.params.seed)
        sizes = conversation_sizes(self.params, rng)
        call_rows: list[tuple[Any, ...]] = []
        iteration_rows: list[tuple[Any, ...]] = []
        for index, calls in enumerate(sizes):
            self._conversation(rng, index, calls, call_rows, iteration_rows)
            if len(call_rows) >= size:
                yield call_rows, iteration_rows
                call_rows, iteration_rows = [], []
        if call_rows:
            yield call_rows, iteration_rows

    def _conversation(
        self,
        rng: random.Random,
        index: int,
        n_calls: int,
        call_rows: list[tuple[Any, ...]],
        iteration_rows: list[tuple[Any, ...]],
    ) -> None:
        stats = self.stats
        model = _pick(rng, MODELS)
        service = _pick(rng, SERVICES)
        conversation_id = f"{service}-{index:06d}"
        if n_calls > stats.largest_calls:
            stats.largest_calls, stats.largest_conversation = n_calls, conversation_id
        stream_share = 0.7 if service in ("support-bot", "coding-agent") else 0.2
        caching = rng.random() < 0.7
        ttl_1h = caching and rng.random() < 0.25
        compaction = rng.random() < 0.6
        trigger = rng.choice((100_000, 150_000, 150_000)) if compaction else None
        pause = compaction and rng.random() < 0.06
        on_demand = not compaction and rng.random() < 0.05
        loop_prone = compaction and rng.random() < 0.02 and n_calls >= 5
        if loop_prone and not stats.loop_conversation:
            stats.loop_conversation = conversation_id
        advisor = model == "claude-sonnet-4-6" and rng.random() < 0.2
        agentic = 0.75 if service in ("coding-agent", "research-agent") else 0.45
        budget = rng.choice((5.0, 20.0, 100.0)) if rng.random() < 0.1 else None
        system = rng.randint(500, 6000)
        mean_turn = rng.choice((400, 1500, 4000))

        # Spread the conversation's calls over its duration, inside the window.
        mean_gap_ms = rng.choice((20_000, 60_000, 180_000))
        duration = n_calls * mean_gap_ms
        window = self.end_ms - self.start_ms
        if duration > window * 0.9:
            mean_gap_ms = int(window * 0.9 / n_calls)
            duration = n_calls * mean_gap_ms
        now = self.start_ms + rng.randrange(max(1, window - duration - 3_600_000))

        context = system  # tokens the next request re-sends (tools + system + history)
        cached_until = 0  # when the cached prefix expires
        cached = 0  # tokens of the cached prefix
        resume = False  # the previous call paused after compaction: this one is its follow-up
        for _ in range(n_calls):
            gap = int(rng.expovariate(1.0 / mean_gap_ms))
            if rng.random() < 0.03:
                gap += rng.randint(600_000, 3_600_000)  # the user went away
            now += gap
            call_id = f"{rng.getrandbits(64):016x}"
            stream = rng.random() < stream_share
            hour = (now - self.start_ms) // 3_600_000
            error_p = 0.2 if hour in self.burst_hours else 0.012
            attempts = 1 if rng.random() > 0.03 else rng.randint(2, 3)
            stats.calls += 1
            start_time = datetime.fromtimestamp(now / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            if rng.random() < error_p:
                status = _pick(rng, ERRORS)
                duration_ms = rng.uniform(20, 1500)
                stats.errors += 1
                call_rows.append(
                    (
                        call_id,
                        f"{rng.getrandbits(128):032x}",
                        service,
                        conversation_id,
                        start_time,
                        now,
                        now + int(duration_ms),
                        duration_ms,
                        "anthropic",
                        "chat",
                        model,
                        None,
                        None,
                        f"req_{call_id}",
                        None,
                        "ERROR",
                        str(status),
                        status,
                        3 if status != 400 else 1,
                        stream,
                        None,
                        None,
                        trigger,
                        pause if compaction else None,
                        None,
                        None,
                        None,
                        None,
                        *([None] * (len(CALL_COLUMNS) - 28)),  # no usage, no cost, no figures after
                    )
                )
                continue

            turn = 0 if resume else max(20, int(rng.lognormvariate(math.log(mean_turn), 1.0)))
            if loop_prone and trigger is not None and not resume:
                turn = int(trigger * rng.uniform(0.85, 0.95))
            context_in = context + turn
            if trigger is None and context_in > WINDOW_LIMIT:
                # no compaction: the app starts the context over (system + the new turn), cache lost
                context_in = system + turn
                cached_until = 0
            its: list[list[Any]] = []  # [type, model, input, output, read, w5, w1]
            stop_reason = "end_turn"
            compactions = failed = 0
            paused_here = False
            web = 0
            live = caching and now < cached_until
            read = (
                cached if live else (system if ttl_1h and caching and now < cached_until + 3_300_000 else 0)
            )
            on_demand_now = on_demand and context_in > 60_000 and rng.random() < 0.3
            if on_demand_now:
                summary = rng.randint(2000, 4000)
                its.append(["compaction", model, context, summary, 0, 0, 0])
                compactions = 1
                stop_reason = "compaction"
                context = system + summary
                cached_until = 0
            else:
                if trigger is not None and context_in >= trigger and not resume:
                    summary = int(trigger * rng.uniform(0.015, 0.03))
                    comp_read = min(read, context_in)
                    its.append(["compaction", model, context_in - comp_read, summary, comp_read, 0, 0])
                    compactions = 1
                    if rng.random() < 0.01:
                        failed = 1  # null summary: billed, history kept
                    else:
                        context_in = system + summary + turn
                        read = system if caching else 0  # the history no longer matches the cache
                    if pause:
                        paused_here = True
                        stop_reason = "compaction"
                if not paused_here:
                    hops = 1
                    if rng.random() < agentic:
                        hops = 1 + rng.randint(1, 6)
                        web = rng.randint(0, hops - 1)
                    if advisor and rng.random() < 0.25:
                        its.append(
                            ["advisor_message", ADVISOR_MODEL, context_in, rng.randint(150, 600), 0, 0, 0]
                        )
                    tokens_in = context_in
                    for hop in range(hops):
                        out = max(1, int(rng.lognormvariate(math.log(350), 0.8)))
                        if caching:
                            r = min(read, tokens_in)
                            uncached = min(tokens_in - r, rng.randint(0, 60))
                            write = tokens_in - r - uncached
                            w1 = min(write, system) if ttl_1h and r < system else 0
                            its.append(["message", model, uncached, out, r, write - w1, w1])
                            read = tokens_in  # the next hop reads what this one wrote
                        else:
                            its.append(["message", model, tokens_in, out, 0, 0, 0])
                        if hop < hops - 1:
                            tokens_in += out + rng.randint(300, 4000)  # tool use and its result
                    context = tokens_in + its[-1][3]
                    stop_reason = (
                        "tool_use"
                        if rng.random() < 0.15
                        else ("max_tokens" if rng.random() < 0.02 else "end_turn")
                    )
                    if caching:
                        cached = tokens_in
                        cached_until = now + (3_600_000 if ttl_1h else 300_000)
                else:
                    context = system + (its[0][3] if not failed else context_in)
                    cached_until = 0
            resume = paused_here
            self._emit(
                rng,
                its,
                call_rows,
                iteration_rows,
                call_id,
                service,
                conversation_id,
                start_time,
                now,
                model,
                stream,
                attempts,
                stop_reason,
                trigger,
                pause if compaction else None,
                on_demand_now,
                web,
                compactions,
                failed,
                budget,
            )

    def _emit(
        self,
        rng: random.Random,
        its: list[list[Any]],
        call_rows: list[tuple[Any, ...]],
        iteration_rows: list[tuple[Any, ...]],
        call_id: str,
        service: str,
        conversation_id: str,
        start_time: str,
        now: int,
        model: str,
        stream: bool,
        attempts: int,
        stop_reason: str,
        trigger: int | None,
        pause: bool | None,
        on_demand: bool,
        web: int,
        compactions: int,
        failed: int,
        budget: float | None,
    ) -> None:
        """The call's iteration rows and its row: billed totals are the sums over its iterations."""
        duration_ms = 400.0 + sum(it[3] for it in its) * rng.uniform(8, 16)
        end = now + int(duration_ms)
        sums = [0, 0, 0, 0, 0]
        money = [0.0, 0.0, 0.0, 0.0, 0.0]
        call_priced = True
        top_in = top_out = 0
        context_tokens = None
        for idx, (kind, it_model, inp, out, r, w5, w1) in enumerate(its):
            card = self.rates[it_model]
            if card is None:
                cost = ci = co = cr = c5 = c1 = None
                call_priced = False
            else:
                ci, co, cr = inp * card.input / 1e6, out * card.output / 1e6, r * card.cache_read / 1e6
                c5, c1 = w5 * card.write_5m / 1e6, w1 * card.write_1h / 1e6
                cost = ci + co + cr + c5 + c1
                money[0] += ci
                money[1] += co
                money[2] += cr
                money[3] += c5
                money[4] += c1
            sums[0] += inp
            sums[1] += out
            sums[2] += r
            sums[3] += w5
            sums[4] += w1
            if kind == "message":
                top_in += inp
                top_out += out
                context_tokens = inp + r + w5 + w1
            iteration_rows.append(
                (
                    call_id,
                    idx,
                    end,
                    kind,
                    it_model,
                    True,
                    False,
                    inp,
                    out,
                    r,
                    w5,
                    w1,
                    cost,
                    card is not None,
                    ci,
                    co,
                    cr,
                    c5,
                    c1,
                    *_UNSET_ITERATION_TAIL,
                )
            )
        web_cost = web * WEB_SEARCH_USD
        total = sum(money) + web_cost if call_priced else None
        self.stats.iterations += len(its)
        self.stats.compactions += compactions
        ttft = rng.uniform(250, 2500) if stream else None
        call_rows.append(
            (
                call_id,
                f"{rng.getrandbits(128):032x}",
                service,
                conversation_id,
                start_time,
                now,
                end,
                duration_ms,
                "anthropic",
                "chat",
                model,
                model,
                f"msg_{call_id}",
                f"req_{call_id}",
                stop_reason,
                "UNSET",
                None,
                200,
                attempts,
                stream,
                ttft,
                "read" if stream else None,
                trigger,
                pause,
                True if on_demand else None,
                "standard",
                None,
                None,
                None,  # region: first-party calls carry none
                None,  # batch_id
                None,  # custom_id
                sums[0],
                sums[1],
                sums[2],
                sums[3],
                sums[4],
                web,
                0,
                0,
                top_in,
                top_out,
                total,
                call_priced,
                PRICING_VERSION,
                *(money if call_priced else [None] * 5),
                web_cost if call_priced else None,
                len(its),
                compactions,
                failed,
                0,  # compactions_errored: no generated call ends in an error mid-stream
                context_tokens,
                budget,
                None,
                *_UNSET_CALL_TAIL,
            )
        )


# -- loading ------------------------------------------------------------------------------------------------

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True)
class Meta:
    """What a generated database holds; stored in its `bench_meta` table."""

    key: str
    head: str
    end: str
    calls: int
    iterations: int
    errors: int
    compactions: int
    largest_conversation: str
    largest_calls: int
    loop_conversation: str
    generate_s: float
    rollup_s: float = 0.0
    """The first refresh of the rollups after loading: every slot recomputed."""

    @classmethod
    def load(cls, text: str | None) -> Meta | None:
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError):
            return None


class SqliteSink:
    """A new SQLite file at this code's schema, loaded with executemany in one transaction."""

    def __init__(self, path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{path}"
        upgrade_database(self.url)
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=OFF")
        self.con.execute("PRAGMA synchronous=OFF")
        self.con.execute("PRAGMA cache_size=-1048576")  # 1 GiB while loading: random call ids
        self.con.execute("BEGIN")
        self.insert_calls = (
            f"INSERT INTO calls ({','.join(CALL_COLUMNS)}) VALUES ({','.join('?' * len(CALL_COLUMNS))})"
        )
        self.insert_iterations = (
            f"INSERT INTO iterations ({','.join(ITERATION_COLUMNS)}) "
            f"VALUES ({','.join('?' * len(ITERATION_COLUMNS))})"
        )

    def write(self, call_rows: Rows, iteration_rows: Rows) -> None:
        self.con.executemany(self.insert_calls, call_rows)
        self.con.executemany(self.insert_iterations, iteration_rows)

    def finish(self, meta: Meta) -> None:
        self.con.execute("CREATE TABLE bench_meta (value TEXT)")
        self.con.execute("INSERT INTO bench_meta VALUES (?)", (json.dumps(asdict(meta)),))
        self.con.execute("COMMIT")
        self.con.execute("PRAGMA journal_mode=WAL")  # as compactobs leaves its stores
        self.con.close()


def sqlite_meta(path: Path) -> Meta | None:
    if not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT value FROM bench_meta").fetchone()
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return Meta.load(row[0] if row else None)


def _conninfo(url: str) -> str:
    """libpq connection string of a SQLAlchemy PostgreSQL URL (its `options` query included)."""
    from psycopg.conninfo import make_conninfo

    parsed = make_url(url)
    parts: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    parts.update({k: v for k, v in parsed.query.items() if isinstance(v, str)})
    return make_conninfo(**{k: v for k, v in parts.items() if v is not None})


def schema_url(base: str, schema: str) -> str:
    return (
        make_url(base)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


class PostgresSink:
    """A new schema at this code's schema revision, loaded with COPY."""

    def __init__(self, base: str, schema: str) -> None:
        import psycopg

        self.base, self.schema = base, schema
        with psycopg.connect(_conninfo(base), autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            admin.execute(f"CREATE SCHEMA {schema}")
        self.url = schema_url(base, schema)
        upgrade_database(self.url)
        self.con = psycopg.connect(_conninfo(self.url))
        self.con.execute("SET TIME ZONE 'UTC'")  # start_time is UTC text without an offset

    def write(self, call_rows: Rows, iteration_rows: Rows) -> None:
        with self.con.cursor() as cursor:
            for table, columns, rows in (
                ("calls", CALL_COLUMNS, call_rows),
                ("iterations", ITERATION_COLUMNS, iteration_rows),
            ):
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)

    def finish(self, meta: Meta) -> None:
        self.con.execute("CREATE TABLE bench_meta (value TEXT)")
        self.con.execute("INSERT INTO bench_meta VALUES (%s)", (json.dumps(asdict(meta)),))
        self.con.commit()
        self.con.autocommit = True
        self.con.execute("VACUUM ANALYZE calls")
        self.con.execute("VACUUM ANALYZE iterations")
        self.con.close()


def postgres_meta(base: str, schema: str) -> Meta | None:
    import psycopg

    try:
        with psycopg.connect(_conninfo(base)) as con:
            row = con.execute(f"SELECT value FROM {schema}.bench_meta").fetchone()
    except psycopg.Error:
        return None
    return Meta.load(row[0] if row else None)


def generate(params: Params, sinks: Sequence[SqliteSink | PostgresSink], progress: bool = True) -> Meta:
    """Generate the data once, into every sink."""
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    generator = Generator(params, end)
    started = time.perf_counter()
    for call_rows, iteration_rows in generator.batches():
        for sink in sinks:
            sink.write(call_rows, iteration_rows)
        if progress:
            done = generator.stats.calls
            rate = done / (time.perf_counter() - started)
            print(f"\r  {done:>10,} / {params.calls:,} calls ({rate:,.0f}/s)", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    stats = generator.stats
    meta = Meta(
        key=params.key,
        head=head_revision(),
        end=end.isoformat(),
        calls=stats.calls,
        iterations=stats.iterations,
        errors=stats.errors,
        compactions=stats.compactions,
        largest_conversation=stats.largest_conversation,
        largest_calls=stats.largest_calls,
        loop_conversation=stats.loop_conversation,
        generate_s=time.perf_counter() - started,
    )
    for sink in sinks:
        sink.finish(meta)
    return meta


@dataclass(frozen=True)
class Database:
    backend: str
    url: str
    meta: Meta
    reused: bool


def prepare(params: Params, data_dir: Path, postgres: str | None) -> list[Database]:
    """The databases for `params`: reused when their key and schema revision match, else generated."""
    head = head_revision()
    path = data_dir / f"reports-{params.key}.db"
    schema = f"bench_reports_{params.key}"
    wanted: list[tuple[str, Meta | None]] = [("sqlite", sqlite_meta(path))]
    if postgres is not None:
        wanted.append(("postgresql", postgres_meta(postgres, schema)))
    fresh = {backend: m for backend, m in wanted if m is not None and m.key == params.key and m.head == head}
    sinks: list[SqliteSink | PostgresSink] = []
    for backend, _ in wanted:
        if backend in fresh:
            continue
        print(f"generating {params.calls:,} calls into {backend} ...", file=sys.stderr)
        sinks.append(SqliteSink(path) if backend == "sqlite" else PostgresSink(postgres or "", schema))
    meta = generate(params, sinks) if sinks else None
    built: dict[str, Meta] = {}
    for sink in sinks:
        assert meta is not None
        backend = "sqlite" if isinstance(sink, SqliteSink) else "postgresql"
        built[backend] = Meta(**{**asdict(meta), "rollup_s": build_rollups(sink.url, meta)})
    out = []
    for backend, _ in wanted:
        url = f"sqlite:///{path}" if backend == "sqlite" else schema_url(postgres or "", schema)
        stored = fresh.get(backend) or built.get(backend)
        assert stored is not None
        out.append(Database(backend, url, stored, backend in fresh))
    return out


def build_rollups(url: str, meta: Meta, mark: bool = False) -> float:
    """Build every slot's rollups (what the first report after a bulk load does), recorded in bench_meta.
    `mark`: mark every slot first (a database loaded before, whose rollups are built already)."""
    from sqlalchemy import text

    from compactobs.reports.sources.sql import rollup
    from compactobs.store import open_database

    engine = open_database(url)
    try:
        if mark:
            with engine.begin() as connection:
                connection.execute(
                    text(
                        "INSERT INTO rollup_dirty (slot_ms, seq) "
                        "SELECT DISTINCT start_ms - start_ms % 900000, -1 FROM calls"
                    )
                )
        print("building rollups ...", file=sys.stderr)
        seconds = rollup.refresh(engine).seconds
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE bench_meta SET value = :value"),
                {"value": json.dumps({**asdict(meta), "rollup_s": seconds})},
            )
    finally:
        engine.dispose()
    return seconds


def refresh_last_day(engine: Any, meta: Meta) -> Any:
    """Mark the last day's 96 slots as changed, as a day of new calls would, and refresh them: what a daily
    report pays before it reads."""
    from sqlalchemy import insert

    from compactobs.reports.sources.sql import rollup
    from compactobs.store import rollup_dirty
    from compactobs.store.models import SLOT_MS

    last = int(datetime.fromisoformat(meta.end).timestamp() * 1000) - SLOT_MS
    with engine.begin() as connection:
        connection.execute(
            insert(rollup_dirty), [{"slot_ms": last - n * SLOT_MS, "seq": 0} for n in range(96)]
        )
    return rollup.refresh(engine)


# -- measuring ----------------------------------------------------------------------------------------------

ReportFn = Callable[[Any, Any, Any, Meta], Any]
"""(report module, engine, filters, meta) -> the report."""

REPORTS: dict[str, tuple[str, ReportFn]] = {
    "cost-day": ("cost", lambda m, engine, filters, meta: m.cost_report(engine, filters, by=("day",))),
    "cost-model-day": (
        "cost",
        lambda m, engine, filters, meta: m.cost_report(engine, filters, by=("model", "day")),
    ),
    "cache-model": ("cache", lambda m, engine, filters, meta: m.cache_report(engine, filters, by=("model",))),
    "anomalies": ("anomalies", lambda m, engine, filters, meta: m.anomalies_report(engine, filters)),
    "conversation": (
        "conversation",
        lambda m, engine, filters, meta: m.conversation_report(
            engine, filters, conversation_near(engine, 1000)
        ),
    ),
    "ops": ("ops", lambda m, engine, filters, meta: m.ops_report(engine, filters)),
    "rollup-1-day": ("rollup", lambda m, engine, filters, meta: refresh_last_day(engine, meta)),
}
"""What is timed: each report over the whole store; the timeline of the conversation whose size is nearest
1,000 calls (the same size at every store size, so its figures show what the store's size costs); and the
refresh of a day of rollups."""


def conversation_near(engine: Any, size: int) -> str:
    """The conversation with the number of calls nearest `size` (ties: the smallest id). Found outside the
    clock: the measured function is called with the id already known."""
    return _near_cache.setdefault(size, _conversation_near(engine, size))


_near_cache: dict[int, str] = {}


def _conversation_near(engine: Any, size: int) -> str:
    from sqlalchemy import func, select

    from compactobs.store import calls

    n = func.count().label("n")
    sizes = select(calls.c.conversation_id, n).group_by(calls.c.conversation_id).subquery()
    query = (
        select(sizes.c.conversation_id).order_by(func.abs(sizes.c.n - size), sizes.c.conversation_id).limit(1)
    )
    with engine.connect() as connection:
        return str(connection.execute(query).scalar_one())


def report_available(name: str) -> bool:
    """Whether the report's module exists (it is imported only in the measuring subprocess)."""
    import importlib.util

    return importlib.util.find_spec(f"compactobs.reports.{REPORTS[name][0]}") is not None


def _rows_of(result: Any) -> int | None:
    rows = getattr(result, "rows", None)
    return len(rows) if isinstance(rows, list) else None


def measure_one(name: str, url: str, repeat: int) -> dict[str, Any]:
    """Run in the child process: time one report and measure its memory."""
    import importlib
    import tracemalloc

    from compactobs.reports.times import build_filters
    from compactobs.store import open_database

    module_name, build = REPORTS[name]
    module = importlib.import_module(f"compactobs.reports.{module_name}")

    def function(engine: Any, filters: Any, meta: Meta) -> Any:
        return build(module, engine, filters, meta)

    engine = open_database(url)
    meta = Meta.load(_meta_text(engine))
    assert meta is not None
    if name == "conversation":
        conversation_near(engine, 1000)  # before the clock
    filters = build_filters(None, None, "UTC")
    raw_scan = _raw_scan_s(engine)
    rss_before = _current_rss_kb()
    started = time.perf_counter()
    result = function(engine, filters, meta)
    first = time.perf_counter() - started
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(engine, filters, meta)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    function(engine, filters, meta)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = _rss_kb("VmHWM")
    engine.dispose()
    return {
        "first_s": first,
        "median_s": statistics.median(times) if times else first,
        "py_peak_bytes": peak,
        "rss_delta_bytes": max(0, rss_after - rss_before) * 1024,
        "rows": _rows_of(result),
        "raw_scan_s": raw_scan,
    }


RAW_SCAN: Final = "SELECT count(*), sum(duration_ms), sum(cost_usd) FROM calls"
"""The baseline a report is measured against: one full scan of `calls`, reading two of its columns."""


def _raw_scan_s(engine: Any) -> float:
    """The median of three runs of RAW_SCAN, in this process, just before the report's runs."""
    from sqlalchemy import text

    times = []
    with engine.connect() as connection:
        for _ in range(3):
            started = time.perf_counter()
            connection.execute(text(RAW_SCAN)).all()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _rss_kb(field: str) -> int:
    """A Linux /proc/self/status figure in kilobytes: VmRSS (now) or VmHWM (the peak of this process's
    address space). Not getrusage's ru_maxrss: Linux carries it across exec, so a child started by the
    parent that generated the data would report the parent's peak (1.2 GB at 1M calls)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _current_rss_kb() -> int:
    return _rss_kb("VmRSS")


def _meta_text(engine: Any) -> str | None:
    from sqlalchemy import text

    with engine.connect() as connection:
        return connection.execute(text("SELECT value FROM bench_meta")).scalar()


def measure(name: str, url: str, repeat: int) -> dict[str, Any]:
    """One report in a fresh subprocess (clean memory figures)."""
    child = subprocess.run(
        [sys.executable, __file__, "--measure", name, "--db", url, "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or ["failed"]
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        return {"error": (errors or lines)[-1][:120]}
    # The child's figures are its one JSON line (the harness prints the machine's load around it).
    (figures,) = [line for line in child.stdout.splitlines() if line.startswith("{")]
    return json.loads(figures)


# -- main ---------------------------------------------------------------------------------------------------


def _mb(value: int) -> str:
    return f"{value / 1_048_576:,.1f}"


def print_table(results: list[tuple[Database, str, dict[str, Any]]]) -> None:
    header = (
        "backend",
        "calls",
        "report",
        "first s",
        "median s",
        "raw scans",
        "target",
        "py peak MB",
        "rss Δ MB",
        "rows",
    )
    lines = [header]
    for database, name, figures in results:
        target = SQLITE_TARGETS.get(name) if database.backend == "sqlite" else None
        if "error" in figures or "missing" in figures:
            note = figures.get("error") or "not written yet"
            dashes = ("-",) * 6
            lines.append((database.backend, f"{database.meta.calls:,}", name, *dashes, note))
            continue
        verdict = ""
        if target is not None:
            verdict = f"< {target:g}s " + ("ok" if figures["median_s"] < target else "MISSED")
        lines.append(
            (
                database.backend,
                f"{database.meta.calls:,}",
                name,
                f"{figures['first_s']:.3f}",
                f"{figures['median_s']:.3f}",
                f"{figures['median_s'] / figures['raw_scan_s']:.1f}",
                verdict,
                _mb(figures["py_peak_bytes"]),
                _mb(figures["rss_delta_bytes"]),
                "" if figures["rows"] is None else str(figures["rows"]),
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [
            str(cell).ljust(widths[i]) if i in (0, 2, 6, 9) else str(cell).rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_flatness(results: list[tuple[Database, str, dict[str, Any]]]) -> None:
    """Peak memory at the largest size over the smallest, per backend and report."""
    by: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for database, name, figures in results:
        if "py_peak_bytes" in figures:
            by.setdefault((database.backend, name), []).append((database.meta.calls, figures))
    lines = []
    for (backend, name), entries in by.items():
        if len(entries) < 2:
            continue
        entries.sort(key=lambda e: e[0])
        (small, a), (large, b) = entries[0], entries[-1]
        lines.append(
            f"  {backend:<10} {name:<15} py peak {_mb(a['py_peak_bytes'])} -> {_mb(b['py_peak_bytes'])} MB, "
            f"rss Δ {_mb(a['rss_delta_bytes'])} -> {_mb(b['rss_delta_bytes'])} MB "
            f"for {large // small}x the calls; time x{b['median_s'] / max(a['median_s'], 1e-9):.1f}"
        )
    if lines:
        print("\nmemory against the number of calls:")
        print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--calls",
        type=int,
        action="append",
        help="calls to generate (repeatable; default 100000 and 1000000)",
    )
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after the first (median)")
    parser.add_argument("--reports", default=None, help="comma-separated subset of: " + ", ".join(REPORTS))
    default_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compactobs-bench"
    parser.add_argument("--data-dir", type=Path, default=default_dir, help=f"default {default_dir}")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument(
        "--rebuild-rollups", action="store_true", help="rebuild a reused database's rollups, timed"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure_one(args.measure, args.db, args.repeat)))
        return

    postgres = None if args.no_postgres else os.environ.get("COMPACTOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    sizes = args.calls or [100_000, 1_000_000]
    names = args.reports.split(",") if args.reports else list(REPORTS)
    unknown = set(names) - set(REPORTS)
    if unknown:
        parser.error(f"unknown report(s): {', '.join(sorted(unknown))}")
    databases: list[Database] = []
    for calls in sizes:
        params = Params(calls, args.days, args.conversations, args.seed)
        prepared = prepare(params, args.data_dir, postgres)
        if args.rebuild_rollups:
            prepared = [
                Database(
                    d.backend,
                    d.url,
                    Meta(**{**asdict(d.meta), "rollup_s": build_rollups(d.url, d.meta, mark=True)}),
                    d.reused,
                )
                if d.reused
                else d
                for d in prepared
            ]
        databases.extend(prepared)
    print("databases:")
    for database in databases:
        m = database.meta
        how = "reused" if database.reused else f"generated in {m.generate_s:.0f} s"
        how += f"; rollups first built in {m.rollup_s:.1f} s"
        print(
            f"  {database.backend:<10} {m.calls:>9,} calls {m.iterations:>10,} iterations "
            f"{m.errors:>7,} errors {m.compactions:>7,} compactions; largest conversation "
            f"{m.largest_conversation} ({m.largest_calls:,} calls); {how}"
        )
    if args.generate_only:
        return
    print()
    results: list[tuple[Database, str, dict[str, Any]]] = []
    for database in databases:
        for name in names:
            if not report_available(name):
                results.append((database, name, {"missing": True}))
                continue
            results.append((database, name, measure(name, database.url, args.repeat)))
    print_table(results)
    print_flatness(results)
    print(
        f"\n{platform_line()}; reports over all {args.days} days (no --since), tz UTC; "
        f"median of {args.repeat} after a first run."
    )


def platform_line() -> str:
    import platform

    return f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    import _harness

    _harness.run(main)
