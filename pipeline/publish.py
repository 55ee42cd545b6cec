"""The story of sending an issue: choose it, render once, check, freeze, deliver, finish, report.

`publish` is what `newsletter send`, the scheduler, `sends retry` and the workers run; `enqueue`
stops after the freeze (the workers deliver), `dry_run` builds every message and writes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import gate, history, issues, leases, ledger, ledger_reads, sender
from pipeline.config import Settings
from pipeline.copies import factory_for, personal_copy, rendered_issue
from pipeline.db import session_scope
from pipeline.errors import NewsletterError, NotFound, Refused
from pipeline.message import MessageFactory, ascii_address, message_id_frame, new_message_id
from pipeline.models import Essay, Issue, IssueStatus
from pipeline.render import RenderedIssue
from pipeline.returnpath import return_path
from pipeline.transports import Transport, make_transport
from subscribers.model import utcnow
from subscribers.tokens import load_secret

OPEN = (IssueStatus.DRAFT.value, IssueStatus.SENDING.value)
Clock = Callable[[], datetime]


class Ending(StrEnum):
    """How a run ended: exactly one of these (`Report.why` says more where there is more)."""

    NOTHING = "nothing"  # there was nothing to do (why: the reason)
    DECLINED = "declined"  # the confirmation was answered no
    DRY_RUN = "dry-run"  # every message built, nothing sent or written
    ENQUEUED = "enqueued"  # frozen and left to the workers
    PAUSED = "paused"  # the relay is gone, a login refused, a long rate wait (why: the reason)
    STOPPED = "stopped"  # Ctrl-C / stop flag: the batch in flight was finished and recorded
    OWED = "owed"  # nothing due now; deliveries still owed (retries waiting, held elsewhere)
    FINISHED = "finished"  # this run marked the issue sent: nothing is owed any more


@dataclass
class Report(sender.Tally):
    """What a run did (this run's numbers), how it ended, and where the issue stands (`counts`)."""

    issue_id: int | None = None
    issue_key: str = ""
    subject: str = ""
    total: int = 0  # the frozen audience (for a dry run: who would get it)
    to_send: int = 0  # owed when this run began delivering
    reconciled: int = 0  # rows a stopped sender left in flight, found and marked unknown
    counts: dict[str, int] = field(default_factory=dict)
    built: int = 0  # a dry run: the messages it built (it sends none: `sent` stays 0)
    built_bytes: int = 0  # a dry run: the size of every message it built
    # essay slug -> readers left out because they had it already (an issue not composed --resend)
    left_out: dict[str, int] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)  # held essays a draft named by the user carries
    resend: bool = False  # composed --resend: readers who had its essays get them again
    ending: Ending = Ending.OWED
    why: str = ""  # for NOTHING and PAUSED: the reason, in a sentence
    refused: str = ""  # a dry run: why the send gate would refuse the real send ("" if it would not)
    next_retry_at: datetime | None = None
    seconds: float = 0.0

    def end(self, ending: Ending, why: str = "") -> Report:
        self.ending, self.why = ending, why
        return self

    @property
    def handled(self) -> int:
        """Deliveries this run has dealt with, whatever became of them: what a progress bar counts."""
        return self.sent + self.failed + self.retrying + self.unknown + self.skipped

    @property
    def owed(self) -> int:
        return self.counts.get("pending", 0) + self.counts.get("sending", 0)

    @property
    def undecided(self) -> int:
        """Deliveries of a finished issue that may or may not have arrived: the operator decides."""
        return self.counts.get("unknown", 0) if not self.owed else 0

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("errors", "why")}
        data["errors"] = [{"email": e, "error": m} for e, m in self.errors]
        data["owed"], data["undecided"] = self.owed, self.undecided
        # The JSON of `send --json` keeps a field per ending, as scripts read it.
        for ending in (Ending.DRY_RUN, Ending.FINISHED, Ending.STOPPED, Ending.DECLINED, Ending.ENQUEUED):
            data[ending.value.replace("-", "_")] = self.ending is ending
        for ending in (Ending.PAUSED, Ending.NOTHING):
            data[ending.value] = self.why if self.ending is ending else None
        return data


