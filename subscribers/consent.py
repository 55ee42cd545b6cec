"""Consent: who may be mailed, and every change of a subscriber's status, under rules nothing breaks.

The rules (README, section "subscribers"):

1. An address that opted out (unsubscribed), bounced, complained or was removed is never made
   active again by the operator's paths (`add`, `import`): they report it and leave it alone.
2. Only the person can bring it back: a re-subscription (web form) that they confirm by
   following a signed confirmation link. Until then the old status stands, so a forged sign-up
   cannot undo an opt-out, and a confirmation link older than the latest unsubscribe is void.
3. Every opt-out leaves a one-way hash of the address in Suppression; `remove` erases the
   personal data but keeps that hash, so a later import cannot bring the address back.
4. Web sign-ups are `pending` until confirmed when `subscribers.double_opt_in` is on (the
   default); the operator's `add`/`import` make subscribers active (the operator vouches for
   their consent) unless asked for `pending`.

Each function here is one complete action and commits it: an unsubscribe must never be lost
because a caller forgot to commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from sqlalchemy import delete, func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from subscribers.addresses import clean_name, normalize_email, parse_address, suppression_hash
from subscribers.errors import ConsentError, UnknownSubscriber
from subscribers.model import (
    OPTED_OUT,
    ConfirmationRequest,
    Subscriber,
    SubscriberStatus,
    Suppression,
    utcnow,
)
from subscribers.tokens import CONFIRM, UNSUBSCRIBE, read_token, read_token_issued

ACTIVE = SubscriberStatus.ACTIVE.value
PENDING = SubscriberStatus.PENDING.value
STREAM_PAGE = 1000


def operator_decision(current: str | None, suppressed: bool, want: str) -> tuple[str | None, str]:
    """Rule 1 for `add` and `import`: (the status to write or None to refuse, why).

    `current` is the existing row's status (None: no row), `want` is ACTIVE or PENDING.
    """
    if current in OPTED_OUT or suppressed:
        label = current if current in OPTED_OUT else "removed or opted out earlier"
        return None, f"{label}: only the person can re-subscribe (and confirm)"
    if current == ACTIVE:
        return ACTIVE, "already active"  # never downgraded to pending
    return want, "new" if current is None else "was pending"


def find(session: Session, email: str) -> Subscriber | None:
    """The subscriber with this address (any spelling), or None; never an erased one, whose key
    `removed:ID` is no address (a lookup falls back to the text as typed for an invalid one)."""
    key = normalize_email(email)
    return session.exec(select(Subscriber).where(
        Subscriber.email_normalized == key, Subscriber.status != SubscriberStatus.REMOVED.value)).first()


def by_address(session: Session, email: str) -> Subscriber:
    """The subscriber with this address (any spelling), or UnknownSubscriber naming it: every
    command given an address asks here, so each says the same and fails alike."""
    subscriber = find(session, email)
    if subscriber is None:
        raise _unknown(email)
    return subscriber


def _unknown(email: str, then: str = "") -> UnknownSubscriber:
    return UnknownSubscriber(f"no subscriber with the address {email!r}{then}")


def get(session: Session, subscriber_id: int) -> Subscriber:
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise UnknownSubscriber(f"no subscriber with id {subscriber_id}")
    return subscriber


def is_suppressed(session: Session, email: str) -> bool:
    """True when this address opted out, bounced, complained or was removed."""
    digest = suppression_hash(normalize_email(email))
    return session.exec(select(Suppression.id).where(Suppression.email_hash == digest)).first() is not None


def add(
    session: Session, email: str, name: str = "", source: str = "cli", pending: bool = False,
    check_deliverability: bool = False,
) -> tuple[Subscriber, str]:
    """The operator adds one address: (subscriber, "added" | "updated" | "unchanged").

    Raises InvalidEmail, or ConsentError when rule 1 forbids it.
    """
    address = parse_address(email, check_deliverability)
    name = clean_name(name)
    subscriber = find(session, address.normalized)
    current = subscriber.status if subscriber else None
    status, why = operator_decision(current, is_suppressed(session, address.normalized), PENDING if pending else ACTIVE)
    if status is None:
        raise ConsentError(f"{address.email} is not added: {why}")
    now = utcnow()
    if subscriber is None:
        subscriber = Subscriber(
            email=address.email, email_normalized=address.normalized, name=name, status=status,
            source=source, confirmed_at=now if status == ACTIVE else None,
        )
        winner = _insert(session, subscriber)
        return winner, "added" if winner is subscriber else "unchanged"
    changed = status != subscriber.status or (name and name != subscriber.name)
    if not changed:
        return subscriber, "unchanged"
    if status != subscriber.status:
        subscriber.status, subscriber.confirmed_at = status, now
    subscriber.name = name or subscriber.name
    subscriber.updated_at = now
    session.add(subscriber)
    session.commit()
    return subscriber, "updated"


def subscribe(
    session: Session, email: str, name: str = "", source: str = "web", double_opt_in: bool = True,
    check_deliverability: bool = False,
) -> tuple[Subscriber, bool]:
    """A person asks to subscribe: (subscriber, needs_confirmation), and a queued confirmation.

    Every call that gets this far queues a ConfirmationRequest, in the same commit as a new
    subscriber, whatever the address's status: the caller's answer then takes the same work for
    every address, and the mailer (pipeline/confirmations.py) sends only to one that
    needs_confirmation. An opted-out or removed address always needs confirmation (rule 2), and
    its status does not change until then; an active subscriber stays as is (the form cannot
    rename somebody else); a pending one takes the name of this latest sign-up.
    """
    address = parse_address(email, check_deliverability)
    name = clean_name(name)
    subscriber = find(session, address.normalized)
    if subscriber is None:
        confirm = double_opt_in or is_suppressed(session, address.normalized)
        subscriber = _insert(session, Subscriber(
            email=address.email, email_normalized=address.normalized, name=name,
            status=PENDING if confirm else ACTIVE, source=source, confirmed_at=None if confirm else utcnow(),
        ), commit=False)
    elif subscriber.status == PENDING and name and name != subscriber.name:
        # Still unconfirmed: the latest sign-up names them (the one whose email they follow), not
        # the first, which may have been a stranger's with an advert for a name.
        subscriber.name = name
        session.add(subscriber)
    assert subscriber.id is not None
    session.add(ConfirmationRequest(subscriber_id=subscriber.id, nonce=secrets.token_hex(16)))
    session.commit()
    return subscriber, needs_confirmation(subscriber)


def needs_confirmation(subscriber: Subscriber) -> bool:
    """Whether a sign-up of this subscriber gets a confirmation email: any status but active/removed."""
    return subscriber.status not in (ACTIVE, SubscriberStatus.REMOVED.value)


def confirm_by_token(session: Session, secret: str, token: str) -> Subscriber:
    """The person followed their confirmation link: make them active (again). Idempotent.

    Raises BadToken/ExpiredToken, UnknownSubscriber, or ConsentError for a link made before the
    latest opt-out (unsubscribe, hard bounce or complaint: following an old link is not a new
    decision) or for a removed address.
    """
    subscriber_id, issued = read_token_issued(secret, CONFIRM, token)
    subscriber = get(session, subscriber_id)
    if subscriber.status == ACTIVE:
        return subscriber
    if subscriber.status == SubscriberStatus.REMOVED:
        raise ConsentError("this address was removed from the list; please sign up again")
    left = subscriber.unsubscribed_at
    # A link made in the very microsecond of the unsubscribe counts as older; so does one of an
    # older kind, which knows only its whole second (issued has microsecond 0 then).
    if left is not None and issued <= left:
        raise ConsentError("this confirmation link is older than your unsubscribe (or the address's "
                           "latest bounce or complaint); please sign up again")
    now = utcnow()
    subscriber.status, subscriber.confirmed_at, subscriber.updated_at = ACTIVE, now, now
    session.add(subscriber)
    digest = suppression_hash(subscriber.email_normalized)
    session.execute(delete(Suppression).where(Suppression.email_hash == digest))  # type: ignore[arg-type]
    session.commit()
    return subscriber


def unsubscribe_by_token(session: Session, secret: str, token: str) -> bool:
    """The person clicked an unsubscribe link: False when they were already off the list."""
    subscriber = get(session, read_token(secret, UNSUBSCRIBE, token))
    return _opt_out(session, subscriber, SubscriberStatus.UNSUBSCRIBED)


def unsubscribe(session: Session, email: str) -> bool:
    """Unsubscribe an address (asked by email, say): False when it was already off the list."""
    return _opt_out(session, by_address(session, email), SubscriberStatus.UNSUBSCRIBED)


def mark_bounced(session: Session, subscriber_id: int) -> bool:
    """A hard bounce: the address does not exist. False when it was already marked so."""
    return _opt_out(session, get(session, subscriber_id), SubscriberStatus.BOUNCED)


def mark_complained(session: Session, subscriber_id: int) -> bool:
    """A spam complaint (feedback loop): never mail them again. False when already marked."""
    return _opt_out(session, get(session, subscriber_id), SubscriberStatus.COMPLAINED)


def remove(session: Session, email: str) -> None:
    """Erase an address's personal data, keeping only its suppression hash (rule 3).

    The row stays as an anonymous tombstone (status "removed", no address, no name) so its id is
    never given to somebody else (an old unsubscribe link must not reach a new person); the
    delivery ledger's copies of the address and name are blanked too, and sends still owed to
    it are skipped. The ledger's table belongs to the pipeline, which this package may not
    import, hence plain SQL on it. Raises UnknownSubscriber when the address is not on the list
    (mistyped, or erased before), after recording its hash all the same: whoever asked to be
    forgotten stays off the list, and the caller still learns that nothing was erased.
    """
    key = normalize_email(email)
    subscriber = find(session, key)
    already = subscriber is None and is_suppressed(session, key)  # only said of an unknown address
    _suppress(session, key, SubscriberStatus.REMOVED.value)
    if subscriber is None:
        session.commit()
        raise _unknown(email, f" (nothing to erase; it is suppressed {'already' if already else 'now'}, "
                              "so no import or add can put it on the list)")
    assert subscriber.id is not None
    subscriber.email, subscriber.name, subscriber.source = "", "", ""
    subscriber.email_normalized = f"removed:{subscriber.id}"
    subscriber.status = SubscriberStatus.REMOVED.value
    subscriber.confirmed_at = None
    subscriber.unsubscribed_at = subscriber.updated_at = utcnow()
    session.add(subscriber)
    session.execute(
        text(
            "UPDATE delivery SET email = '', name = '', "
            "status = CASE WHEN status = 'pending' THEN 'skipped' ELSE status END "
            "WHERE subscriber_id = :id"
        ),
        {"id": subscriber.id},
    )
    session.commit()


def active_subscribers(session: Session, page: int = STREAM_PAGE) -> Iterator[Subscriber]:
    """Every active subscriber in id order, fetched a page at a time (a list can be large).

    Keyset pages rather than one open cursor: nothing is held open between pages, and it works
    the same on SQLite and PostgreSQL.
    """
    last = 0
    while True:
        query = (
            select(Subscriber)
            .where(Subscriber.status == ACTIVE, Subscriber.id > last)  # type: ignore[operator]
            .order_by(Subscriber.id)  # type: ignore[arg-type]
            .limit(page)
        )
        rows = session.exec(query).all()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1].id  # type: ignore[assignment]


def counts(session: Session) -> dict[str, int]:
    """How many subscribers have each status (every status listed, zeros included)."""
    found = dict(session.exec(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
    return {status.value: int(found.get(status.value, 0)) for status in SubscriberStatus}


def would_opt_out(current: str, status: SubscriberStatus) -> bool:
    """Whether an opt-out as `status` changes a subscriber now `current` (pure: what a dry run
    shows): a complaint outranks a bounce, both outrank an unsubscribe, removed is final."""
    if current == status.value or current == SubscriberStatus.REMOVED:
        return False
    if status == SubscriberStatus.UNSUBSCRIBED and current in OPTED_OUT:
        return False  # bounced or complained: already off the list, keep the stronger reason
    # A later bounce must not wash out a spam complaint (the sender's reputation).
    return not (status == SubscriberStatus.BOUNCED and current == SubscriberStatus.COMPLAINED)


def _opt_out(session: Session, subscriber: Subscriber, status: SubscriberStatus) -> bool:
    """Record an opt-out under the ranking of `would_opt_out`. False when no change."""
    if not would_opt_out(subscriber.status, status):
        return False
    now = utcnow()
    # The latest opt-out of any kind, as an import records it: a confirmation link made before
    # it is void (confirm_by_token). Keeping the first let a link older than a complaint or a
    # bounce make the address active again.
    subscriber.status, subscriber.updated_at, subscriber.unsubscribed_at = status.value, now, now
    session.add(subscriber)
    _suppress(session, subscriber.email_normalized, status.value)
    session.commit()
    return True


def _suppress(session: Session, normalized: str, reason: str) -> None:
    digest = suppression_hash(normalized)
    row = session.exec(select(Suppression).where(Suppression.email_hash == digest)).first()
    if row is None:
        session.add(Suppression(email_hash=digest, reason=reason))
    else:
        row.reason = reason
        session.add(row)
    session.flush()


def _insert(session: Session, subscriber: Subscriber, commit: bool = True) -> Subscriber:
    """Add a new subscriber (committed, or only flushed); the row that holds the address when
    another process won the race.

    Two sign-ups of one address at the same moment (a double click) both find no row; the
    unique key lets one insert win, and the other gets the winner's row instead of an error.
    """
    session.add(subscriber)
    try:
        session.commit() if commit else session.flush()
    except IntegrityError:
        session.rollback()
        winner = find(session, subscriber.email_normalized)
        if winner is None:  # the conflict was about something else: not ours to hide
            raise
        return winner
    return subscriber
