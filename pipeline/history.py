"""Per-reader history: which essays each subscriber has had, read from the delivery ledger.

A reader "had" an essay when a Delivery of an issue carrying it is `sent`, or `unknown` (handed
to the relay with no reply: most such messages arrived, and the promise is never the same essay
twice, so a maybe counts as had). Failed, skipped and still-owed rows do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from pipeline.glance import essays_of
from pipeline.ledger import audience
from pipeline.models import Delivery, DeliveryStatus, Essay, Issue, IssueEssay

HAD = (DeliveryStatus.SENT.value, DeliveryStatus.UNKNOWN.value)


@dataclass(frozen=True)
class Received:
    """One issue in a reader's history: its key, when, what it carried and what became of it."""

    issue_key: str
    subject: str
    date: datetime | None
    status: str
    essays: tuple[str, ...]  # slugs, in the issue's order
    note: str  # why a row was skipped or failed (the ledger's last error), else ""


def had_before(session: Session, issue: Issue) -> dict[int, str]:
    """subscriber id -> the slug of an essay of `issue` they had in another issue already."""
    carried = select(IssueEssay.essay_id).where(IssueEssay.issue_id == issue.id)
    found = session.exec(
        select(Delivery.subscriber_id, Essay.slug)
        .join(IssueEssay, col(IssueEssay.issue_id) == col(Delivery.issue_id))
        .join(Essay, col(Essay.id) == col(IssueEssay.essay_id))
        .where(col(Delivery.status).in_(HAD), Delivery.issue_id != issue.id,
               col(IssueEssay.essay_id).in_(carried), col(Delivery.subscriber_id).is_not(None))
        .order_by(col(Delivery.subscriber_id), col(IssueEssay.position))
    ).all()
    had: dict[int, str] = {}
    for subscriber_id, slug in found:
        had.setdefault(int(subscriber_id or 0), slug)
    return had


def had_by_some(session: Session, essay_ids: list[int]) -> set[int]:
    """Which of these essays some reader has had already: an issue carrying them reached some
    readers but was never finished (it expired half-sent), so they are still unsent."""
    if not essay_ids:
        return set()
    return {int(essay_id) for essay_id in session.exec(
        select(IssueEssay.essay_id).distinct()
        .join(Delivery, col(Delivery.issue_id) == col(IssueEssay.issue_id))
        .where(col(IssueEssay.essay_id).in_(essay_ids), col(Delivery.status).in_(HAD))
    ).all()}


def left_out(session: Session, issue: Issue) -> dict[int, str]:
    """Who `issue` is not sent to because they had one of its essays (id -> that essay's slug):
    nobody when it was composed with --resend. The freeze and the dry run both ask this."""
    return {} if issue.resend else had_before(session, issue)


def repeats(session: Session, issue: Issue) -> dict[str, int]:
    """essay slug -> how many active readers had it already (each reader counted once, under
    the first such essay of the issue): what the send confirmation tells."""
    had, counted = had_before(session, issue), dict[str, int]()
    if not had:  # the common case: no need to walk the whole audience
        return counted
    for subscriber_id, _, _ in audience(session):
        if subscriber_id in had:
            counted[had[subscriber_id]] = counted.get(had[subscriber_id], 0) + 1
    return counted


def received_essays(session: Session, subscriber_id: int) -> list[str]:
    """The slugs of every essay the reader has had (sent or unknown), oldest issue first."""
    return list(dict.fromkeys(session.exec(
        select(Essay.slug)
        .join(IssueEssay, col(IssueEssay.essay_id) == col(Essay.id))
        .join(Delivery, col(Delivery.issue_id) == col(IssueEssay.issue_id))
        .where(Delivery.subscriber_id == subscriber_id, col(Delivery.status).in_(HAD))
        .order_by(col(Delivery.id), col(IssueEssay.position))
    ).all()))


def history(session: Session, subscriber_id: int) -> list[Received]:
    """Every issue the reader was in the audience of, the oldest first, with its essays."""
    rows = session.exec(
        select(Delivery, Issue).join(Issue, col(Issue.id) == col(Delivery.issue_id))
        .where(Delivery.subscriber_id == subscriber_id).order_by(col(Delivery.id))
    ).all()
    # A reader has one row per issue (the ledger's unique key), so each issue's essays are read once.
    return [Received(issue.key, issue.subject, delivery.sent_at or delivery.updated_at, delivery.status,
                     tuple(e.slug for e in essays_of(session.connection(), issue.id or 0)),
                     delivery.last_error or "")
            for delivery, issue in rows]
