"""The per-subscriber delivery ledger: freeze the audience, claim batches, record outcomes.

Rules (README, section "sending"): the audience is frozen once per issue, one row per active
subscriber; a sender claims a batch of due `pending` rows (`sending`, with a lease), sends
outside any transaction, then records `sent`, `failed` or a retry. A row whose lease ran out
becomes `unknown` (maybe sent, maybe not): never silently skipped, never silently resent. The
same code claims with `FOR UPDATE SKIP LOCKED` on PostgreSQL and under SQLite's write lock.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Executable, String, bindparam, func, literal, or_, text, update
from sqlalchemy import cast as sql_cast
from sqlalchemy import select as sql_select
from sqlalchemy.engine import CursorResult, Engine
from sqlmodel import Session, col, select

from pipeline import ledger_reads
from pipeline.config import DeliverySettings
from pipeline.db import session_scope
from pipeline.models import Delivery, DeliveryStatus, Issue
from subscribers.model import Subscriber, SubscriberStatus

PENDING, SENDING, SENT = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value, DeliveryStatus.SENT.value
FAILED, UNKNOWN, SKIPPED = DeliveryStatus.FAILED.value, DeliveryStatus.UNKNOWN.value, DeliveryStatus.SKIPPED.value
FREEZE_PAGE = 1000
FIRST_RETRY = 60.0  # seconds; doubles per attempt
LONGEST_RETRY = 3600.0
SHORT_WINDOW = 60.0  # seconds: in windows this short, claims wait for room for a whole batch
RATE_LOCK = 4224243  # the PostgreSQL advisory lock that orders rate-limited claims
_TABLE = Delivery.__table__  # type: ignore[attr-defined]
_SUBSCRIBERS = Subscriber.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claimed:
    """A row claimed for sending: who, and the Message-ID made when the audience was frozen."""

    id: int
    subscriber_id: int
    email: str
    name: str
    message_id: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed row. kind: sent, retry, failed, unknown (handed over, no
    reply: maybe delivered) or released (not attempted)."""

    claimed: Claimed
    kind: str
    at: datetime
    code: int | None = None
    error: str | None = None
    hard_bounce: bool = False


def freeze_audience(session: Session, issue: Issue, message_ids: tuple[str, str], now: datetime,
                    leave_out: Mapping[int, str] | None = None) -> int:
    """One pending row per active subscriber, in the caller's transaction; returns rows added.
    A subscriber in `leave_out` (id -> an essay of the issue they had) gets a `skipped` row
    saying so, so the ledger tells why they did not get it. `message_ids` is the (prefix,
    suffix) of message.message_id_frame: the row of subscriber n gets prefix + n + suffix.

    Each row is made by the database (INSERT ... SELECT): no subscriber passes through Python,
    so a list of 100,000 freezes in one statement. The skipped rows go in first; the unique
    (issue, subscriber) pair then keeps them out of the pending insert, and makes a second
    freeze (or a rival process) add nobody twice.
    """
    before = _row_count(session, issue.id or 0)
    by_essay: dict[str, list[int]] = {}
    for sid, slug in (leave_out or {}).items():
        by_essay.setdefault(slug, []).append(sid)
    for slug, ids in by_essay.items():
        for first in range(0, len(ids), FREEZE_PAGE):
            session.execute(_freeze(session, issue, message_ids, now, SKIPPED,
                                    f"already had {slug} in an earlier issue", ids[first:first + FREEZE_PAGE]))
    session.execute(_freeze(session, issue, message_ids, now, PENDING))
    # Counted, not summed from rowcounts: drivers disagree on INSERT ... SELECT's rowcount.
    return _row_count(session, issue.id or 0) - before


def _freeze(session: Session, issue: Issue, message_ids: tuple[str, str], now: datetime, status: str,
            error: str | None = None, only: list[int] | None = None) -> Executable:
    """INSERT INTO delivery SELECT ... FROM subscriber: rows of `status` for the active
    subscribers (of `only`, when given), in subscriber order, leaving out any already there."""
    prefix, suffix = message_ids
    people = _SUBSCRIBERS.c
    when = literal(now, _TABLE.c.created_at.type)
    rows = (sql_select(literal(issue.id or 0), people.id, people.email,
                       func.substr(func.coalesce(people.name, ""), 1, 200), literal(status), literal(0),
                       literal(prefix) + sql_cast(people.id, String) + literal(suffix),
                       literal(error, _TABLE.c.last_error.type), when, when)
            .where(people.status == SubscriberStatus.ACTIVE.value)
            .order_by(people.id))
    if only is not None:
        rows = rows.where(people.id.in_(only))
    columns = ["issue_id", "subscriber_id", "email", "name", "status", "attempts", "message_id",
               "last_error", "created_at", "updated_at"]
    unique = ["issue_id", "subscriber_id"]
    # Imported here: the PostgreSQL dialect's module takes ~30 ms to load, which SQLite never needs.
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # noqa: PLC0415

        return pg_insert(_TABLE).from_select(columns, rows).on_conflict_do_nothing(index_elements=unique)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert  # noqa: PLC0415

    return sqlite_insert(_TABLE).from_select(columns, rows).on_conflict_do_nothing(index_elements=unique)


