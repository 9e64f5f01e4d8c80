"""Writing row batches: the dialect's INSERT ... ON CONFLICT DO NOTHING, compiled once, fed rows directly.

DO NOTHING, not DO UPDATE: a span never changes once ended, so a second copy (a retried export, a
replayed spool segment) carries the same values, and a replay never overwrites what `compactobs reprice`
wrote since.

The statements are SQLAlchemy's (the dialect's `insert`), compiled once to driver SQL; rows go to the
driver without SQLAlchemy's per-row bind processing, which would cost more than the insert itself.
- SQLite: the upsert with a multi-row VALUES list (see _SqliteStatement).
- PostgreSQL: the rows are COPYed (text format) into a session-local staging table, then moved with one
  `INSERT INTO calls SELECT ... ON CONFLICT DO NOTHING`. Measured on a 2-core machine, row-at-a-time
  INSERTs spend ~100 us of server CPU per call (four rows); COPY + one INSERT ... SELECT spends about half,
  and a fraction of the client CPU. The staging table is created in each transaction if missing
  (`IF NOT EXISTS`), so it also works behind a transaction-pooling proxy; ON COMMIT DELETE ROWS empties it.
  psycopg 3 streams rows with its `cursor.copy`; psycopg2 has no row-level COPY, so the rows are written
  in COPY's text format here and sent with `copy_expert`. Same statements, same rows stored.

One exception to "never changes": Claude Code's calls (`supersede`), which `collect` and `import
claude-code` may send again with more (a fuller snapshot, a compaction's outcome that came in a later batch).
In the same transaction as the insert, a stored copy that is strictly less complete is deleted first, so the
insert keeps the fuller one, and a compaction Claude Code reported without its call is kept once beside the
call that carries it (see `supersede`); nothing is lost if the transaction fails, a replay changes nothing.
"""

from __future__ import annotations

import io
import itertools
import sqlite3
from typing import Any, Protocol

from sqlalchemy import Column, ColumnElement, Connection, MetaData, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import psycopg

from compactobs import semconv as t
from compactobs.store.mapping import CALL_COLUMNS, ITERATION_COLUMNS, Row
from compactobs.store.models import calls, iterations

__all__ = ["RowWriter", "completeness", "supersede", "writer_for"]

_TABLES = ((calls, CALL_COLUMNS), (iterations, ITERATION_COLUMNS))


