"""The database failing mid-send (a real PostgreSQL server): what the relay took stays known.

A connection of the send is killed (`pg_terminate_backend`) at a chosen moment: while it waits on
a table lock that the test holds, so the moment is exact. The server itself stays up, as after a
failover or a restarted connection pooler: the sender's next connection works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, select

from pipeline import db, ledger_reads
from pipeline.config import Settings, load_settings
from pipeline.errors import DatabaseError, PermanentDeliveryError
from pipeline.models import Issue
from pipeline.publish import Ending, Report, enqueue, publish
from pipeline.sender import Unrecorded
from pipeline.transports import MemoryTransport
from pipeline.worker import WorkerStats, run_worker
from subscribers import consent
from subscribers.model import Subscriber
from tests.conftest import CLI, write_config
from tests.smtp_faults import add_audience, new_issue, smtp_settings


def _plain(url: str) -> str:
    """The libpq form of a SQLAlchemy URL (psycopg connects with it)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def killed_when_it_waits(url: str, *tables: str) -> None:
    """Lock each of `tables` now; then, table by table, the first other connection that waits on
    it is terminated and its lock goes. Call it just before the writes to be hit."""
    holders = []
    for table in tables:
        holders.append(psycopg.connect(_plain(url)))
        holders[-1].execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def kill() -> None:
        with psycopg.connect(_plain(url), autocommit=True) as admin:
            for table, holder in zip(tables, holders, strict=True):
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    killed = admin.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE NOT granted AND "
                        "relation = %s::regclass AND database = (SELECT oid FROM pg_database WHERE "
                        "datname = current_database())", (table,)).fetchone()
                    if killed and killed[0]:
                        break
                    time.sleep(0.02)
                holder.rollback()
                holder.close()

    threading.Thread(target=kill, daemon=True).start()


def away_for(url: str, table: str, seconds: float) -> None:
    """The database away for `seconds` as far as `table` is concerned: every connection that
    waits on it in that time is terminated (as by a restart); then the lock goes."""
    holder = psycopg.connect(_plain(url))
    holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def refuse() -> None:
        with psycopg.connect(_plain(url), autocommit=True) as admin:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
                time.sleep(0.02)
        holder.rollback()
        holder.close()

    threading.Thread(target=refuse, daemon=True).start()


class _Transports:
    """A transport factory whose MemoryTransports run `before(transport, to)` before each send."""

    def __init__(self, before: Callable[[MemoryTransport, str], None]) -> None:
        self.before = before
        self.made: list[MemoryTransport] = []

    def __call__(self) -> MemoryTransport:
        outer = self

        class Hooked(MemoryTransport):
            def send(self, mail_from: str, to: str, raw: bytes) -> None:
                outer.before(self, to)
                super().send(mail_from, to, raw)

        self.made.append(Hooked())
        return self.made[-1]

    def sent(self) -> list[str]:
        return [s.to for t in self.made for s in t.sent]


def _work_until_finished(settings: Settings, engine: Engine, transports: _Transports) -> WorkerStats:
    """A worker run until it finishes an issue, or for 40 s at most (a worker that never sends
    must not hang the suite)."""
    stop = threading.Event()

    def on_report(report: Report) -> None:
        if report.ending is Ending.FINISHED:
            stop.set()

    give_up = threading.Timer(40, stop.set)
    give_up.start()
    try:
        return run_worker(settings, engine, stop=stop, idle_seconds=0.1, transport_factory=transports,
                          on_report=on_report)
    finally:
        give_up.cancel()


def _statuses(engine: Engine, key: str) -> tuple[Counter[str], set[int]]:
    """The issue's rows by status, and the attempts of those still pending."""
    with Session(engine) as session:
        issue = session.exec(select(Issue).where(Issue.key == key)).one()
        rows = ledger_reads.rows(session, issue.id or 0)
    return Counter(r.status for r in rows), {r.attempts for r in rows if r.status == "pending"}


