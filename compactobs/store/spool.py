"""The on-disk spool: rows the database could not take, kept until it can.

Rows are lists of JSON values (see compactobs.store.mapping), so a line holds them as they are.

Layout: one directory per database (named by a hash of its URL, password left out), holding append-only
JSON-lines segments `<time_ns>-<pid>-<seq>.jsonl`; each line is one exported batch:
`{"v": 1, "calls": {"columns": [...], "rows": [[...], ...]}, "iterations": {...}}`.

Concurrency, between threads and processes sharing the data directory:
- a writer holds an exclusive `flock` on the segment it appends to, from creation (it is created under a
  temporary name, locked, then renamed) until it seals it;
- a drainer replays only segments it can lock, so never one still being written; the segment of a
  process that died (even by SIGKILL) is unlocked by the kernel and replayed by the next drainer;
- a segment is deleted only after all its rows are committed. A replay cut short (database gone again,
  process killed) starts that segment over, which the idempotent upsert makes harmless.

Lines are written with one `write` each, without fsync: the spool survives the process being killed,
not the machine losing power. A truncated last line (a kill mid-write) is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from compactobs.store.engine import private_dir
from compactobs.store.mapping import CALL_COLUMNS, ITERATION_COLUMNS, Row

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per spool directory is assumed there.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_SPOOL_MAX_BYTES",
    "ENV_SPOOL_DIR",
    "ENV_SPOOL_MAX_BYTES",
    "Replay",
    "Spool",
    "spool_key",
    "spool_max_bytes",
]

log = logging.getLogger("compactobs.store")

DEFAULT_SPOOL_MAX_BYTES: Final = 256 * 1024 * 1024
ENV_SPOOL_MAX_BYTES: Final = "COMPACTOBS_SPOOL_MAX_BYTES"
ENV_SPOOL_DIR: Final = "COMPACTOBS_SPOOL_DIR"
SEGMENT_BYTES: Final = 4 * 1024 * 1024
"""A segment is sealed (and can be replayed by anyone) once it grows past this."""
REPLAY_CHUNK_CALLS: Final = 2000
"""Lines are replayed in transactions of about this many calls."""

_VERSION = 1


@dataclass
class Replay:
    """What one replay pass did."""

    calls: int = 0
    stopped: bool = False
    """The deadline came first: segments are left."""
    locked: int = 0
    """Segments skipped because a live writer still holds them (it replays them itself)."""


def spool_max_bytes(given: int | None = None) -> int:
    """The spool's bound: `given`, else `COMPACTOBS_SPOOL_MAX_BYTES` (bytes, `k`/`M`/`G` suffixes taken),
    else 256 MiB. A value that is not a size is reported once and the default used."""
    if given is not None:
        return given
    raw = os.environ.get(ENV_SPOOL_MAX_BYTES, "").strip()
    if not raw:
        return DEFAULT_SPOOL_MAX_BYTES
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    scale = units.get(raw[-1].lower(), 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = int(float(number) * scale)
    except ValueError:
        value = -1
    if value <= 0:
        log.warning(
            "compactobs: %s=%r is not a size in bytes (e.g. 268435456 or 256M): using %d",
            ENV_SPOOL_MAX_BYTES,
            raw,
            DEFAULT_SPOOL_MAX_BYTES,
        )
        return DEFAULT_SPOOL_MAX_BYTES
    return value


def spool_key(display_url: str) -> str:
    """The directory name of a database's spool: stable, and safe in a path."""
    return hashlib.sha256(display_url.encode()).hexdigest()[:16]