class RowWriter(Protocol):
    def write(self, connection: Connection, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        """Add the rows inside the connection's transaction (the caller commits)."""


_ID, _SERVICE, _OUTPUT, _TRIGGER = (
    CALL_COLUMNS.index(name) for name in ("call_id", "service_name", "output_tokens", "compaction_trigger")
)
_ITERATION_CALL = ITERATION_COLUMNS.index("call_id")
_CONVERSATION, _INPUT, _COMPACTIONS, _CONTEXT = (
    CALL_COLUMNS.index(name)
    for name in ("conversation_id", "input_tokens", "compactions_count", "context_tokens")
)


def completeness(output_tokens: object, compaction_trigger: object) -> tuple[int, int]:
    """How complete a copy of a call is: its output tokens (a streamed snapshot grows), then whether it
    carries its compaction's outcome (the context it compacted at). A copy replaces another only when
    strictly more complete, so the order copies arrive in does not matter and sending one again is a no-op."""
    output = output_tokens if isinstance(output_tokens, int) and not isinstance(output_tokens, bool) else -1
    return output, int(compaction_trigger is not None)


def supersede(
    connection: Connection, call_rows: list[Row], iteration_rows: list[Row]
) -> tuple[list[Row], list[Row]]:
    """Inside the write's transaction: delete the stored Claude Code calls (with their iterations) that a
    row of `call_rows` holds more completely (the same call id, or a compaction stored on its own that a
    compact call with its outcome is: `_standalone_twins`), and return `call_rows` with only the most
    complete row of each Claude Code call id (the insert keeps the first). Other services' calls are never
    written again with other values, so they cost nothing here. A compaction of its own that a stored
    compact call already is (`_paired_twin`) is left out, with its iterations: an event sent again after its
    call was given its outcome, a boundary imported after `collect` paired it."""
    fuller: dict[str, tuple[tuple[int, int], Row]] = {}
    for row in call_rows:
        if row[_SERVICE] == t.SERVICE_CLAUDE_CODE:
            rank = completeness(row[_OUTPUT], row[_TRIGGER])
            held = fuller.get(row[_ID])
            if held is None or rank >= held[0]:
                fuller[row[_ID]] = (rank, row)
    if not fuller:
        return call_rows, iteration_rows
    c = calls.c
    ids = list(fuller)
    stale = [
        stored.call_id
        for start in range(0, len(ids), 500)
        for stored in connection.execute(
            select(c.call_id, c.output_tokens, c.compaction_trigger)
            .where(c.call_id.in_(ids[start : start + 500]))
            .with_for_update()
        )
        if completeness(stored.output_tokens, stored.compaction_trigger) < fuller[stored.call_id][0]
    ]
    stale += _standalone_twins(connection, [row for _, row in fuller.values()])
    for start in range(0, len(stale), 500):
        chunk = stale[start : start + 500]
        connection.execute(delete(iterations).where(iterations.c.call_id.in_(chunk)))
        connection.execute(delete(calls).where(c.call_id.in_(chunk)))
    paired = {row[_ID] for _, row in fuller.values() if _paired_twin(connection, row)}
    kept = {id(row) for _, row in fuller.values() if row[_ID] not in paired}
    call_rows = [row for row in call_rows if row[_SERVICE] != t.SERVICE_CLAUDE_CODE or id(row) in kept]
    if paired:
        iteration_rows = [row for row in iteration_rows if row[_ITERATION_CALL] not in paired]
    return call_rows, iteration_rows


def _same_compaction(row: Row) -> list[ColumnElement[bool]] | None:
    """The rule by which two stored rows are one Claude Code compaction: a compact call (tokens) and a
    compaction seen without its call (no tokens: a `compaction` event, a transcript's boundary) of the same
    session, trigger and context after. None for a row that is neither, or carries no outcome."""
    if not row[_COMPACTIONS] or row[_TRIGGER] is None:
        return None
    if row[_CONVERSATION] is None or row[_CONTEXT] is None:
        return None
    c = calls.c
    return [
        c.service_name == t.SERVICE_CLAUDE_CODE,
        c.conversation_id == row[_CONVERSATION],
        c.compaction_trigger == row[_TRIGGER],
        c.context_tokens == row[_CONTEXT],
        c.compactions_count > 0,
        c.call_id != row[_ID],
    ]


def _paired_twin(connection: Connection, row: Row) -> bool:
    """Whether `row` is a compaction of its own that a stored compact call already carries."""
    same = _same_compaction(row)
    if row[_INPUT] or same is None:
        return False
    found = connection.execute(select(calls.c.call_id).where(*same, calls.c.input_tokens > 0).limit(1))
    return found.first() is not None


def _standalone_twins(connection: Connection, rows: list[Row]) -> list[str]:
    """The stored compactions of their own that a compact call of `rows`, given its outcome, is.
    Compactions are rare: a query each."""
    twins: list[str] = []
    for row in rows:
        same = _same_compaction(row)
        if row[_INPUT] and same is not None:
            twins += connection.scalars(select(calls.c.call_id).where(*same, calls.c.input_tokens == 0)).all()
    return twins


def _keys(table: Table) -> list[str]:
    return [column.name for column in table.primary_key.columns]


class _SqliteStatement:
    """The upsert for one table, with VALUES for 1, 4, 16, 64 or 256 rows: a batch is written as a few
    multi-row statements instead of one statement per row. As fast as `executemany`, and the sqlite3
    module releases the GIL once per statement instead of once per row: with `executemany`, a CPU-busy
    application thread takes the GIL back at every row and a batch of 2,048 spans was measured taking 3 s
    instead of 0.05 s, long enough for the processor's queue to overflow."""

    def __init__(self, table: Table, columns: tuple[str, ...]) -> None:
        compiled = (
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=_keys(table))
            .compile(dialect=sqlite.dialect(), column_keys=list(columns))
        )
        # Rows are positional: the statement must take them in table-column order.
        assert compiled.positiontup == list(columns)
        head, rest = str(compiled).split(" VALUES ", 1)
        values, conflict = rest.split(" ON CONFLICT ", 1)
        assert values == "(" + ", ".join("?" * len(columns)) + ")"
        # SQLite before 3.32 allows 999 parameters per statement, later ones 32,766.
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
        self._sizes = [size for size in (256, 64, 16, 4, 1) if size * len(columns) <= limit]
        self._sql = {
            size: f"{head} VALUES {', '.join([values] * size)} ON CONFLICT {conflict}" for size in self._sizes
        }

    def execute(self, raw: sqlite3.Connection, rows: list[Row]) -> None:
        start = 0
        for size in self._sizes:
            sql = self._sql[size]
            while len(rows) - start >= size:
                raw.execute(sql, list(itertools.chain.from_iterable(rows[start : start + size])))
                start += size


