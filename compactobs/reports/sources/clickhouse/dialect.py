"""ClickHouse as a SQLAlchemy dialect: the measures' expressions compiled with ClickHouse's semantics.

clickhouse-connect's SQLAlchemy dialect, with a compiler for where ClickHouse differs from PostgreSQL on the
same expressions (exact division, integer division, typed NULLs, a bare OFFSET) and a type compiler for
NUMERIC without precision. The ClickHouse source and Grafana's ClickHouse dashboard both compile with it.
Built on first use: clickhouse-connect is an optional dependency.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Float, Numeric, literal_column
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ClauseElement

if TYPE_CHECKING:
    from sqlalchemy.sql.functions import FunctionElement

    from compactobs._types import SQLExpr

__all__ = ["WIDE", "clickhouse_dialect", "percentile", "sql"]

WIDE: Final = 30
"""Decimal places of an exact quotient (and of money summed through one)."""


@functools.cache
def clickhouse_dialect() -> Dialect:
    """clickhouse-connect's dialect with the compilers below (one instance)."""
    from clickhouse_connect.cc_sqlalchemy.dialect import ClickHouseDialect
    from clickhouse_connect.cc_sqlalchemy.sql.compiler import ChStatementCompiler
    from sqlalchemy.sql.compiler import GenericTypeCompiler
    from sqlalchemy.sql.elements import Null

    class _ClickHouseTypes(GenericTypeCompiler):
        def visit_numeric(self, type_: Any, **kw: Any) -> str:
            # A NUMERIC without precision (the measures' exact divisions) is PostgreSQL's arbitrary
            # precision: here the widest Decimal at WIDE places.
            if type_.precision is None:
                return f"Decimal(76, {WIDE})"
            return f"Decimal({type_.precision}, {type_.scale or 0})"

        visit_NUMERIC = visit_numeric
        visit_DECIMAL = visit_numeric

    class _ClickHouseCompiler(ChStatementCompiler):
        """Where ClickHouse's semantics differ from PostgreSQL's, for the same expressions."""

        def visit_floordiv_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
            # PostgreSQL's integer division; ClickHouse's `/` is always a float division.
            return f"intDiv({self.process(binary.left, **kw)}, {self.process(binary.right, **kw)})"

        def visit_truediv_binary(self, binary: Any, operator: Any, **kw: Any) -> str:
            left, right = self.process(binary.left, **kw), self.process(binary.right, **kw)
            if isinstance(binary.type, Numeric) and not isinstance(binary.type, Float):
                # An exact division: ClickHouse keeps the dividend's scale (10 places for money) and
                # refuses a divisor of more places; divideDecimal gives the quotient at WIDE places.
                # ClickHouse also computes a function on the rows its NULLs mask (as 0), and on both
                # arms of a CASE: a divisor of 0 or NULL is made 1, and the quotient NULL, so that no
                # arm raises (the measures guard their divisions; PostgreSQL never meets these rows).
                zero = f"ifNull({right}, 0) = 0"
                wide = f"toDecimal256({left}, {WIDE}), toDecimal256(if({zero}, 1, {right}), {WIDE})"
                return f"if({zero}, NULL, divideDecimal({wide}, {WIDE}))"
            return f"{left} / {right}"

        def visit_cast(self, cast: Any, **kw: Any) -> str:
            # A typed NULL (e.g. the cache measures' `next_start` when not looked up): ClickHouse casts
            # NULL only to a Nullable type.
            if isinstance(cast.clause, Null):
                return f"CAST(NULL AS Nullable({self.dialect.type_compiler_instance.process(cast.type)}))"
            text: str = super().visit_cast(cast, **kw)
            return text

        def limit_clause(self, select: Any, **kw: Any) -> str:
            # A bare OFFSET (SQLite's optimisation fence in the cache measures): ClickHouse reads
            # LIMIT -1 as "the last row", so no LIMIT when there is none.
            if select._limit_clause is None and select._offset_clause is not None:
                return f"\n OFFSET {self.process(select._offset_clause, **kw)}"
            text: str = super().limit_clause(select, **kw)
            return text

    class _Dialect(ClickHouseDialect):
        statement_compiler = _ClickHouseCompiler
        type_compiler_cls = _ClickHouseTypes

    dialect: Dialect = _Dialect()
    return dialect


def sql(clause: ClauseElement) -> str:
    """ClickHouse SQL of an expression or statement, values inlined."""
    return str(clause.compile(dialect=clickhouse_dialect(), compile_kwargs={"literal_binds": True}))


@functools.cache
def _exact_quantile() -> type[FunctionElement[float]]:
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.functions import FunctionElement

    class _ExactQuantile(FunctionElement[float]):
        """quantileExactInclusive(p)(value): the R7 rule, PostgreSQL's percentile_cont; NULLs skipped."""

        name = "quantileExactInclusive"
        inherit_cache = True
        type = Float()

    @compiles(_ExactQuantile)
    def _compiled(element: Any, compiler: Any, **kw: Any) -> str:
        p, value = list(element.clauses)
        return f"quantileExactInclusive({compiler.process(p, **kw)})({compiler.process(value, **kw)})"

    return _ExactQuantile


def percentile(p: float, value: SQLExpr) -> SQLExpr:
    """The continuous percentile (linear interpolation, as `report ops`) of a column's non-NULL values."""
    quantile: SQLExpr = _exact_quantile()(literal_column(str(p)), value)
    return quantile
