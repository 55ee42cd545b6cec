"""The queue of confirmation emails: claimed by one mailer at a time, finished, counted."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from subscribers.model import ConfirmationRequest, ConfirmationStatus, utcnow

QUEUED, SENDING = ConfirmationStatus.QUEUED.value, ConfirmationStatus.SENDING.value


def get(session: Session, request_id: int) -> ConfirmationRequest:
    """The request with this id (a claimed one: it exists)."""
    request = session.get(ConfirmationRequest, request_id)
    assert request is not None
    return request


def claim(engine: Engine, now: datetime, lease: timedelta) -> int | None:
    """The id of the oldest queued request (or one claimed longer than `lease` ago), claimed now."""
    table = ConfirmationRequest.__table__  # type: ignore[attr-defined]
    due = or_(table.c.status == QUEUED, (table.c.status == SENDING) & (table.c.updated_at < now - lease))
    for _ in range(20):  # another mailer may take the same row first: then the next one
        with Session(engine) as session:
            request_id = session.execute(select(table.c.id).where(due).order_by(table.c.id).limit(1)).scalar()
            if request_id is None:
                return None
            # The condition again: of two mailers that found the same row, one update matches.
            taken = session.execute(
                update(table).where(table.c.id == request_id, due)
                .values(status=SENDING, updated_at=now, attempts=table.c.attempts + 1)
            )
            session.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return int(request_id)
    return None


def sent_since(session: Session, subscriber_id: int, since: datetime) -> int:
    """How many confirmation emails went to this subscriber after `since`."""
    return int(session.exec(
        select(func.count()).select_from(ConfirmationRequest).where(
            ConfirmationRequest.subscriber_id == subscriber_id,
            ConfirmationRequest.status == ConfirmationStatus.SENT.value,
            col(ConfirmationRequest.sent_at) > since)
    ).one())


def finish(session: Session, request: ConfirmationRequest, status: ConfirmationStatus, error: str | None) -> None:
    """Record what became of a claimed request, and commit."""
    now = utcnow()
    request.status, request.updated_at = status.value, now
    request.last_error = error[:500] if error else None
    if status == ConfirmationStatus.SENT:
        request.sent_at = now
    session.add(request)
    session.commit()


def queued(engine: Engine) -> int:
    """How many confirmation emails wait (claimed ones included)."""
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(ConfirmationRequest)
                                .where(col(ConfirmationRequest.status).in_((QUEUED, SENDING)))).one())


def latest_for(engine: Engine, subscriber_id: int) -> ConfirmationRequest | None:
    """The newest confirmation request of a subscriber: what became of their last sign-up."""
    with Session(engine) as session:
        return session.exec(select(ConfirmationRequest).where(ConfirmationRequest.subscriber_id == subscriber_id)
                            .order_by(col(ConfirmationRequest.id).desc())).first()
