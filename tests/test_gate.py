"""The send gate: over SMTP a message that fails a MUST check of the email checklist is not sent
(by `send`, `sends retry`, the scheduler or a worker) unless --force; the outbox stays permissive."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline import db, gate
from pipeline.config import Settings, load_settings
from pipeline.copies import personal_copy
from pipeline.issues import compose
from pipeline.models import Delivery, Issue
from pipeline.publish import Ending, enqueue
from pipeline.schedule import JOB_ID, make_scheduler
from pipeline.worker import run_worker
from subscribers.model import Subscriber
from tests.conftest import CLI, PUBLIC_WEB, write_config
from tests.smtp_faults import FaultServer, add_audience
from tests.test_schedule import utc_schedule_due


def smtp_config(tmp_path: Path, server: FaultServer, **sections: dict[str, Any]) -> Path:
    """Sending through `server`; web.base_url stays the default http://127.0.0.1:8025 unless given."""
    return write_config(tmp_path, delivery={"transport": "smtp", "smtp_host": "127.0.0.1",
                                            "smtp_port": server.port, "smtp_tls": "none",
                                            "smtp_timeout": 5}, **sections)


def readers_through(tmp_path: Path, server: FaultServer, readers: int,
                    **sections: dict[str, Any]) -> tuple[Path, Engine, list[Subscriber]]:
    """smtp_config's config, its database and `readers` active subscribers in it."""
    config = smtp_config(tmp_path, server, **sections)
    engine = db.connect(load_settings(config).database.url)
    return config, engine, add_audience(engine, readers)


def flat(text: str) -> str:
    return " ".join(text.split())


def rows(engine: Engine) -> tuple[list[Issue], list[Delivery]]:
    with Session(engine) as session:
        return list(session.exec(select(Issue))), list(session.exec(select(Delivery)))


def test_send_over_smtp_with_a_loopback_base_url_is_refused_before_the_prompt(
    tmp_path: Path, server: FaultServer
) -> None:
    config, engine, _ = readers_through(tmp_path, server, 3)
    result = CLI(config, CliRunner())("send", "--latest", input="y\n")
    assert result.exit_code == 1
    words = flat(result.output)
    assert words.startswith("Error: ") and "is not sent" in words
    assert "M9 List-Unsubscribe has no https one-click URL" in words
    assert "H11 link is not absolute https/mailto/tel: 'http://127.0.0.1:8025/u/" in words
    assert "fix: set web.base_url in" in words and "(now http://127.0.0.1:8025)" in words
    assert "--force" in words
    assert "Send " not in result.output  # refused before the confirmation question
    assert server.received == []
    issues, deliveries = rows(engine)
    assert [i.status for i in issues] == ["draft"] and deliveries == []  # kept for the next send
    assert f"newsletter lint {issues[0].key}" in words
    linted = CLI(config, CliRunner())("lint", issues[0].key)
    assert linted.exit_code == 1 and "M9 MUST" in linted.output
    engine.dispose()


def test_a_dry_run_says_the_real_send_would_be_refused_and_exits_1(
    tmp_path: Path, server: FaultServer
) -> None:
    config, engine, _ = readers_through(tmp_path, server, 3)
    result = CLI(config, CliRunner())("send", "--latest", "--dry-run")
    assert result.exit_code == 1  # as the real send would: a script must notice
    words = flat(result.output)
    assert "3 messages built" in words and "none sent" in words
    assert "A real send would be refused" in words
    assert "M9 List-Unsubscribe has no https one-click URL" in words and "fix: set web.base_url" in words
    assert server.received == []
    assert rows(engine) == ([], [])  # a dry run keeps nothing, not even the composed draft
    # So the way to the full report names no key that would not be found.
    assert "`newsletter issues new`, then `newsletter lint latest`, shows the full report" in words
    # Fixed, the same dry run passes.
    (tmp_path / "fixed").mkdir()
    fixed, fixed_engine, _ = readers_through(tmp_path / "fixed", server, 3, web=PUBLIC_WEB)
    fixed_engine.dispose()
    passing = CLI(fixed, CliRunner())("send", "--latest", "--dry-run")
    assert passing.exit_code == 0 and "would be refused" not in passing.output
    engine.dispose()


