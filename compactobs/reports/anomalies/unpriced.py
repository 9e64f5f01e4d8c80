"""unpriced_model: iterations of a model compactobs has no price for (cost NULL, never $0)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from compactobs.reports.anomalies.finding import Finding, when
from compactobs.reports.measures.anomalies import (
    unpriced_model,
    unpriced_sample_statement,
    unpriced_statement,
)

__all__ = ["UnpricedModel", "unpriced_models_statement"]


class UnpricedModel:
    """Per model with no price, one finding, from one grouped query (`statement`) and a sample of its
    calls (`sample_statement`)."""

    kind: Final = "unpriced_model"
    remedy: Final = (
        "add the model to a pricing overrides file (COMPACTOBS_PRICING_FILE) and run `compactobs reprice`"
    )

    model: Final = staticmethod(unpriced_model)
    statement: Final = staticmethod(unpriced_statement)
    sample_statement: Final = staticmethod(unpriced_sample_statement)

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
