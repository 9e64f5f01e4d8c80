"""compactobs.reports."""
