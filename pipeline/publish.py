"""The story of sending an issue: compose if needed, render once, freeze, deliver, report.

`publish` is what `newsletter send`, the scheduler and `sends retry` run; `personal_copy` is the
one function that makes a subscriber's message bytes, for sending, `send-test` and previews.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline import gate, leases, ledger
from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import (
    AmbiguousDeliveryError,
    NewsletterError,
    NotFound,
    PermanentDeliveryError,
    RenderError,
    TransientDeliveryError,
    TransportUnavailable,
)
from pipeline.issue_view import issue_view
from pipeline.issues import compose, find_issue, latest_issue
from pipeline.links import unsubscribe_url
from pipeline.message import MessageFactory, ascii_address, new_message_id
from pipeline.models import Essay, Issue, IssueEssay, IssueStatus
from pipeline.render import Recipient, RenderedIssue, inert_unsubscribe_url, render_view, sample_recipient
from pipeline.returnpath import feedback_id, return_path
from pipeline.transports import Transport, is_hard_bounce, make_transport
from subscribers.consent import find as find_subscriber
from subscribers.consent import mark_bounced
from subscribers.model import Subscriber, SubscriberStatus, utcnow
from subscribers.tokens import load_secret

MAX_RATE_WAIT = 300.0  # seconds a run sleeps for a rate limit; longer waits pause the run
OPEN = (IssueStatus.DRAFT.value, IssueStatus.SENDING.value)


@dataclass
class Report:
    """What a run did (this run's numbers) and where the issue stands (`counts`, all runs)."""

    issue_id: int | None = None
    issue_key: str = ""
    subject: str = ""
    total: int = 0  # the frozen audience (for a dry run: who would get it)
    to_send: int = 0  # owed when this run began delivering
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    unknown: int = 0  # handed over, then no reply: maybe delivered (never retried by itself)
    skipped: int = 0
    bounced: int = 0
    reconciled: int = 0  # rows a stopped sender left in flight, found and marked unknown
    counts: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    built_bytes: int = 0  # a dry run: the size of every message it built
    finished: bool = False  # the issue is marked sent: nothing is owed any more
    stopped: bool = False  # Ctrl-C / stop flag: the batch in flight was finished and recorded
    paused: str | None = None  # why the run paused (server unreachable, login, rate limit)
    nothing: str | None = None  # why there was nothing to do
    declined: bool = False  # the confirmation was answered no
    enqueued: bool = False  # frozen and left to the workers (deliver=False)
    next_retry_at: datetime | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)  # (email, error), first few
    seconds: float = 0.0

    @property
    def owed(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("sending", 0)

    @property
    def undecided(self) -> int:
        """Deliveries of a finished issue that may or may not have arrived: the operator decides."""
        return self.counts.get("unknown", 0) if not self.owed else 0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "errors"}
        data["errors"] = [{"email": e, "error": m} for e, m in self.errors]
        data["owed"] = self.owed
        data["undecided"] = self.undecided
        return data


