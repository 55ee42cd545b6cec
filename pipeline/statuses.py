"""The statuses an issue and a delivery move through, and the kinds of bounce-mailbox reports.

Apart from the tables (models.py), so that the quick reads (glance.py) and the complaint rate
name them without loading the ORM; models.py re-exports them where they have always been.
"""

from __future__ import annotations

from enum import StrEnum


class IssueStatus(StrEnum):
    DRAFT = "draft"
    SENDING = "sending"
    SENT = "sent"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its period passed before it could be started or finished
    SKIPPED = "skipped"  # a scheduled period with nothing to send


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # owed, not attempted yet (or waiting for a retry)
    SENDING = "sending"  # claimed by a worker, attempt in flight
    SENT = "sent"
    FAILED = "failed"  # permanent failure, or transient past the retry deadline
    UNKNOWN = "unknown"  # no reply after the message went out, or its sender died: maybe sent
    SKIPPED = "skipped"  # unsubscribed (or suppressed) before the attempt


class BounceKind(StrEnum):
    HARD = "hard"  # 5.x.x: the address does not exist
    SOFT = "soft"  # 4.x.x, mailbox full, delayed: counted
    COMPLAINT = "complaint"  # ARF feedback report: marked as spam
    UNSUBSCRIBE = "unsubscribe"  # a mail to the List-Unsubscribe mailto address
    AUTOREPLY = "autoreply"  # out of office, RFC 3834: left alone
    IGNORED = "ignored"  # unparseable, or nobody we know: left alone
