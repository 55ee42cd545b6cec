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
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import Settings
from pipeline.errors import PermanentDeliveryError, TransientDeliveryError, TransportUnavailable
from pipeline.message import ascii_address, confirmation_message
from pipeline.transports import Transport, make_transport
from subscribers import confirmation_queue, consent, queries
from subscribers.model import ConfirmationRequest, ConfirmationStatus, utcnow
from subscribers.tokens import load_secret

log = logging.getLogger("newsletter.confirmations")
LEASE = timedelta(minutes=10)
PER_ADDRESS_PER_DAY = 3  # confirmation emails one address gets in 24 hours, however often it signs up
MAX_ATTEMPTS = 10  # then the request fails: the sign-up can be tried again
INTERVAL_SECONDS = 30.0  # how often `serve`'s mailer looks without being woken


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
            request_id = confirmation_queue.claim(engine, utcnow(), LEASE)
            if request_id is None:
                break
            with Session(engine) as session:
                request = confirmation_queue.get(session, request_id)
                why_not = _why_not(session, request)
                if why_not is not None:
                    confirmation_queue.finish(session, request, ConfirmationStatus.DROPPED, why_not)
                    done.dropped += 1
                    continue
                subscriber = queries.by_id(session, request.subscriber_id)
                assert subscriber is not None
                secret = secret or load_secret(settings.base_dir)  # only when there is mail to sign
                try:
                    # Built inside: an address this sender cannot mail (one needing SMTPUTF8,
                    # signed up before the form refused them) fails its request, not the run.
                    raw = confirmation_message(settings, secret, subscriber, request.nonce)
                    transport = transport or (transport_factory or (lambda: make_transport(settings, "confirm")))()
                    transport.send(settings.newsletter.sender_address, ascii_address(subscriber.email), raw)
                except PermanentDeliveryError as exc:
                    confirmation_queue.finish(session, request, ConfirmationStatus.FAILED, str(exc))
                    done.failed, done.error = done.failed + 1, str(exc)
                    continue
                except (TransientDeliveryError, TransportUnavailable) as exc:
                    gave_up = request.attempts >= MAX_ATTEMPTS  # the claim counted this attempt
                    again = ConfirmationStatus.FAILED if gave_up else ConfirmationStatus.QUEUED
                    confirmation_queue.finish(session, request, again, str(exc))
                    done.error = str(exc)
                    if gave_up:
                        done.failed += 1
                    else:
                        done.waiting += 1
                    if isinstance(exc, TransportUnavailable):
                        break
                    continue
                confirmation_queue.finish(session, request, ConfirmationStatus.SENT, None)
                done.sent += 1
    finally:
        if transport is not None:
            transport.close()
    if done.error:
        log.warning("confirmation emails: %d sent, %d waiting, %d failed; last error: %s",
                    done.sent, done.waiting, done.failed, done.error)
    return done


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


def _why_not(session: Session, request: ConfirmationRequest) -> str | None:
    """Why this request gets no email (None: send it)."""
    subscriber = queries.by_id(session, request.subscriber_id)
    if subscriber is None or not consent.needs_confirmation(subscriber):
        return "no confirmation needed (active or removed)"
    day_ago = utcnow() - timedelta(days=1)
    if confirmation_queue.sent_since(session, request.subscriber_id, day_ago) >= PER_ADDRESS_PER_DAY:
        return f"{PER_ADDRESS_PER_DAY} confirmation emails to this address in 24 hours already"
    return None
