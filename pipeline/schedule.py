"""The weekly digest on a schedule: the due-period job, and APScheduler 3.x wiring around it.

`run_due` is the whole job: it looks at the period that is due now, lets the database decide
whether this process is the one that composes its issue (the unique issue key), and then runs
the same publish story as a manual send. APScheduler enters the project only here; it merely
decides *when* `run_due` runs, never *whether* a week's digest goes out.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from pipeline import gate, issues, leases, polling, publish
from pipeline.complaints import scheduled_sending_paused
from pipeline.config import ScheduleSettings, Settings
from pipeline.confirmations import send_queued
from pipeline.db import session_scope
from pipeline.errors import NewsletterError, NotFound
from pipeline.feedback import read_bounces
from pipeline.models import Delivery, Issue, IssueStatus
from pipeline.periods import (
    FINISHED,
    Action,
    Outcome,
    Period,
    decide,
    describe,
    due_period,
    local_time,
    period_key,
    period_of_key,
    weekday_name,
)
from subscribers.model import utcnow

log = logging.getLogger("newsletter.schedule")
JOB_ID = "weekly-digest"
BOUNCE_JOB_ID = "bounce-mailbox"
# After a run that left deliveries owed or failed, the scheduler looks again this much later.
FOLLOW_UP_MINUTES = 10
Clock = Callable[[], datetime]


def run_due(
    settings: Settings,
    engine: Engine,
    now: datetime,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[publish.Report], None] | None = None,
    force: bool = False,
) -> Outcome:
    """Do what the period due at `now` needs: compose and send, resume, skip, expire or nothing.

    Safe to run from any number of processes at once: the issue key is unique, so only one
    insert for a week can win, and the others find the issue and resume or leave it. `stop`
    (set on SIGTERM) makes a send finish the batch in flight and return; the next run resumes.
    `progress` gets publish's report after every batch. Over SMTP a message that fails the
    checklist's MUST checks raises gate.SendRefused and leaves the issue unsent (a draft) for
    the next run after the config is fixed; `force` sends it anyway.
    """
    schedule = settings.schedule
    period = due_period(schedule, now)
    if not dry_run:
        expire_stale(settings, engine, now, keep=period.key)
        polling.poll_before_compose(settings, engine, period, now)  # feeds bring new essays
    reconciled = 0
    for _attempt in range(3):  # another process may win a race; then look again
        try:
            with session_scope(engine) as session:
                issue = _issue(session, period.key)
                if issue is not None and issue.id is not None and not dry_run:
                    # A sender killed mid-batch leaves rows `sending`: say so, do not blame a rival.
                    reconciled += leases.reconcile(session, issue.id, now)
                action = decide(schedule, period, issue.status if issue else None, now)
                if dry_run or action in (Action.NOT_DUE, Action.DONE):
                    return _outcome(settings, session, action, period, issue, now, dry_run)
                if action in (Action.EXPIRE_MISSED, Action.EXPIRE_STUCK):
                    if issue is None:  # claim the week, so that no later run starts it
                        issue = Issue(key=period.key,
                                      not_after=period.expires_at.astimezone(UTC))
                    _expire(issue, now)
                    session.add(issue)
                    session.flush()
                    return _outcome(settings, session, action, period, issue, now)
                if action is Action.COMPOSE:
                    paused = scheduled_sending_paused(session, settings.bounces)
                    if paused:  # too many complaints: a person must look before the next issue
                        outcome = _outcome(settings, session, Action.NOT_DUE, period, issue, now)
                        outcome.message = f"{period.key} not started: {paused}"
                        return outcome
                    issue = _compose(session, settings, period, now)
                    if issue.status in FINISHED:  # skipped (nothing unsent), or a rival finished
                        action = Action.DONE if issue.status != "skipped" else Action.COMPOSE
                        return _outcome(settings, session, action, period, issue, now)
                assert issue is not None and issue.id is not None
                issue_id = issue.id
        except IntegrityError:
            log.info("%s: another scheduler got there first; looking again", period.key)
            continue
        # Outside any transaction: sending takes long and must not hold a write lock.
        report = publish.publish(settings, engine, issue_id, now=now, stop=stop,
                                 progress=progress, deliver=not schedule.enqueue, force=force)
        with Session(engine) as session:
            outcome = _outcome(settings, session, action, period, _issue(session, period.key), now)
            holders = leases.in_flight(session, issue_id)
        if holders:
            outcome.held = leases.unconfirmed(holders)
            outcome.message += f" ({leases.describe_in_flight(holders)})"
        if reconciled + report.reconciled:
            outcome.message += (f" ({reconciled + report.reconciled} left in flight by a sender that "
                                f"stopped mid-attempt are now unknown)")
        if report.enqueued:  # schedule.enqueue: the workers send it
            outcome.enqueued = True
            outcome.message = (f"{period.key} handed to the workers: issue {outcome.status}, "
                               f"{report.to_send} deliveries owed (`newsletter worker` sends them)")
        stopped = "stopped by a signal" if report.stopped else None
        for why in (report.paused, report.nothing, stopped):
            if why:
                outcome.message += f" ({why})"
        return outcome
    raise RuntimeError(f"{period.key}: the issue kept changing under this scheduler")


def expire_stale(
    settings: Settings, engine: Engine, now: datetime, keep: str | None = None
) -> list[str]:
    """Mark older weekly issues (not `keep`) still unfinished past their expiry as expired."""
    expired = []
    with session_scope(engine) as session:
        open_issues = session.exec(
            select(Issue).where(
                Issue.key.startswith("weekly-"),  # type: ignore[attr-defined]
                Issue.status.in_(["draft", "sending"]),  # type: ignore[attr-defined]
                Issue.key != (keep or ""),
            )
        ).all()
        for issue in open_issues:
            period = period_of_key(settings.schedule, issue.key)
            if period is not None and decide(settings.schedule, period, issue.status, now) in (
                Action.EXPIRE_MISSED,  # a draft that never started
                Action.EXPIRE_STUCK,
            ):
                _expire(issue, now)
                expired.append(issue.key)
                log.warning("%s: still unfinished after its period expired; marked expired",
                            issue.key)
    return expired


def _issue(session: Session, key: str) -> Issue | None:
    return session.exec(select(Issue).where(Issue.key == key)).first()


def _compose(session: Session, settings: Settings, period: Period, now: datetime) -> Issue:
    """Compose the period's issue, or record the period as skipped when nothing is unsent."""
    try:
        issue = issues.compose(session, settings, key=period.key)
    except NotFound:
        session.rollback()
        issue = Issue(key=period.key, status=IssueStatus.SKIPPED.value,
                      finished_at=now.astimezone(UTC))
        session.add(issue)
        session.flush()
        return issue
    if issue.not_after is None:
        # Sending stops at the period's expiry even inside a long run.
        issue.not_after = period.expires_at.astimezone(UTC)
        session.add(issue)
        session.flush()
    return issue


