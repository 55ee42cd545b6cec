"""The bounce history and the mailbox messages already processed: the only module querying them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from pipeline.models import BounceEvent, BounceKind, ProcessedMessage


def processed(session: Session, key: str) -> bool:
    """Whether the mailbox message with this key was processed by an earlier run."""
    return session.exec(select(ProcessedMessage.id).where(ProcessedMessage.key == key)).first() is not None


def soft_bounces_since(session: Session, subscriber_id: int, since: datetime) -> int:
    """How many soft bounces of this subscriber are recorded since `since`."""
    return int(session.exec(select(func.count()).select_from(BounceEvent).where(
        BounceEvent.subscriber_id == subscriber_id, BounceEvent.kind == BounceKind.SOFT.value,
        col(BounceEvent.created_at) >= since)).one())


def record(session: Session, events: Sequence[BounceEvent], key: str, kind: str, note: str,
           now: datetime) -> None:
    """Add a message's findings and mark it processed (in the caller's transaction)."""
    session.add_all(events)
    session.add(ProcessedMessage(key=key, kind=kind, note=note[:2000], processed_at=now))


def recent_events(session: Session, limit: int, kind: str | None = None) -> list[BounceEvent]:
    """The newest `limit` bounce events, of one kind or all."""
    query = select(BounceEvent).order_by(col(BounceEvent.created_at).desc(), col(BounceEvent.id).desc())
    if kind:
        query = query.where(BounceEvent.kind == kind)
    return list(session.exec(query.limit(limit)).all())