def publish(
    settings: Settings,
    engine: Engine,
    issue: int | str | None = None,
    *,
    latest: bool = False,
    dry_run: bool = False,
    confirm: Callable[[Issue, int], bool] | None = None,
    transport_factory: Callable[[], Transport] | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[Report], None] | None = None,
    now: datetime | Callable[[], datetime] | None = None,
    deliver: bool = True,
    force: bool = False,
) -> Report:
    """Send `issue` (id or key; `latest`: the newest open issue, composed when none is open) to
    everyone it is owed to. `confirm(issue, audience)` may decline; `stop` finishes the batch in
    flight and stops; `now` fixes the clock (a datetime advances with real time). With
    `deliver=False` the render and audience are frozen and the issue left `sending` for
    `newsletter worker` processes (`send --enqueue`). Over real mail the message must pass the
    checklist's MUST checks first (pipeline/gate.py raises Refused; `force` sends anyway)."""
    clock = _clock(now)
    started = time.monotonic()
    with Session(engine, expire_on_commit=False) as session:
        target, why = _choose(session, settings, issue, latest)
        if target is None:
            return Report(nothing=why)
        report = Report(issue_id=target.id, issue_key=target.key, subject=target.subject, dry_run=dry_run)
        report.nothing = _refusal(target, clock())
        if report.nothing:
            report.reconciled = leases.reconcile(session, target.id or 0, clock())
            report.counts = ledger.counts(session, target.id or 0)
            session.commit()
            return report
        report.total = audience_size(session, target)
        if not report.total and target.status == IssueStatus.DRAFT.value:
            # Starting would mark the issue and its essays sent to nobody.
            session.commit()  # keeps a composed draft for when there are readers
            report.nothing = (f"issue {target.key} has nobody to go to: there are no active "
                              f"subscribers (add some with `newsletter subscribers import FILE`)")
            return report
        rendered = rendered_issue(session, settings, target)
        if dry_run:
            _dry_run(session, settings, target, rendered, report, clock())
            session.rollback()  # a composed draft, too, is not kept by a dry run
            report.seconds = time.monotonic() - started
            return report
        session.commit()  # keeps a composed draft, and lets go of SQLite's write lock
    # Before the prompt; a refused draft is kept, for `newsletter lint` and the next send.
    sample = personal_copy(None, settings, "", target, None, factory=MessageFactory(settings, rendered))
    gate.check(settings, sample, target.key, force)
    if confirm is not None and not confirm(target, report.total):
        report.declined = True
        return report
    issue_id = target.id or 0
    _freeze(engine, settings, target, rendered, clock())
    with session_scope(engine) as session:
        report.reconciled = leases.reconcile(session, issue_id, clock())
        before = ledger.counts(session, issue_id)
        report.total, report.to_send = sum(before.values()), before["pending"]
    if not deliver:
        report.enqueued = True
        report.counts = before
        return report
    _deliver(settings, engine, target, rendered, report, transport_factory, stop, progress, clock)
    _finish(engine, issue_id, report, clock())
    report.seconds = time.monotonic() - started
    return report


def _choose(session: Session, settings: Settings, ref: int | str | None, latest: bool) -> tuple[Issue | None, str]:
    if ref is not None:
        return find_issue(session, ref), ""
    if not latest:
        raise NotFound("name an issue (id or key) or ask for the latest one")
    try:
        newest = latest_issue(session)
        if newest.status in OPEN:
            return newest, ""
    except NotFound:
        pass
    try:
        return compose(session, settings), ""
    except NotFound as exc:  # nothing unsent: not an error for "send the latest"
        return None, str(exc)


def _refusal(issue: Issue, now: datetime) -> str | None:
    if issue.status == IssueStatus.SENT.value:
        return f"issue {issue.key} has been sent already (`newsletter sends retry` resends failures)"
    if issue.status not in OPEN:
        return f"issue {issue.key} is {issue.status}: it is not sent any more"
    if issue.not_after is not None and now > issue.not_after:
        return f"issue {issue.key} may not be sent after {issue.not_after:%Y-%m-%d %H:%M} UTC"
    return None


def rendered_issue(session: Session, settings: Settings, issue: Issue) -> RenderedIssue:
    """The issue's frozen render once sending started (a template edited mid-send changes
    nothing), else a fresh one."""
    frozen = issue.frozen_render
    if issue.html_template is not None and issue.text_template is not None and frozen:
        return RenderedIssue(subject=issue.subject, preheader=issue.preheader,
                             html=issue.html_template, text=issue.text_template,
                             html_unnamed=frozen["html_unnamed"], text_unnamed=frozen["text_unnamed"],
                             placeholders=dict(frozen["placeholders"]))
    return render_view(settings, issue_view(session, settings, issue))


def audience_size(session: Session, issue: Issue) -> int:
    """Who the issue goes to: its ledger once frozen, else today's active subscribers."""
    if issue.status == IssueStatus.SENDING.value:
        return sum(ledger.counts(session, issue.id or 0).values())
    return int(session.exec(select(func.count()).select_from(Subscriber).where(
        Subscriber.status == SubscriberStatus.ACTIVE.value)).one())