def _expire(issue: Issue, now: datetime) -> None:
    issue.status = IssueStatus.EXPIRED.value
    issue.finished_at = now.astimezone(UTC)


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    rows = session.exec(
        select(Delivery.status, func.count())
        .where(Delivery.issue_id == issue_id)
        .group_by(Delivery.status)
    ).all()
    return {status: count for status, count in rows}


def _outcome(settings: Settings, session: Session, action: Action, period: Period,
             issue: Issue | None, now: datetime, dry_run: bool = False) -> Outcome:
    counts = delivery_counts(session, issue.id) if issue and issue.id else {}
    status = issue.status if issue else None
    return Outcome(action=action, key=period.key, due_at=period.due_at,
                   issue_id=issue.id if issue else None, status=status,
                   message=describe(settings.schedule, action, period, status, counts, dry_run),
                   next_due_at=next_fire_times(settings.schedule, now, 1)[0], counts=counts)


# --- APScheduler wiring ---------------------------------------------------------------------


def make_trigger(schedule: ScheduleSettings) -> CronTrigger:
    """The weekly cron trigger: weekday by name (3.x reads 0 as Monday), local time, timezone."""
    return CronTrigger(
        day_of_week=weekday_name(schedule.weekday),
        hour=schedule.time.hour,
        minute=schedule.time.minute,
        second=0,
        timezone=schedule.timezone,
    )


def next_fire_times(schedule: ScheduleSettings, now: datetime, count: int) -> list[datetime]:
    """The next `count` times the scheduler will fire after `now`, as APScheduler computes them."""
    trigger = make_trigger(schedule)
    times: list[datetime] = []
    previous: datetime | None = None
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, previous or now)
        if fire is None:
            break
        times.append(fire)
        previous = fire
    return times


