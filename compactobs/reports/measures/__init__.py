"""Each report measure once: named SQLAlchemy Core expressions over a calls and an iterations FromClause.

Nothing here opens a connection or renders a row. The SQL store (`reports.sources.sql`), ClickHouse
(`reports.sources.clickhouse`) and the Grafana dashboards (`reports.dashboard`) compile these same
expressions with their own SQLAlchemy dialect; only the query shapes that exist for speed (temporary
bucket tables, window functions, FINAL) differ per engine, and they take these measures as inputs.

- `groups`: the groupings a report takes (`--by`) and their key expressions;
- `cost`: `report cost`'s sums (tokens, counts, billed cost by class, compaction cost) over calls alone
  or over calls joined to their iterations, and what the top-level usage would have said;
- `cache`: `report cache`'s per-row figures (each iteration's tokens and costs, wasted writes) and its
  sums (savings at the iteration's own input rate, write premium, waste).
"""
