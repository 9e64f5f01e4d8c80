"""Where the spans are: a ClickHouse server over HTTP (clickhouse-connect) or chdb, the in-process engine.

```python
source = open_source("clickhouse://default@localhost:8123/otel", table="otel_traces")
source = open_source("chdb:///var/lib/compactobs-chdb")        # a chdb data directory
rows = source.rows("SELECT 1 AS one")                          # [{'one': 1}]
```

Both connections run the same SQL and read its results the same way: `FORMAT JSONCompactEachRowWithNames
AndTypes`, 64-bit integers as numbers and decimals as strings (so money comes back as an exact Decimal),
each value converted by its column's ClickHouse type. A problem a user can fix (a bad URL, a server that
does not answer, a missing table) raises `StoreError`, one line, as the SQL store does.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from compactobs.store.errors import StoreError

if TYPE_CHECKING:
    from compactobs._types import JSON, SQLValue

__all__ = [
    "DEFAULT_TABLE",
    "SCHEMES",
    "ClickHouseClient",
    "is_clickhouse_url",
    "join",
    "quote",
    "records",
    "settings_clause",
    "system_table_condition",
]

SCHEMES: Final = ("clickhouse", "clickhouse+http", "clickhouse+https", "chdb")
DEFAULT_TABLE: Final = "otel_traces"
"""The table the Collector's ClickHouse exporter writes spans to, unless its `traces_table_name` says."""
_FORMAT: Final = "JSONCompactEachRowWithNamesAndTypes"
_SETTINGS: Final = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_decimals": 1,
    # inf and nan as "inf" and "nan", which the float columns' conversion reads (unquoted they are null).
    "output_format_json_quote_denormals": 1,
}
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_EXAMPLES: Final = "e.g. clickhouse://user@host:8123/database or chdb:///path/to/chdb-directory"

log = logging.getLogger(__name__)


def is_clickhouse_url(url: str | None) -> bool:
    """Whether `--db` names a ClickHouse source rather than the SQL store."""
    return bool(url) and url.split("://", 1)[0].lower() in SCHEMES  # type: ignore[union-attr]


