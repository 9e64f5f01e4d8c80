"""The SQL store (SQLite, PostgreSQL) as a report source: raw aggregates, rollups, and `SqlSource`."""

from compactobs.reports.sources.sql.source import SqlSource

__all__ = ["SqlSource"]
