"""`newsletter db`: create or upgrade the database schema."""

from __future__ import annotations

import click

from pipeline.commands.base import App, pass_app


@click.group("db")
def group() -> None:
    """Create or upgrade the database schema.

    \b
    Example:
      newsletter db upgrade
    """


@group.command("upgrade")
@pass_app
def upgrade(app: App) -> None:
    """Bring the database to the newest schema (commands that need it do this themselves).

    \b
    Example:
      newsletter db upgrade
    """
    _ = app.engine  # opening the database runs the Alembic upgrade
    app.console.print(f"Database is up to date: {app.settings.database.url}")


commands = [group]
