"""Reads of the delivery ledger: counts, rows, rates, who holds rows in flight, what bounced.

The writes (freeze, claim, record, requeue, reconcile) are in pipeline/ledger.py; together the
two are the only modules that query the Delivery table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from pipeline import glance
from pipeline.models import Delivery, DeliveryStatus, Issue, IssueStatus
from subscribers.model import Subscriber, SubscriberStatus

PENDING, SENDING, SENT = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value, DeliveryStatus.SENT.value


def audience_size(session: Session, issue: Issue) -> int:
    """Who the issue goes to: its ledger once frozen, else today's active subscribers."""
    if issue.status == IssueStatus.SENDING.value:
        return sum(counts(session, issue.id or 0).values())
    return int(session.exec(select(func.count()).select_from(Subscriber).where(
        Subscriber.status == SubscriberStatus.ACTIVE.value)).one())


def counts(session: Session, issue_id: int) -> dict[str, int]:
    """How many rows have each status (every status listed, zeros included)."""
    return glance.counts(_connection(session), issue_id)


def rows(session: Session, issue_id: int, status: str | None = None, limit: int | None = None) -> list[Delivery]:
    """The issue's rows in claim order, of one status or all, at most `limit`."""
    query = select(Delivery).where(Delivery.issue_id == issue_id).order_by(col(Delivery.id))
    if status:
        query = query.where(Delivery.status == status)
    return list(session.exec(query.limit(limit)).all())


def next_retry(session: Session, issue_id: int) -> datetime | None:
    """When the earliest row waiting for a retry comes due (None: nothing waits)."""
    return glance.next_retry(_connection(session), issue_id)


def sent_since(session: Session, since: datetime) -> int:
    """Messages sent (any issue) since `since`: rate limits read this."""
    return int(session.exec(select(func.count()).select_from(Delivery).where(
        Delivery.status == SENT, col(Delivery.sent_at) >= since)).one())


def holders(session: Session, issue_id: int) -> list[tuple[str | None, int, datetime | None]]:
    """(holder, rows, latest lease) per process holding the issue's `sending` rows."""
    return glance.holders(_connection(session), issue_id)


def holders_on(session: Session, issue_id: int, host: str) -> list[str]:
    """The holders (host:pid) of `host` that hold the issue's `sending` rows."""
    found = session.exec(select(Delivery.holder).distinct().where(
        Delivery.issue_id == issue_id, Delivery.status == SENDING,
        col(Delivery.holder).startswith(f"{host}:"))).all()
    return [h for h in found if h]


def by_message_id(session: Session, message_id: str) -> Delivery | None:
    """The delivery whose message had this Message-ID."""
    return session.exec(select(Delivery).where(Delivery.message_id == message_id)).first()


def row_of(session: Session, issue_id: int, subscriber_id: int) -> Delivery | None:
    """The issue's row for this subscriber (frozen when the issue started sending), if any."""
    return session.exec(select(Delivery).where(Delivery.issue_id == issue_id,
                                               Delivery.subscriber_id == subscriber_id)).first()


def latest_to(session: Session, subscriber_id: int) -> Delivery | None:
    """The delivery sent last to this subscriber (any issue)."""
    return session.exec(select(Delivery).where(Delivery.subscriber_id == subscriber_id)
                        .order_by(col(Delivery.sent_at).desc(), col(Delivery.id).desc())).first()


def refused_while_active(session: Session, issue_id: int, codes: tuple[int, ...]) -> list[tuple[int, int, str]]:
    """(subscriber id, code, reply) of the issue's `failed` rows that a relay refused with one of
    `codes` while their reader, still active, was confirmed: a refusal from before their latest
    confirmation (they came back since) is theirs no more."""
    found = session.exec(
        select(Delivery.subscriber_id, Delivery.smtp_code, Delivery.last_error)
        .join(Subscriber, col(Subscriber.id) == Delivery.subscriber_id)
        .where(Delivery.issue_id == issue_id, Delivery.status == DeliveryStatus.FAILED.value,
               col(Delivery.smtp_code).in_(codes), Subscriber.status == SubscriberStatus.ACTIVE.value,
               or_(col(Subscriber.confirmed_at).is_(None), col(Delivery.updated_at) > col(Subscriber.confirmed_at)))
    ).all()
    return [(sid or 0, code or 0, error or "") for sid, code, error in found]


def _connection(session: Session) -> Connection:
    """The session's connection, its pending changes flushed: the quick reads see what it sees."""
    session.flush()
    return session.connection()
