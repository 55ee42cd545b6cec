"""The send worker on SQLite and PostgreSQL: it delivers enqueued issues once to each subscriber,
shares them with other workers, keeps the rate limit global, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db, ledger, ledger_reads, publish
from pipeline.config import Settings
from pipeline.issues import find_issue
from pipeline.models import Issue
from pipeline.publish import Ending
from pipeline.worker import run_worker, sending_issues
from subscribers.model import Subscriber, utcnow
from tests.conftest import SMTPServer, write_config
from tests.digest_fixtures import add_essays, make_essay
from tests.smtp_faults import FaultServer, fault_server, new_issue, smtp_settings
from tests.test_schedule import utc_schedule_due

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")
SECRET = {"NEWSLETTER_SECRET_KEY": "test-secret-for-workers"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (a SQLite file beside the config) or a PostgreSQL database of the test's own."""
    return request.getfixturevalue("postgres_url") if request.param == "postgresql" else None


def add_readers(engine: Engine, count: int, essays: int = 2, prefix: str = "reader") -> list[str]:
    """Essays to send and `count` active subscribers, inserted in one statement (fast)."""
    with Session(engine) as session:
        if essays:
            add_essays(session, *[make_essay(n) for n in range(essays)])
        now = utcnow()
        emails = [f"{prefix}{n}@example.org" for n in range(count)]
        rows = [dict(email=e, email_normalized=e, name="" if n % 3 == 0 else f"Reader {n}",
                     status="active", source="test", created_at=now, updated_at=now, confirmed_at=now)
                for n, e in enumerate(emails)]
        if rows:
            session.execute(insert(Subscriber), rows)
        session.commit()
    return emails


def enqueue(settings: Settings, engine: Engine, key: str, slugs: list[str] | None = None,
            resend: bool = False) -> Issue:
    """Compose issue `key` and hand it to the workers (frozen render and audience, `sending`)."""
    return hand_over(settings, engine, new_issue(engine, settings, key, slugs=slugs, resend=resend))


def hand_over(settings: Settings, engine: Engine, issue: Issue) -> Issue:
    """Freeze a composed issue's render and audience and set it `sending`, sending nothing."""
    report = publish.enqueue(settings, engine, issue.id)
    assert report.ending is Ending.ENQUEUED and not report.sent, report
    return issue


def counts(engine: Engine, key: str) -> dict[str, int]:
    with Session(engine) as session:
        return ledger_reads.counts(session, find_issue(session, key).id or 0)


def issue_status(engine: Engine, key: str) -> str:
    with Session(engine) as session:
        return find_issue(session, key).status


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def test_a_worker_delivers_an_enqueued_issue_once_to_each_subscriber(
    tmp_path: Path, server: FaultServer, database_url: str | None
) -> None:
    settings = smtp_settings(tmp_path, server.port, database_url=database_url, batch_size=7)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 30)
    issue = enqueue(settings, engine, "w1")
    assert sending_issues(engine, utcnow()) == [(issue.id, "w1")] and not server.received

    stats = run_worker(settings, engine, once=True)

    assert (stats.sent, stats.failed, stats.finished) == (30, 0, ["w1"])
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    assert issue_status(engine, "w1") == "sent" and counts(engine, "w1")["sent"] == 30
    assert sending_issues(engine, utcnow()) == []
    assert run_worker(settings, engine, once=True).sent == 0  # nothing is owed any more
    engine.dispose()


def test_concurrency_is_the_number_of_smtp_connections_of_a_worker(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, batch_size=5, connections=1)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 60)
    enqueue(settings, engine, "wide")
    stats = run_worker(settings, engine, concurrency=3, once=True)
    assert stats.sent == 60 and len(server.peers) == 3  # three connections, not the config's one
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    engine.dispose()


def test_three_workers_in_threads_share_the_work_and_nobody_gets_two(
    tmp_path: Path, server: FaultServer, database_url: str | None
) -> None:
    settings = smtp_settings(tmp_path, server.port, database_url=database_url, batch_size=5)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 120)
    enqueue(settings, engine, "shared")
    stop = threading.Event()
    results: list[Any] = []
    workers = [threading.Thread(target=lambda: results.append(
        run_worker(settings, engine, stop=stop, idle_seconds=0.05))) for _ in range(3)]
    for thread in workers:
        thread.start()
    wait_until(lambda: issue_status(engine, "shared") == "sent", 60, "the issue to be sent")
    stop.set()
    for thread in workers:
        thread.join(10)

    assert sum(r.sent for r in results) == 120 and all(r.stopped for r in results)
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    assert counts(engine, "shared") == {"pending": 0, "sending": 0, "sent": 120, "failed": 0,
                                        "unknown": 0, "skipped": 0}
    engine.dispose()


