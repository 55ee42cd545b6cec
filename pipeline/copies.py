"""A subscriber's copy of an issue: the one place its message bytes are made, and `send-test`.

`personal_copy` is what sending, `send-test`, `issues preview`, the web preview, the gate and
`doctor` all call, so what is checked and previewed is what goes out.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import ledger, ledger_reads
from pipeline.config import Settings
from pipeline.issue_view import issue_view
from pipeline.issues import find_issue
from pipeline.links import unsubscribe_url
from pipeline.message import MessageFactory, ascii_address, new_message_id
from pipeline.models import Issue
from pipeline.render import Recipient, RenderedIssue, inert_unsubscribe_url, render_view, sample_recipient
from pipeline.render_cache import cached_render
from pipeline.returnpath import feedback_id
from pipeline.transports import Transport, make_transport
from subscribers.model import Subscriber, utcnow
from subscribers.tokens import load_secret


def rendered_issue(session: Session, settings: Settings, issue: Issue) -> RenderedIssue:
    """The issue's frozen render once sending started (a template edited mid-send changes
    nothing), else the render of its current essays, archive, settings and templates (paid
    once: pipeline/render_cache.py)."""
    frozen = issue.frozen_render
    if issue.html_template is not None and issue.text_template is not None and frozen:
        return RenderedIssue(subject=issue.subject, preheader=issue.preheader,
                             html=issue.html_template, text=issue.text_template,
                             html_unnamed=frozen["html_unnamed"], text_unnamed=frozen["text_unnamed"],
                             placeholders=dict(frozen["placeholders"]))
    return cached_render(session, settings, issue, lambda: render_view(settings, issue_view(session, settings, issue)))


def factory_for(settings: Settings, issue: Issue, rendered: RenderedIssue,
                subject_prefix: str = "") -> MessageFactory:
    """The message factory of one issue's render (built once per run: it saves re-rendering)."""
    return MessageFactory(settings, rendered, subject_prefix, feedback_id(settings, issue))


def personal_copy(
    session: Session | None,
    settings: Settings,
    secret: str,
    issue: Issue,
    subscriber: Subscriber | ledger.Claimed | None,
    *,
    factory: MessageFactory | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    subject_prefix: str = "",
    to: str | None = None,
) -> bytes:
    """THE one function that makes a subscriber's message bytes: sending, send-test and every
    preview call it. `subscriber` None: a made-up reader whose unsubscribe link is inert.
    `factory` (built once per run) saves re-rendering; without it `session` is needed. `to`:
    the subscriber's address as it goes on the wire, when the caller made it already."""
    if factory is None:
        if session is None:
            raise ValueError("personal_copy needs a session or a prepared factory")
        factory = factory_for(settings, issue, rendered_issue(session, settings, issue), subject_prefix)
    if session is not None and isinstance(subscriber, Subscriber) and issue.id and subscriber.id:
        # A copy of an issue that went out (or is going out) to this reader is the one they got:
        # under the name and address its ledger row froze, whatever changed since. Not its
        # Message-ID: a test copy under it could be dropped as a duplicate, or its bounce taken
        # for the real delivery's.
        frozen = ledger_reads.row_of(session, issue.id, subscriber.id)
        if frozen is not None and frozen.email:
            subscriber = ledger.Claimed(frozen.id or 0, subscriber.id, frozen.email, frozen.name,
                                        frozen.message_id, frozen.attempts)
    if subscriber is None:
        recipient = sample_recipient(settings)
    else:
        sid = subscriber.subscriber_id if isinstance(subscriber, ledger.Claimed) else subscriber.id
        link = unsubscribe_url(settings, secret, sid) if sid else inert_unsubscribe_url(settings)
        recipient = Recipient(subscriber.name or "", subscriber.email, link)
    return factory.build(recipient, message_id or new_message_id(settings), date or utcnow(), to)


def send_test(settings: Settings, engine: Engine, issue: int | str, to: str,
              transport: Transport | None = None) -> bytes:
    """One copy of `issue` to `to`, subject prefixed [TEST], as that subscriber (when it is one)
    would get it; no ledger rows, nothing marked sent."""
    # Imported here: consent loads email_validator (~30 ms), which sending never needs.
    from subscribers.consent import find as find_subscriber  # noqa: PLC0415

    secret = load_secret(settings.base_dir)
    with Session(engine) as session:
        target = find_issue(session, issue)
        address = ascii_address(to)
        subscriber = find_subscriber(session, to)
        factory = factory_for(settings, target, rendered_issue(session, settings, target), "[TEST] ")
        who = subscriber or ledger.Claimed(0, 0, to.strip(), "", "", 0)  # not a subscriber
        raw = personal_copy(session, settings, secret, target, who, factory=factory)
    transport = transport or make_transport(settings, f"test-{target.key}")
    try:
        transport.send(settings.newsletter.sender_address, address, raw)
    finally:
        transport.close()
    return raw