def publish(
    settings: Settings,
    engine: Engine,
    issue: int | str | None = None,
    *,
    latest: bool = False,
    confirm: Callable[[Issue, int], bool] | None = None,
    transport_factory: Callable[[], Transport] | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[Report], None] | None = None,
    now: datetime | Clock | None = None,
    force: bool = False,
    delivering: Callable[[Report], None] | None = None,
    chosen: bool = False,
) -> Report:
    """Send `issue` (id or key; `latest`: the newest open issue, composed when none is open) to
    everyone it is owed to. `confirm(issue, audience)` may decline; `stop` finishes the batch in
    flight and stops; `now` fixes the clock (a datetime advances with real time). Over real mail
    the message must pass the checklist's MUST checks first (gate.Refused; `force` sends anyway).
    `delivering(report)` is told the run's report as delivery begins: it fills in as batches are
    recorded, so a caller whose run then raises (the database failing mid-send) still has what
    the run did until then. `chosen`: the program picked `issue` (the scheduler's week), the
    user did not name it; then, as for `latest`, a draft carrying a held essay is Refused."""
    clock, started, stop = _clock(now), time.monotonic(), stop or threading.Event()
    target, rendered, factory, report = _prepare(settings, engine, issue, latest, clock(), force, confirm,
                                                 chosen)
    if target is None or rendered is None or factory is None:
        return report
    # Read before the issue starts: a key that cannot be read stops the run with the issue
    # still a draft, not `sending` with nothing sent.
    secret = load_secret(settings.base_dir)
    _start(settings, engine, target, rendered, report, clock())
    build = _builder(settings, target, factory, secret, clock)
    if delivering is not None:
        delivering(report)
    paused = sender.deliver(
        settings, engine, target, report, build, lambda row_id: return_path(settings, secret, row_id),
        transport_factory or (lambda: make_transport(settings, target.key)), stop,
        (lambda: progress(report)) if progress else None, clock)
    finished = _finish(engine, target.id or 0, report, clock())
    if paused:
        report.end(Ending.PAUSED, paused)
    elif finished or stop.is_set():
        report.end(Ending.FINISHED if finished else Ending.STOPPED)
    report.seconds = time.monotonic() - started
    return report


def enqueue(settings: Settings, engine: Engine, issue: int | str | None = None, *, latest: bool = False,
            confirm: Callable[[Issue, int], bool] | None = None, now: datetime | Clock | None = None,
            force: bool = False, chosen: bool = False) -> Report:
    """`send --enqueue`: the story up to the freeze; `newsletter worker` processes deliver."""
    clock = _clock(now)
    target, rendered, _factory, report = _prepare(settings, engine, issue, latest, clock(), force, confirm,
                                                  chosen)
    if target is None or rendered is None:
        return report
    _start(settings, engine, target, rendered, report, clock())
    return report.end(Ending.ENQUEUED)


def dry_run(settings: Settings, engine: Engine, issue: int | str | None = None, *, latest: bool = False,
            now: datetime | Clock | None = None) -> Report:
    """Everything but the transport: every owed message is built; nothing is written (a draft
    composed for it is not kept)."""
    started, moment = time.monotonic(), _clock(now)()
    with Session(engine, expire_on_commit=False) as session:
        newest = issues.newest_id(session)
        target, report = _look(session, settings, issue, latest, moment, chosen=False)
        if target is None:
            return report
        rendered = rendered_issue(session, settings, target)
        factory, secret = factory_for(settings, target, rendered), load_secret(settings.base_dir)
        try:  # the gate's own check on the same sample a real send checks
            # A draft composed just now, for this dry run only, is not kept: lint cannot find it.
            _gate(settings, target, factory, stored=(target.id or 0) <= newest)
        except gate.SendRefused as exc:
            report.refused = str(exc)
        build = _builder(settings, target, factory, secret, lambda: moment)
        if target.status == IssueStatus.SENDING.value:
            owed = ledger.owed(session, target.id or 0)
        else:
            skip = history.left_out(session, target)
            owed = (row for row in ledger.audience(session) if row[0] not in skip)
        for subscriber_id, email, name in owed:
            row = ledger.Claimed(0, subscriber_id or 0, email, name, new_message_id(settings), 0)
            try:
                report.built_bytes += len(build(row, ascii_address(email)))
                report.built += 1
            except NewsletterError as exc:
                report.failed += 1
                report.errors.append((email, str(exc)))
        report.total = report.built + report.failed
        report.counts = ledger_reads.counts(session, target.id) if target.id else {}
        session.rollback()  # a composed draft, too, is not kept by a dry run
    report.seconds = time.monotonic() - started
    return report.end(Ending.DRY_RUN)


