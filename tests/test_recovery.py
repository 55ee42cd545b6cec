"""After a kill -9, the next command says what happened: the dead sender's rows become unknown
at once, `sends status` explains them, and a run that finishes the issue exits 5, not 0."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db, ledger_reads
from pipeline.cli import cli as cli_main
from pipeline.config import Settings
from pipeline.models import Delivery
from subscribers.model import utcnow
from tests.conftest import CLI
from tests.smtp_faults import (
    FaultServer,
    add_audience,
    fault_server,
    new_issue,
    smtp_settings,
)
from tests.test_schedule import utc_schedule_due

AUDIENCE, BATCH, HANGS = 12, 5, 7  # the 8th reader's server never answers: the 2nd batch is in flight


def _child(config: str, *args: str) -> None:
    try:
        cli_main(["--config", config, *args], prog_name="newsletter")
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


def kill_mid_batch(server: FaultServer, config: Path, *args: str) -> int:
    """Run `newsletter ARGS` in a child, SIGKILL it while its second batch is in flight; its pid."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(str(config), *args))
    child.start()
    deadline = time.monotonic() + 60
    while f"reader{HANGS}@example.org" not in {r.rcpt_tos[0] for r in server.received}:
        assert time.monotonic() < deadline and child.is_alive(), "the send never reached the hang"
        time.sleep(0.01)
    child.kill()  # SIGKILL: no cleanup, no finally
    child.join(10)
    return int(child.pid or 0)


def scenario(tmp_path: Path, server: FaultServer, **settings_extra: object) -> tuple[Settings, Engine, CLI]:
    server.hang_seconds = 60.0
    settings = smtp_settings(tmp_path, server.port, batch_size=BATCH, smtp_timeout=60, **settings_extra)
    engine = db.connect(settings.database.url)
    add_audience(engine, AUDIENCE)
    server.faults[f"reader{HANGS}@example.org"] = [("store-hang", "")]
    return settings, engine, CLI(settings.path, CliRunner())


def flat(text: str) -> str:
    return " ".join(text.split())


def test_after_kill_9_status_explains_and_send_exits_5(tmp_path: Path) -> None:
    with fault_server() as server:
        settings, engine, cli = scenario(tmp_path, server)
        issue = new_issue(engine, settings, "crashed")
        engine.dispose()
        kill_mid_batch(server, settings.path, "send", "crashed", "--yes")
        # Well inside the lease (600 s): the holder is known to be gone, so nothing waits for it.
        status = cli("sends", "status", "crashed", "--json")
        assert status.exit_code == 0

        counts = json.loads(status.output)["counts"]
        assert counts["sending"] == 0 and counts["unknown"] == BATCH and counts["sent"] == BATCH
        shown = flat(cli("sends", "status", "crashed").output)
        assert "maybe delivered, maybe not" in shown and "sends retry crashed --unknown" in shown

        again = cli("send", "crashed", "--yes")
        assert again.exit_code == 5, again.output
        assert "finished, but 5 deliveries are unknown" in flat(again.output)
        assert "crashed is sent" not in again.output
        with Session(engine) as session:
            assert ledger_reads.counts(session, issue.id)["sent"] == AUDIENCE - BATCH
            reasons = {r.last_error for r in ledger_reads.rows(session, issue.id, "unknown")}
        assert len(reasons) == 1 and "is gone" in reasons.pop()

        # The decision: resend them; only those rows can get a second copy.
        assert cli("sends", "retry", "crashed", "--unknown", "--yes").exit_code == 0
        got = Counter(r.rcpt_tos[0] for r in server.received)
        assert all(got[f"reader{n}@example.org"] == (2 if n in (5, 6, 7) else 1) for n in range(AUDIENCE))
        engine.dispose()