def test_copies_the_relay_took_are_recorded_though_the_connection_died_recording_them(
        tmp_path: Path, postgres_url: str) -> None:
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    add_audience(engine, 25)
    new_issue(engine, settings, "dbf")
    kill: list[object] = []

    def before(transport: MemoryTransport, to: str) -> None:
        if len(transport.sent) == 9:  # the tenth, last of the batch: its record is the next write
            kill.append(killed_when_it_waits(postgres_url, "delivery"))

    transports = _Transports(before)
    with pytest.raises(DatabaseError, match="the database failed mid-send") as raised:
        publish(settings, engine, "dbf", transport_factory=transports)
    assert "the 10 deliveries in hand were recorded once it answered again (10 sent)" in str(raised.value)
    # Said so that a worker, which meets this error too, is not told to run `send`.
    assert "`newsletter send dbf` carries on (a running worker retries by itself)" in str(raised.value)
    statuses, attempts = _statuses(engine, "dbf")
    assert statuses == {"sent": 10, "pending": 15} and attempts == {0}

    again = publish(settings, engine, "dbf", transport_factory=_Transports(lambda t, to: None))
    assert again.sent == 15 and again.ending is Ending.FINISHED
    engine.dispose()


def test_a_batch_claimed_but_never_sent_stays_owed_when_the_database_fails(
        tmp_path: Path, postgres_url: str) -> None:
    """The first batch held a hard bounce; marking that reader bounced (after the next batch was
    claimed) met a dead connection. The claimed batch was never handed to the relay: it stays
    pending, attempts unburnt, rather than becoming "maybe sent"."""
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    readers = add_audience(engine, 25)
    new_issue(engine, settings, "dbb")
    gone = readers[4].email

    def before(transport: MemoryTransport, to: str) -> None:
        if to == gone:
            transport.fail[to] = [PermanentDeliveryError("relay RCPT TO: 550 5.1.1 No such user", 550)]
            killed_when_it_waits(postgres_url, "suppression")  # only marking a bounce writes it

    with pytest.raises(DatabaseError, match="the database failed mid-send"):
        publish(settings, engine, "dbb", transport_factory=_Transports(before))
    statuses, attempts = _statuses(engine, "dbb")
    assert statuses == {"sent": 9, "failed": 1, "pending": 15} and attempts == {0}
    engine.dispose()


def test_a_bounce_mark_failing_after_the_batch_was_saved_does_not_hide_the_failure(
        tmp_path: Path, postgres_url: str) -> None:
    """The connection died recording a batch that held a hard bounce; the batch was saved once the
    database answered, and then marking that reader bounced met a dead connection too. The run
    fails with the first error, saying the batch was recorded: the second must not end the
    sender unreported, leaving a run that looks merely unfinished and `send` exiting 4, not 1."""
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    readers = add_audience(engine, 25)
    new_issue(engine, settings, "twice")
    gone, last = readers[14].email, readers[19].email

    def before(transport: MemoryTransport, to: str) -> None:
        if to == gone:
            transport.fail[to] = [PermanentDeliveryError("relay RCPT TO: 550 5.1.1 No such user", 550)]
        if to == last:  # the second batch's last copy: its record is the next write, then the bounce mark
            killed_when_it_waits(postgres_url, "delivery", "suppression")

    with pytest.raises(DatabaseError, match=r"the 10 deliveries in hand were recorded once it answered "
                                            r"again \(9 sent\); `newsletter send twice` carries on"):
        publish(settings, engine, "twice", transport_factory=_Transports(before))
    statuses, attempts = _statuses(engine, "twice")
    assert statuses == {"sent": 19, "failed": 1, "pending": 5} and attempts == {0}
    engine.dispose()


def _lose_a_bounce_mark(tmp_path: Path, postgres_url: str) -> tuple[Settings, Engine, Subscriber]:
    """Issue "lost" run until it fails as above: a hard bounce's batch saved, its mark lost."""
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    readers = add_audience(engine, 25)
    new_issue(engine, settings, "lost")
    gone, last = readers[14], readers[19].email

    def before(transport: MemoryTransport, to: str) -> None:
        if to == gone.email:
            transport.fail[to] = [PermanentDeliveryError("relay RCPT TO: 550 5.1.1 No such user", 550)]
        if to == last:
            killed_when_it_waits(postgres_url, "delivery", "suppression")

    with pytest.raises(DatabaseError, match="recorded once it answered again"):
        publish(settings, engine, "lost", transport_factory=_Transports(before))
    with Session(engine) as session:
        assert consent.get(session, gone.id or 0).status == "active"  # the mark was lost
    return settings, engine, gone


def _marked_bounced(engine: Engine, reader: Subscriber) -> bool:
    with Session(engine) as session:
        return (consent.get(session, reader.id or 0).status == "bounced"
                and consent.is_suppressed(session, reader.email))