def make_scheduler(
    settings: Settings,
    engine: Engine,
    clock: Clock = utcnow,
    stop: threading.Event | None = None,
) -> BlockingScheduler:
    """A blocking scheduler with the weekly job (its `func` is also the catch-up run);
    setting `stop` makes a running send finish its batch in flight and return."""
    schedule = settings.schedule
    scheduler = BlockingScheduler(
        timezone=schedule.timezone,
        # One worker thread: runs never overlap inside one process (the database guards
        # against other processes).
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={
            "coalesce": True,  # several missed firings run once
            "max_instances": 1,
            # APScheduler's default is one second; a digest may start this many hours late.
            "misfire_grace_time": max(1, int(schedule.grace_hours * 3600)),
        },
    )

    def job() -> None:
        now = clock()
        try:
            send_queued(settings, engine)  # sign-ups' confirmation emails, if `serve` left any
            outcome = run_due(settings, engine, now, stop=stop)
        except gate.SendRefused as exc:
            # The settings are read once: trying again soon would only refuse again.
            log.error("%s\nThe issue stays unsent; fix config.toml and restart the scheduler, "
                      "whose catch-up run sends it.", exc)
            return
        except NewsletterError as exc:
            # The scheduler is a shell like the CLI: report, keep running, and try again soon
            # (the issue, if composed, is resumed; its expiry still bounds the retries).
            log.error("the digest run failed: %s; trying again in %d minutes", exc,
                      FOLLOW_UP_MINUTES)
            follow_up(now)
            return
        expired = outcome.action in (Action.EXPIRE_MISSED, Action.EXPIRE_STUCK)
        log.log(logging.WARNING if expired or outcome.undecided else logging.INFO, "%s", outcome.message)
        workers = outcome.enqueued  # schedule.enqueue: `newsletter worker` processes send it
        if outcome.status in ("draft", "sending") and not workers and not (stop and stop.is_set()):
            # Deliveries still owed (retries waiting, a paused transport): come back for them.
            log.info("%s is unfinished; resuming in %d minutes", outcome.key, FOLLOW_UP_MINUTES)
            follow_up(now)
            return
        log.info("next digest due %s (%s UTC), issue %s", local_time(outcome.next_due_at),
                 outcome.next_due_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
                 period_key(outcome.next_due_at))

    def follow_up(_now: datetime) -> None:
        # Bring the weekly job forward instead of adding a one-off job: after it runs, the
        # cron trigger sets the next weekly time again. (A one-off job that a shutdown
        # catches in mid-removal makes APScheduler 3.x raise JobLookupError.)
        soon = datetime.now(UTC) + timedelta(minutes=FOLLOW_UP_MINUTES)
        planned = getattr(scheduler.get_job(JOB_ID), "next_run_time", None)
        scheduler.modify_job(JOB_ID, next_run_time=min(soon, planned) if planned else soon)

    def missed(event: JobExecutionEvent) -> None:
        log.warning("the digest due %s was missed by more than the grace time",
                    event.scheduled_run_time)

    scheduler.add_job(job, make_trigger(schedule), id=JOB_ID, name="weekly digest")
    if settings.bounces.enabled:
        scheduler.add_job(lambda: read_bounces(settings, engine),
                          IntervalTrigger(minutes=settings.bounces.interval_minutes),
                          id=BOUNCE_JOB_ID, name="bounce mailbox")
    scheduler.add_listener(missed, EVENT_JOB_MISSED)
    return scheduler


def run_forever(settings: Settings, engine: Engine, clock: Clock = utcnow) -> None:
    """Run the scheduler in the foreground until SIGTERM or Ctrl-C; a running job finishes
    its batch in flight first. A second signal exits at once."""
    stopping = threading.Event()
    scheduler = make_scheduler(settings, engine, clock, stopping)

    def shut_down() -> None:
        while not scheduler.running:  # a signal during start-up: wait until there is a loop
            time.sleep(0.05)
        scheduler.shutdown(wait=True)  # waits for the worker, then wakes the loop: start() returns

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("%s again: exiting now; a batch in flight is reconciled later", name)
            os._exit(128 + signum)
        log.info("%s received: stopping (a send in progress finishes its batch first)", name)
        stopping.set()
        # Not in the handler itself: it interrupts the main thread anywhere, possibly inside
        # APScheduler while it holds a lock that shutdown() needs.
        threading.Thread(target=shut_down, name="shutdown", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    first = next_fire_times(settings.schedule, clock(), 1)[0]
    log.info("scheduler started: weekly on %s at %s %s; next digest due %s (%s)",
             settings.schedule.weekday, settings.schedule.time.strftime("%H:%M"),
             settings.schedule.timezone.key, local_time(first), period_key(first))
    scheduler.get_job(JOB_ID).func()  # the catch-up: whatever is due now, once, before waiting
    if not stopping.is_set():
        scheduler.start()
    log.info("scheduler stopped")
