"""Alembic environment for compactobs' store.

Run by `compactobs db upgrade` (which passes its connection in `config.attributes["connection"]`) and by
the `alembic` command for authoring (`alembic -c migrations/alembic.ini revision --autogenerate -m ...`),
which connects to `sqlalchemy.url` if the ini sets one, else to compactobs' default database.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from compactobs.store.engine import make_engine
from compactobs.store.models import metadata
from compactobs.store.schema import VERSION_TABLE

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # A table of its own, so an application's `alembic_version` in the same database is left alone.
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or "sqlite://",
        target_metadata=metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or None, writer=True)
    try:
        with engine.connect() as connection:
            _migrate(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