def _prepare(settings: Settings, engine: Engine, ref: int | str | None, latest: bool, now: datetime,
             force: bool, confirm: Callable[[Issue, int], bool] | None, chosen: bool,
             ) -> tuple[Issue | None, RenderedIssue | None, MessageFactory | None, Report]:
    """The issue to send, its render and that render's message factory (made once per run),
    checked by the gate and confirmed; None: not sent."""
    with Session(engine, expire_on_commit=False) as session:
        target, report = _look(session, settings, ref, latest, now, chosen)
        if target is None:
            return None, None, None, report
        rendered = rendered_issue(session, settings, target)
        session.commit()  # keeps a composed draft, and lets go of SQLite's write lock
    # Before the prompt; a refused draft is kept, for `newsletter lint` and the next send.
    factory = factory_for(settings, target, rendered)
    _gate(settings, target, factory, force)
    if confirm is not None and not confirm(target, report.total):
        return None, None, None, report.end(Ending.DECLINED)
    return target, rendered, factory, report


def _look(session: Session, settings: Settings, ref: int | str | None, latest: bool,
          now: datetime, chosen: bool) -> tuple[Issue | None, Report]:
    """The issue asked for and who it goes to; None (and why, in the report) when it is not sent.
    A draft carrying a held essay is Refused when the program chose it (`chosen`, `latest`), and
    any draft carrying an essay another issue is sending now (`issues.refuse_in_flight`)."""
    target, why, picked = _choose(session, settings, ref, latest)
    if target is None:
        return None, Report().end(Ending.NOTHING, why)
    report = Report(issue_id=target.id, issue_key=target.key, subject=target.subject)
    refusal = _refusal(target, now)
    if refusal:
        report.reconciled = leases.reconcile(session, target.id or 0, now)
        report.counts = ledger_reads.counts(session, target.id or 0)
        session.commit()
        return None, report.end(Ending.NOTHING, refusal)
    if target.status == IssueStatus.DRAFT.value:  # started: its audience and render are frozen as they are
        essays = issues.issue_essays(session, target)
        report.held = _held(target, essays, chosen or picked)
        issues.refuse_in_flight(session, target, essays)  # before the prompt; start_sending decides a race
    report.total, report.resend = ledger_reads.audience_size(session, target), target.resend
    if target.status == IssueStatus.DRAFT.value and not target.resend:
        report.left_out = history.repeats(session, target)
        report.total -= sum(report.left_out.values())
        if not report.total and report.left_out:
            session.commit()
            return None, report.end(Ending.NOTHING, (
                f"issue {target.key} has nobody to go to: every active subscriber had "
                f"{', '.join(report.left_out)} already (`newsletter issues edit {target.key} --resend` "
                f"mails it to everyone)"))
    if not report.total and target.status == IssueStatus.DRAFT.value:
        # Starting would mark the issue and its essays sent to nobody.
        session.commit()  # keeps a composed draft for when there are readers
        return None, report.end(Ending.NOTHING, (
            f"issue {target.key} has nobody to go to: there are no active subscribers "
            f"(add some with `newsletter subscribers import FILE`)"))
    return target, report


def _choose(session: Session, settings: Settings, ref: int | str | None,
            latest: bool) -> tuple[Issue | None, str, bool]:
    """The issue asked for (None, and why: nothing to send), and whether the program picked it
    (`--latest`, or "latest" for the newest issue) rather than the user naming it."""
    if ref is not None:
        found = issues.find_issue(session, ref)
        return found, "", str(ref).strip() == "latest" and found.key != "latest"  # that key is named
    if not latest:
        raise NotFound("name an issue (id or key) or ask for the latest one")
    try:
        newest = issues.latest_issue(session)
        if newest.status in OPEN:
            return newest, "", True
    except NotFound:
        pass
    try:
        return issues.compose(session, settings), "", True
    except NotFound as exc:  # nothing unsent: not an error for "send the latest"
        return None, str(exc), True


