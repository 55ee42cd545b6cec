"""The weekly job: what the period due now needs (compose and send, resume, skip, expire, nothing).

`run_due` looks at the period that is due now, lets the database decide whether this process
is the one that composes its issue (the unique issue key), and then runs the same publish story
as a manual send. Safe from any number of processes at once; schedule.py only decides *when*.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pipeline import glance, issues, leases
from pipeline.complaints import scheduled_sending_paused
from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import NotFound
from pipeline.models import Issue
from pipeline.periods import (
    FINISHED,
    Action,
    Outcome,
    Period,
    decide,
    due_period,
    period_of_key,
)

if TYPE_CHECKING:
    from pipeline import publish

log = logging.getLogger("newsletter.schedule")


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
    the next run after the config is fixed; `force` sends it anyway. A draft that carries a held
    essay (`essays hold`) raises Refused and stays a draft until the essayist takes the essay
    out or releases it.
    """
    schedule = settings.schedule
    period = due_period(schedule, now)
    if not dry_run:
        expire_stale(settings, engine, now, keep=period.key)
        _poll_if_composing(settings, engine, period, now)
    reconciled = 0
    for _attempt in range(3):  # another process may win a race; then look again
        try:
            with session_scope(engine) as session:
                issue = issues.find_by_key(session, period.key)
                if issue is not None and issue.id is not None and not dry_run:
                    # A sender killed mid-batch leaves rows `sending`: say so, do not blame a rival.
                    reconciled += leases.reconcile(session, issue.id, now)
                action = decide(schedule, period, issue.status if issue else None, now)
                nothing = glance.nothing_missed(settings, session.connection(), action, period,
                                                issue.status if issue else None, now, dry_run)
                if nothing is not None:
                    return nothing
                if dry_run or action in (Action.NOT_DUE, Action.DONE):
                    return _outcome(settings, session, action, period, issue, now, dry_run)
                if action in (Action.EXPIRE_MISSED, Action.EXPIRE_STUCK):
                    issue = issues.expire(session, issue, period.key, period.expires_at, now)
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
        from pipeline import publish  # noqa: PLC0415  (the renderer and sender: only to send)

        # chosen: the week's issue is the program's pick, so a draft carrying a held essay is
        # Refused (raised to the caller, as the send check's refusal is).
        if schedule.enqueue:  # the workers send it
            report = publish.enqueue(settings, engine, issue_id, now=now, force=force, chosen=True)
        else:
            report = publish.publish(settings, engine, issue_id, now=now, stop=stop,
                                     progress=progress, force=force, chosen=True)
        with Session(engine) as session:
            outcome = _outcome(settings, session, action, period, issues.find_by_key(session, period.key), now)
            holders = leases.in_flight(session, issue_id)
        if holders:
            outcome.held = leases.unconfirmed(holders)
            outcome.message += f" ({leases.describe_in_flight(holders)})"
        if reconciled + report.reconciled:
            outcome.message += (f" ({reconciled + report.reconciled} left in flight by a sender that "
                                f"stopped mid-attempt are now unknown)")
        if report.ending is publish.Ending.ENQUEUED:
            outcome.enqueued = True
            outcome.message = (f"{period.key} handed to the workers: issue {outcome.status}, "
                               f"{report.to_send} deliveries owed (`newsletter worker` sends them)")
        why = {publish.Ending.STOPPED: "stopped by a signal", publish.Ending.PAUSED: report.why,
               publish.Ending.NOTHING: report.why}.get(report.ending)
        if why:
            outcome.message += f" ({why})"
        return outcome
    raise RuntimeError(f"{period.key}: the issue kept changing under this scheduler")


def _poll_if_composing(settings: Settings, engine: Engine, period: Period, now: datetime) -> None:
    """Feeds bring new essays before a compose; the feed readers are loaded only then, so a
    run with nothing due (cron, every 15 minutes) stays quick."""
    with Session(engine) as session:
        issue = issues.find_by_key(session, period.key)
    if decide(settings.schedule, period, issue.status if issue else None, now) is Action.COMPOSE:
        from pipeline import polling  # noqa: PLC0415

        polling.poll_before_compose(settings, engine, period, now)


def expire_stale(
    settings: Settings, engine: Engine, now: datetime, keep: str | None = None
) -> list[str]:
    """Mark older weekly issues (not `keep`) still unfinished past their expiry as expired."""
    expired = []
    with session_scope(engine) as session:
        for issue in issues.open_issues(session, "weekly-", but=keep):
            period = period_of_key(settings.schedule, issue.key)
            if period is not None and decide(settings.schedule, period, issue.status, now) in (
                Action.EXPIRE_MISSED,  # a draft that never started
                Action.EXPIRE_STUCK,
            ):
                issues.expire(session, issue, issue.key, period.expires_at, now)
                expired.append(issue.key)
                log.warning("%s: still unfinished after its period expired; marked expired",
                            issue.key)
    return expired


def _compose(session: Session, settings: Settings, period: Period, now: datetime) -> Issue:
    """The period's issue: the draft prepared by hand, else one composed now; or the period
    recorded as skipped when nothing is unsent."""
    try:
        adopted = issues.adopt_draft(session, period.key)
        if adopted is not None:
            log.info("%s: the draft prepared by hand (issue %s) is this week's issue", period.key, adopted.id)
        issue = adopted or issues.compose(session, settings, key=period.key)
    except NotFound:
        session.rollback()
        return issues.skip(session, period.key, now)
    issues.bound(session, issue, period.expires_at)  # sending stops at the period's expiry
    return issue


def _outcome(settings: Settings, session: Session, action: Action, period: Period,
             issue: Issue | None, now: datetime, dry_run: bool = False) -> Outcome:
    session.flush()  # the counts below see what this session has changed
    return glance.week_outcome(settings, session.connection(), action, period, issue.id if issue else None,
                               issue.status if issue else None, now, dry_run)
