"""APScheduler 3.x wiring: *when* the weekly job (weekly.run_due) and the bounce reader run.

APScheduler enters the project only here; it merely decides *when* `run_due` runs, never
*whether* a week's digest goes out (pipeline/weekly.py and the database decide that).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.triggers.base import BaseTrigger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline import signals
from pipeline.config import ScheduleSettings, Settings
from pipeline.errors import NewsletterError, database_words
from pipeline.periods import Action, local_time, next_due, period_key
from subscribers.clock import utcnow

if TYPE_CHECKING:
    from apscheduler.events import JobExecutionEvent
    from apscheduler.schedulers.blocking import BlockingScheduler

log = logging.getLogger("newsletter.schedule")
JOB_ID = "weekly-digest"
BOUNCE_JOB_ID = "bounce-mailbox"
# Sign-ups' confirmation emails: `serve` sends them at once; when it cannot (the relay was down,
# or only the scheduler runs), they go within this many minutes, not with next week's digest.
CONFIRMATIONS_JOB_ID = "confirmation-emails"
CONFIRMATIONS_MINUTES = 1
# After a run that left deliveries owed or failed, the scheduler looks again this much later.
FOLLOW_UP_MINUTES = 10
Clock = Callable[[], datetime]


class WeeklyTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires when each week's digest is due, as pipeline/periods.py says: the one place that
    knows when a week's digest is due decides when the scheduler wakes for it too.

    Not APScheduler's CronTrigger: across a clock change it steps in wall-clock time and adds
    the step in UTC, so a Monday 00:30 in Berlin never fired for the week after spring-forward
    (it rolled over to the next Monday), and a time in the repeated autumn hour fired twice.
    """

    def __init__(self, schedule: ScheduleSettings) -> None:
        self.schedule = schedule

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        # As APScheduler's own triggers: the first time at or after `now`, or strictly after the
        # previous firing when there was one.
        after = previous_fire_time if previous_fire_time is not None else now - timedelta(microseconds=1)
        return next_due(self.schedule, after)[0].due_at

    def __str__(self) -> str:
        return f"weekly on {self.schedule.weekday} at {self.schedule.time:%H:%M} {self.schedule.timezone.key}"


def make_trigger(schedule: ScheduleSettings) -> WeeklyTrigger:
    """The weekly trigger: each week's due time, in the schedule's timezone."""
    return WeeklyTrigger(schedule)


def next_fire_times(schedule: ScheduleSettings, now: datetime, count: int) -> list[datetime]:
    """The next `count` times the scheduler will fire at or after `now` (its trigger's times)."""
    return [p.due_at for p in next_due(schedule, now - timedelta(microseconds=1), count)]


