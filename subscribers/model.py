"""The Subscriber and Suppression tables, and the statuses a subscriber moves through."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from subscribers.clock import utcnow as utcnow  # most modules have always imported it here


class SubscriberStatus(StrEnum):
    PENDING = "pending"  # signed up, has not confirmed yet (double opt-in)
    ACTIVE = "active"  # receives issues
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"  # a hard bounce: the address does not exist
    COMPLAINED = "complained"  # marked an issue as spam
    # Erased on request: the row keeps only its id (so an old token can never point at a new
    # person) and the address survives only as a hash in Suppression.
    REMOVED = "removed"


# Statuses that mean "never mail again unless the person re-subscribes and confirms".
OPTED_OUT = frozenset(
    {SubscriberStatus.UNSUBSCRIBED, SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED, SubscriberStatus.REMOVED}
)


class Subscriber(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320)  # as the person gave it
    email_normalized: str = Field(max_length=320, unique=True, index=True)
    name: str = Field(default="", max_length=200)
    status: str = Field(default=SubscriberStatus.PENDING.value, max_length=16, index=True)
    source: str = Field(default="", max_length=200)  # "import:file.csv", "web", "cli"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    confirmed_at: datetime | None = None
    unsubscribed_at: datetime | None = None


class Suppression(SQLModel, table=True):
    """An address that must never be mailed again, kept only as a one-way hash."""

    id: int | None = Field(default=None, primary_key=True)
    email_hash: str = Field(max_length=64, unique=True, index=True)
    reason: str = Field(default="removed", max_length=32)  # unsubscribed/bounced/complained/removed
    created_at: datetime = Field(default_factory=utcnow)


class ConfirmationStatus(StrEnum):
    QUEUED = "queued"  # waiting for the confirmation mailer
    SENDING = "sending"  # claimed by one mailer; back to the queue when its lease runs out
    SENT = "sent"
    DROPPED = "dropped"  # not sent: already active, removed, or too many for one address today
    FAILED = "failed"  # the relay refused the address for good, or too many attempts


class ConfirmationRequest(SQLModel, table=True):
    """A sign-up's confirmation email, waiting to be sent outside the request that asked for it.

    The web form queues one for every valid address, whatever its status, so its answer says
    nothing about who is subscribed; the mailer decides whether to send (pipeline/confirmations.py).
    """

    __tablename__ = "confirmation_request"

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", index=True)
    # The random part of the email's Message-ID: kept across attempts, so a retry is recognised.
    nonce: str = Field(max_length=64)
    status: str = Field(default=ConfirmationStatus.QUEUED.value, max_length=16, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)  # a claim's start: its lease counts from here
    sent_at: datetime | None = None
