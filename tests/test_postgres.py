"""Beyond one machine, for real: PostgreSQL, several `newsletter worker` processes, a real SMTP
server; 5,000 subscribers get one message each, also when a worker is killed with SIGKILL
halfway; two schedulers on one database make one issue; a worker outlives its database
connections."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlmodel import Session, select

from pipeline import db, ledger_reads
from pipeline.config import Settings, load_settings
from pipeline.models import Issue
from pipeline.worker import run_worker
from tests.conftest import CLI, SMTPServer, write_config
from tests.test_schedule import add_essays, add_subscribers, utc_schedule_due
from tests.test_worker import NEWSLETTER, SECRET, add_readers, counts, enqueue, issue_status, wait_until

pytestmark = pytest.mark.slow
AUDIENCE = 5000
BATCH = 50
LEASE = 3  # seconds: a dead worker's batch becomes unknown this long after its claim


def pg_settings(tmp_path: Path, url: str, smtp: SMTPServer, **sections: dict[str, object]) -> Settings:
    delivery = {"transport": "smtp", "smtp_host": smtp.host, "smtp_port": smtp.port,
                "smtp_tls": "none", "batch_size": BATCH, "lease_seconds": LEASE,
                **sections.pop("delivery", {})}
    return load_settings(write_config(tmp_path, database_url=url, delivery=delivery,
                                      web={"base_url": "https://letters.example.org"}, **sections))


def start(config: Path, *args: str, log: Path) -> subprocess.Popen[str]:
    """`newsletter ARGS` in a process of its own, output to `log` (a pipe could fill up)."""
    return subprocess.Popen([NEWSLETTER, "--config", str(config), *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **SECRET})


def stop_all(workers: list[subprocess.Popen[str]], logs: list[Path]) -> list[int]:
    """SIGTERM every worker; each must exit 0 soon; returns how many each says it sent."""
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    sent = []
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(30) == 0, log.read_text()
        found = re.search(r"Worker stopped: (\d+) sent", log.read_text())
        assert found, log.read_text()
        sent.append(int(found.group(1)))
    return sent


def per_address(smtp: SMTPServer) -> Counter[str]:
    return Counter(r.rcpt_tos[0] for r in smtp.received)


def test_three_worker_processes_send_5000_messages_exactly_once_even_when_one_is_killed(
    tmp_path: Path, empty_postgres_url: str, smtp_server: SMTPServer
) -> None:
    settings = pg_settings(tmp_path, empty_postgres_url, smtp_server)
    logs = [tmp_path / f"worker{n}.log" for n in range(3)]
    # Started at once on an empty database: they race to create the schema (an advisory lock
    # lets one migrate at a time), then idle until there is work.
    workers = [start(settings.path, "worker", "--idle", "0.2", log=log) for log in logs]
    wait_until(lambda: all("started" in log.read_text() for log in logs), 120, "the workers")
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, AUDIENCE)
    enqueue(settings, engine, "first")

    wait_until(lambda: issue_status(engine, "first") == "sent", 180, "three workers to send the issue")
    assert per_address(smtp_server) == Counter({e: 1 for e in emails})
    assert counts(engine, "first") == {"pending": 0, "sending": 0, "sent": AUDIENCE, "failed": 0,
                                       "unknown": 0, "skipped": 0}
    assert max(Counter(r.message["Message-ID"] for r in smtp_server.received[:300]).values()) == 1

    # Again, and one worker is killed with SIGKILL halfway: no cleanup, its batch stays `sending`.
    smtp_server.received.clear()
    issue = enqueue(settings, engine, "second", slugs=["essay-000"], resend=True)
    wait_until(lambda: len(smtp_server.received) >= AUDIENCE // 2, 180, "half the messages")
    os.kill(workers[0].pid, signal.SIGKILL)
    assert workers[0].wait(10) == -signal.SIGKILL
    # The other two finish; when the lease runs out the dead batch becomes `unknown`, and the
    # issue counts as sent (nothing is owed).
    wait_until(lambda: issue_status(engine, "second") == "sent", 180, "the survivors to finish")
    sent_by = stop_all(workers[1:], logs[1:])
    assert all(n > 0 for n in sent_by), sent_by  # both survivors worked on both issues

    after = counts(engine, "second")
    assert after["unknown"] <= BATCH and after["sent"] + after["unknown"] == AUDIENCE, after
    assert after["pending"] == after["sending"] == after["failed"] == after["skipped"] == 0
    with Session(engine) as session:
        unknown = {r.email for r in ledger_reads.rows(session, issue.id, "unknown")}
    got = per_address(smtp_server)
    assert set(emails) - set(got) <= unknown  # only an unknown row may have missed its message
    assert all(n == 1 for n in got.values())

    result = CLI(settings.path, CliRunner())("sends", "retry", "second", "--unknown", "--yes")
    assert result.exit_code == 0, result.output
    got = per_address(smtp_server)
    assert set(got) == set(emails)  # nobody skipped
    assert {e for e, n in got.items() if n > 1} <= unknown  # duplicates only among unknown rows
    assert issue_status(engine, "second") == "sent" and counts(engine, "second")["sent"] == AUDIENCE
    engine.dispose()


def test_two_schedulers_on_postgresql_make_one_issue(
    tmp_path: Path, postgres_url: str, smtp_server: SMTPServer
) -> None:
    settings = pg_settings(tmp_path, postgres_url, smtp_server,
                           schedule=utc_schedule_due(timedelta(minutes=30)))
    engine = db.connect(settings.database.url)
    add_essays(engine, 2)
    emails = add_subscribers(engine, 40)
    logs = [tmp_path / f"scheduler{n}.log" for n in range(2)]
    runs = [start(settings.path, "schedule", "run-due", log=log) for log in logs]
    assert [run.wait(120) for run in runs] == [0, 0], [log.read_text() for log in logs]

    with Session(engine) as session:
        made = session.exec(select(Issue)).all()
    assert [(i.key.startswith("weekly-"), i.status) for i in made] == [(True, "sent")]
    assert per_address(smtp_server) == Counter({e: 1 for e in emails})
    engine.dispose()


def test_a_worker_rides_out_lost_database_connections(
    tmp_path: Path, postgres_url: str, smtp_server: SMTPServer
) -> None:
    settings = pg_settings(tmp_path, postgres_url, smtp_server)
    engine = db.connect(settings.database.url)
    emails = add_readers(engine, 20)
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(settings, engine),
                              kwargs=dict(stop=stop, idle_seconds=0.1))
    worker.start()
    enqueue(settings, engine, "before", slugs=["essay-000"])
    wait_until(lambda: issue_status(engine, "before") == "sent", 30, "the first issue")
    # What a database restart or failover does to every open connection.
    name = postgres_url.rsplit("/", 1)[1]
    with engine.connect() as connection:
        killed = connection.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name}).scalar()
    assert killed >= 1
    enqueue(settings, engine, "after", slugs=["essay-001"])
    wait_until(lambda: issue_status(engine, "after") == "sent", 30, "the issue after the outage")
    stop.set()
    worker.join(10)
    assert not worker.is_alive()
    assert per_address(smtp_server) == Counter({e: 2 for e in emails})
    engine.dispose()