def test_the_rate_limit_is_shared_by_all_workers(
    tmp_path: Path, server: FaultServer, database_url: str | None
) -> None:
    settings = smtp_settings(tmp_path, server.port, database_url=database_url, rate_per_second=10,
                             batch_size=10)
    engine = db.connect(settings.database.url)
    add_readers(engine, 35)
    enqueue(settings, engine, "limited")
    stop = threading.Event()
    workers = [threading.Thread(target=run_worker, args=(settings, engine),
                                kwargs=dict(stop=stop, idle_seconds=0.05)) for _ in range(3)]
    for thread in workers:
        thread.start()
    wait_until(lambda: issue_status(engine, "limited") == "sent", 60, "the issue to be sent")
    stop.set()
    for thread in workers:
        thread.join(10)

    with Session(engine) as session:
        times = sorted(r.sent_at for r in ledger_reads.rows(session, find_issue(session, "limited").id))
    assert len(times) == 35 == len(server.received)
    busiest = max(sum(1 for t in times[i:] if t < start + timedelta(seconds=1))
                  for i, start in enumerate(times))
    assert busiest <= 10, f"{busiest} messages went out within one second with a limit of 10/s"
    assert times[-1] - times[0] >= timedelta(seconds=2.5)  # 35 at 10/s: at least 3 windows
    engine.dispose()


def test_claimers_at_once_take_exactly_the_room_the_rate_limit_leaves(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = smtp_settings(tmp_path, 1, database_url=database_url, rate_per_hour=10, batch_size=50)
    engine = db.connect(settings.database.url)
    add_readers(engine, 40)
    issue = enqueue(settings, engine, "room")
    start, taken = threading.Barrier(4), []

    def claimer() -> None:
        start.wait()
        rows, _, _ = ledger.claim_within_rate(engine, issue.id, settings.delivery, utcnow())
        taken.append(len(rows))

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Checked and claimed in one transaction, one claimer after another: ten in all, not 4 x 10.
    assert sorted(taken) == [0, 0, 0, 10], taken
    assert counts(engine, "room")["sending"] == 10
    engine.dispose()


def test_a_dead_workers_batch_becomes_unknown_when_its_lease_runs_out(
    tmp_path: Path, server: FaultServer, database_url: str | None, run_cli: Any
) -> None:
    # The lease must outlast the first run's 14 sends even on a loaded machine.
    settings = smtp_settings(tmp_path, server.port, database_url=database_url, batch_size=6,
                             lease_seconds=3)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 20)
    issue = enqueue(settings, engine, "crashed")
    # A worker claims a batch and dies before it sends or records anything.
    claimed, _ = ledger.claim(engine, issue.id, 6, settings.delivery.lease_seconds, utcnow())
    lost = {c.email for c in claimed}

    first = run_worker(settings, engine, once=True)
    assert first.sent == 14 and issue_status(engine, "crashed") == "sending"  # lease still running
    time.sleep(3.2)
    run_worker(settings, engine, once=True)  # reconciles: the batch is unknown, the issue is done
    assert counts(engine, "crashed")["unknown"] == 6 and issue_status(engine, "crashed") == "sent"
    assert {r.rcpt_tos[0] for r in server.received} == set(emails) - lost

    run_cli.config_file = settings.path
    result = run_cli("sends", "retry", "crashed", "--unknown", "--yes")
    assert result.exit_code == 0, result.output
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    assert issue_status(engine, "crashed") == "sent"
    engine.dispose()


def test_a_worker_picks_up_an_issue_enqueued_while_it_idles(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 8)
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings, engine),
                              kwargs=dict(stop=stop, idle_seconds=0.1))
    thread.start()
    time.sleep(0.3)
    assert not server.received
    enqueue(settings, engine, "later")
    wait_until(lambda: len(server.received) == 8, 20, "the enqueued issue to go out")
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and issue_status(engine, "later") == "sent"
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(emails)


def test_an_issue_past_its_not_after_is_left_alone(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port)
    engine = db.connect(settings.database.url)
    add_readers(engine, 5)
    issue = enqueue(settings, engine, "too-late")
    with db.session_scope(engine) as session:
        row = session.get(Issue, issue.id)
        row.not_after = utcnow() - timedelta(minutes=1)
        session.add(row)
    assert sending_issues(engine, utcnow()) == []
    assert run_worker(settings, engine, once=True).sent == 0 and not server.received


