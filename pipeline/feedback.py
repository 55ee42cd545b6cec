"""Process the bounce mailbox: classify each message, match it to a delivery, record it, apply consent.

The story (`process_mailbox`): open the source; for each message not processed before, classify
it (pipeline/bounces.py), find the delivery it is about (the signed VERP return path first, then
the quoted Message-ID, then the failed recipient's address), change the subscriber's status
through subscribers/consent.py (hard bounce and complaint at once, soft bounces once
`soft_bounce_limit` of them fall within `soft_bounce_days`, an emailed unsubscribe like the
one-click link), and record the finding on the delivery row, in the bounce history and as a
processed message, in one transaction. The status change comes first and is idempotent, so a
crash in between repeats it harmlessly on the next run; the processed record makes a re-run
change nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import bounce_log, ledger_reads
from pipeline.bounces import Failure, Finding, classify, message_key, severity
from pipeline.config import Settings
from pipeline.errors import NewsletterError
from pipeline.mailbox import Source, open_source
from pipeline.models import BounceEvent, BounceKind, Delivery
from pipeline.returnpath import delivery_id_of
from subscribers import consent
from subscribers.addresses import normalize_email
from subscribers.model import Subscriber, SubscriberStatus, utcnow
from subscribers.tokens import load_secret

log = logging.getLogger("newsletter.bounces")


@dataclass
class HandledMessage:
    """What processing did with one mailbox message (one row of the table the CLI prints)."""

    key: str
    kind: str
    email: str = ""
    issue_id: int | None = None
    matched_by: str = ""
    action: str = ""  # what changed: "bounced", "complained", "unsubscribed", "counted", ""
    reason: str = ""


@dataclass
class MailboxReport:
    source: str = ""
    dry_run: bool = False
    outcomes: list[HandledMessage] = field(default_factory=list)
    already: int = 0  # messages processed by an earlier run

    def counts(self) -> dict[str, int]:
        found = {kind.value: 0 for kind in BounceKind}
        for outcome in self.outcomes:
            found[outcome.kind] += 1
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "dry_run": self.dry_run, "already_processed": self.already,
                "counts": self.counts(), "messages": [o.__dict__ for o in self.outcomes]}


def process_mailbox(settings: Settings, engine: Engine, *, dry_run: bool = False,
                    location: str | None = None, source: Source | None = None,
                    now: datetime | None = None) -> MailboxReport:
    """Process every new message of the bounce mailbox; `dry_run` reads and writes nothing."""
    secret = load_secret(settings.base_dir)
    source = source or open_source(settings.bounces, location)
    report = MailboxReport(source=source.description, dry_run=dry_run)
    unsubscribe = settings.bounces.unsubscribe_address if settings.bounces.enabled else ""
    # A dry run records no bounce events, so its soft bounces are counted here: it must reach
    # each limit where the real run would.
    counted: Counter[int] = Counter()
    try:
        for handle, raw in source.messages():
            # The key from the headers first: an mbox is never rewritten, so every run sees every
            # message again, and classifying (a full MIME parse and walk) is the costly part.
            key = message_key(raw)
            with Session(engine, expire_on_commit=False) as session:
                finding = None
                if not bounce_log.processed(session, key):
                    finding = classify(raw, unsubscribe)
                    # A message that broke the parser is keyed by its hash: look that up too.
                    if finding.key != key and bounce_log.processed(session, finding.key):
                        finding = None
                if finding is None:
                    report.already += 1
                    if not dry_run:
                        source.done(handle)
                    continue
                report.outcomes.extend(apply(session, settings, secret, finding, dry_run, now or utcnow(), counted))
            if not dry_run:
                source.done(handle)
    finally:
        source.close()
    return report


def read_bounces(settings: Settings, engine: Engine) -> None:
    """The bounce mailbox, once (the interval job of the scheduler and the worker): logs, never raises
    a NewsletterError (an unreachable mailbox must not stop the digest)."""
    try:
        report = process_mailbox(settings, engine)
    except NewsletterError as exc:
        log.error("bounce mailbox: %s; trying again in %g minutes", exc, settings.bounces.interval_minutes)
        return
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    if counts:
        log.info("bounce mailbox %s: %s", report.source, counts)


def apply(session: Session, settings: Settings, secret: str, finding: Finding, dry_run: bool,
          now: datetime, counted: Counter[int] | None = None) -> list[HandledMessage]:
    """Match `finding`, change statuses and record it (nothing written when `dry_run`; then
    `counted` holds the soft bounces per subscriber this dry run has read so far)."""
    counted = Counter() if counted is None else counted
    outcomes: list[HandledMessage] = []
    events: list[BounceEvent] = []
    if finding.kind == BounceKind.UNSUBSCRIBE:
        subscriber = consent.find(session, finding.sender) if finding.sender else None
        outcome = HandledMessage(finding.key, finding.kind.value, finding.sender, matched_by="from",
                          reason=finding.reason)
        if subscriber is None:
            outcome.reason = f"{finding.sender or 'the sender'} is not a subscriber: nothing to do"
        else:
            changed = dry_run and consent.would_opt_out(subscriber.status, SubscriberStatus.UNSUBSCRIBED)
            if not dry_run:
                changed = consent.unsubscribe(session, subscriber.email)
            outcome.action = "unsubscribed" if changed else ""
            if not changed:
                outcome.reason = f"already {subscriber.status}"
            events.append(_event(finding, Failure(finding.sender, BounceKind.UNSUBSCRIBE), subscriber.id,
                                 None, "from", now))
        outcomes.append(outcome)
    elif finding.failures:
        for failure in finding.failures:
            outcome, event = _apply_failure(session, settings, secret, finding, failure, dry_run, now, counted)
            outcomes.append(outcome)
            events.append(event)
    else:
        outcomes.append(HandledMessage(finding.key, finding.kind.value, finding.sender, reason=finding.reason))
    if not dry_run:
        bounce_log.record(session, events, finding.key, finding.kind.value, finding.reason, now)
        session.commit()
    return outcomes


def _apply_failure(session: Session, settings: Settings, secret: str, finding: Finding, failure: Failure,
                   dry_run: bool, now: datetime, counted: Counter[int]) -> tuple[HandledMessage, BounceEvent]:
    delivery, matched_by = _match(session, settings, secret, finding, failure)
    email = delivery.email if delivery is not None else failure.recipient
    subscriber_id = delivery.subscriber_id if delivery is not None else None
    outcome = HandledMessage(finding.key, failure.kind.value, email or failure.recipient,
                      delivery.issue_id if delivery else None, matched_by,
                      reason=" ".join(filter(None, (failure.status, failure.detail))) or finding.reason)
    event = _event(finding, failure, subscriber_id, delivery, matched_by, now)
    if matched_by == UNPROVEN:
        outcome.matched_by, event.matched_by = "", ""
        outcome.reason = ("names no message we sent (no signed return path, no Message-ID of ours): "
                          "forged or about another sender's mail; recorded, nothing changed")
        return outcome, event
    if delivery is None or subscriber_id is None:
        outcome.reason = f"no delivery matches {failure.recipient or 'this report'}: recorded, nothing changed"
        return outcome, event
    subscriber = session.get(Subscriber, subscriber_id)
    status = subscriber.status if subscriber is not None else "removed"
    if failure.kind == BounceKind.SOFT:
        since = now - timedelta(days=settings.bounces.soft_bounce_days)
        earlier = bounce_log.soft_bounces_since(session, subscriber_id, since) + counted[subscriber_id]
        if dry_run:
            counted[subscriber_id] += 1
        limit = settings.bounces.soft_bounce_limit
        outcome.action = "counted"
        outcome.reason = (f"soft bounce {earlier + 1} of {limit} in "
                          f"{settings.bounces.soft_bounce_days:g} days: {outcome.reason}")
        if earlier + 1 >= limit:
            outcome.action = _change(session, subscriber_id, status, BounceKind.HARD, dry_run) or "counted"
    else:
        outcome.action = _change(session, subscriber_id, status, failure.kind, dry_run)
        if not outcome.action:
            outcome.reason = f"already {status}; {outcome.reason}"
    if not dry_run:
        _mark_delivery(delivery, failure, now)
        session.add(delivery)
    return outcome, event


def _change(session: Session, subscriber_id: int, status: str, kind: BounceKind, dry_run: bool) -> str:
    """Bounced or complained, through the consent rules; "" when that changed nothing."""
    target = SubscriberStatus.COMPLAINED if kind == BounceKind.COMPLAINT else SubscriberStatus.BOUNCED
    if dry_run:
        return target.value if consent.would_opt_out(status, target) else ""
    mark = consent.mark_complained if kind == BounceKind.COMPLAINT else consent.mark_bounced
    return target.value if mark(session, subscriber_id) else ""


UNPROVEN = "unproven"  # _match: the report names no delivery of ours at all


def _match(session: Session, settings: Settings, secret: str, finding: Finding,
           failure: Failure) -> tuple[Delivery | None, str]:
    """The delivery a failure is about: by VERP, by the quoted Message-ID, by the recipient.

    A return path or a quoted Message-ID names one delivery, of the whole report; a report that
    names none is not matched at all, by address neither (UNPROVEN). When the report
    lists one recipient that is the failure (even at a forwarded address); when it lists several,
    it says which failure is about that delivery only by address, so each failure is charged to it
    only when the addresses agree, and the others are matched by their own recipient."""
    several = len({normalize_email(f.recipient) for f in finding.failures}) > 1

    def about_this_failure(delivery: Delivery) -> bool:
        return not several or normalize_email(delivery.email) == normalize_email(failure.recipient)

    proven = False  # the report names a delivery of ours: it is about mail we sent
    for address in finding.addressed_to:
        delivery_id = delivery_id_of(settings, secret, address)
        if delivery_id is not None:
            found = session.get(Delivery, delivery_id)
            proven = proven or found is not None
            if found is not None and about_this_failure(found):
                return found, "verp"
    if finding.original_message_id:
        found = ledger_reads.by_message_id(session, finding.original_message_id)
        proven = proven or found is not None
        if found is not None and about_this_failure(found):
            return found, "message-id"
    if not proven:
        # Anyone can mail the bounce address a report naming any reader: without our signed
        # return path or a Message-ID we sent, it is forged, or about another sender's mail.
        return None, UNPROVEN
    if failure.recipient:
        subscriber = consent.find(session, failure.recipient)
        if subscriber is not None:
            found = ledger_reads.latest_to(session, subscriber.id or 0)
            if found is not None:
                return found, "recipient"
    return None, ""


def _mark_delivery(delivery: Delivery, failure: Failure, now: datetime) -> None:
    """The delivery keeps the weightiest thing said about it (a complaint outranks a bounce)."""
    current = BounceKind(delivery.feedback) if delivery.feedback else None
    if current is not None and severity(current) > severity(failure.kind):
        return
    delivery.feedback, delivery.feedback_status = failure.kind.value, failure.status[:16] or None
    delivery.feedback_detail, delivery.feedback_at = failure.detail or None, now


def _event(finding: Finding, failure: Failure, subscriber_id: int | None, delivery: Delivery | None,
           matched_by: str, now: datetime) -> BounceEvent:
    return BounceEvent(kind=failure.kind.value, email=(failure.recipient or "")[:320],
                       subscriber_id=subscriber_id, issue_id=delivery.issue_id if delivery else None,
                       delivery_id=delivery.id if delivery else None, status=failure.status[:16],
                       detail=failure.detail or finding.reason, matched_by=matched_by,
                       report_key=finding.key[:250], created_at=now)

