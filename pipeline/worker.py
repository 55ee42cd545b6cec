"""The send worker: a long-running loop that delivers every issue in `sending` status.

Any number of workers, on any hosts that reach the database and the SMTP relay, share the
work. Each round a worker lists the issues being sent and runs the publish story's delivery on
each: expired leases become `unknown`, batches are claimed (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, under the write lock on SQLite), sent and recorded. The database, not the workers,
decides who sends what, and the rate limits are counted there, so they hold for all workers
together. `send --enqueue` and the scheduler (with `schedule.enqueue = true`) hand issues over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from pipeline import issues
from pipeline.config import Settings
from pipeline.confirmations import send_queued
from pipeline.errors import DatabaseError, NewsletterError, database_words
from pipeline.feedback import read_bounces
from pipeline.publish import Ending, Report, publish
from pipeline.sender import Tally, Unrecorded, record_late
from pipeline.transports import Transport
from subscribers.model import utcnow

log = logging.getLogger("newsletter.worker")
IDLE_SECONDS = 5.0  # how often an idle worker looks for work
PAUSE_SECONDS = 60.0  # after the relay refused (down, login, rate limit): leave that issue alone
ERROR_SECONDS = 10.0  # after a database error (a restart, a network blip): wait, then go on
PROGRESS_SECONDS = 10.0  # at most one progress line per issue this often


@dataclass
class WorkerStats:
    """What one worker did since it started (this worker's numbers, not the whole ledger)."""

    rounds: int = 0
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    unknown: int = 0  # handed over with no reply: maybe delivered, left for the operator
    skipped: int = 0
    finished: list[str] = field(default_factory=list)  # issue keys this worker marked sent
    undecided: dict[str, int] = field(default_factory=dict)  # of those: key -> unknown rows
    paused: str | None = None  # the last reason the relay gave for pausing (None: no pause)
    errors: list[str] = field(default_factory=list)  # database or issue errors it survived
    stopped: bool = False  # a stop request ended the loop (SIGTERM, Ctrl-C)

    def add(self, report: Report) -> None:
        self.count(report)
        if report.ending is Ending.FINISHED:
            self.finished.append(report.issue_key)
            if report.undecided:
                self.undecided[report.issue_key] = report.undecided

    def count(self, tally: Tally) -> None:
        """Add what a run (or a late record) did to the rows it handled."""
        self.sent += tally.sent
        self.retrying += tally.retrying
        self.failed += tally.failed
        self.unknown += tally.unknown
        self.skipped += tally.skipped

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sending_issues(engine: Engine, now: datetime) -> list[tuple[int, str]]:
    """(id, key) of the issues in `sending` status that may still be sent, oldest first."""
    with Session(engine) as session:
        return issues.sending_issues(session, now)


def run_worker(
    settings: Settings,
    engine: Engine,
    *,
    concurrency: int | None = None,
    once: bool = False,
    stop: threading.Event | None = None,
    idle_seconds: float = IDLE_SECONDS,
    pause_seconds: float = PAUSE_SECONDS,
    transport_factory: Callable[[], Transport] | None = None,
    on_report: Callable[[Report], None] | None = None,
    force: bool = False,
    stats: WorkerStats | None = None,
) -> WorkerStats:
    """Deliver issues in `sending` status until `stop` is set (or, with `once`, until a round
    finds nothing to send). `concurrency`: SMTP connections (threads) in this worker, default
    `delivery.connections`. A stop finishes and records the batch in flight first. An issue
    whose message fails the checklist's MUST checks over SMTP is left alone (logged) unless
    `force`. `stats`, when given, is counted into as the worker goes: a caller that sees the
    worker raise (a database failing with `once`, a second Ctrl-C) still has what it did."""
    if concurrency is not None:
        settings = replace(settings, delivery=replace(settings.delivery, connections=concurrency))
    stop = stop or threading.Event()
    stats = WorkerStats() if stats is None else stats
    resume_at: dict[int, float] = {}  # issue id -> monotonic time it may be tried again
    bounces_due = time.monotonic()  # the bounce mailbox is read first, then every interval
    kept: list[Unrecorded] = []  # what the relay answered while the database was away
    while not stop.is_set():
        stats.rounds += 1
        if settings.bounces.enabled and time.monotonic() >= bounces_due:
            # Its next turn is set first: a mailbox that fails every time (a report the database
            # refuses, a damaged table) waits for its interval, and the sending goes on.
            bounces_due = time.monotonic() + settings.bounces.interval_minutes * 60
            try:
                read_bounces(settings, engine)
            except (DBAPIError, DatabaseError) as exc:
                _database_failed(exc, stats, once, "while reading the bounce mailbox",
                                 f"{settings.bounces.interval_minutes:g} minutes")
        try:
            _record_kept(engine, kept, stats)  # first: until then those rows look in flight
            send_queued(settings, engine, transport_factory=transport_factory)  # sign-ups' emails
            worked = _round(settings, engine, stats, resume_at, stop, pause_seconds,
                            transport_factory, on_report, force)
        except (DBAPIError, DatabaseError) as exc:
            if isinstance(exc, Unrecorded) and not once:  # --once exits: they show as unknown
                kept.append(exc)
                exc = DatabaseError(f"{database_words(exc.__cause__ or exc)}; the {len(exc.outcomes)} "
                                    f"deliveries in hand are kept until it answers again")
            _database_failed(exc, stats, once, "", f"{ERROR_SECONDS:g} s")
            stop.wait(ERROR_SECONDS)
            continue
        if once and not worked:
            break
        if not worked:
            stop.wait(idle_seconds)
    stats.stopped = stop.is_set()
    return stats


def _record_kept(engine: Engine, kept: list[Unrecorded], stats: WorkerStats) -> None:
    """Record the outcomes a sender could not while the database was away (raises while it still
    is): the copies the relay took become `sent` rather than "maybe sent" once their lease ends."""
    while kept:
        tally = record_late(engine, kept[0])  # raises while the database is away: kept for the next round
        late = kept.pop(0)
        stats.count(tally)
        log.warning("the database answers again: the %d deliveries kept since it failed are recorded "
                    "(%d sent)", len(late.outcomes), tally.sent)


def _database_failed(exc: BaseException, stats: WorkerStats, once: bool, doing: str, again_in: str) -> None:
    """A database error the worker rides out (logged, counted), or, with `once`, raises."""
    why = database_words(exc)
    if once:
        if isinstance(exc, DatabaseError):
            raise exc  # its cause (the driver's error) stays as it is
        raise DatabaseError(f"the database failed: {why}") from exc
    stats.errors.append(f"database: {why}")
    log.error("database error%s: %s; trying again in %s", f" {doing}" if doing else "", why, again_in)


def _round(settings: Settings, engine: Engine, stats: WorkerStats, resume_at: dict[int, float],
           stop: threading.Event, pause_seconds: float,
           transport_factory: Callable[[], Transport] | None,
           on_report: Callable[[Report], None] | None, force: bool = False) -> bool:
    """One pass over the issues being sent; True when anything was attempted."""
    worked = False
    for issue_id, key in sending_issues(engine, utcnow()):
        if stop.is_set():
            break
        if resume_at.get(issue_id, 0.0) > time.monotonic():
            continue
        try:
            with _counted_if_it_fails(stats, key) as delivering:
                report = publish(settings, engine, issue_id, stop=stop, force=force, delivering=delivering,
                                 transport_factory=transport_factory, progress=_progress_logger(key))
        except DatabaseError:
            raise  # the database's failing, not the issue's: the worker waits ERROR_SECONDS
        except NewsletterError as exc:
            # One broken issue (say, its templates) must not stop the others from going out.
            stats.errors.append(f"{key}: {exc}")
            log.error("%s: %s; trying it again in %g s", key, exc, pause_seconds)
            resume_at[issue_id] = time.monotonic() + pause_seconds
            continue
        stats.add(report)
        if on_report is not None:
            on_report(report)
        if report.reconciled:
            log.warning("%s: %d deliveries left in flight by a sender that stopped mid-attempt "
                        "(a crash, kill -9, a database failure it could not outwait) are now unknown: maybe "
                        "delivered, maybe not", key,
                        report.reconciled)
        if report.handled:  # anything dealt with this round: the worker looks again at once
            worked = True
            log.info("%s: %d sent, %d to retry, %d failed, %d unknown, %d skipped by this worker; "
                     "ledger: %s", key, report.sent, report.retrying, report.failed,
                     report.unknown, report.skipped, _ledger_line(report.counts))
        finished = report.ending is Ending.FINISHED
        if finished and report.undecided:
            log.warning("%s is finished, but %d deliveries are unknown (maybe delivered, maybe not): "
                        "`newsletter sends status %s` explains; `newsletter sends retry %s --unknown` "
                        "resends them", key, report.undecided, key, key)
        elif finished:
            log.info("%s is sent: every delivery has an outcome", key)
        if report.ending is Ending.PAUSED:
            stats.paused = report.why
            resume_at[issue_id] = time.monotonic() + pause_seconds
            log.warning("%s paused: %s; trying again in %g s", key, report.why, pause_seconds)
    return worked


@contextmanager
def _counted_if_it_fails(stats: WorkerStats, key: str) -> Iterator[Callable[[Report], None]]:
    """What publish is told its run's report through; if the run then raises, what it recorded
    until then (batches before the failure, and the one saved once the database answered) is
    counted and logged, as a run that returns is. Outcomes it could not record are not in
    that report: they are counted when the worker records them late."""
    running: list[Report] = []
    try:
        yield running.append
    except BaseException:
        for report in running:
            stats.count(report)
            if report.handled:  # a run that failed before its first batch has nothing to say
                log.warning("%s: %d sent, %d to retry, %d failed, %d unknown, %d skipped by this worker "
                            "before the run failed", key, report.sent, report.retrying, report.failed,
                            report.unknown, report.skipped)
        raise


def _progress_logger(key: str) -> Callable[[Report], None]:
    """A publish progress callback that logs a line per issue at most every PROGRESS_SECONDS."""
    last = [time.monotonic()]

    def progress(report: Report) -> None:
        if time.monotonic() - last[0] >= PROGRESS_SECONDS:
            last[0] = time.monotonic()
            log.info("%s: %d sent by this worker so far, %d to retry, %d failed",
                     key, report.sent, report.retrying, report.failed)

    return progress


def _ledger_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "empty"