def quote(value: object) -> str:
    """A literal for ClickHouse SQL: strings quoted and escaped, numbers as they are, None as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _unwrap(kind: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while kind.startswith(wrapper):
            kind = kind[len(wrapper) : -1]
    return kind


def _same(value: JSON) -> SQLValue:
    return value


def _integer(value: JSON) -> SQLValue:
    return None if value is None else int(value)


def _converter(kind: str) -> Callable[[JSON], SQLValue]:
    """The function that turns a JSON value into the Python value of ClickHouse type `kind` (found once per
    column of a result, not once per value: at 10M calls the per-value lookup was half a report's time)."""
    kind = _unwrap(kind)
    if kind.startswith("Array("):
        inner = _converter(kind[len("Array(") : -1])
        return lambda value: None if value is None else [inner(item) for item in value]
    if kind.startswith(("Int", "UInt")):
        return _integer  # JSON numbers already under output_format_json_quote_64bit_integers=0
    if kind.startswith("Decimal"):
        cast: Callable[[JSON], SQLValue] = Decimal
    elif kind.startswith("Float"):
        cast = float
    elif kind == "Bool":
        cast = bool
    else:
        return _same
    return lambda value: None if value is None else cast(value)


_CHUNK_ROWS: Final = 10_000
"""Rows parsed at a time: the per-value work stays in C, the Python objects held are a chunk's."""


def _convert(kinds: Sequence[str], lines: Sequence[str]) -> list[tuple[SQLValue, ...]]:
    """Rows of a JSONCompactEachRow result's `lines`, parsed as one JSON document and each column converted
    by its type in one pass (the per-value work of a large result in C)."""
    data = json.loads("[" + ",".join(lines) + "]")
    if not data:
        return []
    columns = [list(column) for column in zip(*data, strict=True)]
    for index, kind in enumerate(kinds):
        convert = _converter(kind)
        if convert is _integer:
            # Quoted only where the quoting setting did not apply (a server that dropped it): then cast.
            first = next((value for value in columns[index] if value is not None), None)
            convert = _same if not isinstance(first, str) else _integer
        if convert is not _same:
            columns[index] = list(map(convert, columns[index]))
    return list(zip(*columns, strict=True))


def _lines(text: str) -> Iterator[str]:
    """The non-blank lines of `text`, sliced one at a time (no copy of it all: a result may be large)."""
    start, size = 0, len(text)
    while start < size:
        end = text.find("\n", start)
        end = size if end < 0 else end
        line = text[start:end]
        start = end + 1
        if line.strip():
            yield line


def _parsed(text: str) -> tuple[list[str], Iterator[tuple[SQLValue, ...]]]:
    """(column names, the rows as tuples, parsed `_CHUNK_ROWS` at a time as they are read) of a
    JSONCompactEachRowWithNamesAndTypes result."""
    lines = _lines(text)
    header = list(itertools.islice(lines, 2))
    if len(header) < 2:
        return [], iter(())
    names, kinds = json.loads(header[0]), json.loads(header[1])

    def rows() -> Iterator[tuple[SQLValue, ...]]:
        while chunk := list(itertools.islice(lines, _CHUNK_ROWS)):
            yield from _convert(kinds, chunk)

    return names, rows()


def records(text: str) -> list[dict[str, SQLValue]]:
    """A JSONCompactEachRowWithNamesAndTypes result as a dict per row, values by column type."""
    names, rows = _parsed(text)
    return [dict(zip(names, values, strict=True)) for values in rows]


class ClickHouseClient:
    """A connection to a ClickHouse database holding the Collector's spans table: SQL in, typed rows out.
    The reports read it through `source.ClickHouseSource`, opened by `open_source`; close it when done."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE) -> None:
        if not _IDENTIFIER.match(table):
            raise StoreError(
                f"invalid table name {table!r}: use a name such as otel_traces or db.otel_traces"
            )
        self.url = url
        self.table = table
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise StoreError(f"not a ClickHouse URL {url!r}: {_EXAMPLES}")
        self.engine_name = "chdb" if scheme == "chdb" else "clickhouse"
        self._session: Any = None
        self._client: Any = None
        self.typed = False
        """Whether `compactobs clickhouse setup` made the typed tables the reports then read."""
        self.turns = False
        """Whether setup's turns table (the calls in conversation order) is there too."""
        self._slots: bool | None = None
        """Whether setup's per-slot sums are there and refreshed (None: not looked at yet)."""
        if scheme == "chdb":
            self._open_chdb(parts.path or "")
        else:
            self._open_http(parts, secure=scheme == "clickhouse+https" or "secure=true" in parts.query)

    # -- connections -------------------------------------------------------------------------------------

    def _open_chdb(self, path: str) -> None:
        try:
            from chdb import session
        except ImportError:
            raise StoreError("chdb is not installed: pip install 'compactobs[clickhouse]'") from None
        directory = Path(unquote(path)) if path not in ("", "/") else None
        if directory is not None and not directory.is_dir():
            raise StoreError(f"no chdb directory at {directory}: check --db (chdb:///path/to/directory)")
        try:
            self._session = session.Session(str(directory)) if directory is not None else session.Session()
        except Exception as err:  # e.g. another process holds the directory's lock
            raise StoreError(f"cannot open chdb at {directory}: {_first_line(err)}") from None

    def _open_http(self, parts: SplitResult, secure: bool) -> None:
        try:
            import clickhouse_connect
        except ImportError:
            raise StoreError(
                "clickhouse-connect is not installed: pip install 'compactobs[clickhouse]'"
            ) from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        database = parts.path.strip("/") or query.get("database") or "default"
        try:
            port = parts.port
        except ValueError:
            raise StoreError(f"malformed ClickHouse URL {self.shown_url!r}: {_EXAMPLES}") from None
        # clickhouse-connect logs a failed first request besides raising it: the error below says it once.
        driver_log = logging.getLogger("clickhouse_connect")
        level = driver_log.level
        driver_log.setLevel(logging.CRITICAL)
        try:
            self._client = clickhouse_connect.get_client(
                host=parts.hostname or "localhost",
                port=port or (8443 if secure else 8123),
                username=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                database=database,
                secure=secure,
                connect_timeout=5,
                # No server session: queries carry no state between them, and a session takes one at a time.
                autogenerate_session_id=False,
            )
        except Exception as err:  # clickhouse-connect raises its own errors and the driver's
            raise StoreError(f"cannot reach ClickHouse at {self.shown_url}: {_first_line(err)}") from None
        finally:
            driver_log.setLevel(level)

    @property
    def shown_url(self) -> str:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", self.url)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._session is not None:
            self._session.close()
        self._client = self._session = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- queries -----------------------------------------------------------------------------------------

    def _text(self, sql: str, settings: Mapping[str, object] | None = None) -> str:
        merged = {**_SETTINGS, **(settings or {})}
        try:
            if self._session is not None:
                result = self._session.query(sql + settings_clause(merged), _FORMAT)
                return result.data() if hasattr(result, "data") else str(result)
            raw = self._client.raw_query(sql, settings=merged, fmt=_FORMAT)
            return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError(f"ClickHouse query failed on {self.shown_url}: {_first_line(err)}") from None

    def rows(self, sql: str, settings: Mapping[str, object] | None = None) -> list[dict[str, SQLValue]]:
        """The result of a SELECT (without FORMAT or SETTINGS: pass `settings`), a dict per row, values by
        column type (Decimal for money)."""
        return records(self._text(sql, settings))

    def tuples(self, sql: str, settings: Mapping[str, object] | None = None) -> list[tuple[SQLValue, ...]]:
        """As `rows`, each row a tuple in the SELECT's column order."""
        return list(self.stream(sql, settings))

    def stream(
        self, sql: str, settings: Mapping[str, object] | None = None
    ) -> Iterator[tuple[SQLValue, ...]]:
        """As `tuples`, the query run now and its rows made as they are iterated: the result's text is
        held, not every row's values at once."""
        return _parsed(self._text(sql, settings))[1]

    def execute(self, sql: str) -> None:
        """A statement without a result (DDL, INSERT ... SELECT)."""
        try:
            if self._session is not None:
                self._session.query(sql)
            else:
                self._client.command(sql)
        except Exception as err:
            raise StoreError(f"ClickHouse statement failed on {self.shown_url}: {_first_line(err)}") from None

    def exists(self, table: str) -> bool:
        """Whether `table` (optionally `db.table`) exists."""
        where = system_table_condition(table, "name")
        return bool(self.rows(f"SELECT count() AS n FROM system.tables WHERE {where}")[0]["n"])

    def check_table(self) -> None:
        """Raises StoreError, saying what to do, when the spans table is missing."""
        if not self.exists(self.table):
            raise StoreError(
                f"no table {self.table!r} in {self.shown_url}: point the Collector's ClickHouse exporter at "
                "this "
                "database, or name the spans table with --clickhouse-table"
            )


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(err).__name__


def system_table_condition(table: str, column: str) -> str:
    """The condition on a system table's rows (`column`: `name` in system.tables, `table` in system.columns)
    that select `table`, optionally `db.table`, else in the current database."""
    database, _, name = table.rpartition(".")
    in_database = quote(database) if database else "currentDatabase()"
    return f"{column} = {quote(name)} AND database = {in_database}"


def settings_clause(settings: Mapping[str, object] | None) -> str:
    return "" if not settings else " SETTINGS " + ", ".join(f"{k} = {quote(v)}" for k, v in settings.items())


def join(parts: Sequence[str], sep: str = ", ") -> str:
    return sep.join(part for part in parts if part)
