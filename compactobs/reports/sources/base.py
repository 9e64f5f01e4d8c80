"""What a report needs from where the rows are: the `Source` Protocol, engine-free.

A report module (`reports.cost`, `reports.cache`, ...) asks a `Source` for intermediate results (the
window's data range, groups of summed measures) and assembles its `Report` from them; the same rules,
rendering and JSON on every engine. Implemented by the SQL store (`sources.sql.SqlSource`, SQLite and
PostgreSQL, with rollups) and by ClickHouse (`sources.clickhouse.ClickHouseSource`, the Collector's
spans). Both compile the measures of `reports.measures`. The records a source gives are the SQL store's
rows (`calls` columns as attributes): the report modules read them the same way from either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from compactobs._types import SQLRow, SQLValue
from compactobs.reports.model import Filters, ReportInputError
from compactobs.reports.times import Buckets

if TYPE_CHECKING:
    from compactobs.reports.measures.anomalies import OverBudget, Thresholds
    from compactobs.rules import Budgets

__all__ = [
    "CONVERSATION_FIELDS",
    "PERCENTILES",
    "AnomalyData",
    "DataStamp",
    "Groups",
    "OpsFigures",
    "Percentiles",
    "Source",
    "interpolate",
    "unknown_call",
    "unknown_conversation",
]

Groups = dict[tuple[SQLValue, ...], dict[str, SQLValue]]
"""{group key values, in `by` order (with `with_model`: the call's model last): summed measures}."""
DataStamp = tuple[int, int | None, int | None]
"""(calls, first start_ms, last start_ms) of the whole store: cheap to read, and different after most
writes (a call added or deleted); an update in place (a repricing) leaves it as it was."""


# -- report ops ---------------------------------------------------------------------------------------------

PERCENTILES: Final = (0.5, 0.95, 0.99)

Percentiles = dict[SQLValue, tuple[float, ...]]
_Records = Sequence[Sequence[SQLValue]]
OpsFigures = tuple[_Records, _Records, Percentiles, SQLValue, Percentiles, SQLValue]
"""What `report ops` is made of: (by model: (model, calls, error calls, retried calls, retries) in model
order; errors: (error type, calls, retries), most first; latency percentiles by model and over all; TTFT
percentiles by model and over all)."""


def interpolate(values: dict[int, float], n: int, p: float) -> float:
    """The p-th percentile from the sorted values at 0-based ranks floor(h) and ceil(h), h = (n - 1) p: the
    one formula of every source (PostgreSQL's `percentile_cont`), in the same floating-point arithmetic."""
    position = (n - 1) * p
    low = math.floor(position)
    high = math.ceil(position)
    first = values[low]
    return first + (values[high] - first) * (position - low)


# -- report conversation and report call --------------------------------------------------------------------

CONVERSATION_FIELDS: Final = (
    "call_id",
    "start_ms",
    "request_model",
    "response_model",
    "stop_reason",
    "error_type",
    "iterations_count",
    "compactions_count",
    "compactions_failed",
    "compaction_pause_after",
    "context_tokens",
    "compaction_trigger",
    "cost_usd",
    "priced",
    "budget_usd",
    "budget_tokens",
)
"""The `calls` columns `report conversation` reads, per call."""


def unknown_conversation(conversation_id: str) -> ReportInputError:
    return ReportInputError(
        f"unknown conversation {conversation_id!r}: no call was recorded with this id "
        "(`compactobs report cost --by conversation` lists them)"
    )


def unknown_call(reference: str) -> ReportInputError:
    return ReportInputError(
        f"unknown call {reference!r}: no call was recorded with this request id (req_...), message id "
        "(msg_...) or span id (`compactobs report conversation ID` shows each call's span id)"
    )


# -- report anomalies ---------------------------------------------------------------------------------------


class AnomalyData(Protocol):
    """What the anomaly kinds read, as records (those of `compactobs.reports.measures.anomalies`'
    statements), for the calls a Filters selects."""

    @property
    def concurrent(self) -> bool:
        """Whether its grouped queries may run on another thread while the compaction rows are read and
        judged, so that the engine's work and Python's overlap."""
        ...

    def compaction_rows(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]: ...
    def budget_totals(self, budgets: Budgets | None) -> Iterable[Sequence[SQLValue]]: ...
    def budget_crossings(self, over: OverBudget) -> dict[str, Any]: ...
    def unpriced_groups(self) -> Iterable[Sequence[SQLValue]]: ...
    def unpriced_sample(self, model: str) -> Sequence[str]: ...
    def error_hours(self, thresholds: Thresholds) -> Iterable[Sequence[SQLValue]]: ...
    def error_sample(self, start_ms: int) -> Sequence[str]: ...


# -- the source ---------------------------------------------------------------------------------------------


@runtime_checkable
class Source(Protocol):
    """Where a report's rows are. Every method reads only; errors the user can fix are raised as they are
    (a bad URL, a missing table), before any figure."""

    def data_range(self, filters: Filters) -> tuple[int, int] | None:
        """(first, last) start_ms of the calls in the window, None when there is none."""
        ...

    def data_stamp(self) -> DataStamp:
        """The whole store's `DataStamp` (index lookups and a count): what a cache of a report over every
        call compares to know whether the data changed."""
        ...

    def refresh(self, filters: Filters, by: Sequence[str]) -> None:
        """Bring the source's precomputed sums up to date for a report of `filters` grouped `by`, when it
        keeps any that could answer it (the SQL store's rollups); a failure only means the report reads
        the calls instead."""
        ...

    def cost_groups(
        self, filters: Filters, by: Sequence[str], buckets: Buckets | None
    ) -> tuple[Groups, Groups]:
        """(every group's sums, the unpriced calls' sums by group and call model) for `report cost`: the
        sums are `measures.cost.SUMMED` plus the write total, per group of `by` (`measures.groups`; time
        units labelled by `buckets`); the second has the call's model (response, else request) as one
        more key, last, and is empty when no call is unpriced. Both from one view of the data."""
        ...

    def cache_groups(
        self, filters: Filters, by: Sequence[str], span: tuple[int, int], now_ms: int
    ) -> tuple[Groups, Groups]:
        """(every group's sums, the unpriced calls' sums by group) for `report cache`: `measures.cache.SUMMED`
        per group of `by`, time units local to `filters.tz` over `span` (the data range); `now_ms` judges
        the writes with no next call yet. The second is empty when no call is unpriced."""
        ...

    def source_cost_groups(self, filters: Filters) -> list[dict[str, Any]]:
        """Per service (`service`), `measures.cost.source_cost_measures` over the calls `filters` select
        that carry their source's own price (`source_cost_usd`), by service name."""
        ...

    def tune_rows(self, filters: Filters) -> tuple[list[Any], list[Any]]:
        """(iterations by call and index, calls by conversation and start) for `compactobs tune`: the
        columns of `sources.tune_fields`, of the priced calls with a conversation that `filters` select."""
        ...

    def ops_figures(self, filters: Filters) -> OpsFigures:
        """The counts and percentiles of `report ops` over the calls `filters` select."""
        ...

    def conversation_calls(self, filters: Filters, conversation_id: str) -> Iterator[SQLValue]:
        """The conversation's calls that `filters` select (CONVERSATION_FIELDS as attributes), in
        (start_ms, call_id) order. Raises `unknown_conversation` when no call ever had this id."""
        ...

    def conversation_type_costs(
        self, filters: Filters, conversation_id: str
    ) -> list[tuple[str, SQLValue, SQLValue]]:
        """(call_id, iteration type, cost) of the conversation's calls that `filters` select, one per type a
        call billed: `measures.cost.iteration_cost` grouped by call and type (the type None for a call
        without iteration rows; the cost None when unpriced)."""
        ...

    def call_with_iterations(self, reference: str) -> tuple[SQLRow, list[SQLRow]]:
        """The call with this request id, message id or span id (the `calls` row) and its `iterations` rows
        in order. Raises `unknown_call` when none was recorded."""
        ...

    def anomaly_data(self, filters: Filters) -> AnomalyData:
        """The anomaly kinds' records over the calls `filters` select."""
        ...
