"""The pipeline's tables: essays, issues and the per-subscriber delivery ledger."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, Index, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel

from pipeline.statuses import BounceKind as BounceKind
from pipeline.statuses import DeliveryStatus as DeliveryStatus
from pipeline.statuses import IssueStatus as IssueStatus
from subscribers.model import utcnow


class Essay(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(max_length=200, unique=True, index=True)
    title: str = Field(sa_column=Column(Text, nullable=False))
    dek: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # [{"kind": "p" | "h", "text": "..."}]: paragraphs and section headings, noise removed.
    body: list[dict[str, str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    published_on: date | None = None
    url: str | None = Field(default=None, max_length=500)  # its page, when the source gave one
    source_url: str | None = Field(default=None, max_length=500)  # where the text was scraped
    source_path: str | None = Field(default=None, max_length=1000)  # the file it came from
    # [{"summary": "...", "date": "2025-07-19" | null}]: what the source page listed as related.
    source_related: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    content_hash: str = Field(max_length=64)
    imported_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    sent_in_issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    # Published before the newsletter (`essays import --archive`): a related-link target that no
    # digest takes by itself (an issue may still name it).
    archive: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False,
                                                          server_default=false()))
    # Held back by the essayist (`essays hold`): no digest takes it by itself until it is
    # released (an issue may still name it).
    held: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False,
                                                       server_default=false()))


class Issue(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    # Unique: "weekly-2026-W48" for a scheduled period, "2026-11-30" (then "2026-11-30-2") by
    # hand; older manual issues keep their "manual-<uuid>". The database,
    # not the scheduler, decides that a period gets exactly one issue.
    key: str = Field(max_length=100, unique=True, index=True)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    preheader: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: str = Field(default=IssueStatus.DRAFT.value, max_length=16, index=True)
    # Frozen when sending starts: the rendered templates with per-subscriber placeholders, so a
    # template edited mid-send cannot make two subscribers get different issues.
    html_template: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    text_template: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The rest of that frozen render: {"html_unnamed", "text_unnamed", "placeholders"} (the
    # greeting differs for subscribers without a name, so there are two variants).
    frozen_render: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    not_after: datetime | None = None  # do not start or continue sending after this
    # The editor's note above the essays (Markdown), rendered into the HTML, text and web copy.
    intro: str = Field(default="", sa_column=Column(Text, nullable=False, default="", server_default=""))
    # Composed with --resend: readers who had one of its essays get it again (else left out).
    resend: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, default=False,
                                                         server_default=false()))


class IssueEssay(SQLModel, table=True):
    """Which essays an issue carries, in order."""

    __table_args__ = (UniqueConstraint("issue_id", "essay_id"),)

    issue_id: int = Field(foreign_key="issue.id", primary_key=True)
    position: int = Field(primary_key=True)
    essay_id: int = Field(foreign_key="essay.id", index=True)


class Delivery(SQLModel, table=True):
    """One row per (issue, subscriber): who this issue is owed to, and what became of it."""

    __table_args__ = (
        UniqueConstraint("issue_id", "subscriber_id"),
        # What every claim asks for: an issue's owed rows in id order. Without it a claim walks
        # past every row already sent, and each batch of a large send is slower than the last.
        Index("ix_delivery_claim", "issue_id", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="issue.id", index=True)
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id", index=True)
    email: str = Field(max_length=320)  # copied in when the audience is frozen
    name: str = Field(default="", max_length=200)
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16, index=True)
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_until: datetime | None = None
    # host:pid of the process that claimed it last: names who holds a `sending` row, and lets a
    # command on that host see at once that the holder is gone.
    holder: str | None = Field(default=None, max_length=100)
    message_id: str = Field(max_length=250)  # made before the first attempt, kept across retries
    smtp_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = Field(default=None, index=True)  # rate limits count a window
    # What the bounce mailbox said later about this delivery (a DSN, a complaint): the status
    # stays "sent" (it was), these say what became of it.
    feedback: str | None = Field(default=None, max_length=16, index=True)  # BounceKind value
    feedback_status: str | None = Field(default=None, max_length=16)  # the DSN's "5.1.1"
    feedback_detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    feedback_at: datetime | None = None


class Feed(SQLModel, table=True):
    """An RSS or Atom feed essays are read from, and what its last poll found."""

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=500, unique=True, index=True)
    origin: str = Field(default="cli", max_length=16)  # "cli" (feeds add) or "config" ([sources])
    title: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # The validators of the last complete poll, sent back so that an unchanged feed costs a 304.
    etag: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_modified: str | None = Field(default=None, max_length=100)
    added_at: datetime = Field(default_factory=utcnow)
    # None until a poll succeeds: that first poll takes only recent entries as new.
    first_polled_at: datetime | None = None
    last_polled_at: datetime | None = None
    last_status: str | None = Field(default=None, max_length=16)  # ok | not-modified | failed
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class FeedEntry(SQLModel, table=True):
    """One entry seen in a feed (by its id/guid, else its link) and the essay it became."""

    __table_args__ = (UniqueConstraint("feed_id", "guid"),)

    id: int | None = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)
    guid: str = Field(max_length=1000)
    # None when the entry was not imported: older than the first poll's window, or undated then.
    essay_id: int | None = Field(default=None, foreign_key="essay.id", index=True)
    skipped_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    first_seen_at: datetime = Field(default_factory=utcnow)


class BounceEvent(SQLModel, table=True):
    """One finding of the bounce mailbox: a subscriber's bounce/complaint history."""

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16, index=True)
    email: str = Field(default="", max_length=320)  # the failed recipient the report names
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id", index=True)
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id", index=True)
    status: str = Field(default="", max_length=16)  # the DSN's Status, e.g. "5.1.1"
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    matched_by: str = Field(default="", max_length=16)  # verp, message-id, recipient, from
    report_key: str = Field(max_length=250, index=True)  # the report message's Message-ID
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ProcessedMessage(SQLModel, table=True):
    """A message of the bounce mailbox already handled: re-reading the mailbox changes nothing."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=250, unique=True, index=True)  # Message-ID, or a hash of the bytes
    kind: str = Field(max_length=16)
    note: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    processed_at: datetime = Field(default_factory=utcnow)