def audience(session: Session) -> Iterator[tuple[int, str, str]]:
    """(id, email, name) of every active subscriber, read a page at a time (keyset)."""
    last = 0
    while True:
        page = session.exec(
            select(Subscriber.id, Subscriber.email, Subscriber.name)
            .where(Subscriber.status == SubscriberStatus.ACTIVE.value, col(Subscriber.id) > last)
            .order_by(col(Subscriber.id)).limit(FREEZE_PAGE)
        ).all()
        yield from page  # type: ignore[misc]
        if len(page) < FREEZE_PAGE:
            return
        last = page[-1][0] or 0


def owed(session: Session, issue_id: int) -> Iterator[tuple[int, str, str]]:
    """(subscriber id, email, name) of the issue's pending rows, a page at a time."""
    last = 0
    while True:
        page = session.exec(
            select(Delivery.id, Delivery.subscriber_id, Delivery.email, Delivery.name)
            .where(Delivery.issue_id == issue_id, Delivery.status == PENDING, col(Delivery.id) > last)
            .order_by(col(Delivery.id)).limit(FREEZE_PAGE)
        ).all()
        yield from ((sid or 0, email, name) for _, sid, email, name in page)
        if len(page) < FREEZE_PAGE:
            return
        last = page[-1][0] or 0


def _row_count(session: Session, issue_id: int) -> int:
    return int(session.exec(select(func.count()).select_from(Delivery)
                            .where(Delivery.issue_id == issue_id)).one())


def holder_name() -> str:
    """host:pid of this process, written on the rows it claims (read at each claim: a fork
    has a pid of its own)."""
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def claim(engine: Engine, issue_id: int, limit: int, lease_seconds: int,
          now: datetime) -> tuple[list[Claimed], int]:
    """Take up to `limit` due pending rows: `sending` with a lease, or `skipped` when the
    subscriber opted out since the audience was frozen (counted). Rows another sender holds
    are passed by."""
    with session_scope(engine) as session:
        return _claim(session, issue_id, limit, lease_seconds, now)


def claim_within_rate(engine: Engine, issue_id: int, delivery: DeliverySettings, now: datetime,
                      done: list[Outcome] | None = None,
                      deadline: datetime | None = None) -> tuple[list[Claimed], int, float]:
    """claim() of at most what the rate limits allow now, checked and claimed in one
    transaction that every sender (any process) takes in turn; (rows, skipped, seconds to
    wait when the limits allow nothing). `done`, the outcomes of the caller's previous batch,
    are recorded first in the same transaction (as record() would): one write lock per batch
    instead of two, and the batch is recorded before the next is claimed, or neither is."""
    with session_scope(engine) as session:
        if done:
            _record(session, done, deadline)
        windows = _windows(delivery)
        allowed, wait = delivery.batch_size, 0.0
        if windows:
            if session.get_bind().dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE serialises
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RATE_LOCK})
            allowed, wait = _allowance(session, windows, delivery.batch_size, now)
        if not allowed:
            return [], 0, wait
        claimed, skipped = _claim(session, issue_id, allowed, delivery.lease_seconds, now)
        return claimed, skipped, 0.0