def _freeze(engine: Engine, settings: Settings, issue: Issue, rendered: RenderedIssue, now: datetime) -> None:
    """In one transaction: the render onto the issue, one row per active subscriber, `sending`."""
    with session_scope(engine) as session:
        current = session.exec(select(Issue).where(Issue.id == issue.id).with_for_update()).one()
        if current.status != IssueStatus.DRAFT.value:
            return  # frozen already, by an earlier run or a rival process
        current.html_template, current.text_template = rendered.html, rendered.text
        current.frozen_render = {"html_unnamed": rendered.html_unnamed,
                                 "text_unnamed": rendered.text_unnamed,
                                 "placeholders": rendered.placeholders}
        current.status, current.started_at = IssueStatus.SENDING.value, now
        session.add(current)
        session.flush()
        ledger.freeze_audience(session, current, lambda: new_message_id(settings), now)
    issue.status, issue.started_at = IssueStatus.SENDING.value, now


def _deliver(settings: Settings, engine: Engine, issue: Issue, rendered: RenderedIssue, report: Report,
             transport_factory: Callable[[], Transport] | None, stop: threading.Event | None,
             progress: Callable[[Report], None] | None, clock: Callable[[], datetime]) -> None:
    """One sender per connection, each claiming, sending and recording its own batches (so at
    most one batch per connection is ever in flight) until nothing is due or the run stops."""
    run = _Run(settings, engine, issue, report, MessageFactory(settings, rendered, feedback_id=feedback_id(settings, issue)),
               load_secret(settings.base_dir), transport_factory or (lambda: make_transport(settings, issue.key)),
               stop or threading.Event(), progress, clock)
    senders = [threading.Thread(target=run.sender, name=f"sender-{n}", daemon=True)
               for n in range(settings.delivery.connections)]
    with _ctrl_c_stops(run.stop):
        for sender in senders:
            sender.start()
        interrupted = False
        while any(sender.is_alive() for sender in senders):
            try:
                for sender in senders:
                    sender.join(0.2)  # short waits keep this thread answering signals
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                run.stop.set()  # the batches in flight finish and are recorded
    if run.failures:
        raise run.failures[0]
    report.stopped = run.stop.is_set() and report.paused is None


