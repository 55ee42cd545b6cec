"""Quick reads for the commands run most: issues, an issue's ledger counts, where this week stands.

`issues list`, `sends status`, `schedule next` and a `schedule run-due` with nothing due (cron,
every 15 minutes) only look. They read here, with SQLAlchemy Core over light table clauses,
and so start without the ORM (SQLModel and pydantic cost more than all of their work). The
ORM modules that own these tables (issues.py, ledger_reads.py) call the same functions, so each
query is written once. tests/test_glance.py checks every clause below against the models.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Boolean, Date, DateTime, Integer, String, and_, column, func, select, table
from sqlalchemy.engine import Connection, RowMapping

from pipeline.config import Settings
from pipeline.errors import NotFound
from pipeline.periods import (
    Action,
    Outcome,
    Period,
    before_the_archive,
    decide,
    describe,
    describe_before_archive,
    due_period,
    next_due,
    period_of_key,
)
from pipeline.statuses import DeliveryStatus, IssueStatus

PENDING, SENDING, SENT = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value, DeliveryStatus.SENT.value
OPEN = (IssueStatus.DRAFT.value, IssueStatus.SENDING.value)

ISSUE = table(
    "issue", column("id", Integer), column("key", String), column("subject", String),
    column("preheader", String), column("status", String), column("intro", String),
    column("resend", Boolean), column("created_at", DateTime), column("started_at", DateTime),
    column("finished_at", DateTime), column("not_after", DateTime),
)
ISSUE_ESSAY = table("issueessay", column("issue_id", Integer), column("position", Integer),
                    column("essay_id", Integer))
ESSAY = table("essay", column("id", Integer), column("slug", String), column("title", String),
              column("published_on", Date), column("imported_at", DateTime))
DELIVERY = table(
    "delivery", column("id", Integer), column("issue_id", Integer), column("status", String),
    column("next_attempt_at", DateTime), column("lease_until", DateTime), column("holder", String),
    column("feedback", String),
)


@dataclass(frozen=True)
class CarriedEssay:
    """An essay as an issue's listing shows it."""

    slug: str
    title: str
    published_on: date | None


@dataclass(frozen=True)
class IssueRow:
    """An issue as the listing and status commands show it (no frozen render, no bodies)."""

    id: int
    key: str
    subject: str
    preheader: str
    status: str
    intro: str
    resend: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    not_after: datetime | None


def issues(connection: Connection) -> list[tuple[IssueRow, list[CarriedEssay]]]:
    """Every issue, newest first, with the essays it carries in their order."""
    rows = [_issue(r) for r in connection.execute(
        select(*ISSUE.c).order_by(ISSUE.c.created_at.desc(), ISSUE.c.id.desc())).mappings()]
    carried: dict[int, list[CarriedEssay]] = {}
    for issue_id, slug, title, published_on in connection.execute(
            select(ISSUE_ESSAY.c.issue_id, ESSAY.c.slug, ESSAY.c.title, ESSAY.c.published_on)
            .join(ESSAY, ESSAY.c.id == ISSUE_ESSAY.c.essay_id)
            .order_by(ISSUE_ESSAY.c.issue_id, ISSUE_ESSAY.c.position)):
        carried.setdefault(issue_id, []).append(CarriedEssay(slug, title, published_on))
    return [(row, carried.get(row.id, [])) for row in rows]


def essays_of(connection: Connection, issue_id: int) -> list[CarriedEssay]:
    """The essays an issue carries, in their order in the digest."""
    return [CarriedEssay(slug, title, published_on) for slug, title, published_on in connection.execute(
        select(ESSAY.c.slug, ESSAY.c.title, ESSAY.c.published_on)
        .join(ISSUE_ESSAY, ESSAY.c.id == ISSUE_ESSAY.c.essay_id)
        .where(ISSUE_ESSAY.c.issue_id == issue_id).order_by(ISSUE_ESSAY.c.position))]


def find_issue(connection: Connection, ref: str | int) -> IssueRow:
    """An issue by numeric id, by key, or "latest" (the newest); NotFound says which was asked for."""
    text = str(ref).strip()
    found = None
    if text.isascii() and text.isdigit() and len(text) <= 18:  # "²" is a digit to isdigit(); 20 digits overflow
        found = connection.execute(select(*ISSUE.c).where(ISSUE.c.id == int(text))).mappings().first()
    found = found or connection.execute(select(*ISSUE.c).where(ISSUE.c.key == text)).mappings().first()
    if found is None and text == "latest":  # a key of that name, unlikely as it is, wins
        found = connection.execute(select(*ISSUE.c).order_by(
            ISSUE.c.created_at.desc(), ISSUE.c.id.desc())).mappings().first()
        if found is None:
            raise NotFound("there is no issue yet (compose one with `newsletter issues new`)")
    if found is None:
        raise NotFound(f"no issue with the id or key {text!r} (see `newsletter issues list`)")
    return _issue(found)


def counts(connection: Connection, issue_id: int) -> dict[str, int]:
    """How many deliveries of the issue have each status (every status listed, zeros included)."""
    found: dict[str, int] = dict(connection.execute(
        select(DELIVERY.c.status, func.count()).where(DELIVERY.c.issue_id == issue_id)
        .group_by(DELIVERY.c.status)).all())
    return {s.value: int(found.get(s.value, 0)) for s in DeliveryStatus}


