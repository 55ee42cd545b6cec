"""The confirmation mailer: queued sign-up emails go out once, from the worker, the scheduler or the CLI."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta
from pathlib import Path

from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline import confirmations, db
from pipeline.config import Settings, load_settings
from pipeline.schedule import CONFIRMATIONS_JOB_ID, JOB_ID, make_scheduler
from pipeline.worker import run_worker
from subscribers import confirmation_queue, consent
from subscribers.model import ConfirmationRequest, Subscriber, utcnow
from tests.conftest import CLI, SMTPServer, write_config


def sign_up(engine: Engine, email: str) -> None:
    with Session(engine) as session:
        consent.subscribe(session, email)


def outbox(settings: Settings) -> list[str]:
    folder = settings.delivery.outbox_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_worker_sends_queued_confirmations(settings: Settings, engine: Engine) -> None:
    sign_up(engine, "wes@example.org")
    run_worker(settings, engine, once=True)
    assert outbox(settings) == ["confirm-wes@example.org.eml"]
    assert confirmation_queue.queued(engine) == 0


def test_the_scheduler_job_sends_queued_confirmations(settings: Settings, engine: Engine) -> None:
    sign_up(engine, "sue@example.org")
    make_scheduler(settings, engine).get_job(JOB_ID).func()
    assert "confirm-sue@example.org.eml" in outbox(settings)


def test_a_running_scheduler_sends_confirmations_within_a_minute_not_next_week(
    settings: Settings, engine: Engine
) -> None:
    # `schedule run` alone (no serve, no worker): a sign-up must not wait for the weekly job.
    job = make_scheduler(settings, engine).get_job(CONFIRMATIONS_JOB_ID)
    assert isinstance(job.trigger, IntervalTrigger) and job.trigger.interval == timedelta(minutes=1)
    sign_up(engine, "una@example.org")
    job.func()
    assert outbox(settings) == ["confirm-una@example.org.eml"]


def test_mailers_at_once_send_each_confirmation_once(any_settings: Settings, any_engine: Engine) -> None:
    for n in range(20):
        sign_up(any_engine, f"m{n}@example.org")
    results: list[confirmations.Mailed] = []
    threads = [threading.Thread(target=lambda: results.append(confirmations.send_queued(any_settings, any_engine)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.sent for r in results) == 20
    assert outbox(any_settings) == sorted(f"confirm-m{n}@example.org.eml" for n in range(20))


def test_a_claim_whose_mailer_died_is_sent_again_without_a_second_file(settings: Settings, engine: Engine) -> None:
    sign_up(engine, "dan@example.org")
    assert confirmations.send_queued(settings, engine).sent == 1
    # As if the mailer wrote the file and died before recording it: claimed, lease long gone.
    with Session(engine) as session:
        session.execute(update(ConfirmationRequest).values(status="sending", sent_at=None,
                                                           updated_at=utcnow() - timedelta(hours=1)))
        session.commit()
    assert confirmations.send_queued(settings, engine).sent == 1
    assert outbox(settings) == ["confirm-dan@example.org.eml"]
    with Session(engine) as session:
        assert session.exec(select(ConfirmationRequest.attempts)).one() == 2


def test_cli_add_confirm_says_when_the_relay_is_down_and_keeps_the_email_queued(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, delivery={"transport": "smtp", "smtp_host": "127.0.0.1",
                                              "smtp_port": port, "smtp_tls": "none"})
    result = CLI(config, CliRunner())("subscribers", "add", "ivy@example.org", "--confirm")
    assert result.exit_code == 1
    assert "was not sent: cannot connect" in result.output and "stays queued" in result.output
    with Session(db.connect(load_settings(config).database.url)) as session:
        assert session.exec(select(ConfirmationRequest.status)).all() == ["queued"]


def test_a_confirmation_to_an_international_domain_goes_to_its_ascii_form(tmp_path: Path,
                                                                         smtp_server: SMTPServer) -> None:
    # As a digest does: the domain in IDNA form in RCPT TO and in the To header (an RFC 2047
    # encoded word inside an address is no address at all).
    config = write_config(tmp_path, delivery={"transport": "smtp", "smtp_host": "127.0.0.1",
                                              "smtp_port": smtp_server.port, "smtp_tls": "none"})
    settings = load_settings(config)
    engine = db.connect(settings.database.url)
    sign_up(engine, "ann@ex\u00e4mple.com")
    assert confirmations.send_queued(settings, engine).sent == 1
    [received] = smtp_server.received
    assert received.rcpt_tos == ["ann@xn--exmple-cua.com"]
    assert received.message["To"].addresses[0].addr_spec == "ann@xn--exmple-cua.com"
    engine.dispose()


def test_a_stored_address_this_sender_cannot_mail_fails_its_confirmation_only(settings: Settings,
                                                                             engine: Engine) -> None:
    # An address from before sign-ups refused local parts beyond ASCII (they need SMTPUTF8).
    sign_up(engine, "zoe@example.org")
    sign_up(engine, "amy@example.org")
    with Session(engine) as session:
        session.execute(update(Subscriber).where(col(Subscriber.email) == "zoe@example.org")
                        .values(email="zo\u00eb@example.org"))
        session.commit()
    mailed = confirmations.send_queued(settings, engine)
    assert mailed.sent == 1 and mailed.failed == 1 and "SMTPUTF8" in mailed.error
    assert outbox(settings) == ["confirm-amy@example.org.eml"]