class _Run:
    """What the senders of one run share: the clock, the stop flags, the report (under a lock)."""

    def __init__(self, settings: Settings, engine: Engine, issue: Issue, report: Report,
                 factory: MessageFactory, secret: str, transport_factory: Callable[[], Transport],
                 stop: threading.Event, progress: Callable[[Report], None] | None,
                 clock: Callable[[], datetime]) -> None:
        self.settings, self.engine, self.issue, self.report = settings, engine, issue, report
        self.factory, self.secret, self.transport_factory = factory, secret, transport_factory
        self.stop, self.progress, self.clock = stop, progress, clock
        self.halt = threading.Event()  # paused: every sender ends after its batch
        self.lock = threading.Lock()
        self.failures: list[BaseException] = []
        started = issue.started_at or clock()
        self.deadline = started + timedelta(hours=settings.delivery.retry_hours)

    def sender(self) -> None:
        transport: Transport | None = None
        if hasattr(signal, "pthread_sigmask"):
            # Signals go to the main thread, whose handler sets `stop` at once, before this
            # sender can claim another batch.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            while not (self.stop.is_set() or self.halt.is_set()):
                claimed = self._claim()
                if claimed is None:
                    continue
                if not claimed:
                    return
                transport = transport or self.transport_factory()
                outcomes = [self._attempt(transport, row) for row in claimed]
                ledger.record(self.engine, outcomes, self.deadline)
                self._tally(outcomes)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self.failures.append(exc)
            self.halt.set()
        finally:
            if transport is not None:
                transport.close()

    def _claim(self) -> list[ledger.Claimed] | None:
        """The next batch; [] when nothing is due, None to look again (waited or skipped)."""
        delivery, issue = self.settings.delivery, self.issue
        now = self.clock()
        if issue.not_after is not None and now > issue.not_after:
            return self._pause(f"issue {issue.key} may not be sent after {issue.not_after:%Y-%m-%d %H:%M} UTC")
        claimed, skipped, wait = ledger.claim_within_rate(self.engine, issue.id or 0, delivery, now)
        if not wait:
            with self.lock:
                self.report.skipped += skipped
            return claimed if claimed or not skipped else None
        if wait > MAX_RATE_WAIT:
            resume = now + timedelta(seconds=wait)
            return self._pause(f"the rate limit is reached; send again after {resume:%Y-%m-%d %H:%M} UTC "
                               f"(nothing is lost)")
        self.stop.wait(wait)
        return None

    def _pause(self, why: str) -> list[ledger.Claimed]:
        with self.lock:
            self.report.paused = self.report.paused or why
        self.halt.set()
        return []

    def _attempt(self, transport: Transport, row: ledger.Claimed) -> ledger.Outcome:
        if self.halt.is_set():  # the server is gone: leave the rest owed, attempts unburnt
            return ledger.Outcome(row, "released", self.clock())
        try:
            raw = personal_copy(None, self.settings, self.secret, self.issue, row, factory=self.factory,
                                message_id=row.message_id, date=self.clock())
            transport.send(return_path(self.settings, self.secret, row.id), ascii_address(row.email), raw)
        except TransportUnavailable as exc:
            self._pause(f"{exc}. Nothing was lost: the deliveries not attempted are still owed; fix the "
                        f"problem; `newsletter send {self.issue.key}` carries on (a `newsletter worker` retries "
                        f"by itself)")
            return ledger.Outcome(row, "released", self.clock(), exc.code, str(exc))
        except AmbiguousDeliveryError as exc:
            return ledger.Outcome(row, "unknown", self.clock(), exc.code, str(exc))
        except TransientDeliveryError as exc:
            return ledger.Outcome(row, "retry", self.clock(), exc.code, str(exc))
        except (PermanentDeliveryError, RenderError) as exc:
            code = getattr(exc, "code", None)
            return ledger.Outcome(row, "failed", self.clock(), code, str(exc), is_hard_bounce(code, str(exc)))
        return ledger.Outcome(row, "sent", self.clock(), 250)

    def _tally(self, outcomes: list[ledger.Outcome]) -> None:
        with self.lock:
            _tally(self.engine, self.report, outcomes)
            if self.progress is not None:
                self.progress(self.report)