def test_force_sends_anyway_and_logs_the_failures(
    tmp_path: Path, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    config, engine, people = readers_through(tmp_path, server, 3)
    with caplog.at_level(logging.WARNING, logger="newsletter.gate"):
        result = CLI(config, CliRunner())("send", "--latest", "--yes", "--force")
    assert result.exit_code == 0, result.output
    assert sorted(m.rcpt_tos[0] for m in server.received) == sorted(p.email for p in people)
    warned = [r.getMessage() for r in caplog.records if r.name == "newsletter.gate"]
    assert len(warned) == 1 and "--force" in warned[0]
    assert "M9 " in warned[0] and "H11 " in warned[0] and "127.0.0.1:8025" in warned[0]
    engine.dispose()


def test_a_public_https_base_url_passes_the_gate(tmp_path: Path, server: FaultServer) -> None:
    config, engine, people = readers_through(tmp_path, server, 2, web=PUBLIC_WEB)
    result = CLI(config, CliRunner())("send", "--latest", "--yes")
    assert result.exit_code == 0, result.output
    assert len(server.received) == len(people)
    engine.dispose()


def test_the_outbox_is_not_gated(run_cli: CLI, settings: Settings, engine: Engine) -> None:
    assert settings.web.base_url.startswith("http://127.0.0.1")  # the demo's default
    add_audience(engine, 2)
    result = run_cli("send", "--latest", "--yes")
    assert result.exit_code == 0, result.output
    assert len(list(settings.delivery.outbox_dir.glob("*.eml"))) == 2


def test_must_failures_lint_the_message_as_it_would_go_out(tmp_path: Path, engine: Engine) -> None:
    add_audience(engine, 1)
    for base, expected in (("http://127.0.0.1:8025", {"M9", "H11"}), (PUBLIC_WEB["base_url"], set())):
        settings = load_settings(write_config(tmp_path, web={"base_url": base},
                                              delivery={"transport": "smtp"}))
        with Session(engine) as session:
            issue = compose(session, settings)
            raw = personal_copy(session, settings, "", issue, None)
            session.rollback()
        found = gate.must_failures(settings, raw)
        assert {f.code for f in found} == expected
        assert gate.is_real_mail(settings)
        if found:
            with pytest.raises(gate.SendRefused) as refused:
                gate.check(settings, raw, "weekly-x")
            assert refused.value.findings == found
            assert gate.check(settings, raw, "weekly-x", force=True) == found
            outbox = load_settings(write_config(tmp_path, web={"base_url": base}))
            assert not gate.is_real_mail(outbox) and gate.check(outbox, raw, "weekly-x") == []


def test_run_due_refused_exits_1_leaves_the_issue_unsent_and_a_fixed_config_sends_it(
    tmp_path: Path, server: FaultServer
) -> None:
    schedule = utc_schedule_due(timedelta(hours=1))
    cli = CLI(smtp_config(tmp_path, server, schedule=schedule), CliRunner())
    engine = db.connect(load_settings(cli.config_file).database.url)
    people = add_audience(engine, 3)
    refused = cli("schedule", "run-due")
    assert refused.exit_code == 1
    assert "M9 " in flat(refused.output) and "fix: set web.base_url" in flat(refused.output)
    assert server.received == []
    issues, deliveries = rows(engine)
    assert [i.status for i in issues] == ["draft"] and deliveries == []
    cli.config_file = smtp_config(tmp_path, server, schedule=schedule, web=PUBLIC_WEB)
    fixed = cli("schedule", "run-due")
    assert fixed.exit_code == 0, fixed.output
    assert sorted(m.rcpt_tos[0] for m in server.received) == sorted(p.email for p in people)
    assert [i.status for i in rows(engine)[0]] == ["sent"]
    engine.dispose()


def test_the_scheduler_job_logs_a_refusal_and_does_not_send(
    tmp_path: Path, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(smtp_config(tmp_path, server, schedule=utc_schedule_due(timedelta(hours=1))))
    engine = db.connect(settings.database.url)
    add_audience(engine, 2)
    scheduler = make_scheduler(settings, engine)
    with caplog.at_level(logging.ERROR, logger="newsletter.schedule"):
        scheduler.get_job(JOB_ID).func()  # what `schedule run` does once at start
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "M9 " in errors[0] and "restart the scheduler" in errors[0]
    assert server.received == [] and [i.status for i in rows(engine)[0]] == ["draft"]
    engine.dispose()


def test_a_worker_leaves_a_refused_issue_unsent_unless_forced(tmp_path: Path, server: FaultServer) -> None:
    public = load_settings(smtp_config(tmp_path, server, web=PUBLIC_WEB))
    engine = db.connect(public.database.url)
    people = add_audience(engine, 3)
    assert enqueue(public, engine, latest=True).ending is Ending.ENQUEUED  # `send --enqueue`
    loopback = load_settings(smtp_config(tmp_path, server))  # this worker's config is wrong
    stats = run_worker(loopback, engine, once=True, pause_seconds=0.01)
    assert stats.sent == 0 and server.received == []
    assert len(stats.errors) == 1 and "M9 " in stats.errors[0]
    worker = CLI(loopback.path, CliRunner())("worker", "--once")
    assert worker.exit_code == 1 and server.received == []
    forced = run_worker(loopback, engine, once=True, force=True)
    assert forced.sent == len(people) and len(server.received) == len(people)
    assert [i.status for i in rows(engine)[0]] == ["sent"]
    engine.dispose()
