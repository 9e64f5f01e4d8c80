"""The calls and iterations columns `compactobs tune` models, by name: every source selects these."""

from __future__ import annotations

from typing import Final

__all__ = ["CALL_FIELDS", "ITERATION_FIELDS"]

CALL_FIELDS: Final = (
    "call_id",
    "conversation_id",
    "service_name",
    "start_ms",
    "request_model",
    "response_model",
    "cost_usd",
    "priced",
    "compaction_trigger",
    "compaction_pause_after",
    "compactions_failed",
    "service_tier",
    "speed",
    "inference_geo",
    "tags",
)
"""The `calls` columns tune reads (a ClickHouse source selects the same names)."""
ITERATION_FIELDS: Final = (
    "call_id",
    "idx",
    "type",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_usd",
    "cost_cache_write_5m_usd",
    "cost_cache_write_1h_usd",
)
"""The `iterations` columns tune reads."""
