"""The parts of the `reconcile` report (compactobs.reports.reconcile): `figures` reads both sides, `explain`
matches them. Not report modules: only reconcile.py imports them."""
