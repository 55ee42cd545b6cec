"""The confirmation mailer: sends the queued double opt-in emails, never inside a web request.

The sign-up form only queues a request (subscribers/consent.py), so its answer takes the same
time and says the same for every address. The mailer decides here, per request, whether to send:
only to an address that still needs confirming, and at most PER_ADDRESS_PER_DAY times a day to
one address. `newsletter serve` runs it in a background thread (woken by each sign-up);
`newsletter worker` and the scheduler run it on every round; `subscribers add --confirm` runs it
at once. Any number of them may run together: a request is claimed by a conditional update, and
a claim whose mailer died returns to the queue after LEASE (the retry keeps its Message-ID, so the
outbox writes no second file and mail clients merge the copies).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import PermanentDeliveryError, TransientDeliveryError, TransportUnavailable
from pipeline.message import confirmation_message
from pipeline.transports import Transport, make_transport
from subscribers import consent
from subscribers.model import ConfirmationRequest, ConfirmationStatus, Subscriber, utcnow
from subscribers.tokens import load_secret

log = logging.getLogger("newsletter.confirmations")
LEASE = timedelta(minutes=10)
PER_ADDRESS_PER_DAY = 3  # confirmation emails one address gets in 24 hours, however often it signs up
MAX_ATTEMPTS = 10  # then the request fails: the sign-up can be tried again
INTERVAL_SECONDS = 30.0  # how often `serve`'s mailer looks without being woken
QUEUED, SENDING = ConfirmationStatus.QUEUED.value, ConfirmationStatus.SENDING.value


@dataclass
class Mailed:
    """What one run of the mailer did."""

    sent: int = 0
    dropped: int = 0
    failed: int = 0
    waiting: int = 0  # back in the queue: the relay was down or said "later"
    error: str | None = None  # the last delivery error, for the log


def send_queued(
    settings: Settings, engine: Engine, *, secret: str | None = None,
    transport_factory: Callable[[], Transport] | None = None, limit: int = 500,
) -> Mailed:
    """Send (or drop) the queued confirmation emails, oldest first, at most `limit` of them.

    Stops early when the relay is unavailable: the rest wait for the next run.
    """
    done = Mailed()
    transport: Transport | None = None
    try:
        for _ in range(limit):
            request_id = _claim(engine, utcnow())
            if request_id is None:
                break
            with Session(engine) as session:
                request = session.get(ConfirmationRequest, request_id)
                assert request is not None
                why_not = _why_not(session, request)
                if why_not is not None:
                    _finish(session, request, ConfirmationStatus.DROPPED, why_not)
                    done.dropped += 1
                    continue
                subscriber = session.get(Subscriber, request.subscriber_id)
                assert subscriber is not None
                secret = secret or load_secret(settings.base_dir)  # only when there is mail to sign
                mail = consent.confirmation_email(secret, subscriber, settings.web.base_url,
                                                  settings.newsletter.name)
                raw = confirmation_message(settings, mail, request.nonce)
                transport = transport or (transport_factory or (lambda: make_transport(settings, "confirm")))()
                try:
                    transport.send(settings.newsletter.sender_address, mail.to_email, raw)
                except PermanentDeliveryError as exc:
                    _finish(session, request, ConfirmationStatus.FAILED, str(exc))
                    done.failed, done.error = done.failed + 1, str(exc)
                    continue
                except (TransientDeliveryError, TransportUnavailable) as exc:
                    gave_up = request.attempts >= MAX_ATTEMPTS  # the claim counted this attempt
                    _finish(session, request, ConfirmationStatus.FAILED if gave_up else ConfirmationStatus.QUEUED,
                            str(exc))
                    done.error = str(exc)
                    if gave_up:
                        done.failed += 1
                    else:
                        done.waiting += 1
                    if isinstance(exc, TransportUnavailable):
                        break
                    continue
                _finish(session, request, ConfirmationStatus.SENT, None)
                done.sent += 1
    finally:
        if transport is not None:
            transport.close()
    if done.error:
        log.warning("confirmation emails: %d sent, %d waiting, %d failed; last error: %s",
                    done.sent, done.waiting, done.failed, done.error)
    return done


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


class BackgroundMailer:
    """`serve`'s mailer thread: runs send_queued when woken (a sign-up) or every `interval`."""

    def __init__(self, settings: Settings, engine: Engine, wake: threading.Event,
                 interval: float = INTERVAL_SECONDS) -> None:
        self.settings, self.engine, self.wake, self.interval = settings, engine, wake, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="confirmation-mailer", daemon=True)

    def start(self) -> BackgroundMailer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                send_queued(self.settings, self.engine)
            except Exception:  # a database blip must not end the thread: the queue keeps the work
                log.exception("the confirmation mailer failed; trying again in %g s", self.interval)
            self.wake.wait(self.interval)
            self.wake.clear()


def _claim(engine: Engine, now: datetime) -> int | None:
    """The id of the oldest queued request (or one whose claim ran out), claimed for this run."""
    table = ConfirmationRequest.__table__  # type: ignore[attr-defined]
    due = or_(table.c.status == QUEUED, (table.c.status == SENDING) & (table.c.updated_at < now - LEASE))
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


def _why_not(session: Session, request: ConfirmationRequest) -> str | None:
    """Why this request gets no email (None: send it)."""
    subscriber = session.get(Subscriber, request.subscriber_id)
    if subscriber is None or not consent.needs_confirmation(subscriber):
        return "no confirmation needed (active or removed)"
    day_ago = utcnow() - timedelta(days=1)
    sent_today = session.exec(
        select(func.count()).select_from(ConfirmationRequest).where(
            ConfirmationRequest.subscriber_id == request.subscriber_id,
            ConfirmationRequest.status == ConfirmationStatus.SENT.value,
            col(ConfirmationRequest.sent_at) > day_ago)
    ).one()
    if sent_today >= PER_ADDRESS_PER_DAY:
        return f"{PER_ADDRESS_PER_DAY} confirmation emails to this address in 24 hours already"
    return None


def _finish(session: Session, request: ConfirmationRequest, status: ConfirmationStatus, error: str | None) -> None:
    now = utcnow()
    request.status, request.updated_at = status.value, now
    request.last_error = error[:500] if error else None
    if status == ConfirmationStatus.SENT:
        request.sent_at = now
    session.add(request)
    session.commit()

