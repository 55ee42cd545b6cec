"""Alembic environment: runs migrations on the connection pipeline.db hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel, create_engine

import pipeline.models  # noqa: F401  (registers the tables on SQLModel.metadata)
import subscribers.model  # noqa: F401

target_metadata = SQLModel.metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # the alembic command line: open our own connection
        engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as connection:
            _migrate(connection)
    else:
        _migrate(connection)


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER by copying the table
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
