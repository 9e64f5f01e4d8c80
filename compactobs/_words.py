"""Counts in words: `counted(1, "compaction")` is "1 compaction", `counted(2, "compaction")` "2 compactions".
A leaf: imports nothing of compactobs, so every message in the package can use it."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` with thousands separators and `noun`, made plural unless the count is exactly 1."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