def test_status_names_who_holds_rows_in_flight_and_until_when(tmp_path: Path) -> None:
    with fault_server() as server:
        settings, engine, cli = scenario(tmp_path, server)
        issue = new_issue(engine, settings, "held")
        engine.dispose()
        publish_child = multiprocessing.get_context("fork").Process(
            target=_child, args=(str(settings.path), "send", "held", "--yes"))
        publish_child.start()
        try:
            deadline = time.monotonic() + 60
            while f"reader{HANGS}@example.org" not in {r.rcpt_tos[0] for r in server.received}:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            shown = flat(cli("sends", "status", "held").output)
            assert f"{BATCH} being sent by {os.uname().nodename}:{publish_child.pid} (running on this host)" in shown
        finally:
            publish_child.kill()
            publish_child.join(10)
        # Rows claimed on another host: only the lease can tell, and status says until when.
        lease = utcnow() + timedelta(minutes=10)
        with Session(engine) as session:
            session.execute(update(Delivery).where(Delivery.issue_id == issue.id, Delivery.status == "sending")
                            .values(status="sending", holder="mailer-2:4242", lease_until=lease))
            session.commit()
        shown = flat(cli("sends", "status", "held").output)
        assert f"{BATCH} held by mailer-2:4242 until {lease:%Y-%m-%d %H:%M:%S} UTC" in shown
        assert "become `unknown` then" in shown
        engine.dispose()


def test_run_due_after_kill_9_does_not_blame_another_scheduler(tmp_path: Path) -> None:
    with fault_server() as server:
        settings, engine, cli = scenario(tmp_path, server, schedule=utc_schedule_due(timedelta(minutes=30)))
        engine.dispose()
        kill_mid_batch(server, settings.path, "schedule", "run-due")
        result = cli("schedule", "run-due")
        assert result.exit_code == 5, result.output
        shown = flat(result.output)
        assert "another scheduler" not in shown
        assert "finished, but some deliveries need a decision" in shown
        assert f"{BATCH} unknown" in shown and f"{BATCH} left in flight by a sender that stopped" in shown
        engine.dispose()


def test_a_worker_says_what_it_reconciled_and_exits_5(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with fault_server() as server:
        settings, engine, cli = scenario(tmp_path, server)
        new_issue(engine, settings, "handed")
        assert cli("send", "handed", "--enqueue", "--yes").exit_code == 0
        engine.dispose()
        kill_mid_batch(server, settings.path, "worker")
        with caplog.at_level(logging.INFO, logger="newsletter.worker"):
            result = cli("worker", "--once")
        assert result.exit_code == 5, result.output
        logged = flat(caplog.text)
        assert "nothing is owed" not in logged
        assert f"{BATCH} deliveries left in flight by a sender that stopped mid-attempt" in logged
        assert "handed is finished, but 5 deliveries are unknown" in logged
        engine.dispose()


def test_run_due_waits_for_a_holder_on_another_host_then_reconciles_its_rows(tmp_path: Path) -> None:
    with fault_server() as server:
        settings, engine, cli = scenario(tmp_path, server, schedule=utc_schedule_due(timedelta(minutes=30)))
        engine.dispose()
        kill_mid_batch(server, settings.path, "schedule", "run-due")
        lease = utcnow() + timedelta(minutes=10)
        with Session(engine) as session:  # as if the batch had been claimed on another host
            session.execute(update(Delivery).where(Delivery.status == "sending")
                            .values(holder="mailer-2:4242", lease_until=lease))
            session.commit()
        held = cli("schedule", "run-due")
        assert held.exit_code == 4, held.output
        assert f"{BATCH} held by mailer-2:4242 until {lease:%Y-%m-%d %H:%M:%S} UTC" in flat(held.output)
        with Session(engine) as session:  # its lease runs out
            session.execute(update(Delivery).where(Delivery.status == "sending")
                            .values(lease_until=utcnow() - timedelta(seconds=1)))
            session.commit()
        done = cli("schedule", "run-due")
        assert done.exit_code == 5, done.output
        assert f"{BATCH} unknown" in flat(done.output)
        later = cli("schedule", "run-due")  # flagged once; later calls still say it
        assert later.exit_code == 0 and f"but {BATCH} deliveries are unknown" in flat(later.output)
        engine.dispose()
