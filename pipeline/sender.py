"""The sender pool: threads that claim, send and record batches of one issue until nothing is due.

One sender per connection claims its own batches (so at most one batch per connection is ever
in flight), builds each message with the caller's `build(row) -> bytes`, hands it to its own
transport, and records the outcomes in the ledger. Rate limits are waited for (a long wait
pauses the run), the relay being gone pauses it, and a stop finishes the batch in flight.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from pipeline import issues, ledger, ledger_reads, signals
from pipeline.config import Settings
from pipeline.errors import (
    AmbiguousDeliveryError,
    DatabaseError,
    DeliveryError,
    RenderError,
    TransientDeliveryError,
    TransportUnavailable,
    database_words,
)
from pipeline.message import ascii_address
from pipeline.models import Issue
from pipeline.transports import HARD_BOUNCE_CODES, Transport, hand_over, is_hard_bounce

MAX_RATE_WAIT = 300.0  # seconds a run sleeps for a rate limit; longer waits pause the run
SAVE_PATIENCE = 30.0  # seconds a sender keeps trying to record what it knows after a database error
# build(row, to): the row's copy, addressed To: `to` (its address as ascii_address made it)
Build = Callable[[ledger.Claimed, str], bytes]
Handed = tuple[ledger.Claimed, Callable[[], None]]  # a row handed over, and what reads its reply
# What one message's attempt can end in (RenderError: its bytes could not be made).
DeliveryProblem = (DeliveryError, RenderError)


@dataclass
class Tally:
    """What the senders of one run did to the rows they claimed (this run's numbers)."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    unknown: int = 0  # handed over, then no reply: maybe delivered (never retried by itself)
    skipped: int = 0
    bounced: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (email, error), first few

    def add(self, engine: Engine, outcomes: list[ledger.Outcome]) -> None:
        """Count a recorded batch; a hard bounce suppresses its address for good."""
        for o in outcomes:
            if o.kind == "sent":
                self.sent += 1
            elif o.kind == "retry":
                self.retrying += 1
            elif o.kind == "failed":
                self.failed += 1
            elif o.kind == "unknown":
                self.unknown += 1
            if o.kind in ("retry", "failed", "unknown") and len(self.errors) < 20:
                self.errors.append((o.claimed.email, o.error or ""))
            if o.hard_bounce:
                self.bounced += _mark_bounced(engine, o.claimed.subscriber_id)


def mark_lost_bounces(engine: Engine, issue_id: int) -> int:
    """Mark bounced the readers the issue's ledger holds a hard bounce of who are still active;
    how many it marked.

    Tally.add marks them as their batch is counted, after the batch is saved: a database failing
    between the two (or a sender killed there) left the row `failed` and the reader active, to
    be mailed and refused again with the next issue, since nothing claims a failed row again.
    Every run of the issue (and `sends retry --failed`) calls this first, so the mark is made
    from the row."""
    with Session(engine) as session:
        refused = ledger_reads.refused_while_active(session, issue_id, HARD_BOUNCE_CODES)
    # The rule that made the row's outcome a hard bounce, on the code and reply the row kept.
    return sum(_mark_bounced(engine, subscriber_id) for subscriber_id, code, reply in refused
               if is_hard_bounce(code, reply))


def _mark_bounced(engine: Engine, subscriber_id: int) -> bool:
    """Suppress a hard-bounced reader for good; False when they were marked so already."""
    # Imported here: consent loads email_validator (~30 ms), which a send whose relay refuses
    # nobody for good never needs.
    from subscribers.consent import mark_bounced  # noqa: PLC0415

    with Session(engine) as session:  # consent.mark_bounced commits on its own
        return mark_bounced(session, subscriber_id)


class Unrecorded(DatabaseError):
    """The database failed mid-send and stayed away longer than a sender waits: `outcomes`, what
    the relay answered (and rows never handed over), are not in the ledger yet. A process that
    outlives the outage (a worker) records them with `record_late` once the database answers."""

    def __init__(self, message: str, outcomes: list[ledger.Outcome], deadline: datetime) -> None:
        super().__init__(message)
        self.outcomes, self.deadline = outcomes, deadline


def record_late(engine: Engine, unrecorded: Unrecorded) -> Tally:
    """Record what a failed sender could not, now that the database answers (raises while it
    still does not); returns the tally of those outcomes. Rows whose lease ran out meanwhile
    (`unknown`) take their real outcome; rows made owed again since are left as they are."""
    # Only rows this process still holds: one reconciled, made owed again and claimed by another
    # sender meanwhile is theirs now.
    ledger.record(engine, unrecorded.outcomes, unrecorded.deadline, holder=ledger.holder_name())
    tally = Tally()
    tally.add(engine, unrecorded.outcomes)
    return tally


def deliver(settings: Settings, engine: Engine, issue: Issue, tally: Tally, build: Build,
            envelope: Callable[[int], str], transport_factory: Callable[[], Transport],
            stop: threading.Event, progress: Callable[[], None] | None,
            clock: Callable[[], datetime]) -> str | None:
    """Run `delivery.connections` senders until nothing is due, the run is paused or `stop` is
    set; returns why it paused (None: it did not). `envelope(row id)` is the return path."""
    pool = _Pool(settings, engine, issue, tally, build, envelope, transport_factory, stop,
                 progress, clock)
    senders = [threading.Thread(target=pool.sender, name=f"sender-{n}", daemon=True)
               for n in range(settings.delivery.connections)]
    with signals.ctrl_c_stops(pool.stop):
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
                pool.stop.set()  # the batches in flight finish and are recorded
    if pool.failures:
        raise _first(pool.failures)
    return pool.paused


def _first(failures: list[BaseException]) -> BaseException:
    """The error to raise for a run whose senders failed: the first, but with every sender's
    unrecorded outcomes when the database stayed away (each sender kept its own batch's)."""
    late = [f for f in failures if isinstance(f, Unrecorded)]
    if not late:
        return failures[0]
    for other in late[1:]:
        late[0].outcomes.extend(other.outcomes)
    return late[0]


class _Pool:
    """What the senders of one run share: the clock, the stop flags, the tally (under a lock)."""

    def __init__(self, settings: Settings, engine: Engine, issue: Issue, tally: Tally, build: Build,
                 envelope: Callable[[int], str], transport_factory: Callable[[], Transport],
                 stop: threading.Event, progress: Callable[[], None] | None,
                 clock: Callable[[], datetime]) -> None:
        self.settings, self.engine, self.issue, self.tally = settings, engine, issue, tally
        self.build, self.envelope, self.transport_factory = build, envelope, transport_factory
        self.stop, self.progress, self.clock = stop, progress, clock
        self.halt = threading.Event()  # paused: every sender ends after its batch
        self.paused: str | None = None
        self.lock = threading.Lock()
        # SQLite has one writer at a time, and a connection waiting for the write lock polls for
        # it (its busy handler sleeps 1, 2, 5 ... 100 ms between tries), so a sender often slept on
        # after the lock was free while its relay connection idled. This process's senders queue
        # on a lock of their own, handed over at once; other processes still meet at BEGIN.
        self.writing: AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext())
        self.failures: list[BaseException] = []
        started = issue.started_at or clock()
        self.deadline = started + timedelta(hours=settings.delivery.retry_hours)

    def sender(self) -> None:
        transport: Transport | None = None
        if hasattr(signal, "pthread_sigmask"):
            # Signals go to the main thread, whose handler sets `stop` at once, before this
            # sender can claim another batch.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        # The batch just sent is recorded in the transaction that claims the next (one write
        # lock per batch, not two), or alone when there is no next: either way before another
        # batch is claimed, so at most one batch per connection is ever in flight.
        done: list[ledger.Outcome] = []
        held: list[ledger.Claimed] = []  # claimed, not handed over yet: handed back if this fails
        try:
            while not (self.stop.is_set() or self.halt.is_set()):
                claimed = self._claim(done)
                recorded, done, held = done, [], list(claimed or [])
                self._recorded(recorded)
                if claimed and (self.stop.is_set() or self.halt.is_set()):
                    # Stopped (or paused) while this batch was claimed: hand it back unattempted.
                    done, held = [ledger.Outcome(row, "released", self.clock()) for row in claimed], []
                    break
                if claimed is None:
                    continue
                if not claimed:
                    return
                transport = transport or self.transport_factory()
                held = []  # from here the batch's own outcomes say what became of each row
                done = self._send_batch(transport, claimed)
            with self.writing:
                ledger.record(self.engine, done, self.deadline)
            recorded, done = done, []
            self._recorded(recorded)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            self.halt.set()  # first: saving may wait SAVE_PATIENCE, and the others must not go on
            in_hand = done + [ledger.Outcome(row, "released", self.clock()) for row in held]
            failure = self._after_failure(exc, in_hand)
            with self.lock:
                self.failures.append(failure)
        finally:
            if transport is not None:
                transport.close()

    def _after_failure(self, exc: BaseException, in_hand: list[ledger.Outcome]) -> BaseException:
        """Record what this sender knows (the relay's answers, and the rows it claimed but never
        handed over) before the run stops: left `sending`, they would become "maybe sent" later.
        A database that failed is given SAVE_PATIENCE seconds to answer again, on a fresh
        connection. Returns the error to raise, saying what became of them."""
        database_failed = isinstance(exc, SQLAlchemyError)
        saved = self._save(in_hand, SAVE_PATIENCE if database_failed else 0.0)
        if not database_failed:
            return exc
        why = database_words(exc)
        sent = sum(o.kind == "sent" for o in in_hand)
        if not in_hand:
            fate = ""
        elif saved:
            fate = (f"; the {len(in_hand)} deliveries in hand were recorded once it answered again "
                    f"({sent} sent)")
        else:
            message = (f"the database failed mid-send ({why}); the {len(in_hand)} deliveries in hand "
                       f"({sent} of them taken by the relay) could not be recorded: a worker records them "
                       f"when it answers again, after `send` they show as unknown (see the README, "
                       f"\"Troubleshooting: after a crash\"); {self._carries_on()}")
            late = Unrecorded(message, in_hand, self.deadline)
            late.__cause__ = exc
            return late
        error = DatabaseError(f"the database failed mid-send ({why}){fate}; {self._carries_on()}")
        error.__cause__ = exc
        return error

    def _carries_on(self) -> str:
        """What to do after a database failure, true for `send` and for a worker, which meets it too."""
        return f"`newsletter send {self.issue.key}` carries on (a running worker retries by itself)"

    def _save(self, outcomes: list[ledger.Outcome], patience: float) -> bool:
        """Record `outcomes`, trying again for `patience` seconds while the database fails."""
        if not outcomes:
            return True
        until, pause = time.monotonic() + patience, 0.2
        while True:
            try:
                with self.writing:
                    ledger.record(self.engine, outcomes, self.deadline)
                break
            except SQLAlchemyError:
                if time.monotonic() + pause > until:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            except Exception:  # the failure being reported must not be hidden by this one
                return False
        try:
            self._recorded(outcomes)
        except Exception:  # noqa: S110  (the summary's count, or a bounce mark: the next run of
            pass  # the issue makes it from the saved row: mark_lost_bounces)
        return True

    def _recorded(self, outcomes: list[ledger.Outcome]) -> None:
        """Count a batch the ledger holds now."""
        if outcomes:
            with self.lock:
                self.tally.add(self.engine, outcomes)
                if self.progress is not None:
                    self.progress()

    def _claim(self, done: list[ledger.Outcome]) -> list[ledger.Claimed] | None:
        """Record `done`, then the next batch; [] when nothing is due, None to look again
        (waited or skipped)."""
        delivery, issue = self.settings.delivery, self.issue
        now = self.clock()
        late = issues.past_deadline(issue, now)
        if late is not None:
            with self.writing:
                ledger.record(self.engine, done, self.deadline)
            return self._pause(late)
        with self.writing:
            claimed, skipped, wait = ledger.claim_within_rate(self.engine, issue.id or 0, delivery, now,
                                                              done, self.deadline)
        if not wait:
            with self.lock:
                self.tally.skipped += skipped
            return claimed if claimed or not skipped else None
        if wait > MAX_RATE_WAIT:
            resume = now + timedelta(seconds=wait)
            return self._pause(f"the rate limit is reached; send again after {resume:%Y-%m-%d %H:%M} UTC "
                               f"(nothing is lost)")
        self.stop.wait(wait)
        return None

    def _pause(self, why: str) -> list[ledger.Claimed]:
        with self.lock:
            self.paused = self.paused or why
        self.halt.set()
        return []

    def _send_batch(self, transport: Transport, claimed: list[ledger.Claimed]) -> list[ledger.Outcome]:
        """Each row's outcome. Each message is built while the relay is still taking in the one
        before it, and handed over before that one's reply is read: over a relay that offers
        PIPELINING its envelope travels with that reply, one round trip a message. The batch
        stays the unit in flight, so the crash guarantee is unchanged. An unexpected error
        (a bug, or a library raising what nobody foresaw) halts the run after the batch is
        recorded: the copy being handed over is `unknown`, the rest stay owed."""
        outcomes: list[ledger.Outcome] = []
        waiting: Handed | None = None  # handed over, reply not read
        for row in claimed:
            handed, outcome = self._attempt(transport, row)
            if outcome is not None:
                outcomes.append(outcome)
            if waiting is not None:
                outcomes.append(self._answered(*waiting))
            waiting = handed
        if waiting is not None:
            outcomes.append(self._answered(*waiting))
        return outcomes

    def _attempt(self, transport: Transport, row: ledger.Claimed) -> tuple[Handed | None, ledger.Outcome | None]:
        """Build the row's copy and hand it over: (the row and what reads its reply, None), or
        (None, its outcome) when it was not handed over."""
        if self.halt.is_set():  # the server is gone: leave the rest owed, attempts unburnt, unbuilt
            return None, ledger.Outcome(row, "released", self.clock())
        try:
            to = ascii_address(row.email)  # once: the To: header and RCPT TO carry the same
            raw = self.build(row, to)
        except DeliveryProblem as exc:  # this copy cannot be made (or addressed)
            return None, self._outcome(row, exc)
        except Exception as exc:
            self._fail(exc)
            return None, ledger.Outcome(row, "released", self.clock())
        try:
            return (row, hand_over(transport, self.envelope(row.id), to, raw)), None
        except DeliveryProblem as exc:
            return None, self._outcome(row, exc)
        except Exception as exc:
            self._fail(exc)
            return None, self._unknown(row, exc)

    def _answered(self, row: ledger.Claimed, answer: Callable[[], None]) -> ledger.Outcome:
        """The outcome of a message handed over, once the relay has answered it."""
        try:
            answer()
        except DeliveryProblem as exc:
            return self._outcome(row, exc)
        except Exception as exc:
            self._fail(exc)
            return self._unknown(row, exc)
        return ledger.Outcome(row, "sent", self.clock(), 250)

    def _fail(self, exc: Exception) -> None:
        """An error nobody expected: every sender stops after its batch; the caller raises it."""
        with self.lock:
            self.failures.append(exc)
        self.halt.set()

    def _unknown(self, row: ledger.Claimed, exc: Exception) -> ledger.Outcome:
        """A copy the error met while it was being handed over: it may have gone out."""
        return ledger.Outcome(row, "unknown", self.clock(), None,
                              f"unexpected error while it was handed over ({exc!r}): maybe delivered, maybe not")

    def _outcome(self, row: ledger.Claimed, exc: Exception) -> ledger.Outcome:
        """What an error means for the row (TransportUnavailable also pauses the run)."""
        if isinstance(exc, TransportUnavailable):
            self._pause(f"{exc}. Nothing was lost: the deliveries not attempted are still owed; fix the "
                        f"problem; {self._carries_on()}")
            return ledger.Outcome(row, "released", self.clock(), exc.code, str(exc))
        if isinstance(exc, AmbiguousDeliveryError):
            return ledger.Outcome(row, "unknown", self.clock(), exc.code, str(exc))
        if isinstance(exc, TransientDeliveryError):
            return ledger.Outcome(row, "retry", self.clock(), exc.code, str(exc))
        code = getattr(exc, "code", None)
        return ledger.Outcome(row, "failed", self.clock(), code, str(exc), is_hard_bounce(code, str(exc)))
