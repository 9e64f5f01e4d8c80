"""Where a report's rows come from: the SQL store and the Collector's ClickHouse."""
