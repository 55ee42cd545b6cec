"""The sender pool against a real SMTP server: stops, pauses, parallel connections, rate limits."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from pipeline import ledger_reads
from pipeline.models import Issue
from pipeline.publish import Ending, Report, publish
from pipeline.transports import MemoryTransport
from subscribers.model import Subscriber, utcnow
from tests.smtp_faults import FaultServer, add_audience, engine_for, fault_server, new_issue, smtp_settings


def test_stop_finishes_the_batch_in_flight_and_send_again_carries_on(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, batch_size=4)
    engine = engine_for(settings)
    add_audience(engine, 14)
    stop = threading.Event()

    def on_batch(report: Report) -> None:
        if report.sent >= 4:
            stop.set()

    first = publish(settings, engine, latest=True, stop=stop, progress=on_batch)
    assert first.ending is Ending.STOPPED and first.sent == 4
    assert first.counts == {"pending": 10, "sending": 0, "sent": 4, "failed": 0, "unknown": 0, "skipped": 0}
    second = publish(settings, engine, first.issue_key)
    assert second.sent == 10 and second.ending is Ending.FINISHED
    assert Counter(r.rcpt_tos[0] for r in server.received).most_common(1)[0][1] == 1
    assert len(server.received) == 14


def test_a_real_ctrl_c_mid_batch_leaves_nothing_unknown(tmp_path: Path) -> None:
    settings = smtp_settings(tmp_path, 1, batch_size=5)
    engine = engine_for(settings)
    add_audience(engine, 12)
    sent: list[str] = []
    stop = threading.Event()

    class Interrupting(MemoryTransport):
        def send(self, mail_from: str, to: str, raw: bytes) -> None:
            if len(self.sent) == 2:  # Ctrl-C arrives while the batch is being sent
                os.kill(os.getpid(), signal.SIGINT)
                # Python runs the handler in the main thread when that thread next gets the
                # processor: on a loaded machine this sender could claim a second batch first.
                # Wait for the handler, so the test checks what it does, not the scheduler.
                assert stop.wait(10), "the SIGINT handler never ran"
            super().send(mail_from, to, raw)
            sent.append(to)

    report = publish(settings, engine, latest=True, transport_factory=Interrupting, stop=stop)
    assert report.ending is Ending.STOPPED and report.sent == 5  # the whole batch in flight, then stop
    assert report.counts["sending"] == 0 and report.counts["unknown"] == 0
    assert report.counts["pending"] == 7 and len(sent) == 5


def test_an_unexpected_error_mid_batch_records_what_is_known_then_surfaces(tmp_path: Path) -> None:
    """A bug (or a library raising what nobody expected) mid-batch: the copies already answered
    stay sent, the one being handed over is unknown (it may have gone out), the rest stay owed;
    nothing is left `sending` for a later run to turn into `unknown`, and the error is raised."""
    settings = smtp_settings(tmp_path, 1, batch_size=5)
    engine = engine_for(settings)
    add_audience(engine, 8)

    class Failing(MemoryTransport):
        def send(self, mail_from: str, to: str, raw: bytes) -> None:
            if len(self.sent) == 2:
                raise RuntimeError("the library broke")
            super().send(mail_from, to, raw)

    with pytest.raises(RuntimeError, match="the library broke"):
        publish(settings, engine, latest=True, transport_factory=Failing)
    with Session(engine) as session:
        rows = ledger_reads.rows(session, 1)
    assert Counter(r.status for r in rows) == {"sent": 2, "unknown": 1, "pending": 5}
    unknown = next(r for r in rows if r.status == "unknown")
    assert "RuntimeError('the library broke')" in (unknown.last_error or "")
    assert all(r.attempts == 0 for r in rows if r.status == "pending")


def test_an_unreachable_server_pauses_without_burning_attempts(tmp_path: Path) -> None:
    with fault_server() as probe:
        dead_port = probe.port  # free once the probe stops
    settings = smtp_settings(tmp_path, dead_port)
    engine = engine_for(settings)
    add_audience(engine, 8)
    report = publish(settings, engine, latest=True)
    assert report.ending is Ending.PAUSED and "cannot connect" in report.why and "Nothing was lost" in report.why
    assert report.sent == 0 and report.counts["pending"] == 8
    with Session(engine) as session:
        assert {r.attempts for r in ledger_reads.rows(session, report.issue_id)} == {0}
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port)  # the relay is back (same database)
        resumed = publish(settings, engine, report.issue_key)
    assert resumed.sent == 8 and resumed.ending is Ending.FINISHED and len(server.received) == 8

def test_a_refused_login_pauses_and_the_right_one_sends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fault_server(login=("news", "s3cret")) as server:
        monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "wrong")
        settings = smtp_settings(tmp_path, server.port, smtp_username="news")
        engine = engine_for(settings)
        add_audience(engine, 3)
        report = publish(settings, engine, latest=True)
        assert report.ending is Ending.PAUSED and "login as 'news' refused" in report.why
        assert report.counts["pending"] == 3 and not server.received
        monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "s3cret")
        settings = smtp_settings(tmp_path, server.port, smtp_username="news")
        assert publish(settings, engine, report.issue_key).sent == 3
        assert len(server.received) == 3

def test_parallel_connections_deliver_each_message_once(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, connections=3, batch_size=12)
    engine = engine_for(settings)
    people = add_audience(engine, 30)
    report = publish(settings, engine, latest=True)
    assert report.sent == 30 and len(server.peers) == 3
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({p.email: 1 for p in people})

def test_per_hour_rate_limit_holds_across_runs(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, rate_per_hour=5)
    engine = engine_for(settings)
    add_audience(engine, 8)
    first = publish(settings, engine, latest=True)
    assert first.sent == 5 and first.ending is Ending.PAUSED and "rate limit" in first.why
    second = publish(settings, engine, first.issue_key)
    assert second.sent == 0 and second.ending is Ending.PAUSED and second.counts["pending"] == 3
    later = publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=1, seconds=5))
    assert later.sent == 3 and later.ending is Ending.FINISHED

def test_per_second_rate_limit_spreads_the_sends(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, rate_per_second=10)
    engine = engine_for(settings)
    add_audience(engine, 25)
    report = publish(settings, engine, latest=True)
    assert report.sent == 25 and report.seconds >= 1.5
    with Session(engine) as session:
        times = sorted(r.sent_at for r in ledger_reads.rows(session, report.issue_id))
    for i, start in enumerate(times):  # no one-second window holds more than ten
        assert sum(1 for t in times[i:] if t < start + timedelta(seconds=1)) <= 10


def test_a_copy_that_cannot_be_addressed_fails_alone_mid_batch(tmp_path: Path, server: FaultServer) -> None:
    # Each copy is built while the relay still reads the one before it: a copy that cannot be
    # made (this address needs SMTPUTF8) must fail that row only, not the batch or the run.
    settings = smtp_settings(tmp_path, server.port, batch_size=10)
    engine = engine_for(settings)
    add_audience(engine, 3)
    [jorg] = add_audience(engine, 1, essays=0, prefix="jorg")
    with Session(engine) as session:  # signed up before addresses like it were refused
        session.execute(update(Subscriber).where(col(Subscriber.id) == jorg.id).values(email="jörg0@example.org"))
        session.commit()
    add_audience(engine, 3, essays=0, prefix="later")
    report = publish(settings, engine, latest=True)
    assert report.sent == 6 and report.failed == 1 and report.ending is Ending.FINISHED
    assert report.errors == [("jörg0@example.org", "'jörg0@example.org' needs SMTPUTF8, which this "
                                                    "sender does not use")]
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(
        [f"reader{n}@example.org" for n in range(3)] + [f"later{n}@example.org" for n in range(3)])


def test_a_run_that_outlasts_the_issue_s_not_after_pauses_with_the_rest_owed(tmp_path: Path,
                                                                               server: FaultServer) -> None:
    # The deadline holds inside a run too, not only when it starts: a long send of a weekly
    # issue must not go on into the next week.
    settings = smtp_settings(tmp_path, server.port, batch_size=2)
    engine = engine_for(settings)
    add_audience(engine, 6)
    issue = new_issue(engine, settings, "weekly-2026-W02")
    deadline = utcnow() + timedelta(hours=1)
    with Session(engine) as session:
        session.execute(update(Issue).values(not_after=deadline))
        session.commit()
    moment = [utcnow()]

    def week_ends(report: Report) -> None:  # the first batch recorded, the second one claimed
        moment[0] = deadline + timedelta(minutes=1)

    report = publish(settings, engine, issue.key, progress=week_ends, now=lambda: moment[0])
    assert report.ending is Ending.PAUSED
    assert report.why == f"issue weekly-2026-W02 may not be sent after {deadline:%Y-%m-%d %H:%M} UTC"
    assert report.sent == 4 and len(server.received) == 4 and report.counts["pending"] == 2