def make_scheduler(
    settings: Settings,
    engine: Engine,
    clock: Clock = utcnow,
    stop: threading.Event | None = None,
) -> BlockingScheduler:
    """A blocking scheduler with the weekly job (its `func` is also the catch-up run);
    setting `stop` makes a running send finish its batch in flight and return."""
    # Here, not at the top: `schedule next` only computes times, and should not pay for the
    # sender, the bounce reader and the scheduler's machinery.
    from apscheduler.events import EVENT_JOB_MISSED  # noqa: PLC0415
    from apscheduler.executors.pool import ThreadPoolExecutor  # noqa: PLC0415
    from apscheduler.schedulers.blocking import BlockingScheduler  # noqa: PLC0415
    from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

    from pipeline import gate  # noqa: PLC0415
    from pipeline.confirmations import send_queued  # noqa: PLC0415
    from pipeline.feedback import read_bounces  # noqa: PLC0415
    from pipeline.weekly import run_due  # noqa: PLC0415

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
        try:
            send_queued(settings, engine)  # sign-ups' confirmation emails, if `serve` left any
            # The time after them: a slow relay can carry that run past the digest's due time.
            outcome = run_due(settings, engine, clock(), stop=stop)
        except gate.SendRefused as exc:
            # The settings are read once: trying again soon would only refuse again.
            log.error("%s\nThe issue stays unsent; fix config.toml and restart the scheduler, "
                      "whose catch-up run sends it.", exc)
            return
        except (NewsletterError, SQLAlchemyError) as exc:
            # The scheduler is a shell like the CLI: report, keep running, and try again soon
            # (the issue, if composed, is resumed; its expiry still bounds the retries). The
            # database failing (a restart, a failover) too: left to APScheduler, the next run
            # would be next week's, and this week's digest lost.
            why = exc if isinstance(exc, NewsletterError) else f"the database failed: {database_words(exc)}"
            log.error("the digest run failed: %s; trying again in %d minutes", why, FOLLOW_UP_MINUTES)
            follow_up()
            return
        expired = outcome.action in (Action.EXPIRE_MISSED, Action.EXPIRE_STUCK)
        log.log(logging.WARNING if expired or outcome.undecided else logging.INFO, "%s", outcome.message)
        workers = outcome.enqueued  # schedule.enqueue: `newsletter worker` processes send it
        if outcome.status in ("draft", "sending") and not workers and not (stop and stop.is_set()):
            # Deliveries still owed (retries waiting, a paused transport): come back for them.
            log.info("%s is unfinished; resuming in %d minutes", outcome.key, FOLLOW_UP_MINUTES)
            follow_up()
            return
        log.info("next digest due %s (%s UTC), issue %s", local_time(outcome.next_due_at),
                 outcome.next_due_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
                 period_key(outcome.next_due_at))

    def follow_up() -> None:
        # Bring the weekly job forward instead of adding a one-off job: after it runs, the
        # weekly trigger sets the next weekly time again. (A one-off job that a shutdown
        # catches in mid-removal makes APScheduler 3.x raise JobLookupError.)
        bring_forward(scheduler, datetime.now(UTC) + timedelta(minutes=FOLLOW_UP_MINUTES))

    def missed(event: JobExecutionEvent) -> None:
        log.warning("the digest due %s was missed by more than the grace time",
                    event.scheduled_run_time)

    scheduler.add_job(job, make_trigger(schedule), id=JOB_ID, name="weekly digest")
    if settings.bounces.enabled:
        scheduler.add_job(lambda: read_bounces(settings, engine),
                          IntervalTrigger(minutes=settings.bounces.interval_minutes),
                          id=BOUNCE_JOB_ID, name="bounce mailbox")
    scheduler.add_job(lambda: send_queued(settings, engine), IntervalTrigger(minutes=CONFIRMATIONS_MINUTES),
                      id=CONFIRMATIONS_JOB_ID, name="confirmation emails")
    scheduler.add_listener(missed, EVENT_JOB_MISSED)
    return scheduler


def catch_up(scheduler: BlockingScheduler, first_due: datetime) -> None:
    """Run whatever is due now, once, before waiting; then the first wait ends at `first_due`
    (the next due time as it was before the catch-up) at the latest. Left to APScheduler, the
    first wait is reckoned from when the scheduler starts: a catch-up that ran past the due time
    (a slow relay) made that week's run next week's."""
    scheduler.get_job(JOB_ID).func()
    bring_forward(scheduler, first_due)  # unless a follow-up it set comes sooner


def bring_forward(scheduler: BlockingScheduler, when: datetime) -> None:
    """The weekly job's next run at `when`, unless it is planned sooner already."""
    planned = getattr(scheduler.get_job(JOB_ID), "next_run_time", None)
    scheduler.modify_job(JOB_ID, next_run_time=min(when, planned) if planned else when)


def run_forever(settings: Settings, engine: Engine, clock: Clock = utcnow) -> None:
    """Run the scheduler in the foreground until SIGTERM or Ctrl-C; a running job finishes
    its batch in flight first. A second signal exits at once."""
    stopping = threading.Event()
    scheduler = make_scheduler(settings, engine, clock, stopping)

    def shut_down() -> None:
        while not scheduler.running:  # a signal during start-up: wait until there is a loop
            time.sleep(0.05)
        scheduler.shutdown(wait=True)  # waits for the worker, then wakes the loop: start() returns

    def first(name: str) -> None:
        log.info("%s received: stopping (a send in progress finishes its batch first)", name)
        # Not in the handler itself: it interrupts the main thread anywhere, possibly inside
        # APScheduler while it holds a lock that shutdown() needs.
        threading.Thread(target=shut_down, name="shutdown", daemon=True).start()

    def again(signum: int) -> None:
        log.warning("%s again: exiting now; a batch in flight is reconciled later",
                    signals.name_of(signum))
        os._exit(128 + signum)

    with signals.stop_on(stopping, first, again):
        first_due = next_fire_times(settings.schedule, clock(), 1)[0]
        log.info("scheduler started: weekly on %s at %s %s; next digest due %s (%s)",
                 settings.schedule.weekday, settings.schedule.time.strftime("%H:%M"),
                 settings.schedule.timezone.key, local_time(first_due), period_key(first_due))
        catch_up(scheduler, first_due)
        if not stopping.is_set():
            scheduler.start()
    log.info("scheduler stopped")
