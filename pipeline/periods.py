"""Weekly periods: which week a moment belongs to, when its digest is due, and what to do now.

Pure functions over the schedule settings and an injected `now` (an aware datetime): no clock,
no database. A period is one ISO week in the configured timezone; its digest is due at the
configured weekday and local time of that week, and its issue key, `weekly-YYYY-Www`, is what
makes the database refuse a second issue for the same week.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pipeline.config import WEEKDAYS, ScheduleSettings

KEY_PATTERN = re.compile(r"^weekly-(\d{4})-W(\d{2})$")
# Issue statuses after which a period needs nothing more.
FINISHED = frozenset({"sent", "skipped", "expired", "cancelled"})


@dataclass(frozen=True)
class Period:
    """One ISO week of the schedule: its key, when its digest is due and how long it may run."""

    key: str
    due_at: datetime  # the scheduled instant, in the configured timezone
    start_until: datetime  # a missed run may still start up to here (grace_hours)
    expires_at: datetime  # an unfinished issue stops sending here (expire_after_hours)


class Action(StrEnum):
    """What the scheduled job should do about a period at a given moment."""

    NOT_DUE = "not_due"  # this week's digest is still ahead and the last one needs nothing
    DONE = "done"  # this week's issue is already sent, skipped or expired
    COMPOSE = "compose"  # due, missing, within the grace time: compose and send it
    RESUME = "resume"  # an issue exists but is unfinished: send what is still owed
    EXPIRE_MISSED = "expire_missed"  # due and missing but past the grace time: never start late
    EXPIRE_STUCK = "expire_stuck"  # unfinished past expire_after_hours: stop sending


@dataclass
class Outcome:
    """What one run of the job decided and did, for the log, the CLI and its --json."""

    action: Action
    key: str
    due_at: datetime
    issue_id: int | None
    status: str | None  # the issue's status afterwards (None: there is no issue)
    message: str
    next_due_at: datetime
    counts: dict[str, int]  # deliveries by status, for an issue that was sent or expired
    enqueued: bool = False  # handed to `newsletter worker` processes (schedule.enqueue)
    held: int = 0  # rows in flight whose holder may be gone (not a sender seen running here)

    @property
    def unfinished(self) -> bool:
        """Deliveries are still owed (waiting, or held by a sender that may be gone) and no
        worker was handed them: someone must run again."""
        owed = self.counts.get("pending", 0) + self.held
        return self.status == "draft" or (self.status == "sending" and owed > 0 and not self.enqueued)

    @property
    def undecided(self) -> int:
        """Deliveries of a sent issue that may or may not have arrived: the operator decides."""
        return self.counts.get("unknown", 0) if self.status == "sent" else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "key": self.key,
            "due_at": self.due_at,
            "issue_id": self.issue_id,
            "status": self.status,
            "message": self.message,
            "next_due_at": self.next_due_at,
            "deliveries": self.counts,
            "unfinished": self.unfinished,
            "undecided": self.undecided,
            "enqueued": self.enqueued,
        }


def period_key(due_at: datetime) -> str:
    """The issue key of the week a (local) scheduled instant falls in: weekly-YYYY-Www."""
    year, week, _ = due_at.isocalendar()
    return f"weekly-{year:04d}-W{week:02d}"


def period_of_week(schedule: ScheduleSettings, year: int, week: int) -> Period:
    """The period of ISO week `week` of ISO year `year`."""
    day = date.fromisocalendar(year, week, WEEKDAYS.index(schedule.weekday) + 1)
    # A local time that does not exist (the spring-forward hour) resolves with fold=0, i.e. the
    # offset before the change, which the scheduler's trigger fires at too (03:30 for 02:30).
    due_at = datetime.combine(day, schedule.time, tzinfo=schedule.timezone)
    return Period(
        key=period_key(due_at),
        due_at=due_at,
        start_until=_add_hours(due_at, schedule.grace_hours),
        expires_at=_add_hours(due_at, schedule.expire_after_hours),
    )


def period_of_key(schedule: ScheduleSettings, key: str) -> Period | None:
    """The period an issue key names, or None when it is not a weekly key (a manual issue)."""
    match = KEY_PATTERN.match(key)
    if not match:
        return None
    try:
        return period_of_week(schedule, int(match.group(1)), int(match.group(2)))
    except ValueError:  # week 53 of a year that has 52
        return None


def week_period(schedule: ScheduleSettings, now: datetime) -> Period:
    """The period of the ISO week that `now` falls in, in the configured timezone."""
    year, week, _ = _utc(now).astimezone(schedule.timezone).isocalendar()
    return period_of_week(schedule, year, week)


def due_period(schedule: ScheduleSettings, now: datetime) -> Period:
    """The latest period whose digest was due at or before `now` (this week's or last week's)."""
    current = week_period(schedule, now)
    if _utc(current.due_at) <= _utc(now):
        return current
    return week_period(schedule, current.due_at - timedelta(days=7))


def next_due(schedule: ScheduleSettings, now: datetime, count: int = 1) -> list[Period]:
    """The next `count` periods whose digest is due strictly after `now`."""
    period = week_period(schedule, now)
    if _utc(period.due_at) <= _utc(now):
        period = week_period(schedule, period.due_at + timedelta(days=7))
    periods = []
    for _ in range(count):
        periods.append(period)
        period = week_period(schedule, period.due_at + timedelta(days=7))
    return periods


def decide(schedule: ScheduleSettings, period: Period, status: str | None, now: datetime) -> Action:
    """What to do about `period` at `now`, given its issue's status (None: no issue yet)."""
    now = _utc(now)
    if _utc(period.due_at) > now:
        return Action.NOT_DUE
    if status in FINISHED:
        # Finished: say "not due" when this week's digest is still ahead, "done" otherwise.
        ahead = week_period(schedule, now)
        return Action.NOT_DUE if _utc(ahead.due_at) > now else Action.DONE
    may_start = now <= _utc(period.start_until) and now < _utc(period.expires_at)
    if status is None:
        return Action.COMPOSE if may_start else Action.EXPIRE_MISSED
    if status == "draft" and not may_start:
        # Composed but never started (the scheduler died in between): starting it now would
        # be the late start the grace time forbids.
        return Action.EXPIRE_MISSED
    # sending (or a fresh draft): perhaps half sent, by a scheduler that stopped or still runs.
    return Action.RESUME if now < _utc(period.expires_at) else Action.EXPIRE_STUCK