def test_a_bounce_mark_lost_after_the_batch_was_saved_is_made_by_the_next_run(
        tmp_path: Path, postgres_url: str) -> None:
    """As above, the mark of a hard bounce met a dead connection after its batch was saved; the
    sender let it go, "the next run sees them". It did not: the row was `failed`, never claimed
    again, and the reader stayed active, to be mailed (and refused) again with the next issue.
    The next run of the issue marks them from the ledger row, without mailing them."""
    settings, engine, gone = _lose_a_bounce_mark(tmp_path, postgres_url)
    transports = _Transports(lambda t, to: None)
    again = publish(settings, engine, "lost", transport_factory=transports)
    assert again.ending is Ending.FINISHED and again.sent == 5 and gone.email not in transports.sent()
    assert again.bounced == 1 and _marked_bounced(engine, gone)
    engine.dispose()


def test_sends_retry_failed_marks_a_lost_bounce_rather_than_resending_it(
        tmp_path: Path, postgres_url: str) -> None:
    """`sends retry --failed` made the row owed again before any run looked: the reader, still
    active, was mailed at the address the relay had said does not exist."""
    settings, engine, gone = _lose_a_bounce_mark(tmp_path, postgres_url)
    result = CLI(settings.path, CliRunner())("sends", "retry", "lost", "--failed", "--yes")
    assert result.exit_code == 0, result.output
    assert "No failed deliveries to resend in lost (1 to readers no longer subscribed" in result.output
    assert _marked_bounced(engine, gone) and _statuses(engine, "lost")[0]["failed"] == 1
    engine.dispose()


def _with_a_bounce_mailbox(tmp_path: Path, postgres_url: str) -> Settings:
    """Settings on `postgres_url` whose bounce mailbox is a Maildir holding one plain message."""
    box = tmp_path / "bounces"
    for part in ("new", "cur", "tmp"):
        (box / part).mkdir(parents=True)
    (box / "new" / "1.msg").write_text("From: someone@example.org\nTo: bounces@example.org\n"
                                       "Message-ID: <m1@example.org>\nSubject: hello\n\nhello\n")
    return load_settings(write_config(
        tmp_path, database_url=postgres_url, web={"base_url": "https://letters.example.org"},
        bounces={"enabled": True, "mailbox": str(box), "return_path": "bounces@example.org"}))


