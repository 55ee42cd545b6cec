"""Read-only subscriber look-ups the web pages need: by id, and the active addresses to pick from."""

from __future__ import annotations

from sqlmodel import Session, col, select

from subscribers.model import Subscriber, SubscriberStatus


def by_id(session: Session, subscriber_id: int) -> Subscriber | None:
    """The subscriber with this id (a signed link names one), or None when there is none."""
    return session.get(Subscriber, subscriber_id)


def active_emails(session: Session, limit: int) -> list[str]:
    """At most `limit` addresses of active subscribers, alphabetically (the preview's "as" list)."""
    query = (select(Subscriber.email).where(Subscriber.status == SubscriberStatus.ACTIVE.value)
             .order_by(col(Subscriber.email)).limit(limit))
    return list(session.exec(query))
