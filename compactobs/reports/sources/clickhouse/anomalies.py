"""`report anomalies` on ClickHouse: the records the rules of `compactobs.reports.anomalies` read, from the
spans table (`AnomalyData`).

A conversation's turns, their positions and their neighbours come from window functions over its turns
(row_number, lagInFrame, leadInFrame), read in order from setup's turns table; a budget's crossing from
running sums. The compacting calls the rules may hold (`compaction_candidates`, the condition the SQL store
applies, with the share judged on an upper bound) are chosen before their compaction costs are joined, so
the engine holds those, not every compacting call, and they come back streamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from sqlalchemy import literal_column

from compactobs.reports.measures.anomalies import (
    COMPACTION_RECORD,
    ERROR_STATUSES,
    HOUR_MS,
    MAX_CALL_IDS,
    OverBudget,
    Thresholds,
    compaction_candidates,
)
from compactobs.reports.model import Filters
from compactobs.reports.sources.clickhouse import spans
from compactobs.reports.sources.clickhouse.client import ClickHouseClient, quote
from compactobs.reports.sources.clickhouse.cost import JOIN_SETTINGS
from compactobs.rules import BILLED_TOKEN_COLUMNS, Budgets

if TYPE_CHECKING:
    from compactobs._types import SQLValue

    pass

__all__ = ["ClickHouseAnomalyData"]

_ORDER: Final = "PARTITION BY conversation_id ORDER BY start_ms, call_id"
_WHOLE: Final = f"({_ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
_BILLED: Final = " + ".join(f"coalesce(c.{name}, 0)" for name in BILLED_TOKEN_COLUMNS)
_STATUSES: Final = ", ".join(map(str, ERROR_STATUSES))
_SERVER_ERROR: Final = f"(c.http_status IN ({_STATUSES}) OR (c.http_status >= 500 AND c.http_status <= 599))"


class ClickHouseAnomalyData:
    """`sources.base.AnomalyData` over a ClickHouse source, for the calls `filters` select."""

    concurrent = True
    """Queries may come from two threads: a chdb session runs them one at a time (the gain is the engine
    working while Python parses and judges the compaction rows); over HTTP the client keeps no server
    session, so the server runs them side by side (its peak memory is then the two queries')."""

    def __init__(self, source: ClickHouseClient, filters: Filters) -> None:
        self.source = source
        self.filters = filters
        self.conditions = spans.call_conditions(filters, "c.")
        self.window = spans.calls_of(source, filters)
        self.everything = spans.calls_of(source)
        # The per-conversation rules read the calls in conversation order: from the turns table, no sort.
        self.turns_window = spans.turns_of(source, filters)
        self.turns = spans.turns_of(source)
        self._unpriced_samples: dict[str, list[str]] = {}

    def _where(self, *extra: str) -> str:
        conditions = [*self.conditions, *extra]
        return " WHERE " + " AND ".join(conditions) if conditions else ""

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]:
        turn = ("c.conversation_id IS NOT NULL", "c.input_tokens IS NOT NULL")
        reads = "coalesce(c.cache_read_tokens, 0)"
        writes = "coalesce(c.cache_write_5m_tokens, 0) + coalesce(c.cache_write_1h_tokens, 0)"

        def windows(relation: str, *extra: str) -> str:
            # The neighbours as one tuple each way (one window function, not one per value); a first or
            # last turn gets the tuple's default, whose empty call id stands for none (span ids never are).
            return (
                "SELECT c.conversation_id AS conversation_id, c.call_id AS call_id, c.start_ms AS start_ms, "
                "c.compactions_count AS compactions_count, coalesce(c.compactions_failed, 0) AS failed, "
                "c.compaction_trigger AS trigger, c.context_tokens AS context_tokens, "
                "c.cost_usd AS cost_usd, "
                f"row_number() OVER ({_ORDER}) AS position, "
                # A conversation's turns and cost over the same window: no second read of the turns.
                f"count() OVER {_WHOLE} AS conversation_calls, "
                f"sum(c.cost_usd) OVER {_WHOLE} AS conversation_cost, "
                f"sumIf(c.cost_usd, c.compactions_count > 0) OVER {_WHOLE} AS compacting_cost, "
                f"lagInFrame((c.call_id, {reads}, {writes})) OVER {_WHOLE} AS prev, "
                f"leadInFrame((c.call_id, {reads}, {writes}, c.context_tokens)) OVER {_WHOLE} AS next "
                f"FROM {relation} AS c" + self._where(*turn, *extra)
            )

        streamed = spans.has_turns(self.source)
        if streamed:
            # One window per partition of the turns table, each over one sorted stream: streamed, not
            # sorted, and the partitions side by side (a conversation is in one partition). Every
            # conversation's turns go through (streamed, they cost no memory); the compacting calls are
            # kept below.
            turns = " UNION ALL ".join(
                f"SELECT * FROM ({windows(spans.turns_of(self.source, self.filters, k))})"
                for k in range(spans.TURNS_PARTITIONS)
            )
        else:
            # Sorted and held: only the conversations that compacted.
            compacting = f"SELECT DISTINCT c.conversation_id FROM {self.window} AS c" + self._where(
                *turn, "c.compactions_count > 0"
            )
            turns = windows(self.turns_window, f"c.conversation_id IN ({compacting})")
        located = (
            "SELECT t.conversation_id AS conversation_id, t.conversation_calls AS conversation_calls, "
            "t.conversation_cost AS conversation_cost, t.position AS position, t.call_id AS call_id, "
            "t.start_ms AS start_ms, t.compactions_count AS compactions_count, t.failed AS failed, "
            "t.trigger AS trigger, "
            "coalesce(t.context_tokens, if(t.next.1 = '', NULL, t.next.4)) AS context_after, "
            "t.cost_usd AS cost_usd, t.compacting_cost AS compacting_cost, "
            "nullIf(t.prev.1, '') AS prev_id, if(t.prev.1 = '', NULL, t.prev.2) AS prev_reads, "
            "if(t.prev.1 = '', NULL, t.prev.3) AS prev_writes, nullIf(t.next.1, '') AS next_id, "
            "if(t.next.1 = '', NULL, t.next.2) AS next_reads, "
            "if(t.next.1 = '', NULL, t.next.3) AS next_writes "
            f"FROM ({turns}) AS t WHERE t.compactions_count > 0"
        )
        # The candidates are chosen before the compaction costs are joined, so the join holds them only,
        # not every compacting call. The share's test takes the conversation's priced compacting calls'
        # cost, an upper bound of their compaction cost (a call's compaction is part of its cost): more
        # conversations may send all their compacting calls, and the rule decides on the exact share.
        candidates = compaction_candidates(
            lambda name: literal_column(
                "k.compacting_cost" if name == "priced_compaction_cost" else f"k.{name}"
            ),
            thresholds,
        )
        condition = candidates.compile(compile_kwargs={"literal_binds": True})
        chosen = f"SELECT * FROM ({located}) AS k WHERE {condition}"
        compactions = (
            f"(SELECT call_id, cost_usd FROM {spans.iterations_of(self.source)} WHERE type = 'compaction')"
        )
        # The compaction iterations stream past the candidates (the join's right side, held) and are
        # summed per candidate, as `cost.compaction_costs` sums them per call.
        kept = {"call_id": "k.call_id", "compaction_cost": "sum(i.cost_usd)"}
        record = ", ".join(f"{kept.get(name, f'any(k.{name})')} AS {name}" for name in COMPACTION_RECORD)
        sql = (
            f"SELECT {record} FROM {compactions} AS i RIGHT JOIN ({chosen}) AS k ON i.call_id = k.call_id "
            "GROUP BY k.call_id ORDER BY conversation_id, start_ms, call_id"
        )
        turns_settings = spans.TURNS_WINDOW_SETTINGS if streamed else spans.TURNS_SETTINGS
        return self.source.stream(sql, {**JOIN_SETTINGS, **turns_settings})

    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[SQLValue]]:
        where = ["c.conversation_id IS NOT NULL"]
        if self.conditions:
            selected = f"SELECT DISTINCT c.conversation_id FROM {self.window} AS c" + self._where()
            where.append(f"c.conversation_id IN ({selected})")
        sql = (
            "SELECT c.conversation_id, count(), sum(c.cost_usd), "
            f"sum({_BILLED}), max(c.budget_usd), max(c.budget_tokens), countIf(c.priced = false), "
            "sum(coalesce(c.compactions_count, 0)), max(c.budget_max_compactions) "
            f"FROM {self.everything} AS c WHERE {' AND '.join(where)} GROUP BY c.conversation_id"
        )
        if not budgets:
            sql += (
                " HAVING max(c.budget_usd) IS NOT NULL OR max(c.budget_tokens) IS NOT NULL"
                " OR max(c.budget_max_compactions) IS NOT NULL"
            )
        return self.source.tuples(sql)

    def budget_crossings(self, over: OverBudget) -> dict[str, tuple[int, str]]:
        """(start_ms, call_id) of the first call at which each conversation's running spend (all its calls,
        in (start_ms, call_id) order) went over its budget."""
        if not over:
            return {}
        limits = ", ".join(
            f"({quote(conversation_id)}, {quote(budget.usd)}, {quote(budget.tokens)}, "
            f"{quote(budget.max_compactions)})"
            for conversation_id, (budget, *_) in over.items()
        )
        table = (
            "SELECT * FROM values('conversation_id String, usd Nullable(Decimal(38, 10)), "
            f"tokens Nullable(Int64), max_compactions Nullable(Int64)', {limits})"
        )
        running = (
            "SELECT c.conversation_id AS conversation_id, c.call_id AS call_id, c.start_ms AS start_ms, "
            "sum(coalesce(c.cost_usd, toDecimal128(0, 10))) OVER w AS spent, "
            f"sum({_BILLED}) OVER w AS tokens, "
            "sum(coalesce(c.compactions_count, 0)) OVER w AS compactions "
            f"FROM {self.turns} AS c WHERE c.conversation_id IN (SELECT conversation_id FROM ({table})) "
            f"WINDOW w AS ({_ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        )
        sql = (
            "SELECT r.conversation_id AS conversation_id, min((r.start_ms, r.call_id)) AS first "
            f"FROM ({running}) AS r JOIN ({table}) AS b ON b.conversation_id = r.conversation_id "
            "WHERE (b.usd IS NOT NULL AND r.spent > b.usd) OR (b.tokens IS NOT NULL AND r.tokens > b.tokens) "
            "OR (b.max_compactions IS NOT NULL AND r.compactions > b.max_compactions) "
            "GROUP BY r.conversation_id"
        )
        found: dict[str, tuple[int, str]] = {}
        for record in self.source.rows(sql, {**JOIN_SETTINGS, **spans.TURNS_SETTINGS}):
            start_ms, call_id = record["first"]
            found[record["conversation_id"]] = (int(start_ms), call_id)
        return found

    _MODEL: Final = "coalesce(i.model, c.response_model, c.request_model, '(unknown)')"

    def _unpriced_join(self) -> str:
        # The unpriced iterations (few) on the join's right side, the one ClickHouse holds in memory, and
        # the calls streamed past them (at 10M calls, not a hash of every call).
        unpriced = f"(SELECT * FROM {spans.iterations_of(self.source)} WHERE priced = false)"
        return f"{self.window} AS c INNER JOIN {unpriced} AS i ON i.call_id = c.call_id"

    def unpriced_groups(self) -> Iterable[Sequence[SQLValue]]:
        tokens = (
            "coalesce(i.input_tokens, 0) + coalesce(i.output_tokens, 0) + coalesce(i.cache_read_tokens, 0) + "
            "coalesce(i.cache_write_5m_tokens, 0) + coalesce(i.cache_write_1h_tokens, 0)"
        )
        per_call = (
            f"SELECT {self._MODEL} AS model, c.call_id AS call_id, "
            "any(c.conversation_id) AS conversation_id, count() AS iterations, "
            f"sum({tokens}) AS tokens, min(c.start_ms) AS first "
            f"FROM {self._unpriced_join()}" + self._where("i.priced = false") + " GROUP BY model, c.call_id"
        )
        # Each model's first calls come with its figures (one join, not one more per model).
        sql = (
            "SELECT model, count(), sum(iterations), uniqExact(conversation_id), sum(tokens), min(first), "
            f"max(first), groupArraySorted({MAX_CALL_IDS})((first, call_id)) FROM ({per_call}) "
            "GROUP BY model ORDER BY model"
        )
        groups = self.source.tuples(sql)
        self._unpriced_samples = {group[0]: [call_id for _, call_id in group[-1]] for group in groups}
        return [group[:-1] for group in groups]

    def unpriced_sample(self, model: str) -> Sequence[str]:
        return self._unpriced_samples.get(model, [])

    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]:
        sql = (
            f"SELECT intDiv(c.start_ms, {HOUR_MS}) AS hour, count(), countIf({_SERVER_ERROR}), "
            "countIf(c.http_status = 429), countIf(c.http_status = 529), sum(coalesce(c.attempts, 1) - 1) "
            f"FROM {self.window} AS c"
            + self._where()
            + f" GROUP BY hour HAVING count() >= {int(thresholds.error_min_calls)} ORDER BY hour"
        )
        return self.source.tuples(sql)

    def error_sample(self, start_ms: int) -> Sequence[str]:
        sql = (
            f"SELECT c.call_id AS call_id FROM {self.window} AS c"
            + self._where(f"c.start_ms >= {start_ms}", f"c.start_ms < {start_ms + HOUR_MS}", _SERVER_ERROR)
            + f" ORDER BY c.start_ms, c.call_id LIMIT {MAX_CALL_IDS}"
        )
        return [record["call_id"] for record in self.source.rows(sql)]