class _SqliteWriter:
    def __init__(self) -> None:
        self._statements = [_SqliteStatement(table, columns) for table, columns in _TABLES]

    def write(self, connection: Connection, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        # The raw connection, inside the transaction SQLAlchemy began (BEGIN IMMEDIATE) and will commit.
        raw: Any = connection.connection.driver_connection
        for statement, rows in zip(self._statements, (call_rows, iteration_rows), strict=True):
            if rows:
                statement.execute(raw, rows)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: object) -> str:
    """One value in COPY's text format (what psycopg 3's `write_row` sends for these types)."""
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, float):
        return repr(value)
    return str(value).translate(_COPY_ESCAPES)


def _copy_lines(rows: list[Row]) -> io.StringIO:
    return io.StringIO("".join("\t".join(map(_copy_text, row)) + "\n" for row in rows))


class _PostgresWriter:
    def __init__(self, driver: str = "psycopg") -> None:
        self._psycopg2 = driver == "psycopg2"
        dialect = psycopg.dialect()
        quote = dialect.identifier_preparer.quote
        self._steps: list[tuple[str, str, str]] = []
        for table, columns in _TABLES:
            stage = Table(
                f"compactobs_stage_{table.name}", MetaData(), *(Column(c.name, c.type) for c in table.columns)
            )
            create = (
                f"CREATE TEMP TABLE IF NOT EXISTS {quote(stage.name)} "
                f"(LIKE {quote(table.name)}) ON COMMIT DELETE ROWS"
            )
            copy = f"COPY {quote(stage.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
            move = (
                postgresql.insert(table)
                .from_select(list(columns), select(*(stage.c[c] for c in columns)))
                .on_conflict_do_nothing(index_elements=_keys(table))
                .compile(dialect=dialect)
            )
            self._steps.append((create, copy, str(move)))

    def write(self, connection: Connection, call_rows: list[Row], iteration_rows: list[Row]) -> None:
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor:
            for (create, copy, move), rows in zip(self._steps, (call_rows, iteration_rows), strict=True):
                if not rows:
                    continue
                cursor.execute(create)
                if self._psycopg2:
                    cursor.copy_expert(copy, _copy_lines(rows))
                else:
                    with cursor.copy(copy) as stream:
                        for row in rows:
                            stream.write_row(row)
                cursor.execute(move)


def writer_for(backend: str, driver: str = "psycopg") -> RowWriter:
    """The writer for a backend ("sqlite" or "postgresql") and, for PostgreSQL, its driver."""
    return _SqliteWriter() if backend == "sqlite" else _PostgresWriter(driver)