def next_retry(connection: Connection, issue_id: int) -> datetime | None:
    """When the earliest row waiting for a retry comes due (None: nothing waits)."""
    found: datetime | None = connection.execute(select(func.min(DELIVERY.c.next_attempt_at)).where(
        DELIVERY.c.issue_id == issue_id, DELIVERY.c.status == PENDING)).scalar()
    return found


def holders(connection: Connection, issue_id: int) -> list[tuple[str | None, int, datetime | None]]:
    """(holder, rows, latest lease) per process holding the issue's `sending` rows."""
    found = connection.execute(
        select(DELIVERY.c.holder, func.count(), func.max(DELIVERY.c.lease_until))
        .where(DELIVERY.c.issue_id == issue_id, DELIVERY.c.status == SENDING)
        .group_by(DELIVERY.c.holder)).all()
    return [(holder, int(count), until) for holder, count, until in found]


def feedback_counts(connection: Connection, issue_id: int) -> tuple[int, dict[str, int]]:
    """(rows sent, {feedback kind: rows}) of one issue: what its bounces and complaints say."""
    found = connection.execute(
        select(DELIVERY.c.feedback, func.count())
        .where(DELIVERY.c.issue_id == issue_id, DELIVERY.c.feedback.is_not(None))
        .group_by(DELIVERY.c.feedback)).all()
    delivered = int(connection.execute(select(func.count()).select_from(DELIVERY).where(
        DELIVERY.c.issue_id == issue_id, DELIVERY.c.status == SENT)).scalar_one())
    return delivered, {kind: int(n) for kind, n in found if kind}


def quiet_week(settings: Settings, connection: Connection, now: datetime,
               dry_run: bool = False) -> Outcome | None:
    """What `schedule run-due` would say when it has nothing to change, or None when it has
    something to do (compose, resume, expire, or rows of a stopped sender to reconcile): then
    weekly.run_due does it. A dry run changes nothing, so it always has an answer here."""
    schedule = settings.schedule
    period = due_period(schedule, now)
    found = connection.execute(select(*ISSUE.c).where(ISSUE.c.key == period.key)).mappings().first()
    issue = _issue(found) if found else None
    action = decide(schedule, period, issue.status if issue else None, now)
    nothing = nothing_missed(settings, connection, action, period, issue.status if issue else None, now, dry_run)
    if nothing is not None:
        return nothing
    if not dry_run:
        if action not in (Action.NOT_DUE, Action.DONE) or (issue and counts(connection, issue.id)[SENDING]):
            return None
        for key, status in connection.execute(select(ISSUE.c.key, ISSUE.c.status).where(
                and_(ISSUE.c.key.startswith("weekly-"), ISSUE.c.status.in_(OPEN),
                     ISSUE.c.key != period.key))):
            stale = period_of_key(schedule, key)
            if stale is not None and decide(schedule, stale, status, now) in (
                    Action.EXPIRE_MISSED, Action.EXPIRE_STUCK):
                return None  # an older week to mark expired: a write
    return week_outcome(settings, connection, action, period, issue.id if issue else None,
                        issue.status if issue else None, now, dry_run)


def nothing_missed(settings: Settings, connection: Connection, action: Action, period: Period,
                   status: str | None, now: datetime, dry_run: bool = False) -> Outcome | None:
    """The outcome for a week `decide` calls missed that fell due before the first essay was
    imported: there was nothing to send, so it is "not due", not expired. None otherwise.
    `schedule run-due` asks it on both of its paths (the quick read and the full run)."""
    if action is not Action.EXPIRE_MISSED or status is not None:
        return None
    if not before_the_archive(period, connection.execute(select(func.min(ESSAY.c.imported_at))).scalar()):
        return None
    outcome = week_outcome(settings, connection, Action.NOT_DUE, period, None, None, now, dry_run)
    outcome.message = describe_before_archive(period)
    return outcome


def week_outcome(settings: Settings, connection: Connection, action: Action, period: Period,
                 issue_id: int | None, status: str | None, now: datetime, dry_run: bool = False) -> Outcome:
    """What the weekly job says about `period` after `action`: its issue's status and counts."""
    found = counts(connection, issue_id) if issue_id else {}
    shown = {s: n for s, n in found.items() if n}  # the statuses it has, only
    return Outcome(action=action, key=period.key, due_at=period.due_at, issue_id=issue_id, status=status,
                   message=describe(settings.schedule, action, period, status, shown, dry_run),
                   next_due_at=next_due(settings.schedule, now, 1)[0].due_at, counts=shown)


def _issue(row: RowMapping) -> IssueRow:
    return IssueRow(id=int(row["id"]), key=row["key"], subject=row["subject"] or "",
                    preheader=row["preheader"] or "", status=row["status"],
                    intro=row["intro"] or "", resend=bool(row["resend"]),
                    created_at=row["created_at"], started_at=row["started_at"],
                    finished_at=row["finished_at"], not_after=row["not_after"])
