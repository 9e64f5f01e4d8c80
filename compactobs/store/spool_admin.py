"""Looking into a database's spool and replaying it on demand (`compactobs spool status | show | replay`).

Rows wait in two places (see compactobs.store.spool): segments (`*.jsonl`), replayed by any compactobs that
reaches the database; and `rejected/`, rows the database refused for their values, and damaged lines (not
readable rows) kept as they were, each file ending with a `{"reason": ...}` line. Rejected rows are replayed
only when asked (`replay --rejected`), once their cause is fixed: each file is moved back among the segments
and replayed like one; rows still refused, and lines still damaged, are set aside again, in a new file.
Nothing here deletes a row that is not stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from compactobs.store.errors import StoreError
from compactobs.store.exporter import SqlSpanExporter, spool_for
from compactobs.store.spool import parse_line, split_lines

__all__ = ["DamagedLine", "SpoolFile", "SpoolSummary", "replay", "summary"]


@dataclass(frozen=True)
class DamagedLine:
    number: int
    """The line's number in the file it is in."""
    content: bytes
    """Its bytes, as they were (escape them to show them: compactobs.untrusted.escape)."""


@dataclass(frozen=True)
class SpoolFile:
    path: Path
    bytes: int
    calls: int
    iterations: int
    reason: str | None = None
    """Set-aside files: why the database refused the rows, or that they are damaged lines."""
    damaged: tuple[DamagedLine, ...] = ()
    """Lines that are not readable rows."""


@dataclass
class SpoolSummary:
    directory: Path
    database: str
    waiting: list[SpoolFile] = field(default_factory=list)
    set_aside: list[SpoolFile] = field(default_factory=list)
    problem: str | None = None
    """Why rows could not be spooled now (the directory cannot be written), with the fix; None if they can."""

    @property
    def waiting_calls(self) -> int:
        return sum(f.calls for f in self.waiting)

    @property
    def set_aside_calls(self) -> int:
        return sum(f.calls for f in self.set_aside)

    @property
    def damaged_lines(self) -> int:
        return sum(len(f.damaged) for f in (*self.waiting, *self.set_aside))


def _read(path: Path) -> SpoolFile:
    calls = iterations = 0
    reason = None
    damaged = []
    try:
        data = path.read_bytes()
    except OSError:
        return SpoolFile(path, 0, 0, 0)
    for number, line in split_lines(data):
        parsed = parse_line(line)
        if parsed is None:
            damaged.append(DamagedLine(number, line))
        elif isinstance(parsed, tuple):
            calls += len(parsed[0])
            iterations += len(parsed[1])
        else:
            reason = str(parsed["reason"])
    return SpoolFile(path, len(data), calls, iterations, reason, tuple(damaged))


def summary(database_url: str | None = None, spool_dir: str | os.PathLike[str] | None = None) -> SpoolSummary:
    """What waits for this database, what is set aside and why, and whether the spool can be written.
    Raises StoreError for a bad URL."""
    spool = spool_for(database_url, spool_dir)
    result = SpoolSummary(spool.directory, spool.label, problem=spool.problem())
    result.waiting = [_read(path) for path in spool.segments()]
    rejected = spool.directory / "rejected"
    if rejected.is_dir():
        result.set_aside = [_read(path) for path in sorted(rejected.glob("*.jsonl"))]
    return result


def replay(
    database_url: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    *,
    rejected: bool = False,
) -> tuple[int, int]:
    """Write what waits (and, with `rejected`, what was set aside) to the database now. Returns (calls
    written, calls set aside by this replay). Raises StoreError when the database cannot take them."""
    exporter = SqlSpanExporter(database_url, spool_dir=spool_dir)
    try:
        exporter.check()
        if rejected:
            directory = exporter.spool.directory / "rejected"
            for index, path in enumerate(sorted(directory.glob("*.jsonl")) if directory.is_dir() else []):
                # Back among the segments, oldest name first; the reason line is not a batch and is skipped.
                os.rename(path, exporter.spool.directory / f"{path.stem}-r{index:06d}.jsonl")
        if not exporter.force_flush(600_000):
            raise StoreError(
                f"{exporter.database_url} did not take every spooled row (it went away, or another process "
                "holds a segment): run `compactobs spool replay` again"
            )
        return exporter.stats.replayed, exporter.stats.rejected
    finally:
        exporter.shutdown()