def _lock(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _decode_rows(part: Any, columns: Sequence[str]) -> list[Row]:
    """Rows of one table from a spooled line, rebuilt in the current column order (columns the line does not
    have are NULL, so a spool written by an older compactobs still replays)."""
    if not part:
        return []
    names: list[str] = part["columns"]
    if tuple(names) == columns:
        return list(part["rows"])
    position = {name: i for i, name in enumerate(names)}
    picks = [position.get(name) for name in columns]
    return [[None if pick is None else raw[pick] for pick in picks] for raw in part["rows"]]


class Spool:
    """Append-only, size-bounded JSON-lines segments in `directory`, replayed oldest first.

    Appending is thread-safe (the exporter's thread and, when the processor's queue is full, the thread
    that ends spans both append); replaying is done by one thread at a time, under the exporter's lock.
    """

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_SPOOL_MAX_BYTES, label: str = "") -> None:
        self.directory = directory
        self.label = label
        """The database these rows are for (password hidden), written beside them for whoever looks."""
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._segment: Path | None = None
        self._segment_size = 0
        self._seq = itertools.count()
        self._bytes: int | None = None  # lazily measured; then tracked
        self._full_warned = False
        self._mutex = threading.RLock()

    # --- writing -----------------------------------------------------------------------------------

    def append(self, calls: list[Row], iterations: list[Row]) -> bool:
        """Keep one batch. False when the spool is full and the batch was dropped (logged)."""
        if not calls and not iterations:
            return True
        line = self._encode(calls, iterations)
        with self._mutex:
            return self._append_line(line)

    def _append_line(self, line: bytes) -> bool:
        if self.size() + len(line) > self.max_bytes:
            self._bytes = None  # others may have drained since we last looked
            if self.size() + len(line) > self.max_bytes:
                if not self._full_warned:
                    self._full_warned = True
                    log.warning(
                        "compactobs: the spool %s is full (%d MiB): dropping new rows until the database is "
                        "back (raise spool_max_bytes in instrument()/configure() or "
                        "COMPACTOBS_SPOOL_MAX_BYTES, or fix the database)",
                        self.directory,
                        self.max_bytes // (1024 * 1024),
                    )
                return False
        self._full_warned = False
        fd = self._writable()
        view = memoryview(line)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        self._segment_size += len(line)
        self._bytes = self.size() + len(line)
        if self._segment_size >= SEGMENT_BYTES:
            self.seal()
        return True

    def _encode(self, calls: list[Row], iterations: list[Row]) -> bytes:
        record: dict[str, Any] = {"v": _VERSION}
        if calls:
            record["calls"] = {"columns": CALL_COLUMNS, "rows": calls}
        if iterations:
            record["iterations"] = {"columns": ITERATION_COLUMNS, "rows": iterations}
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _writable(self) -> int:
        if self._fd is not None:
            return self._fd
        private_dir(self.directory)
        about = self.directory / "database.txt"
        if self.label and not about.exists():
            about.write_text(self.label + "\n")
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}.jsonl"
        temporary = self.directory / f".{name}.tmp"
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o600)
        # Lock before the name is visible, so no drainer ever sees (and deletes) a segment still in use.
        _lock(fd)
        final = self.directory / name
        os.rename(temporary, final)
        self._fd, self._segment, self._segment_size = fd, final, 0
        return fd

    def seal(self) -> None:
        """Close the segment being written: from now on any drainer may replay it."""
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self._segment, self._segment_size = None, None, 0

    # --- reading -----------------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.jsonl"))
        except OSError:
            return []

    def size(self) -> int:
        """Bytes held (all processes' segments), measured once and then tracked."""
        if self._bytes is None:
            total = 0
            for path in self.segments():
                with contextlib.suppress(OSError):  # replayed and deleted meanwhile
                    total += path.stat().st_size
            self._bytes = total
        return self._bytes

    def waiting_calls(self) -> Iterator[dict[str, Any]]:
        """Every call row waiting in the spool (all processes' segments, read without locking them), as
        {column: value}: what the store does not hold yet. Read-only; a segment replayed meanwhile is
        skipped."""
        for path in self.segments():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for call_rows, _ in self._lines(data, path):
                for row in call_rows:
                    yield dict(zip(CALL_COLUMNS, row, strict=True))

    def has_replayable(self) -> bool:
        """Whether a segment is waiting that this process could replay now (not one being written)."""
        for path in self.segments():
            if path == self._segment:
                return True
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                if _lock(fd):
                    return True
            finally:
                os.close(fd)
        return False

    def _lines(self, data: bytes, path: Path) -> Iterator[tuple[list[Row], list[Row]]]:
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield (
                    _decode_rows(record.get("calls"), CALL_COLUMNS),
                    _decode_rows(record.get("iterations"), ITERATION_COLUMNS),
                )
            except (ValueError, KeyError, TypeError, IndexError):
                # A line cut short by a kill mid-write, or damaged: the rest of the segment still counts.
                log.warning("compactobs: skipping unreadable line %d of spool segment %s", number, path)

    def replay(self, write: Callable[[list[Row], list[Row]], None], deadline: float | None = None) -> Replay:
        """Write every replayable segment, oldest first, through `write` (which commits or raises).

        The deadline is checked between segments. Segments locked by a live writer are left to it. An
        exception from `write` propagates; the segment it was replaying stays for the next time.
        """
        self.seal()
        result = Replay()
        for path in self.segments():
            if deadline is not None and time.monotonic() > deadline:
                result.stopped = True
                return result
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # replayed and deleted by another process meanwhile
            try:
                if not _lock(fd):
                    result.locked += 1
                    continue
                if os.fstat(fd).st_nlink == 0:
                    continue  # deleted by the drainer that held the lock before us
                with os.fdopen(os.dup(fd), "rb") as handle:
                    data = handle.read()
                chunk_calls: list[Row] = []
                chunk_iterations: list[Row] = []
                for calls, iterations in self._lines(data, path):
                    chunk_calls.extend(calls)
                    chunk_iterations.extend(iterations)
                    if len(chunk_calls) >= REPLAY_CHUNK_CALLS:
                        write(chunk_calls, chunk_iterations)
                        result.calls += len(chunk_calls)
                        chunk_calls, chunk_iterations = [], []
                if chunk_calls or chunk_iterations:
                    write(chunk_calls, chunk_iterations)
                    result.calls += len(chunk_calls)
                path.unlink()
                with self._mutex:
                    if self._bytes is not None:
                        self._bytes = max(0, self._bytes - len(data))
            finally:
                os.close(fd)
        return result

    def quarantine(self, calls: list[Row], iterations: list[Row], reason: str) -> Path:
        """Keep rows the database rejects (not for want of a connection) aside, out of the replay."""
        directory = private_dir(self.directory / "rejected")
        path = directory / f"{time.time_ns():020d}-{os.getpid()}.jsonl"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            os.write(fd, self._encode(calls, iterations))
            os.write(fd, (json.dumps({"reason": reason}) + "\n").encode())
        finally:
            os.close(fd)
        return path

    def close(self) -> None:
        self.seal()