@contextmanager
def _ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """While delivering, the first Ctrl-C only sets `stop` (the batch in flight finishes and is
    recorded); the second interrupts. A caller's own SIGINT handler (the CLI's) is left alone."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            signal.default_int_handler(signum, frame)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _tally(engine: Engine, report: Report, outcomes: list[ledger.Outcome]) -> None:
    for o in outcomes:
        if o.kind == "sent":
            report.sent += 1
        elif o.kind == "retry":
            report.retrying += 1
        elif o.kind == "failed":
            report.failed += 1
        elif o.kind == "unknown":
            report.unknown += 1
        if o.kind in ("retry", "failed", "unknown") and len(report.errors) < 20:
            report.errors.append((o.claimed.email, o.error or ""))
        if o.hard_bounce:
            # consent.mark_bounced commits on its own: the address is suppressed for good.
            with Session(engine) as session:
                report.bounced += mark_bounced(session, o.claimed.subscriber_id)


def _finish(engine: Engine, issue_id: int, report: Report, now: datetime) -> None:
    """Mark the issue (and its essays) sent once nothing is pending or in flight."""
    with session_scope(engine) as session:
        report.counts = ledger.counts(session, issue_id)
        report.next_retry_at = ledger.next_retry(session, issue_id) if report.counts["pending"] else None
        issue = session.get(Issue, issue_id)
        if issue is None or issue.status != IssueStatus.SENDING.value or report.owed:
            return
        issue.status, issue.finished_at = IssueStatus.SENT.value, now
        session.add(issue)
        essay_ids = select(IssueEssay.essay_id).where(IssueEssay.issue_id == issue_id)
        session.execute(update(Essay).where(col(Essay.id).in_(essay_ids),
                                            col(Essay.sent_in_issue_id).is_(None))
                        .values(sent_in_issue_id=issue_id))
        report.finished = True


def _dry_run(session: Session, settings: Settings, issue: Issue, rendered: RenderedIssue,
             report: Report, now: datetime) -> None:
    """Everything but the transport: every owed message is built; nothing is written."""
    factory = MessageFactory(settings, rendered, feedback_id=feedback_id(settings, issue))
    secret = load_secret(settings.base_dir)
    if issue.status == IssueStatus.SENDING.value:
        owed = ledger.owed(session, issue.id or 0)
    else:
        owed = ledger.audience(session)
    for subscriber_id, email, name in owed:
        row = ledger.Claimed(0, subscriber_id or 0, email, name, new_message_id(settings), 0)
        try:
            report.built_bytes += len(personal_copy(None, settings, secret, issue, row, factory=factory,
                                                    message_id=row.message_id, date=now))
            report.sent += 1
        except NewsletterError as exc:
            report.failed += 1
            report.errors.append((email, str(exc)))
    report.total = report.sent + report.failed
    report.counts = ledger.counts(session, issue.id or 0) if issue.id else {}


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
) -> bytes:
    """THE one function that makes a subscriber's message bytes: sending, send-test and every
    preview call it. `subscriber` None: a made-up reader whose unsubscribe link is inert.
    `factory` (built once per run) saves re-rendering; without it `session` is needed."""
    if factory is None:
        if session is None:
            raise ValueError("personal_copy needs a session or a prepared factory")
        factory = MessageFactory(settings, rendered_issue(session, settings, issue), subject_prefix,
                                 feedback_id(settings, issue))
    if subscriber is None:
        recipient = sample_recipient(settings)
    else:
        sid = subscriber.subscriber_id if isinstance(subscriber, ledger.Claimed) else subscriber.id
        link = unsubscribe_url(settings, secret, sid) if sid else inert_unsubscribe_url(settings)
        recipient = Recipient(subscriber.name or "", subscriber.email, link)
    return factory.build(recipient, message_id or new_message_id(settings), date or utcnow())


def send_test(settings: Settings, engine: Engine, issue: int | str, to: str,
              transport: Transport | None = None) -> bytes:
    """One copy of `issue` to `to`, subject prefixed [TEST], as that subscriber (when it is one)
    would get it; no ledger rows, nothing marked sent."""
    secret = load_secret(settings.base_dir)
    with Session(engine) as session:
        target = find_issue(session, issue)
        address = ascii_address(to)
        subscriber = find_subscriber(session, to)
        factory = MessageFactory(settings, rendered_issue(session, settings, target), "[TEST] ",
                                 feedback_id(settings, target))
        who = subscriber or ledger.Claimed(0, 0, to.strip(), "", "", 0)  # not a subscriber
        raw = personal_copy(session, settings, secret, target, who, factory=factory)
    transport = transport or make_transport(settings, f"test-{target.key}")
    try:
        transport.send(settings.newsletter.sender_address, address, raw)
    finally:
        transport.close()
    return raw


def requeue(engine: Engine, issue: int | str, failed: bool, unknown: bool, now: datetime | None = None) -> int:
    """`sends retry`: failed and/or unknown rows become owed again (same Message-ID), and the
    issue is open for sending again; the caller then runs publish."""
    statuses = [s for s, wanted in ((ledger.FAILED, failed), (ledger.UNKNOWN, unknown)) if wanted]
    with session_scope(engine) as session:
        target = find_issue(session, issue)
        count = ledger.requeue(session, target.id or 0, statuses, now or utcnow())
        if count and target.status == IssueStatus.SENT.value:
            target.status, target.finished_at = IssueStatus.SENDING.value, None
            session.add(target)
        return count


def _clock(now: datetime | Callable[[], datetime] | None) -> Callable[[], datetime]:
    if now is None:
        return utcnow
    if callable(now):
        return now
    base, origin = now.astimezone(UTC), time.monotonic()
    return lambda: base + timedelta(seconds=time.monotonic() - origin)