def _claim(session: Session, issue_id: int, limit: int, lease_seconds: int,
           now: datetime) -> tuple[list[Claimed], int]:
    people = Subscriber.__table__  # type: ignore[attr-defined]
    this_issue = _TABLE.c.issue_id == issue_id  # with status and id: ix_delivery_claim
    # Core, not ORM: this runs for every batch, and ORM row loading costs more than the query.
    found = session.connection().execute(
        sql_select(_TABLE.c.id, _TABLE.c.subscriber_id, _TABLE.c.email, _TABLE.c.name,
                   _TABLE.c.message_id, _TABLE.c.attempts, people.c.status)
        .select_from(_TABLE.outerjoin(people, people.c.id == _TABLE.c.subscriber_id))
        .where(this_issue, _TABLE.c.status == PENDING,
               or_(_TABLE.c.next_attempt_at.is_(None), _TABLE.c.next_attempt_at <= now))
        .order_by(_TABLE.c.id).limit(limit)
        .with_for_update(skip_locked=True, of=_TABLE)
    ).all()
    claimed = [Claimed(i, s, e, n, m, a) for i, s, e, n, m, a, status in found
               if status == SubscriberStatus.ACTIVE.value and e]
    skipped: dict[str, list[int]] = {}  # why -> row ids
    for row in found:
        if row[6] != SubscriberStatus.ACTIVE.value or not row[2]:
            skipped.setdefault(_not_subscribed(row[6]), []).append(row[0])
    lease = now + timedelta(seconds=lease_seconds)
    if claimed:
        session.execute(update(_TABLE).where(_TABLE.c.id.in_([c.id for c in claimed]))
                        .values(status=SENDING, lease_until=lease, updated_at=now, holder=holder_name()))
    for why, ids in skipped.items():
        session.execute(update(_TABLE).where(_TABLE.c.id.in_(ids)).values(
            status=SKIPPED, updated_at=now, last_error=why))
    return claimed, sum(len(ids) for ids in skipped.values())


def _not_subscribed(status: str | None) -> str:
    """Why a frozen row is skipped: what the reader became after the audience was frozen."""
    became = {SubscriberStatus.UNSUBSCRIBED.value: "unsubscribed",
              SubscriberStatus.BOUNCED.value: "bounced (the address does not exist)",
              SubscriberStatus.COMPLAINED.value: "complained (marked an issue as spam)",
              SubscriberStatus.PENDING.value: "waits to confirm again"}.get(status or "", "was erased")
    return f"not sent: the subscriber {became} after the issue started"


def retry_at(attempts: int, now: datetime) -> datetime:
    """Exponential backoff with jitter, so a relay that said "later" is not hit all at once."""
    delay = min(LONGEST_RETRY, FIRST_RETRY * 2 ** max(attempts - 1, 0))
    return now + timedelta(seconds=delay * random.uniform(0.75, 1.25))


def record(engine: Engine, outcomes: list[Outcome], deadline: datetime | None, holder: str | None = None) -> None:
    """Write a batch of outcomes in one transaction (a retry past `deadline` becomes failed);
    with `holder`, only to rows that process claimed last."""
    if outcomes:
        with session_scope(engine) as session:
            _record(session, outcomes, deadline, holder)


def _record(session: Session, outcomes: list[Outcome], deadline: datetime | None, holder: str | None = None) -> None:
    sent, params = [], []
    for o in outcomes:
        if o.kind == "sent":  # the common case: fewer values to bind
            sent.append(dict(b_id=o.claimed.id, b_attempts=o.claimed.attempts + 1, b_at=o.at))
            continue
        c, kind, attempts = o.claimed, o.kind, o.claimed.attempts + (o.kind != "released")
        error, next_at = o.error, None
        if kind == "retry":
            next_at = retry_at(attempts, o.at)
            if deadline is not None and next_at > deadline:
                kind, error = "failed", f"gave up after {attempts} attempts: {o.error}"
        status = {"retry": PENDING, "failed": FAILED, "released": PENDING, "unknown": UNKNOWN}[kind]
        params.append(dict(b_id=c.id, b_status=status, b_attempts=attempts, b_next=next_at,
                           b_code=o.code, b_error=error, b_now=o.at))
    in_flight = or_(_TABLE.c.status == SENDING, _TABLE.c.status == UNKNOWN)
    if holder is not None:
        in_flight = in_flight & (_TABLE.c.holder == holder)
    connection = session.connection()
    if sent:
        connection.execute(
            update(_TABLE).where(_TABLE.c.id == bindparam("b_id"), in_flight)
            .values(status=SENT, attempts=bindparam("b_attempts"), next_attempt_at=None,
                    lease_until=None, smtp_code=250, last_error=None,
                    sent_at=bindparam("b_at"), updated_at=bindparam("b_at")), sent)
    if params:
        connection.execute(
            update(_TABLE).where(_TABLE.c.id == bindparam("b_id"), in_flight)
            .values(status=bindparam("b_status"), attempts=bindparam("b_attempts"),
                    next_attempt_at=bindparam("b_next"), lease_until=None,
                    smtp_code=bindparam("b_code"), last_error=bindparam("b_error"),
                    updated_at=bindparam("b_now")), params)