def start_worker(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([NEWSLETTER, "--config", str(config), "worker", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **SECRET})


def test_worker_once_exits_1_and_burns_no_attempts_when_the_relay_is_down(tmp_path: Path) -> None:
    with fault_server() as probe:
        port = probe.port  # free once the probe stops: nothing listens there
    settings = smtp_settings(tmp_path, port)
    engine = db.connect(settings.database.url)
    add_readers(engine, 4)
    enqueue(settings, engine, "no-relay")
    worker = start_worker(settings.path, "--once")
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 1, output
    assert "Paused:" in output and "connect" in output.lower()
    with Session(engine) as session:
        rows = ledger_reads.rows(session, find_issue(session, "no-relay").id)
    assert [(r.status, r.attempts) for r in rows] == [("pending", 0)] * 4


def test_worker_once_prints_its_summary_when_the_database_fails(tmp_path: Path, server: FaultServer) -> None:
    """The database refusing a write mid-run (here a trigger; a full disk says the same) ended
    `worker --once` with the error alone: the "Worker stopped: ..." line, with what the run had
    sent until then, was never printed."""
    settings = smtp_settings(tmp_path, server.port, batch_size=2)
    engine = db.connect(settings.database.url)
    add_readers(engine, 4)
    enqueue(settings, engine, "cut-off")
    with engine.begin() as connection:  # the second batch's claim is refused, after two went out
        connection.execute(text("CREATE TRIGGER away BEFORE UPDATE OF status ON delivery "
                                "WHEN NEW.email = 'reader2@example.org' AND NEW.status = 'sending' "
                                "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"))
    engine.dispose()
    worker = start_worker(settings.path, "--once")
    output = worker.communicate(timeout=60)[0]
    assert worker.returncode == 1, output
    assert "disk I/O error" in output
    assert "Worker stopped: 2 sent, 0 to retry, 0 failed, 0 skipped." in output
    assert len(server.received) == 2


@pytest.mark.slow
def test_sigterm_finishes_the_batch_in_flight_and_exits(tmp_path: Path, smtp_server: SMTPServer) -> None:
    # 5 messages a second: a batch of 5 takes about a second, so SIGTERM lands mid-batch.
    settings = smtp_settings(tmp_path, smtp_server.port, batch_size=5, rate_per_second=5)
    engine = db.connect(settings.database.url)
    add_readers(engine, 40)
    enqueue(settings, engine, "stopped")
    worker = start_worker(settings.path, "--idle", "0.2")
    wait_until(lambda: len(smtp_server.received) >= 7, 30, "the worker to send")
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=20)[0]
    assert worker.returncode == 0, output
    assert "SIGTERM: stopping after the batch in flight" in output and "Worker stopped:" in output
    now = counts(engine, "stopped")
    assert now["sending"] == 0 and now["unknown"] == 0
    assert 10 <= now["sent"] < 40 and now["sent"] == len(smtp_server.received)
    smtp_settings(tmp_path, smtp_server.port, batch_size=5)  # the same config, without the limit
    again = start_worker(settings.path, "--once")
    assert again.wait(60) == 0
    assert issue_status(engine, "stopped") == "sent" and len(smtp_server.received) == 40
    engine.dispose()


def test_send_enqueue_freezes_the_audience_and_the_worker_delivers(
    tmp_path: Path, server: FaultServer, database_url: str | None, run_cli: Any
) -> None:
    settings = smtp_settings(tmp_path, server.port, database_url=database_url)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 12)
    new_issue(engine, settings, "handed")
    run_cli.config_file = settings.path

    result = run_cli("send", "handed", "--enqueue", "--yes")
    assert result.exit_code == 0, result.output
    assert "12 deliveries" in result.output and "newsletter worker" in result.output
    assert not server.received and issue_status(engine, "handed") == "sending"
    assert counts(engine, "handed")["pending"] == 12
    add_readers(engine, 2, essays=0, prefix="late")  # too late: the audience is frozen
    again = run_cli("send", "handed", "--enqueue", "--yes")  # harmless: nothing changes
    assert again.exit_code == 0 and counts(engine, "handed")["pending"] == 12

    result = run_cli("worker", "--once")
    assert result.exit_code == 0, result.output
    assert "12 sent" in result.output and "finished handed" in result.output
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    assert issue_status(engine, "handed") == "sent"
    engine.dispose()


def test_send_enqueue_refuses_a_dry_run(run_cli: Any) -> None:
    result = run_cli("send", "--latest", "--enqueue", "--dry-run")
    assert result.exit_code == 2 and "--enqueue" in result.output


def test_the_scheduler_with_enqueue_hands_the_week_to_the_workers(
    tmp_path: Path, server: FaultServer, database_url: str | None, run_cli: Any
) -> None:
    base = smtp_settings(tmp_path, server.port, database_url=database_url)
    run_cli.config_file = write_config(tmp_path, database_url=database_url,
                                       schedule={**utc_schedule_due(timedelta(minutes=5)), "enqueue": True},
                                       delivery={"transport": "smtp", "smtp_host": "127.0.0.1",
                                                 "smtp_port": server.port, "smtp_tls": "none"},
                                       web={"base_url": base.web.base_url})
    engine = db.connect(base.database.url)
    emails = add_readers(engine, 9)

    result = run_cli("schedule", "run-due", "--json")
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["enqueued"] and outcome["status"] == "sending" and not outcome["unfinished"]
    assert "handed to the workers" in outcome["message"] and not server.received
    assert run_cli("schedule", "run-due").exit_code == 0  # again: nothing new, nothing sent
    assert not server.received and counts(engine, outcome["key"])["pending"] == 9

    assert run_cli("worker", "--once").exit_code == 0
    assert Counter(r.rcpt_tos[0] for r in server.received) == Counter({e: 1 for e in emails})
    assert issue_status(engine, outcome["key"]) == "sent"
    again = run_cli("schedule", "run-due")
    assert again.exit_code == 0 and "nothing to do" in again.output
    engine.dispose()
