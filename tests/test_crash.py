"""Crash test: a sender process killed with SIGKILL at random points loses nobody and sends
nothing twice, except, after an explicit `sends retry --unknown`, to rows marked unknown."""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from pipeline import db, ledger, ledger_reads
from pipeline.cli import cli as cli_main
from pipeline.config import load_settings
from pipeline.publish import Ending, publish
from subscribers.model import utcnow
from tests.conftest import CLI
from tests.smtp_faults import add_audience, fault_server, new_issue, smtp_settings

RUNS = 20
AUDIENCE = 200
BATCH = 10
MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.M)


def message_ids(received: list) -> Counter:  # noqa: ANN001
    """How often each Message-ID arrived (a regex: parsing thousands of messages is slow)."""
    return Counter(MESSAGE_ID.search(r.raw).group(1).decode() for r in received)


def _sender(config: str, key: str) -> None:
    """The child: a fresh engine (never the parent's connections), then the send."""
    settings = load_settings(config)
    publish(settings, db.make_engine(settings.database.url), key)
    os._exit(0)


@pytest.mark.slow
# Over a pipelining relay the next envelope is out before the reply to the message before it
# is read: the batch is still the unit in flight, so the guarantee is the same.
@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelining"])
def test_kill_9_at_random_points(tmp_path: Path, pipelining: bool) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "20261123")))
    fork = multiprocessing.get_context("fork")  # the child starts with everything imported
    with fault_server(pipelining=pipelining) as server:
        settings = smtp_settings(tmp_path, server.port, batch_size=BATCH)
        engine = db.connect(settings.database.url)
        people = add_audience(engine, AUDIENCE)
        cli = CLI(settings.path, CliRunner())
        duration = 1.0
        outcomes = Counter()
        for run in range(RUNS):
            key = f"crash-{run}"
            issue = new_issue(engine, settings, key, slugs=["essay-000", "essay-001"], resend=True)
            engine.dispose()
            child = fork.Process(target=_sender, args=(str(settings.path), key))
            started = time.monotonic()
            child.start()
            if run == 0:  # the first run is not killed: it measures how long a send takes
                child.join(60)
                duration = time.monotonic() - started
            else:
                time.sleep(rng.uniform(0.0, duration * 1.1))
                child.kill()  # SIGKILL: no cleanup, no finally, no atexit
                child.join(10)
            by_id = message_ids(server.received)

            with Session(engine) as session:
                ledger.reconcile(session, issue.id, utcnow() + timedelta(seconds=settings.delivery.lease_seconds + 1))
                session.commit()
                rows = ledger_reads.rows(session, issue.id)
            counts = Counter(r.status for r in rows)
            outcomes.update(counts)
            # The audience is frozen whole or not at all; nothing is left in flight.
            assert len(rows) in (0, AUDIENCE), (run, len(rows))
            assert counts["sending"] == 0
            assert counts["unknown"] <= BATCH, (run, counts)
            for row in rows:
                if row.status == "sent":
                    assert by_id[row.message_id] == 1, (run, row.email)
                if row.status == "pending":
                    assert by_id[row.message_id] == 0, (run, row.email)
            unknown = {r.email for r in rows if r.status == "unknown"}

            # Carry on (as `send` again would), then resend the unknown ones on request.
            publish(settings, engine, key)
            result = cli("sends", "retry", key, "--unknown", "--yes")
            assert result.exit_code == 0, result.output
            with Session(engine) as session:
                rows = ledger_reads.rows(session, issue.id)
            assert len(rows) == AUDIENCE and {r.status for r in rows} == {"sent"}, run
            by_id = message_ids(server.received)
            for row in rows:
                assert by_id[row.message_id] >= 1, (run, row.email)
                if by_id[row.message_id] > 1:
                    assert row.email in unknown, (run, row.email)
        # The kills landed in different places: some runs had sent rows, some unknown ones.
        assert outcomes["sent"] > 0 and outcomes["pending"] > 0
        print(f"\ncrash test: {RUNS} runs, statuses seen right after the kills: {dict(outcomes)}")
        assert len(people) == AUDIENCE
        engine.dispose()


def _cli_sender(config: str, key: str) -> None:
    """The child: `newsletter send KEY --yes`, exactly as a user starts it."""
    try:
        cli_main(["--config", config, "send", key, "--yes"], prog_name="newsletter")
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


@pytest.mark.slow
def test_ctrl_c_on_the_command_finishes_the_batch_and_send_carries_on(tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port, batch_size=BATCH)
        engine = db.connect(settings.database.url)
        add_audience(engine, AUDIENCE)
        issue = new_issue(engine, settings, "ctrl-c", slugs=["essay-000"])
        engine.dispose()
        child = fork.Process(target=_cli_sender, args=(str(settings.path), "ctrl-c"))
        child.start()
        deadline = time.monotonic() + 30
        while len(server.received) < 25 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        child.join(30)
        assert child.exitcode == 0
        with Session(engine) as session:
            counts = ledger_reads.counts(session, issue.id)
            rows = ledger_reads.rows(session, issue.id)
        assert counts["sending"] == 0 and counts["unknown"] == 0
        assert 25 <= counts["sent"] < AUDIENCE and counts["sent"] % BATCH == 0
        by_id = message_ids(server.received)
        assert all(by_id[r.message_id] == (1 if r.status == "sent" else 0) for r in rows)
        report = publish(settings, engine, "ctrl-c")  # `send` again carries on
        assert report.ending is Ending.FINISHED and report.sent == AUDIENCE - counts["sent"]
        assert set(message_ids(server.received).values()) == {1}
        engine.dispose()
