"""What every command shares: settings read once, the database opened on first use, JSON output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Callable, TypeVar

import click
from rich.console import Console
from sqlalchemy.engine import Engine

from pipeline import db
from pipeline.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """What every command gets: settings read once, and the database opened when first asked."""

    config_path: str | None
    _settings: Settings | None = None
    _engine: Engine | None = None
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.connect(self.settings.database.url)
        return self._engine


pass_app = click.make_pass_decorator(App)


def to_jsonable(value: Any) -> Any:
    """Dates as ISO strings, containers recursively, everything else as json understands it."""
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Machine-readable output for `--json`: the same fields the table shows."""
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def json_option(f: F) -> F:
    """The `--json` flag every list and show command takes."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
