"""Counts in words: `counted(1, "compaction")` is "1 compaction", `counted(2, "compaction")` "2 compactions".
A leaf: imports nothing of compactobs, so every message in the package can use it."""

from __future__ import annotations

__all__ = ["aligned", "counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` with thousands separators and `noun`, made plural unless the count is exactly 1."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def aligned(rows: list[list[str]], left: int) -> list[str]:
    """Rows as aligned plain-text columns: the first `left` columns left-aligned, the rest (numbers)
    right-aligned, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