def test_a_worker_rides_out_a_database_failure_while_it_reads_bounces(
        tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The README: a database that goes away makes the worker wait and carry on. That held for
    sending; reading the bounce mailbox (which writes what it processed) ended the worker."""
    settings = _with_a_bounce_mailbox(tmp_path, postgres_url)
    engine = db.connect(postgres_url)
    stop = threading.Event()
    stats: list[WorkerStats] = []
    killed_when_it_waits(postgres_url, "processedmessage")  # what the mailbox reader writes
    worker = threading.Thread(target=lambda: stats.append(run_worker(settings, engine, stop=stop, idle_seconds=0.1)))
    with caplog.at_level(logging.ERROR):
        worker.start()
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:
            if any("database error" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        stop.set()
        worker.join(30)
    assert stats, "the worker died instead of waiting and carrying on"
    assert any(e.startswith("database: ") for e in stats[0].errors), stats[0].errors
    engine.dispose()


def test_a_mailbox_the_database_keeps_failing_on_does_not_keep_the_worker_from_sending(
        tmp_path: Path, postgres_url: str) -> None:
    """Whatever makes reading the bounce mailbox fail every time (here the table it records in is
    gone), the worker logs it and sends: the mailbox waits for its interval, the readers do not."""
    settings = _with_a_bounce_mailbox(tmp_path, postgres_url)
    engine = db.connect(postgres_url)
    add_audience(engine, 5)
    new_issue(engine, settings, "mbx")
    assert enqueue(settings, engine, "mbx").ending is Ending.ENQUEUED
    with psycopg.connect(_plain(postgres_url), autocommit=True) as admin:
        admin.execute("DROP TABLE processedmessage")
    transports = _Transports(lambda t, to: None)
    stats = _work_until_finished(settings, engine, transports)
    assert sorted(transports.sent()) == sorted(f"reader{n}@example.org" for n in range(5))
    assert stats.errors and all(e.startswith("database: ") for e in stats.errors)
    engine.dispose()


def test_a_send_says_what_it_could_not_record_when_the_database_stays_away(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SAVE_PATIENCE a one-shot `send` gives up on recording: the error says how many the
    relay took, that they show as unknown after `send`, and where to read what to do."""
    monkeypatch.setattr("pipeline.sender.SAVE_PATIENCE", 0.5)
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    add_audience(engine, 25)
    new_issue(engine, settings, "away")

    def before(transport: MemoryTransport, to: str) -> None:
        if len(transport.sent) == 9:
            away_for(postgres_url, "delivery", 2.0)

    with pytest.raises(Unrecorded) as raised:
        publish(settings, engine, "away", transport_factory=_Transports(before))
    assert len(raised.value.outcomes) == 10
    assert "the 10 deliveries in hand (10 of them taken by the relay) could not be recorded" in str(raised.value)
    assert "after `send` they show as unknown" in str(raised.value)
    time.sleep(2.5)  # the outage is over
    statuses, _ = _statuses(engine, "away")
    assert statuses == {"sending": 10, "pending": 15}  # until a command sees this process gone
    engine.dispose()


def test_a_worker_counts_what_a_run_did_before_the_database_failed_it(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A run recorded its first batch, then the connection died recording the second (saved once
    it answered again), and publish raised. The worker's numbers, its log and so the summary
    `newsletter worker` prints when it stops, left out all 20 of that run's copies: 5 sent, of 25."""
    monkeypatch.setattr("pipeline.worker.ERROR_SECONDS", 0.2)
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10)
    engine = db.connect(postgres_url)
    add_audience(engine, 25)
    new_issue(engine, settings, "cut")
    assert enqueue(settings, engine, "cut").ending is Ending.ENQUEUED

    def before(transport: MemoryTransport, to: str) -> None:
        if len(transport.sent) == 19:  # the second batch's last copy: its record is the next write
            killed_when_it_waits(postgres_url, "delivery")

    transports = _Transports(before)
    with caplog.at_level(logging.INFO, logger="newsletter.worker"):
        stats = _work_until_finished(settings, engine, transports)
    assert _statuses(engine, "cut")[0] == {"sent": 25} and len(transports.sent()) == 25
    assert any(e.startswith("database: ") for e in stats.errors), stats.errors
    assert (stats.sent, stats.failed, stats.finished) == (25, 0, ["cut"])
    assert any(r.getMessage().startswith("cut: 20 sent, 0 to retry, 0 failed, 0 unknown, 0 skipped by this "
                                         "worker before the run failed") for r in caplog.records), caplog.text
    engine.dispose()


@pytest.mark.parametrize("connections", [1, 2])  # 2: each sender keeps its own batch's answers
def test_a_worker_records_what_the_relay_took_once_a_long_database_outage_ends(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, connections: int) -> None:
    """A sender waits SAVE_PATIENCE for the database to take what the relay answered. When it
    stays away longer (a failover, a restart) a worker, which outlives the outage, keeps those
    outcomes and records them when it answers again: the copies the relay took are `sent`, not
    left `sending` until their lease runs out and then "maybe sent" (whose retry is a second copy)."""
    monkeypatch.setattr("pipeline.sender.SAVE_PATIENCE", 0.5)
    monkeypatch.setattr("pipeline.worker.ERROR_SECONDS", 0.2)
    settings = smtp_settings(tmp_path, 1, database_url=postgres_url, batch_size=10, connections=connections)
    engine = db.connect(postgres_url)
    add_audience(engine, 25)
    new_issue(engine, settings, "long")
    assert enqueue(settings, engine, "long").ending is Ending.ENQUEUED

    outage: list[bool] = []

    def before(transport: MemoryTransport, to: str) -> None:
        if len(transport.sent) == 9 and not outage:  # a first batch's last copy, once
            outage.append(True)
            away_for(postgres_url, "delivery", 3.0)

    transports = _Transports(before)
    stats = _work_until_finished(settings, engine, transports)
    statuses, _ = _statuses(engine, "long")
    assert statuses == {"sent": 25}, statuses
    assert Counter(transports.sent()) == Counter(f"reader{n}@example.org" for n in range(25))
    assert any(e.startswith("database: ") for e in stats.errors)
    # With two, a sender that saved its batch once the database answered counted it in a run
    # whose error (the other sender's) the worker then raised: counted all the same.
    assert stats.sent == 25
    engine.dispose()