def _add_hours(moment: datetime, hours: float) -> datetime:
    # Elapsed hours, not wall-clock hours: go through UTC so a DST change in between counts.
    return (_utc(moment) + timedelta(hours=hours)).astimezone(moment.tzinfo)


def _utc(moment: datetime) -> datetime:
    """`moment` in UTC; refuses naive datetimes. Compare in UTC: Python compares two datetimes
    with the same tzinfo by wall time, ignoring `fold`, which is wrong in the repeated DST hour."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a naive datetime where an aware one is needed: {moment!r}")
    return moment.astimezone(UTC)


def describe(schedule: ScheduleSettings, action: Action, period: Period, status: str | None,
             counts: dict[str, int], dry_run: bool = False) -> str:
    """One line for the log and the CLI: what was (or, in a dry run, would be) done and why."""
    when = local_time(period.due_at)
    sent = counts.get("sent", 0)
    owed = sum(counts.values()) - sent - counts.get("skipped", 0) - counts.get("failed", 0)
    grace, expire = f"{schedule.grace_hours:g}-hour", f"{schedule.expire_after_hours:g} hours"
    if action is Action.NOT_DUE:
        return f"not due: {period.key} ({when}) is {status or 'not started'}"
    if action is Action.DONE:
        unknown = counts.get("unknown", 0)
        return f"nothing to do: {period.key} is already {status}" + (
            f", but {unknown} deliveries are unknown (see `newsletter sends status {period.key}`)"
            if unknown else "")
    if dry_run:
        return {
            Action.COMPOSE: f"would compose and send {period.key} (due {when})",
            Action.RESUME: f"would resume {period.key} ({status}), {owed} still owed",
            Action.EXPIRE_MISSED: f"would record {period.key} as expired: due {when}, past the"
                                  f" {grace} grace time",
            Action.EXPIRE_STUCK: f"would expire {period.key} ({status}): {sent} sent,"
                                 f" {owed} never will be",
        }[action]
    if action is Action.EXPIRE_MISSED:
        return (f"{period.key} was due {when} and is past its {grace} grace time:"
                " not started late, recorded as expired")
    if action is Action.EXPIRE_STUCK:
        return (f"{period.key} was still unfinished {expire} after {when}: expired,"
                f" {sent} sent, {owed} never will be")
    if status == "skipped":
        return f"{period.key}: no unsent essays; period recorded as skipped, nothing sent"
    verb = "sent" if action is Action.COMPOSE else "resumed and sent"
    if status != "sent":  # a relay that was down, a rate limit, a stop: not sent yet
        verb = "started" if action is Action.COMPOSE else "resumed"
    elif counts.get("unknown", 0):
        verb += " (finished, but some deliveries need a decision)"
    message = f"{period.key} {verb}: issue {status}, {sent} delivered"
    for count, what in (
        (counts.get("pending", 0), "still owed"),
        (counts.get("sending", 0), "still in flight"),
        (counts.get("unknown", 0), f"unknown: maybe delivered, maybe not (see `newsletter sends "
                                   f"status {period.key}`)"),
        (counts.get("failed", 0), "failed"),
    ):
        message += f", {count} {what}" if count else ""
    return message


def before_the_archive(period: Period, first_import: datetime | None) -> bool:
    """Whether `period` fell due before the first essay was imported (or there is none yet):
    it had nothing to send, so missing it is no miss. A newsletter set up on a Tuesday must not
    start by recording Monday's week as expired. Naive moments are UTC, as the database keeps them."""
    if first_import is None:
        return True
    if first_import.tzinfo is None:
        first_import = first_import.replace(tzinfo=UTC)
    return _utc(first_import) > _utc(period.due_at)


def describe_before_archive(period: Period) -> str:
    return (f"nothing missed: {period.key} was due {local_time(period.due_at)}, before the first "
            "essay was imported")


def local_time(moment: datetime) -> str:
    """A moment as the log shows it: "Mon 2026-11-23 07:00 CET"."""
    return moment.strftime("%a %Y-%m-%d %H:%M %Z")
