"""The publish story against a real SMTP server: who gets the issue, once, and what the ledger says."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline import ledger_reads
from pipeline.config import Settings
from pipeline.copies import personal_copy
from pipeline.errors import Refused
from pipeline.models import Delivery, Essay, Issue
from pipeline.publish import Ending, dry_run, enqueue, publish
from subscribers import consent
from subscribers.model import Subscriber, utcnow
from subscribers.tokens import UNSUBSCRIBE, load_secret, read_token
from tests.smtp_faults import FaultServer, add_audience, engine_for, new_issue, smtp_settings


def _project(tmp_path: Path, server: FaultServer, readers: int) -> tuple[Settings, Engine, list[Subscriber]]:
    """Settings sending to `server`, their database, the essays and `readers` active readers."""
    settings = smtp_settings(tmp_path, server.port)
    engine = engine_for(settings)
    return settings, engine, add_audience(engine, readers)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_active_subscriber_gets_exactly_one_copy(
    backend: str, tmp_path: Path, server: FaultServer, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = smtp_settings(tmp_path, server.port, database_url=url, batch_size=7)
    engine = engine_for(settings)
    active = add_audience(engine, 25)
    with Session(engine) as session:
        consent.add(session, "pending@example.org", pending=True)
        consent.add(session, "left@example.org")
        consent.unsubscribe(session, "left@example.org")
        bounced, _ = consent.add(session, "gone@example.org")
        consent.mark_bounced(session, bounced.id)

    report = publish(settings, engine, latest=True)

    assert (report.sent, report.failed, report.total, report.ending) == (25, 0, 25, Ending.FINISHED)
    got = Counter(r.rcpt_tos[0] for r in server.received)
    assert got == Counter({s.email: 1 for s in active})
    secret = load_secret(settings.base_dir)
    with Session(engine) as session:
        issue = session.get(Issue, report.issue_id)
        assert issue.status == "sent" and issue.finished_at is not None
        assert all(e.sent_in_issue_id == issue.id for e in session.exec(select(Essay)))
        rows = {r.email: r for r in ledger_reads.rows(session, issue.id)}
    for received in server.received:
        msg = received.message
        row = rows[received.rcpt_tos[0]]
        assert msg["Message-ID"] == row.message_id and row.status == "sent" and row.attempts == 1
        assert msg["To"].addresses[0].addr_spec == row.email
        token = msg["List-Unsubscribe"].split("/u/")[1].split(">")[0]
        assert read_token(secret, UNSUBSCRIBE, token) == row.subscriber_id

    again = publish(settings, engine, report.issue_id)
    assert again.sent == 0 and again.ending is Ending.NOTHING and "sent already" in again.why
    assert publish(settings, engine, latest=True).why.startswith("nothing to send")
    assert len(server.received) == 25
    engine.dispose()


def test_an_unsubscribe_after_the_freeze_is_honoured(tmp_path: Path, server: FaultServer) -> None:
    settings, engine, people = _project(tmp_path, server, 6)
    stop = threading.Event()
    stop.set()  # freeze the audience, send nothing yet
    first = publish(settings, engine, latest=True, stop=stop)
    assert first.ending is Ending.STOPPED and first.total == 6 and not server.received
    with Session(engine) as session:
        consent.unsubscribe(session, people[2].email)
        consent.add(session, "latecomer@example.org")  # not in the frozen audience
    report = publish(settings, engine, first.issue_key)
    assert (report.sent, report.skipped, report.ending) == (5, 1, Ending.FINISHED)
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(
        p.email for p in people if p.email != people[2].email)


def test_a_dry_run_builds_everything_and_writes_nothing(tmp_path: Path, server: FaultServer) -> None:
    settings, engine, _ = _project(tmp_path, server, 9)
    report = dry_run(settings, engine, latest=True)
    assert report.ending is Ending.DRY_RUN and (report.sent, report.built) == (0, 9) and report.built_bytes > 9 * 5000
    assert not server.received
    with Session(engine) as session:
        assert session.exec(select(Issue)).all() == []  # not even the composed draft is kept
        assert session.exec(select(Delivery)).all() == []
        assert {e.sent_in_issue_id for e in session.exec(select(Essay))} == {None}


def test_the_render_is_frozen_when_sending_starts(tmp_path: Path, server: FaultServer) -> None:
    settings = smtp_settings(tmp_path, server.port, batch_size=2)
    engine = engine_for(settings)
    add_audience(engine, 4)
    stop = threading.Event()
    first = publish(settings, engine, latest=True, stop=stop, progress=lambda r: stop.set())
    with Session(engine) as session:  # an essay edited in the middle of the send
        session.execute(update(Essay).values(title="Edited while sending"))
        session.commit()
    publish(settings, engine, first.issue_key)
    subjects = {r.message["Subject"] for r in server.received}
    texts = [r.message.get_body(("plain",)).get_content() for r in server.received]
    assert len(server.received) == 4 and len(subjects) == 1
    assert not any("Edited while sending" in t for t in texts)


def test_an_address_at_an_international_domain_goes_out_in_idna_in_envelope_and_header(
    tmp_path: Path, server: FaultServer
) -> None:
    settings, engine, _ = _project(tmp_path, server, 1)
    with Session(engine) as session:
        consent.add(session, "jo@bücher.example", "Jo")
    report = publish(settings, engine, latest=True)
    assert report.sent == 2
    [received] = server.to("jo@xn--bcher-kva.example")
    assert received.message["To"].addresses[0].addr_spec == "jo@xn--bcher-kva.example"


def test_an_issue_past_its_not_after_is_not_sent(tmp_path: Path, server: FaultServer) -> None:
    settings, engine, _ = _project(tmp_path, server, 2)
    issue = new_issue(engine, settings, "weekly-2026-W01")
    with Session(engine) as session:
        session.execute(update(Issue).values(not_after=utcnow() - timedelta(hours=1)))
        session.commit()
    report = publish(settings, engine, issue.key)
    assert report.ending is Ending.NOTHING and "may not be sent after" in report.why and not server.received


def test_personal_copy_is_what_the_subscriber_receives(tmp_path: Path, server: FaultServer) -> None:
    settings, engine, people = _project(tmp_path, server, 2)
    report = publish(settings, engine, latest=True)
    secret = load_secret(settings.base_dir)
    with Session(engine) as session:
        issue = session.get(Issue, report.issue_id)
        row = ledger_reads.rows(session, issue.id)[1]
        copy = personal_copy(session, settings, secret, issue, people[1], message_id=row.message_id)
        sample = personal_copy(session, settings, secret, issue, None)
    received = server.to(people[1].email)[0].message
    preview_msg = message_from_bytes(copy, policy=policy.default)
    for header in ("Subject", "To", "Message-ID", "List-Unsubscribe", "List-Id"):
        assert preview_msg[header] == received[header]
    assert preview_msg.get_body(("html",)).get_content() == received.get_body(("html",)).get_content()
    sample_msg = message_from_bytes(sample, policy=policy.default)
    assert "preview-sample" in sample_msg["List-Unsubscribe"]


def test_an_issue_with_no_active_subscribers_is_not_started(tmp_path: Path, server: FaultServer) -> None:
    settings, engine, _ = _project(tmp_path, server, 0)
    report = publish(settings, engine, latest=True)
    assert report.ending is Ending.NOTHING and "no active subscribers" in report.why
    with Session(engine) as session:
        issue = session.exec(select(Issue)).one()
        assert issue.status == "draft" and session.exec(select(Delivery)).all() == []
        assert {e.sent_in_issue_id for e in session.exec(select(Essay))} == {None}
    add_audience(engine, 2, essays=0)
    later = publish(settings, engine, latest=True)  # the same draft, now with readers
    assert later.issue_key == issue.key and later.sent == 2 and later.ending is Ending.FINISHED


def test_a_draft_is_not_sent_while_another_issue_is_sending_one_of_its_essays(
    tmp_path: Path, server: FaultServer
) -> None:
    settings, engine, _ = _project(tmp_path, server, 3)
    first = new_issue(engine, settings, "first", ["essay-000", "essay-001"])
    second = new_issue(engine, settings, "second", ["essay-001", "essay-002"])  # composed by name, earlier
    assert enqueue(settings, engine, first.key).ending is Ending.ENQUEUED  # sending, every row pending

    with pytest.raises(Refused) as refused:
        publish(settings, engine, second.key)

    assert "essay-001" in str(refused.value) and "issue first" in str(refused.value)
    assert "--remove-essay essay-001" in str(refused.value)
    assert not server.received  # its pending readers would have had essay-001 twice
    with Session(engine) as session:
        assert session.get(Issue, second.id).status == "draft"
        assert [d.issue_id for d in session.exec(select(Delivery))] == [first.id] * 3
    assert publish(settings, engine, first.key).ending is Ending.FINISHED
    then = publish(settings, engine, second.key)  # readers who had essay-001 are left out now
    assert then.ending is Ending.NOTHING and "had essay-001 already" in then.why


def test_a_resend_draft_goes_out_while_another_issue_is_sending_its_essay(
    tmp_path: Path, server: FaultServer
) -> None:
    settings, engine, _ = _project(tmp_path, server, 2)
    first = new_issue(engine, settings, "first", ["essay-000"])
    again = new_issue(engine, settings, "again", ["essay-000"], resend=True)  # mails everyone, as asked
    enqueue(settings, engine, first.key)
    assert publish(settings, engine, again.key).sent == 2
