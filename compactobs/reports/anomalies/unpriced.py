"""unpriced_model: iterations of a model compactobs has no price for (cost NULL, never $0)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Select, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from compactobs.reports.anomalies.finding import MAX_CALL_IDS, Finding, when
from compactobs.store.models import calls, iterations

__all__ = ["UnpricedModel", "unpriced_models_statement"]


class UnpricedModel:
    """Per model with no price, one finding, from one grouped query (`statement`) and a sample of its
    calls (`sample_statement`)."""

    kind: Final = "unpriced_model"
    remedy: Final = (
        "add the model to a pricing overrides file (COMPACTOBS_PRICING_FILE) and run `compactobs reprice`"
    )

    @staticmethod
    def model() -> ColumnElement[Any]:
        """The model an unpriced iteration is reported under."""
        c, i = calls.c, iterations.c
        return func.coalesce(i.model, c.response_model, c.request_model, literal_column("'(unknown)'"))

    @classmethod
    def statement(cls, conditions: Sequence[ColumnElement[bool]]) -> Select[Any]:
        """The rule as one query over the calls meeting `conditions`: per model with no price, `model`,
        `calls`, `iterations`, `conversations`, `tokens` and the first and last call's start (epoch ms). The
        report and the dashboards both run it."""
        c, i = calls.c, iterations.c
        model = cls.model()
        return (
            select(
                model.label("model"),
                func.count(func.distinct(c.call_id)).label("calls"),
                func.count().label("iterations"),
                func.count(func.distinct(c.conversation_id)).label("conversations"),
                func.sum(
                    func.coalesce(i.input_tokens, 0)
                    + func.coalesce(i.output_tokens, 0)
                    + func.coalesce(i.cache_read_tokens, 0)
                    + func.coalesce(i.cache_write_5m_tokens, 0)
                    + func.coalesce(i.cache_write_1h_tokens, 0)
                ).label("tokens"),
                func.min(c.start_ms).label("first_ms"),
                func.max(c.start_ms).label("last_ms"),
            )
            .select_from(iterations.join(calls, calls.c.call_id == i.call_id))
            .where(i.priced.is_(False), *conditions)
            .group_by(model)
            .order_by(model)
        )

    @classmethod
    def sample_statement(cls, conditions: Sequence[ColumnElement[bool]], model: str) -> Select[Any]:
        """The first MAX_CALL_IDS calls (by start) with an unpriced iteration of the model."""
        c, i = calls.c, iterations.c
        return (
            select(c.call_id)
            .select_from(iterations.join(calls, calls.c.call_id == i.call_id))
            .where(i.priced.is_(False), cls.model() == model, *conditions)
            .group_by(c.call_id)
            .order_by(func.min(c.start_ms), c.call_id)
            .limit(MAX_CALL_IDS)
        )

    @classmethod
    def findings(
        cls, groups: Iterable[Sequence[Any]], sample_of: Callable[[str], Sequence[str]], tz: Any
    ) -> Iterator[Finding]:
        """The rule over `statement`'s records (or a source's); `sample_of(model)`: its first call ids."""
        for name, call_count, iteration_count, conversations, tokens, first_ms, last_ms in groups:
            sample = sample_of(name)
            yield Finding(
                kind=cls.kind,
                severity="warning",
                conversation_id=None,
                call_ids=tuple(sample),
                message=(
                    f"model {name!r} has no price: {call_count:,} call(s) with {int(tokens or 0):,} tokens "
                    f"are stored without cost, so every cost total leaves them out"
                ),
                evidence={
                    "model": name,
                    "calls": call_count,
                    "iterations": iteration_count,
                    "conversations": conversations,
                    "tokens": int(tokens or 0),
                    "first_call": when(int(first_ms), tz),
                    "last_call": when(int(last_ms), tz),
                },
                remedy=cls.remedy,
                first_ms=int(first_ms),
            )


unpriced_models_statement = UnpricedModel.statement
"""The rule's query, by the name the dashboards use."""
