"""The names of the values whose type comes from outside compactobs, and is loose there.

compactobs types its own values. `Any` is left only where the outside world gives no type, and there it
goes by one of the names below, so that a reader (and `tests/test_types.py`, which counts the bare
`Any` left in the package) can tell "untyped outside" from "not typed yet".

A leaf: imports nothing of compactobs. The SQLAlchemy and OpenTelemetry names are read under
`TYPE_CHECKING` only (the aliases naming them are strings), so that a module importing these names loads
neither; the modules `import compactobs` loads import them under `TYPE_CHECKING` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.util.types import AttributeValue
    from sqlalchemy import ColumnElement, Label, Row, Select

__all__ = [
    "JSON",
    "JSONObject",
    "OTelAttributes",
    "SDKObject",
    "SQLExpr",
    "SQLLabel",
    "SQLQuery",
    "SQLRecord",
    "SQLRow",
    "SQLValue",
]

JSON: TypeAlias = Any
"""A value decoded from JSON or TOML (`json.loads`, a config file, an HTTP or OTLP body, a Claude Code
transcript), or one about to be encoded: its shape is checked by the code that reads it, field by
field, not by the type checker."""

JSONObject: TypeAlias = "dict[str, JSON]"
"""A JSON object: a decoded one whose fields are read one by one, or a payload being built."""

SDKObject: TypeAlias = Any
"""An object the anthropic SDK hands over loosely typed: a response, content block, usage or model
object (pydantic models whose fields vary by SDK version and beta), a raw HTTP response, a client, or a
keyword the SDK forwards. compactobs reads such objects through `usage.field_of`, which never raises."""

OTelAttributes: TypeAlias = "dict[str, AttributeValue]"
"""The attributes of a span, an event or a metric point, as OpenTelemetry types them."""

SQLExpr: TypeAlias = "ColumnElement[Any]"
"""A SQL expression whose Python type SQLAlchemy does not track (sums, `case`, `coalesce` and arithmetic
over columns of mixed types, a dialect's own functions). Typed ones say their type: `ColumnElement[bool]`."""

SQLLabel: TypeAlias = "Label[Any]"
"""Such an expression named (`.label(...)`): a measure as a column of a query."""

SQLQuery: TypeAlias = "Select[Any]"
"""A SELECT whose columns are chosen at run time (a report's measures, a dashboard panel): its row tuple
has no static type."""

SQLRow: TypeAlias = "Row[Any]"
"""A row of such a SELECT, or of a textual query: read by column name."""

SQLRecord: TypeAlias = "Mapping[Any, Any]"
"""A result row read by column name: SQLAlchemy's `RowMapping` (keyed by a name or a column) or a dict a
ClickHouse client decoded. Its values are what the driver gives (int, Decimal, str, datetime, None)."""

SQLValue: TypeAlias = Any
"""A value a database driver returned (int, Decimal, float, str, datetime, a list, None, as the column's
type says), read by the code that knows the column."""
