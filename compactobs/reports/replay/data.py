"""Read the recorded calls and iterations tune models from the SQL store, as `model.CallRecord`s."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from compactobs.reports.measures.groups import tag_of
from compactobs.reports.model import Filters
from compactobs.reports.replay.model import CallRecord, Conversation, Step, Turn
from compactobs.reports.sources import Source, as_source
from compactobs.untrusted import stored_tags
from compactobs.usage import TokenCounts

__all__ = ["Recorded", "read_recorded", "write_cost"]


@dataclass(frozen=True)
class Recorded:
    """The calls of the conversations the filters select, by conversation (time order), and what was
    left out: conversations with an unpriced call, calls that carried no usage."""

    by_conversation: dict[str, list[CallRecord]]
    services: dict[str, str | None]
    write_usd: dict[tuple[str, int], Decimal | None]
    """(call id, iteration index) -> the recorded cost of that iteration's cache writes."""
    unpriced_conversations: int
    group_of: Callable[[str], str | None]


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def read_recorded(source: Engine | Source, filters: Filters, by: str | None) -> Recorded:
    """The recorded traffic, from the SQL store or a ClickHouse source (`tune_rows`); `by`: None,
    `service`, `conversation` or `tag:KEY` (the group a recommendation is for: a conversation's tag is its
    first call's)."""
    step_rows, call_rows = as_source(source).tune_rows(filters)
    steps: dict[str, list[Step]] = defaultdict(list)
    write_usd: dict[tuple[str, int], Decimal | None] = {}
    for row in step_rows:
        tokens = TokenCounts(
            _int(row.input_tokens),
            _int(row.output_tokens),
            _int(row.cache_read_tokens),
            _int(row.cache_write_5m_tokens),
            _int(row.cache_write_1h_tokens),
        )
        steps[row.call_id].append(Step(row.type or "message", row.model, tokens, _money(row.cost_usd)))
        writes = [_money(v) for v in (row.cost_cache_write_5m_usd, row.cost_cache_write_1h_usd)]
        known = [w for w in writes if w is not None]
        write_usd[(row.call_id, len(steps[row.call_id]) - 1)] = sum(known, Decimal(0)) if known else None
    by_conversation: dict[str, list[CallRecord]] = defaultdict(list)
    services: dict[str, str | None] = {}
    tags: dict[str, str | None] = {}
    tag = tag_of(by) if by is not None else None
    unpriced: set[str] = set()
    for row in call_rows:
        conversation = str(row.conversation_id)
        services.setdefault(conversation, row.service_name)
        if tag is not None and conversation not in tags:
            tags[conversation] = stored_tags(row.tags).get(tag)
        if not row.priced:
            unpriced.add(conversation)
        by_conversation[conversation].append(
            CallRecord(
                call_id=row.call_id,
                at_ms=int(row.start_ms),
                model=row.response_model or row.request_model or "",
                steps=tuple(steps.get(row.call_id, ())),
                cost_usd=_money(row.cost_usd),
                trigger=None if row.compaction_trigger is None else int(row.compaction_trigger),
                paused=bool(row.compaction_pause_after),
                failed_compactions=_int(row.compactions_failed),
                service_tier=row.service_tier,
                speed=row.speed,
                inference_geo=row.inference_geo,
            )
        )
    for conversation in unpriced:
        by_conversation.pop(conversation, None)

    def group_of(conversation: str) -> str | None:
        if by == "service":
            return services.get(conversation)
        if by == "conversation":
            return conversation
        if tag is not None:  # the tag of the conversation's first call; None: a group of its own
            return tags.get(conversation)
        return None

    return Recorded(dict(by_conversation), services, write_usd, len(unpriced), group_of)


def write_cost(
    write_usd: dict[tuple[str, int], Decimal | None], conversation: Conversation
) -> Callable[[Turn], Decimal | None]:
    """`compaction_taxes`' `write_usd`: the recorded cost of a turn's reply's cache writes (the last
    `message` step of its last call)."""
    by_call: dict[str, list[int]] = defaultdict(list)
    for call_id, index in write_usd:
        by_call[call_id].append(index)

    def cost(turn: Turn) -> Decimal | None:
        call_id = turn.call_ids[-1]
        indexes = by_call.get(call_id)
        return write_usd.get((call_id, max(indexes))) if indexes else None

    return cost
