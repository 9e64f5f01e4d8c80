"""Alembic scripts for the SQL store (the only way its schema changes).

They live inside the package so an installed wheel can run `compactobs db upgrade`; see
`compactobs.store.schema` for the configuration (built in code) and `migrations/README.md` at the
repository root for authoring a new revision.
"""
