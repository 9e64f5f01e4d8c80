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
not the machine losing power.

Nothing is deleted that is not stored. A line that is not a readable batch (the last line cut short by a
kill mid-write, or bytes damaged on disk) is moved, bytes intact, to `rejected/` before its segment is
deleted, in a file `<segment>-damaged.jsonl` ending with a `{"reason": ...}` line, like rows the database
refused (see compactobs.store.spool_admin).

Directories are created 0700 (the missing parents too): what they hold is what the team spends.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from compactobs._types import JSON, JSONObject, SQLValue
from compactobs.store.engine import private_dir
from compactobs.store.mapping import CALL_COLUMNS, ITERATION_COLUMNS, Row

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per spool directory is assumed there.
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DAMAGED_REASON",
    "DEFAULT_SPOOL_MAX_BYTES",
    "ENV_SPOOL_DIR",
    "ENV_SPOOL_MAX_BYTES",
    "Replay",
    "Spool",
    "parse_line",
    "split_lines",
    "spool_key",
    "spool_max_bytes",
    "unwritable",
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
DAMAGED_REASON: Final = "damaged spool lines, kept as they were"
"""The reason of a `rejected/` file holding damaged lines."""
_DAMAGED_SUFFIX: Final = "-damaged"


@dataclass
class Replay:
    """What one replay pass did."""

    calls: int = 0
    stopped: bool = False
    """The deadline came first: segments are left."""
    locked: int = 0
    """Segments skipped because a live writer still holds them (it replays them itself)."""
    damaged: int = 0
    """Lines that were not readable rows, moved to `rejected/`."""


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


def _decode_rows(part: JSON, columns: Sequence[str]) -> list[Row]:
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


def parse_line(line: bytes) -> tuple[list[Row], list[Row]] | JSONObject | None:
    """One spool line: (call rows, iteration rows) of a batch; the record itself for a `{"reason": ...}`
    line (which ends a `rejected/` file); None for a line that is not a readable batch (damaged)."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            return None
        if "reason" in record:
            return record
        return (
            _decode_rows(record.get("calls"), CALL_COLUMNS),
            _decode_rows(record.get("iterations"), ITERATION_COLUMNS),
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        return None


def split_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every non-blank line. Split on LF alone: a line's other bytes, CR included,
    stay in it, so a damaged line is kept as it was."""
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            yield number, line


_WRITABLE: Final = "make it a directory this user can write"
_ROOM: Final = "free space on its disk"
_PROBLEMS: Final = {
    errno.ENOTDIR: ("a part of that path is a file, not a directory", _WRITABLE),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("the operation is not permitted (an immutable directory?)", _WRITABLE),
    errno.EROFS: ("the file system is read-only", _WRITABLE),
    errno.ENOSPC: ("the disk is full", _ROOM),
    errno.EDQUOT: ("the disk quota is exceeded", _ROOM),
}


def unwritable(directory: Path, err: OSError) -> str:
    """What is wrong with a spool that cannot be written, and how to fix it: one line."""
    what, fix = _PROBLEMS.get(err.errno or 0, (err.strerror or str(err), _WRITABLE))
    where = f" at {err.filename}" if err.filename and str(err.filename) != str(directory) else ""
    return (
        f"the spool {directory} cannot be written ({what}{where}): {fix}, "
        f"or move the spool with {ENV_SPOOL_DIR} or instrument(spool_dir=...)/configure(spool_dir=...)"
    )


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
        record: JSONObject = {"v": _VERSION}
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

    def waiting_calls(self) -> Iterator[dict[str, SQLValue]]:
        """Every call row waiting in the spool (all processes' segments, read without locking them), as
        {column: value}: what the store does not hold yet. Read-only; a segment replayed meanwhile is
        skipped."""
        for path in self.segments():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            for _, line in split_lines(data):
                parsed = parse_line(line)
                if isinstance(parsed, tuple):
                    for row in parsed[0]:
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

    def problem(self) -> str | None:
        """Why rows could not be spooled here now (`unwritable`), or None: the directory, or its nearest
        existing parent, must be a directory in which a file can be created. Leaves nothing behind (the
        probe file has no name, or is removed at once)."""
        existing = self.directory
        try:
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            return unwritable(self.directory, err)
        return None

    def _set_aside_damaged(self, segment: Path, damaged: list[tuple[int, bytes]]) -> Path:
        """Move a segment's damaged lines, bytes intact, to `rejected/`, before the segment is deleted."""
        directory = private_dir(self.directory / "rejected")
        path = directory / f"{segment.stem}{_DAMAGED_SUFFIX}.jsonl"
        reason = {"reason": DAMAGED_REASON, "segment": segment.name, "lines": [n for n, _ in damaged]}
        content = b"".join(line + b"\n" for _, line in damaged) + json.dumps(reason).encode() + b"\n"
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        log.warning(
            "compactobs: %d damaged line(s) of the spool segment %s (not readable rows: a kill mid-write, or "
            "damage on disk) moved as they were to %s: see `compactobs spool show --rejected`",
            len(damaged),
            segment.name,
            path,
        )
        return path

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
                damaged: list[tuple[int, bytes]] = []
                for number, line in split_lines(data):
                    parsed = parse_line(line)
                    if parsed is None:
                        damaged.append((number, line))
                        continue
                    if not isinstance(parsed, tuple):
                        continue  # a set-aside file's reason line, replayed with `replay --rejected`
                    chunk_calls.extend(parsed[0])
                    chunk_iterations.extend(parsed[1])
                    if len(chunk_calls) >= REPLAY_CHUNK_CALLS:
                        write(chunk_calls, chunk_iterations)
                        result.calls += len(chunk_calls)
                        chunk_calls, chunk_iterations = [], []
                if chunk_calls or chunk_iterations:
                    write(chunk_calls, chunk_iterations)
                    result.calls += len(chunk_calls)
                if damaged:
                    # Raises OSError if it cannot: then the segment stays, and is replayed again (harmless).
                    self._set_aside_damaged(path, damaged)
                    result.damaged += len(damaged)
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
