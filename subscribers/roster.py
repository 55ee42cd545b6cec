"""The list as the operator reads it: subscribers newest first, optionally of one status."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from subscribers.model import Subscriber, SubscriberStatus


def newest_first(session: Session, status: str | None = None, limit: int = 0) -> Sequence[Subscriber]:
    """Subscribers newest first, of `status` if given, at most `limit` of them (0: all).

    Removed ones are never listed: they are tombstones whose address and name are erased.
    """
    query = select(Subscriber).where(Subscriber.status != SubscriberStatus.REMOVED.value)
    if status:
        query = query.where(Subscriber.status == status)
    query = query.order_by(col(Subscriber.id).desc())
    return session.exec(query.limit(limit) if limit > 0 else query).all()