def _held(issue: Issue, essays: Sequence[Essay], chosen: bool) -> list[str]:
    """The held essays a draft carries (`essays hold`): Refused when the program chose the
    draft, as the hold asks of every issue the essayist did not pick the essay for; a send that
    names the draft mails them (the report lists them, for the note)."""
    held = [e.slug for e in essays if e.held]
    if held and chosen:
        names, them = issues.listed(held)
        raise Refused(
            f"issue {issue.key} was not sent: it carries {names}, held (`newsletter essays hold`), and "
            f"neither the scheduler nor `send --latest` sends a draft that carries a held essay. Take "
            f"{them} out ({issues.taking_out(issue.key, held)}), release {them} (`newsletter "
            f"essays release {' '.join(held)}`), or send the issue as it is by naming it (`newsletter "
            f"send {issue.key}`)")
    return held


def _refusal(issue: Issue, now: datetime) -> str | None:
    if issue.status == IssueStatus.SENT.value:
        return f"issue {issue.key} has been sent already (`newsletter sends retry` resends failures)"
    if issue.status not in OPEN:
        return f"issue {issue.key} is {issue.status}: it is not sent any more"
    return issues.past_deadline(issue, now)


def _start(settings: Settings, engine: Engine, issue: Issue, rendered: RenderedIssue, report: Report,
           now: datetime) -> None:
    """In one transaction: the render onto the issue, one row per active subscriber, `sending`;
    then the rows a stopped sender left in flight reconciled, what is owed counted, and the
    hard bounces a stopped sender saved but did not mark marked."""
    if issue.status == IssueStatus.DRAFT.value:  # a worker's every round finds it started already
        with session_scope(engine) as session:  # start_sending decides a race under its row lock
            if issues.start_sending(session, issue.id or 0, rendered, now) is not None:
                ledger.freeze_audience(session, issue, message_id_frame(settings), now,
                                       history.left_out(session, issue))
    # The retry deadline (delivery.retry_hours) counts from when the issue started sending: the
    # stored start for a run that carries on, this run's start for the one that began it (a
    # rival that won start_sending's race began it a moment earlier).
    issue.status, issue.started_at = IssueStatus.SENDING.value, issue.started_at or now
    with session_scope(engine) as session:
        report.reconciled = leases.reconcile(session, issue.id or 0, now)
        report.counts = ledger_reads.counts(session, issue.id or 0)
    report.bounced += sender.mark_lost_bounces(engine, issue.id or 0)
    report.total, report.to_send = sum(report.counts.values()), report.counts["pending"]


def _gate(settings: Settings, issue: Issue, factory: MessageFactory, force: bool = False,
          stored: bool = True) -> None:
    """The gate's check on the copy a made-up reader would get; built only over real mail, as
    the outbox lets every message through (gate.SendRefused: the issue is not sent). `stored`:
    the issue is in the database (not a draft only a dry run composed)."""
    if gate.is_real_mail(settings):
        gate.check(settings, personal_copy(None, settings, "", issue, None, factory=factory), issue.key, force,
                   stored)


def _builder(settings: Settings, issue: Issue, factory: MessageFactory, secret: str,
             clock: Clock) -> sender.Build:
    """build(row, to) -> the bytes of that subscriber's copy, from one render for the whole run."""
    return lambda row, to: personal_copy(None, settings, secret, issue, row, factory=factory,
                                         message_id=row.message_id, date=clock(), to=to)


def _finish(engine: Engine, issue_id: int, report: Report, now: datetime) -> bool:
    """Mark the issue (and its essays) sent once nothing is pending or in flight."""
    with session_scope(engine) as session:
        report.counts = ledger_reads.counts(session, issue_id)
        report.next_retry_at = ledger_reads.next_retry(session, issue_id) if report.counts["pending"] else None
        return not report.owed and issues.finish(session, issue_id, now)


def _clock(now: datetime | Clock | None) -> Clock:
    if now is None:
        return utcnow
    if callable(now):
        return now
    base, origin = now.astimezone(UTC), time.monotonic()
    return lambda: base + timedelta(seconds=time.monotonic() - origin)
