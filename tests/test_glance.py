"""The quick reads (pipeline/glance.py): their table clauses match the tables, and a run-due
answered there says exactly what the weekly job would have said, or leaves it to the job."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Table, TypeDecorator
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from pipeline import db, glance
from pipeline.config import Settings, load_settings
from pipeline.models import Delivery, Issue
from pipeline.periods import Action
from pipeline.weekly import run_due
from tests.conftest import write_config

DUE = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # Monday 07:00 in Berlin
KEY = "weekly-2026-W48"


@pytest.mark.parametrize("clause", [glance.ISSUE, glance.ISSUE_ESSAY, glance.ESSAY, glance.DELIVERY],
                         ids=lambda c: c.name)
def test_each_clause_names_real_columns_of_the_same_type(clause: object) -> None:
    import pipeline.models  # noqa: F401, PLC0415  (every table in SQLModel.metadata)

    name = clause.name  # type: ignore[attr-defined]
    table = SQLModel.metadata.tables[name]
    assert isinstance(table, Table)
    for column in clause.c:  # type: ignore[attr-defined]
        assert column.name in table.c, f"{name}.{column.name} is not a column of the table"
        stored = table.c[column.name].type
        stored = stored.impl if isinstance(stored, TypeDecorator) else stored  # SQLModel's AutoString
        assert isinstance(stored, type(column.type)), f"{name}.{column.name}: {stored!r}, read as {column.type!r}"


@pytest.fixture(params=["sqlite", "postgresql"])
def weekly(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings = load_settings(write_config(
        tmp_path, database_url=url,
        schedule={"weekday": "monday", "time": "07:00", "timezone": "Europe/Berlin",
                  "grace_hours": 12, "expire_after_hours": 72}))
    engine = db.connect(settings.database.url)
    yield settings, engine
    engine.dispose()


def add_issue(engine: Engine, key: str, status: str, deliveries: dict[str, int] | None = None,
              holder: str | None = None) -> None:
    with db.session_scope(engine) as session:
        issue = Issue(key=key, subject=f"Issue {key}", status=status, started_at=DUE)
        session.add(issue)
        session.flush()
        n = 0
        for delivery_status, count in (deliveries or {}).items():
            for _ in range(count):
                n += 1
                session.add(Delivery(issue_id=issue.id, email=f"r{n}@example.net", status=delivery_status,
                                     message_id=f"<{key}-{n}@example.org>",
                                     holder=holder if delivery_status == "sending" else None,
                                     lease_until=DUE + timedelta(days=30) if delivery_status == "sending" else None))


def dead_holder() -> str:
    """host:pid of a process of this host that has exited."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return f"{socket.gethostname()}:{pid}"


QUIET: dict[str, tuple[Callable[[Engine], None], datetime]] = {
    "before the time, last week sent": (lambda e: add_issue(e, "weekly-2026-W47", "sent", {"sent": 3}),
                                        DUE - timedelta(minutes=1)),
    "the week sent, an hour later": (lambda e: add_issue(e, KEY, "sent", {"sent": 2, "unknown": 1}),
                                     DUE + timedelta(hours=1)),
    "the week skipped": (lambda e: add_issue(e, KEY, "skipped"), DUE + timedelta(hours=30)),
}
BUSY: dict[str, tuple[Callable[[Engine], None], datetime]] = {
    "due, no issue yet": (lambda e: None, DUE + timedelta(minutes=5)),
    "due, left as a draft": (lambda e: add_issue(e, KEY, "draft"), DUE + timedelta(minutes=5)),
    "the week sent, an older week still sending": (
        lambda e: (add_issue(e, KEY, "sent", {"sent": 1}), add_issue(e, "weekly-2026-W46", "sending", {"pending": 1})),
        DUE + timedelta(hours=1)),
    "the week expired, rows of a dead sender in flight": (
        lambda e: add_issue(e, KEY, "expired", {"sent": 1, "sending": 2}, holder=dead_holder()),
        DUE + timedelta(hours=80)),
}


@pytest.mark.parametrize("case", list(QUIET))
def test_a_quiet_week_is_answered_as_the_weekly_job_answers_it(
        weekly: tuple[Settings, Engine], case: str) -> None:
    settings, engine = weekly
    setup, now = QUIET[case]
    setup(engine)
    with engine.connect() as connection:
        quick = glance.quiet_week(settings, connection, now)
    assert quick is not None
    assert quick.action in (Action.NOT_DUE, Action.DONE)
    assert quick == run_due(settings, engine, now)


@pytest.mark.parametrize("case", list(BUSY))
def test_a_week_with_work_is_left_to_the_weekly_job_and_a_dry_run_still_answers(
        weekly: tuple[Settings, Engine], case: str) -> None:
    settings, engine = weekly
    setup, now = BUSY[case]
    setup(engine)
    with engine.connect() as connection:
        assert glance.quiet_week(settings, connection, now) is None
        dry = glance.quiet_week(settings, connection, now, dry_run=True)
    assert dry == run_due(settings, engine, now, dry_run=True)
