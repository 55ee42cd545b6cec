"""Real processes: two schedulers at once, a scheduler killed mid-send, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline import db
from pipeline.config import Settings, load_settings
from pipeline.models import Delivery, Essay, Issue
from pipeline.periods import due_period
from tests.conftest import PUBLIC_WEB, SMTPServer, write_config
from tests.test_schedule import add_essays, add_subscribers, utc_schedule_due

pytestmark = pytest.mark.slow
NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


def start(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    """`newsletter schedule ARGS` in a process of its own; output to a pipe, or to `log`."""
    return subprocess.Popen(
        [NEWSLETTER, "--config", str(config), "schedule", *args],
        stdout=log.open("w") if log else subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NEWSLETTER_SECRET_KEY": "test-secret-for-schedule-processes"},
    )


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


def setup(
    tmp_path: Path, smtp_server: SMTPServer, **delivery: object
) -> tuple[Path, Settings, Engine]:
    config = write_config(
        tmp_path,
        schedule=utc_schedule_due(timedelta(minutes=30)),
        delivery={"transport": "smtp", "smtp_tls": "none", "smtp_host": smtp_server.host,
                  "smtp_port": smtp_server.port, **delivery},
        web=PUBLIC_WEB,
    )
    settings = load_settings(config)
    return config, settings, db.connect(settings.database.url)


def weekly_issues(engine: Engine) -> list[Issue]:
    with Session(engine) as session:
        return list(session.exec(select(Issue)).all())


def test_two_schedulers_firing_at_once_send_one_issue_once_to_each_subscriber(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    config, settings, engine = setup(tmp_path, smtp_server)
    add_essays(engine, 2)
    emails = add_subscribers(engine, 25)
    first, second = start(config, "run-due"), start(config, "run-due")
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs

    key = due_period(settings.schedule, datetime.now(UTC)).key
    assert [(i.key, i.status) for i in weekly_issues(engine)] == [(key, "sent")]
    per_address = Counter(r for m in smtp_server.received for r in m.rcpt_tos)
    assert per_address == Counter({e: 1 for e in emails})
    assert len({m.message["Message-ID"] for m in smtp_server.received}) == len(emails)
    engine.dispose()


def test_a_scheduler_killed_mid_send_resumes_the_same_issue(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    # Slow enough to kill halfway: 10 messages a second, claimed 5 at a time.
    config, settings, engine = setup(
        tmp_path, smtp_server, rate_per_second=10, batch_size=5, lease_seconds=1
    )
    add_essays(engine, 1)
    emails = add_subscribers(engine, 40)
    victim = start(config, "run-due")
    wait_until(lambda: len(smtp_server.received) >= 8, 60, "the first messages")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    sent_before = len(smtp_server.received)
    assert sent_before < len(emails), "the send finished before the kill; make it slower"
    [issue] = weekly_issues(engine)
    assert issue.status == "sending"

    time.sleep(1.5)  # let the killed process's lease on its claimed batch run out
    output = start(config, "run-due").communicate(timeout=120)[0]
    [after] = weekly_issues(engine)
    assert (after.id, after.key) == (issue.id, issue.key), output  # the same issue, not a second
    assert after.status == "sent", output
    per_address = Counter(r for m in smtp_server.received for r in m.rcpt_tos)
    assert max(per_address.values()) == 1  # nobody got it twice
    with Session(engine) as session:
        rows = session.exec(select(Delivery).where(Delivery.issue_id == issue.id)).all()
        by_status = Counter(r.status for r in rows)
        carried = session.exec(select(Essay)).all()
    # At most the one batch in flight at the kill is "unknown" (maybe sent, maybe not: never
    # silently resent); everyone else got exactly one message.
    assert by_status["sent"] + by_status["unknown"] == len(emails), by_status
    assert by_status["unknown"] <= 5
    assert set(per_address) >= {r.email for r in rows if r.status == "sent"}
    assert len(smtp_server.received) > sent_before
    assert {e.sent_in_issue_id for e in carried} == {issue.id}
    engine.dispose()


def test_schedule_run_catches_up_then_stops_cleanly_on_sigterm(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    config, settings, engine = setup(tmp_path, smtp_server)
    add_subscribers(engine, 2)  # and no essays: the due week is recorded as skipped
    log = tmp_path / "schedule.log"
    process = start(config, "run", log=log)
    key = due_period(settings.schedule, datetime.now(UTC)).key
    wait_until(lambda: ", issue weekly-" in log.read_text() or process.poll() is not None,
               60, "the catch-up run")
    assert [(i.key, i.status) for i in weekly_issues(engine)] == [(key, "skipped")]
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "next digest due" in output
    assert "no unsent essays" in output
    assert "SIGTERM received" in output and "scheduler stopped" in output
    assert smtp_server.received == []
    engine.dispose()


def test_schedule_run_stops_on_ctrl_c_while_waiting(tmp_path: Path) -> None:
    config = write_config(tmp_path, schedule=utc_schedule_due(timedelta(days=-2)))
    log = tmp_path / "schedule.log"
    process = start(config, "run", log=log)
    wait_until(lambda: "scheduler started" in log.read_text() or process.poll() is not None,
               60, "the scheduler to start")
    process.send_signal(signal.SIGINT)
    process.wait(30)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "SIGINT received" in output and "Traceback" not in output


def test_sigterm_mid_send_finishes_the_batch_in_flight_and_leaves_the_rest_owed(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    config, settings, engine = setup(tmp_path, smtp_server, rate_per_second=10, batch_size=5)
    add_essays(engine, 1)
    emails = add_subscribers(engine, 30)
    log = tmp_path / "schedule.log"
    process = start(config, "run", log=log)
    wait_until(lambda: len(smtp_server.received) >= 6, 60, "the first messages")
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "SIGTERM received" in output and "stopped by a signal" in output, output
    [issue] = weekly_issues(engine)
    with Session(engine) as session:
        statuses = Counter(
            r.status for r in session.exec(select(Delivery).where(Delivery.issue_id == issue.id))
        )
    # A clean stop: nothing left in flight; what was sent is recorded, the rest is still owed.
    assert statuses["sending"] == 0 and statuses["unknown"] == 0, statuses
    assert statuses["sent"] == len(smtp_server.received) < len(emails)
    assert statuses["pending"] == len(emails) - statuses["sent"]
    assert issue.status == "sending"
    engine.dispose()