def reconcile(session: Session, issue_id: int, now: datetime) -> int:
    """Rows left `sending` past their lease (a crash mid-batch) become `unknown`."""
    return _in_flight_unknown(session, issue_id, _TABLE.c.lease_until < now, now,
                              "the sender stopped mid-attempt (lease ran out): maybe sent, maybe not")


def release_holder(session: Session, issue_id: int, holder: str, now: datetime, error: str) -> int:
    """The issue's `sending` rows that `holder` (a process known to be gone) holds become
    `unknown`, with `error` saying why; returns how many."""
    return _in_flight_unknown(session, issue_id, _TABLE.c.holder == holder, now, error)


def _in_flight_unknown(session: Session, issue_id: int, which: Any, now: datetime, error: str) -> int:
    """The issue's `sending` rows that `which` selects become `unknown` (maybe sent): how many."""
    result = cast(CursorResult[Any], session.execute(
        update(_TABLE).where(_TABLE.c.issue_id == issue_id, _TABLE.c.status == SENDING, which)
        .values(status=UNKNOWN, updated_at=now, lease_until=None, last_error=error)))
    return max(result.rowcount, 0)


def requeue(session: Session, issue_id: int, statuses: list[str], now: datetime) -> int:
    """Make `failed` and/or `unknown` rows owed again (same Message-ID, so clients can dedupe).
    Only rows of readers still subscribed: a reader who bounced, unsubscribed or complained
    would only be skipped, and their row keeps the reply or outcome that tells why."""
    allowed = [s for s in statuses if s in (FAILED, UNKNOWN)]
    if not allowed:
        return 0
    result = cast(CursorResult[Any], session.execute(
        update(_TABLE).where(*_resendable(issue_id, allowed))
        .values(status=PENDING, next_attempt_at=None, lease_until=None, updated_at=now)
    ))
    return max(result.rowcount, 0)


def resendable(session: Session, issue_id: int, statuses: list[str]) -> int:
    """How many rows of these statuses `requeue` would make owed again."""
    return int(session.execute(sql_select(func.count()).select_from(_TABLE)
                               .where(*_resendable(issue_id, statuses))).scalar_one())


def _resendable(issue_id: int, statuses: list[str]) -> tuple[Any, ...]:
    """The issue's rows of `statuses` whose reader is still subscribed."""
    active = sql_select(_SUBSCRIBERS.c.id).where(_SUBSCRIBERS.c.status == SubscriberStatus.ACTIVE.value)
    return _TABLE.c.issue_id == issue_id, _TABLE.c.status.in_(statuses), _TABLE.c.subscriber_id.in_(active)


def _windows(d: DeliverySettings) -> list[tuple[int, float]]:
    """(limit, seconds) per configured rate limit."""
    windows = []
    if d.rate_per_second:
        span = max(1.0, 1.0 / d.rate_per_second)  # 0.2 per second = 1 per 5 seconds
        windows.append((int(d.rate_per_second * span), span))
    return windows + [(limit, span) for limit, span in
                      ((d.rate_per_hour, 3600.0), (d.rate_per_day, 86400.0)) if limit]


def _allowance(session: Session, windows: list[tuple[int, float]], most: int,
               now: datetime) -> tuple[int, float]:
    # Rows in flight (any sender, any process) will be sent in a moment: they count too.
    # (A crashed sender's rows, past their lease, count no more.)
    in_flight = int(session.exec(select(func.count()).select_from(Delivery).where(
        Delivery.status == SENDING, col(Delivery.lease_until) > now)).one())
    allowed, wait = most, 0.0
    for limit, span in windows:
        since = now - timedelta(seconds=span)
        count = ledger_reads.sent_since(session, since)
        room, want = limit - count - in_flight, min(most, limit)
        if room >= want or (room > 0 and span > SHORT_WINDOW):
            allowed = min(allowed, room)
            continue
        # A short window without room for a whole batch: wait until enough of its sends have
        # left it (whole batches, not slivers), or briefly for the rows in flight.
        allowed, excess = 0, want - room
        if excess > count:
            wait = max(wait, 0.05)
            continue
        leaves = session.exec(select(Delivery.sent_at).where(
            Delivery.status == SENT, col(Delivery.sent_at) >= since)
            .order_by(col(Delivery.sent_at)).offset(excess - 1).limit(1)).first() or now
        wait = max(wait, (leaves + timedelta(seconds=span) - now).total_seconds(), 0.01)
    return allowed, wait
