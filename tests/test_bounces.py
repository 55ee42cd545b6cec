"""Bounces, complaints and emailed unsubscribes: classified from real-shaped reports, matched to
deliveries, applied through the consent rules, once, from a Maildir and an mbox and after a real
SMTP send."""

from __future__ import annotations

import base64
import mailbox
import quopri
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from pipeline import db
from pipeline.bounces import BounceKind, classify
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError
from pipeline.feedback import process_mailbox
from pipeline.models import BounceEvent, Delivery, Issue, ProcessedMessage
from pipeline.publish import publish
from pipeline.returnpath import delivery_id_of
from pipeline.schedule import BOUNCE_JOB_ID, make_scheduler
from pipeline.transports import MemoryTransport
from pipeline.weekly import run_due
from pipeline.worker import run_worker
from subscribers import consent
from subscribers.errors import ConsentError
from subscribers.model import Subscriber
from subscribers.tokens import load_secret
from tests.conftest import CLI, SMTPServer, write_config
from tests.digest_fixtures import add_essays, make_essay

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
UNSUBSCRIBE_TO = "bounces+unsubscribe@essays.example.org"

# fixture -> (kind, failed recipient, DSN status); what a person reading the report would say.
EXPECTED = {
    "postfix.eml": ("hard", "alice@example.net", "5.1.1"),
    "postfix_delayed.eml": ("soft", "grace@example.net", "4.4.1"),
    "exim.eml": ("hard", "bob@example.com", "5.1.1"),
    "exchange.eml": ("hard", "carol@contoso.example", "5.1.10"),
    "gmail.eml": ("soft", "dan@gmail.example", "5.2.2"),  # mailbox full: a soft bounce
    "yahoo.eml": ("hard", "heidi@yahoo.example", ""),
    "ses.eml": ("hard", "ivan@example.org", "5.1.1"),
    "qmail.eml": ("hard", "judy@example.net", "5.1.1"),
    "rfc822_headers_only.eml": ("hard", "staff-dave@mx.internal.example", "5.1.1"),
    "arf_complaint.eml": ("complaint", "erin@example.com", ""),
    "out_of_office.eml": ("autoreply", None, None),
    "mailto_unsubscribe.eml": ("unsubscribe", None, None),
    "garbage.eml": ("ignored", None, None),
}
# Who each fixture is about, and the status they must end with after one pass.
PEOPLE = {
    "alice@example.net": "bounced", "grace@example.net": "active", "bob@example.com": "bounced",
    "carol@contoso.example": "bounced", "dan@gmail.example": "active", "heidi@yahoo.example": "bounced",
    "ivan@example.org": "bounced", "judy@example.net": "bounced", "dave@example.org": "bounced",
    "erin@example.com": "complained", "frank@example.org": "unsubscribed", "kim@example.org": "active",
}


def test_every_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_report_is_classified_as_a_reader_would(name: str) -> None:
    kind, recipient, status = EXPECTED[name]
    finding = classify((FIXTURES / name).read_bytes(), UNSUBSCRIBE_TO)
    assert finding.kind.value == kind, finding.reason
    if recipient is not None:
        assert [(f.recipient, f.status) for f in finding.failures] == [(recipient, status)]
        assert finding.failures[0].detail  # the server's own words are kept
    assert finding.reason


def test_the_original_message_id_is_found_in_attached_or_quoted_headers() -> None:
    for name in ("postfix.eml", "exchange.eml", "rfc822_headers_only.eml", "qmail.eml", "exim.eml",
                 "arf_complaint.eml"):
        person = name.split("_")[0]
        finding = classify((FIXTURES / name).read_bytes(), UNSUBSCRIBE_TO)
        assert finding.original_message_id.startswith("<fixture-"), (person, finding.original_message_id)


def bounce_config(directory: Path, database_url: str | None = None, **bounces: object) -> Path:
    values = {"enabled": True, "return_path": "bounces@essays.example.org", "mailbox": "Maildir", **bounces}
    return write_config(directory, database_url=database_url, bounces=values,
                        web={"base_url": "https://letters.example.org"})


def fixture_audience(settings: Settings) -> dict[str, int]:
    """Everyone the fixtures are about, sent one issue (in memory), each delivery carrying the
    Message-ID its fixture quotes: {email: delivery id}."""
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        add_essays(session, make_essay(1))
        for email in PEOPLE:
            consent.add(session, email)
    report = publish(settings, engine, latest=True, transport_factory=MemoryTransport)
    assert report.sent == len(PEOPLE)
    ids = {}
    with Session(engine) as session:
        for row in session.exec(select(Delivery)).all():
            name = row.email.split("@")[0]
            session.execute(update(Delivery).where(Delivery.id == row.id)
                            .values(message_id=f"<fixture-{name}-0001@essays.example.org>"))
            ids[row.email] = row.id
        session.commit()
    engine.dispose()
    return ids


def statuses(settings: Settings) -> dict[str, str]:
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        found = {s.email: s.status for s in session.exec(select(Subscriber)).all()}
    engine.dispose()
    return found


def fill_maildir(path: Path, files: list[Path]) -> mailbox.Maildir:
    box = mailbox.Maildir(path, create=True)
    for f in files:
        box.add(f.read_bytes())
    return box


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_maildir_of_reports_changes_each_subscriber_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    config = bounce_config(tmp_path, url)
    settings = load_settings(config)
    fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", sorted(FIXTURES.glob("*.eml")))
    run = CLI(config, CliRunner())

    dry = run("bounces", "process", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would process 13 new messages" in dry.output
    assert set(statuses(settings).values()) == {"active"}  # a dry run changes nobody
    assert len(list(mailbox.Maildir(tmp_path / "Maildir"))) == 13

    first = run("bounces", "process")
    assert first.exit_code == 0, first.output
    assert "processed 13 new messages (7 hard, 2 soft, 1 complaint, 1 unsubscribe, 1 autoreply, 1 ignored)" \
        in " ".join(first.output.split())
    assert statuses(settings) == PEOPLE
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        alice = session.exec(select(Delivery).where(Delivery.email == "alice@example.net")).one()
        assert (alice.status, alice.feedback, alice.feedback_status) == ("sent", "hard", "5.1.1")
        assert "User unknown" in (alice.feedback_detail or "")
        dave = session.exec(select(BounceEvent).where(BounceEvent.email == "staff-dave@mx.internal.example")).one()
        assert dave.matched_by == "message-id" and dave.issue_id == alice.issue_id
        events = session.exec(select(func.count()).select_from(BounceEvent)).one()
        # A complaint never comes back by import (rule 1 of consent).
        with pytest.raises(ConsentError):
            consent.add(session, "erin@example.com")
    box = mailbox.Maildir(tmp_path / "Maildir")
    assert len(box) == 0 and len(box.get_folder("Processed")) == 13

    # New copies of the same reports (the mailbox re-delivered them): nothing changes.
    fill_maildir(tmp_path / "Maildir", sorted(FIXTURES.glob("*.eml")))
    again = run("bounces", "process")
    assert "processed 0 new messages; 13 handled by an earlier run" in " ".join(again.output.split())
    assert statuses(settings) == PEOPLE
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(BounceEvent)).one() == events

    status = run("sends", "status", alice_issue_key(engine))
    flat = " ".join(status.output.split())
    assert "bounced after sending │ 7" in flat or "bounced after sending 7" in flat.replace("│", "")
    assert "Paused:" in flat and "Complaint rate 8.33% (1 of 12 delivered)" in flat
    listed = run("bounces", "list", "--kind", "complaint", "--json")
    assert '"email": "erin@example.com"' in listed.output
    engine.dispose()


def alice_issue_key(engine: Engine) -> str:
    with Session(engine) as session:
        return session.exec(select(Issue.key)).one()


def fixture_mbox(tmp_path: Path) -> tuple[Settings, mailbox.mbox]:
    """Settings reading tmp_path/bounces.mbox, which holds every fixture, and the open mbox."""
    settings = load_settings(bounce_config(tmp_path, mailbox="bounces.mbox"))
    fixture_audience(settings)
    box = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    for f in sorted(FIXTURES.glob("*.eml")):
        box.add(f.read_bytes())
    box.flush()
    return settings, box


def test_an_mbox_is_processed_once_and_never_rewritten(tmp_path: Path) -> None:
    settings, box = fixture_mbox(tmp_path)
    box.close()
    before = (tmp_path / "bounces.mbox").read_bytes()
    engine = db.connect(settings.database.url)

    first = process_mailbox(settings, engine)
    second = process_mailbox(settings, engine)

    assert len({o.key for o in first.outcomes}) == 13 and first.already == 0
    assert second.outcomes == [] and second.already == 13
    assert statuses(settings) == PEOPLE
    assert (tmp_path / "bounces.mbox").read_bytes() == before
    engine.dispose()


def test_a_message_still_being_written_to_an_mbox_waits_for_the_next_run(tmp_path: Path) -> None:
    # The mail server appends to the mbox while we read it: a last message cut short (no final
    # newline yet) is not judged, nor recorded as handled; once it is whole, it counts.
    settings, box = fixture_mbox(tmp_path)
    box.close()
    engine = db.connect(settings.database.url)
    assert len({o.key for o in process_mailbox(settings, engine).outcomes}) == 13
    report = (FIXTURES / "gmail.eml").read_bytes().replace(
        b"<6751a2b8.5d0a0220.1c2b3a.0001.GMR@mx.google.com>", b"<second-report@mx.google.com>")
    whole = b"From MAILER-DAEMON Mon Nov 30 12:00:00 2026\n" + report.replace(b"\r\n", b"\n") + b"\n"
    path = tmp_path / "bounces.mbox"
    with path.open("ab") as mbox:
        mbox.write(whole[:len(whole) // 2])
    cut = process_mailbox(settings, engine)
    assert cut.outcomes == [] and cut.already == 13
    with path.open("ab") as mbox:
        mbox.write(whole[len(whole) // 2:])
    done = process_mailbox(settings, engine)
    [whole_report] = done.outcomes  # read as the bounce it is, not as the fragment was
    assert whole_report.key == "<second-report@mx.google.com>" and whole_report.kind in ("hard", "soft")
    engine.dispose()


def _soft_bounce_twice(tmp_path: Path) -> tuple[Settings, mailbox.Maildir, bytes, bytes]:
    """A limit of 2 soft bounces in 30 days, an empty Maildir, and two soft bounces for dan."""
    settings = load_settings(bounce_config(tmp_path, soft_bounce_limit=2, soft_bounce_days=30))
    fixture_audience(settings)
    gmail = (FIXTURES / "gmail.eml").read_bytes()
    return (settings, fill_maildir(tmp_path / "Maildir", []), gmail,
            gmail.replace(b"0001.GMR@mx.google.com", b"0002.GMR@mx.google.com"))


def test_soft_bounces_make_an_address_bounced_at_the_limit(tmp_path: Path) -> None:
    settings, box, first, second = _soft_bounce_twice(tmp_path)
    box.add(first)
    engine = db.connect(settings.database.url)
    process_mailbox(settings, engine)
    assert statuses(settings)["dan@gmail.example"] == "active"
    box.add(second)
    report = process_mailbox(settings, engine)
    assert statuses(settings)["dan@gmail.example"] == "bounced"
    assert report.outcomes[0].action == "bounced" and "soft bounce 2 of 2" in report.outcomes[0].reason
    engine.dispose()


def test_bounces_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bounces.mailbox"):
        load_settings(write_config(tmp_path, bounces={"enabled": True, "mailbox": ""}))
    with pytest.raises(ConfigError, match="bounces.return_paht: unknown key"):
        load_settings(write_config(tmp_path, bounces={"return_paht": "x@example.org"}))
    with pytest.raises(ConfigError, match="without '\\+'"):
        load_settings(write_config(tmp_path, bounces={"return_path": "a+b@example.org"}))


# --- end to end: a real SMTP send, then DSNs addressed to the VERP return paths ----------------

DSN = """\
Return-Path: <>
Delivered-To: {verp}
From: MAILER-DAEMON@relay.example.net (Mail Delivery System)
To: {verp}
Subject: Undelivered Mail Returned to Sender
Message-Id: <dsn-{n}@relay.example.net>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b{n}"

--b{n}
Content-Type: text/plain

The mail system could not deliver your message.

--b{n}
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--b{n}--
"""

ARF = """\
From: fbl@mailprovider.example
To: {verp}
Subject: complaint
Message-ID: <arf-{n}@mailprovider.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="f{n}"

--f{n}
Content-Type: text/plain

An abuse report.

--f{n}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{verp}>

--f{n}--
"""


def test_end_to_end_send_bounce_process(tmp_path: Path, smtp_server: SMTPServer) -> None:
    config = bounce_config(tmp_path)
    text = config.read_text().replace('transport = "outbox"', 'transport = "smtp"')
    text = text.replace("smtp_port = 587", f"smtp_port = {smtp_server.port}").replace(
        'smtp_host = "localhost"', 'smtp_host = "127.0.0.1"').replace('smtp_tls = "starttls"', 'smtp_tls = "none"')
    config.write_text(text)
    settings = load_settings(config)
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        add_essays(session, make_essay(1))
        people = [consent.add(session, f"reader{n}@example.org")[0] for n in range(6)]
    run = CLI(config, CliRunner())
    sent = run("send", "--latest", "--yes")
    assert sent.exit_code == 0, sent.output
    assert len(smtp_server.received) == 6

    secret = load_secret(settings.base_dir)
    verp = {}
    with Session(engine) as session:
        rows = {r.email: r for r in session.exec(select(Delivery)).all()}
    for received in smtp_server.received:
        rcpt = received.rcpt_tos[0]
        assert received.mail_from.startswith("bounces+") and received.mail_from.endswith("@essays.example.org")
        assert delivery_id_of(settings, secret, received.mail_from) == rows[rcpt].id
        msg = received.message
        assert msg["Feedback-ID"].endswith(":newsletter:essays.example.org")
        assert f"mailto:{UNSUBSCRIBE_TO}?subject=unsubscribe" in msg["List-Unsubscribe"]
        assert "https://letters.example.org/u/" in msg["List-Unsubscribe"]
        verp[rcpt] = received.mail_from

    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    # reader0: hard bounce; the DSN quotes nothing of the original and names a forwarded address.
    box.add(DSN.format(verp=verp["reader0@example.org"], n=0, rcpt="r0@forwarded.example", action="failed",
                       status="5.1.1", diagnostic="550 5.1.1 user unknown"))
    box.add(DSN.format(verp=verp["reader1@example.org"], n=1, rcpt="reader1@example.org", action="delayed",
                       status="4.2.2", diagnostic="452 4.2.2 mailbox full"))
    box.add(ARF.format(verp=verp["reader2@example.org"], n=2))
    box.add(f"From: reader3@example.org\nTo: {UNSUBSCRIBE_TO}\nSubject: unsubscribe\n"
            f"Message-ID: <u3@example.org>\n\nplease\n")
    box.add(f"From: reader4@example.org\nTo: {verp['reader4@example.org']}\nAuto-Submitted: auto-replied\n"
            f"Subject: Out of office\nMessage-ID: <ooo4@example.org>\n\nBack Monday.\n")
    # A forged return path (a token that was not signed by us) matches nothing by VERP.
    forged = verp["reader5@example.org"].replace("bounces+", "bounces+x")
    box.add(DSN.format(verp=forged, n=5, rcpt="nobody@forwarded.example", action="failed",
                       status="5.1.1", diagnostic="550 5.1.1 user unknown"))
    box.close()

    processed = run("bounces", "process")
    assert processed.exit_code == 0, processed.output
    assert statuses(settings) == {
        "reader0@example.org": "bounced", "reader1@example.org": "active", "reader2@example.org": "complained",
        "reader3@example.org": "unsubscribed", "reader4@example.org": "active", "reader5@example.org": "active"}
    with Session(engine) as session:
        ledger = {r.email: (r.status, r.feedback, r.feedback_status) for r in session.exec(select(Delivery))}
        matched = {e.email: e.matched_by for e in session.exec(select(BounceEvent))}
        assert session.exec(select(func.count()).select_from(ProcessedMessage)).one() == 6
        events = session.exec(select(func.count()).select_from(BounceEvent)).one()
    assert ledger == {
        "reader0@example.org": ("sent", "hard", "5.1.1"), "reader1@example.org": ("sent", "soft", "4.2.2"),
        "reader2@example.org": ("sent", "complaint", None), "reader3@example.org": ("sent", None, None),
        "reader4@example.org": ("sent", None, None), "reader5@example.org": ("sent", None, None)}
    assert matched["r0@forwarded.example"] == "verp" and matched[""] == "verp"  # the ARF named nobody
    assert matched["nobody@forwarded.example"] == ""

    again = run("bounces", "process")  # the messages moved to .Processed: nothing is left to read
    assert "processed 0 new messages" in again.output
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(BounceEvent)).one() == events == 5
    assert statuses(settings)["reader0@example.org"] == "bounced" and len(people) == 6
    engine.dispose()


# --- the scheduler and the worker ------------------------------------------------------------

DUE = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # Monday 07:00 Berlin: week 48 is due


def test_the_scheduler_reads_the_mailbox_on_its_interval(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path, interval_minutes=5))
    fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", [FIXTURES / "postfix.eml"])
    engine = db.connect(settings.database.url)
    scheduler = make_scheduler(settings, engine)
    job = scheduler.get_job(BOUNCE_JOB_ID)
    assert isinstance(job.trigger, IntervalTrigger) and job.trigger.interval == timedelta(minutes=5)
    job.func()  # what the scheduler runs every 5 minutes
    assert statuses(settings)["alice@example.net"] == "bounced"
    (tmp_path / "off").mkdir()
    off = load_settings(bounce_config(tmp_path / "off", enabled=False))
    assert make_scheduler(off, engine).get_job(BOUNCE_JOB_ID) is None
    engine.dispose()


def test_a_worker_reads_the_mailbox_before_it_sends(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path))
    fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", [FIXTURES / "arf_complaint.eml"])
    engine = db.connect(settings.database.url)
    run_worker(settings, engine, once=True)
    assert statuses(settings)["erin@example.com"] == "complained"
    engine.dispose()


def test_a_high_complaint_rate_stops_the_scheduler_from_starting_the_next_issue(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path))
    fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", [FIXTURES / "arf_complaint.eml"])
    engine = db.connect(settings.database.url)
    process_mailbox(settings, engine)  # 1 complaint in 12 delivered: far above 0.3%
    with Session(engine, expire_on_commit=False) as session:
        add_essays(session, make_essay(2))

    outcome = run_due(settings, engine, DUE)

    assert "weekly-2026-W48 not started" in outcome.message and "complaint rate 8.33%" in outcome.message
    with Session(engine) as session:
        assert session.exec(select(Issue).where(Issue.key == "weekly-2026-W48")).first() is None
    relaxed = load_settings(bounce_config(tmp_path, complaint_pause_rate=0.5, complaint_warn_rate=0.001))
    assert run_due(relaxed, engine, DUE).status == "sent"  # under the limit: the week goes out
    engine.dispose()


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_classify_never_raises_on_any_bytes(raw: bytes) -> None:
    finding = classify(raw, UNSUBSCRIBE_TO)
    assert finding.key and finding.reason


@hypothesis_settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(EXPECTED)), st.integers(min_value=0), st.binary(min_size=1, max_size=20))
def test_a_damaged_report_still_classifies_without_raising(name: str, at: int, junk: bytes) -> None:
    raw = (FIXTURES / name).read_bytes()
    cut = at % len(raw)
    finding = classify(raw[:cut] + junk + raw[cut + len(junk):], UNSUBSCRIBE_TO)
    assert finding.key and finding.reason
    texts = [finding.key, finding.reason, *finding.addressed_to, finding.original_message_id, finding.sender,
             finding.subject, *finding.extra.values(),
             *(text for f in finding.failures for text in (f.recipient, f.status, f.detail))]
    assert not [text for text in texts if re.search("[\x00\ud800-\udfff]", text)]  # what no database holds


def test_a_bounce_after_a_complaint_keeps_the_complaint(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path))
    fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", [FIXTURES / "arf_complaint.eml"])
    engine = db.connect(settings.database.url)
    process_mailbox(settings, engine)
    hard = (FIXTURES / "postfix.eml").read_bytes().replace(b"alice@example.net", b"erin@example.com")
    fill_maildir(tmp_path / "Maildir", []).add(hard.replace(b"fixture-alice", b"fixture-erin"))
    report = process_mailbox(settings, engine)
    assert statuses(settings)["erin@example.com"] == "complained"
    assert report.outcomes[0].action == "" and "already complained" in report.outcomes[0].reason
    with Session(engine) as session:
        erin = session.exec(select(Delivery).where(Delivery.email == "erin@example.com")).one()
        assert erin.feedback == "complaint"  # the weightier finding stays on the delivery
    engine.dispose()


def test_a_return_path_too_long_for_verp_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at most 20 characters"):
        load_settings(write_config(tmp_path, bounces={"return_path": "newsletter-bounce-handling@example.org"}))


# --- one broken message among good ones ----------------------------------------------------------

BAD_SUBJECT = (b"From: someone@example.net\nTo: bounces@essays.example.org\n"
               b"Subject: =?utf-8?b?A?=\nMessage-ID: <bad-subject@example.net>\n\nhello\n")


def deeply_nested(depth: int) -> bytes:
    """A message of `depth` multiparts one inside the other: deeper than the stdlib parser recurses."""
    head = b"From: MAILER-DAEMON@relay.example.net\nTo: bounces@essays.example.org\nSubject: deep\n" \
           b"Message-ID: <deep@relay.example.net>\nMIME-Version: 1.0\n"
    body = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (n, n) for n in range(depth))
    return head + body + b"Content-Type: text/plain\n\nend\n"


def test_a_message_that_breaks_the_parser_is_recorded_and_the_rest_processed(tmp_path: Path) -> None:
    config = bounce_config(tmp_path)
    settings = load_settings(config)
    fixture_audience(settings)
    # Maildir reads in key order: the broken ones come before and after a real hard bounce.
    box = fill_maildir(tmp_path / "Maildir", [])
    box.add(BAD_SUBJECT)
    box.add(deeply_nested(2000))
    box.add((FIXTURES / "postfix.eml").read_bytes())
    box.close()

    result = CLI(config, CliRunner())("bounces", "process")

    assert result.exit_code == 0, result.output
    assert statuses(settings)["alice@example.net"] == "bounced"
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        notes = {m.key: (m.kind, m.note) for m in session.exec(select(ProcessedMessage))}
    engine.dispose()
    assert len(notes) == 3
    # A broken Subject alone is no reason to give up on a message: it is read, and is no bounce.
    assert notes["<bad-subject@example.net>"] == ("ignored", "not a bounce, complaint or unsubscribe")
    deep = [v for v in notes.values() if "unparseable" in v[1]]
    assert len(deep) == 1 and "RecursionError" in deep[0][1]
    assert "<deep@relay.example.net>" in deep[0][1]  # which message it was, to find it in the mailbox
    again = CLI(config, CliRunner())("bounces", "process")
    assert "processed 0 new messages" in again.output


def test_a_worker_starts_past_a_message_that_breaks_the_parser(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path))
    fixture_audience(settings)
    box = fill_maildir(tmp_path / "Maildir", [])
    box.add(deeply_nested(2000))
    box.add(BAD_SUBJECT)
    box.add((FIXTURES / "arf_complaint.eml").read_bytes())
    box.close()
    engine = db.connect(settings.database.url)
    run_worker(settings, engine, once=True)
    assert statuses(settings)["erin@example.com"] == "complained"
    # All three left the inbox unchanged, marked read (Seen) in .Processed, the broken ones too.
    moved = sorted((tmp_path / "Maildir" / ".Processed" / "cur").iterdir())
    assert len(moved) == 3 and all(p.name.endswith(":2,S") for p in moved)
    assert deeply_nested(2000) in [p.read_bytes() for p in moved]
    assert not list((tmp_path / "Maildir" / "new").iterdir())
    engine.dispose()


MULTI_DSN = b"""\
From: MAILER-DAEMON@relay.example.net
To: bounces@essays.example.org
Subject: Delivery Status Notification
Message-ID: <dsn-two-recipients@relay.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BB"

--BB
Content-Type: text/plain

Some recipients failed.

--BB
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; alice@example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

Final-Recipient: rfc822; bob@example.com
Action: delayed
Status: 4.4.1
Diagnostic-Code: smtp; 421 4.4.1 try later

--BB
Content-Type: text/rfc822-headers

From: Field Notes <letters@essays.example.org>
Message-ID: <fixture-alice-0001@essays.example.org>
Subject: Proofing

--BB--
"""


def test_a_report_about_several_recipients_charges_each_failure_to_its_own_address(tmp_path: Path) -> None:
    # The report quotes alice's Message-ID, yet bob's delay is about bob's delivery, not alice's.
    settings = load_settings(bounce_config(tmp_path, soft_bounce_limit=1))
    ids = fixture_audience(settings)
    fill_maildir(tmp_path / "Maildir", []).add(MULTI_DSN)
    engine = db.connect(settings.database.url)

    process_mailbox(settings, engine)

    assert statuses(settings)["alice@example.net"] == "bounced"
    assert statuses(settings)["bob@example.com"] == "bounced"  # one soft bounce is the limit here
    with Session(engine) as session:
        people = {s.id: s.email for s in session.exec(select(Subscriber))}
        events = {e.email: (people.get(e.subscriber_id or 0), e.delivery_id, e.kind)
                  for e in session.exec(select(BounceEvent))}
        alice = session.get(Delivery, ids["alice@example.net"])
        bob = session.get(Delivery, ids["bob@example.com"])
        assert alice is not None and bob is not None
        assert (alice.feedback, alice.feedback_status) == ("hard", "5.1.1")
        assert (bob.feedback, bob.feedback_status) == ("soft", "4.4.1")
    assert events == {"alice@example.net": ("alice@example.net", ids["alice@example.net"], "hard"),
                      "bob@example.com": ("bob@example.com", ids["bob@example.com"], "soft")}
    engine.dispose()


# Servers write Latin-1 or UTF-8 bytes where only ASCII belongs: (fixture, clean bytes, 8-bit bytes).
EIGHT_BIT = [
    ("postfix.eml", b"Recipient address\n    rejected", "Recipient address\n    rejected: Bo\xeete inconnue".encode("latin-1")),
    ("arf_complaint.eml", b"User-Agent: ExampleFBL/1.0", "User-Agent: ExampleFBL/1.0 (Bo\xeete)".encode()),
    ("qmail.eml", b"Subject: failure notice\n",
     b'Subject: failure notice\nMIME-Version: 1.0\nContent-Type: text/plain; charset="x-unknown-8bit"\n'),
    ("qmail.eml", b"Giving up on", "\xc9chec d\xe9finitif. Giving up on".encode("latin-1")),
]


@pytest.mark.parametrize(("name", "clean", "dirty"), EIGHT_BIT)
def test_eight_bit_bytes_in_a_report_are_read_like_its_clean_equivalent(name: str, clean: bytes,
                                                                        dirty: bytes) -> None:
    raw = (FIXTURES / name).read_bytes()
    assert clean in raw
    expected = classify(raw, UNSUBSCRIBE_TO)
    found = classify(raw.replace(clean, dirty, 1), UNSUBSCRIBE_TO)
    assert found.kind == expected.kind, found.reason
    assert [(f.recipient, f.kind, f.status) for f in found.failures] == \
        [(f.recipient, f.kind, f.status) for f in expected.failures]
    assert found.original_message_id == expected.original_message_id


# A charset parameter no codec takes: NUL in its name (a ValueError, not a LookupError), an 8-bit
# byte, a codec that cannot replace what it cannot read (idna), one that reads nothing (undefined).
BAD_CHARSETS = [b"us\x00-ascii", b"\x00", b"us-ascii\xff", b"idna", b"undefined"]
# (fixture, a part's Content-Type as sent, the same with the charset parameter to spoil)
CHARSET_PARTS = [
    ("postfix.eml", b"Content-Type: text/rfc822-headers\n", b'Content-Type: text/rfc822-headers; charset="%s"\n'),
    ("yahoo.eml", b"charset=us-ascii", b'charset="%s"'),
    ("exim.eml", b"charset=us-ascii", b'charset="%s"'),
]


@pytest.mark.parametrize("charset", BAD_CHARSETS, ids=repr)
@pytest.mark.parametrize(("name", "clean", "dirty"), CHARSET_PARTS, ids=[p[0] for p in CHARSET_PARTS])
def test_a_part_whose_charset_no_codec_takes_is_read_like_its_clean_equivalent(
        name: str, clean: bytes, dirty: bytes, charset: bytes) -> None:
    raw = (FIXTURES / name).read_bytes()
    assert clean in raw
    expected = classify(raw, UNSUBSCRIBE_TO)
    found = classify(raw.replace(clean, dirty % charset, 1), UNSUBSCRIBE_TO)
    assert found.kind == expected.kind, found.reason
    assert [(f.recipient, f.kind, f.status, f.detail) for f in found.failures] == \
        [(f.recipient, f.kind, f.status, f.detail) for f in expected.failures]
    assert found.original_message_id == expected.original_message_id


def test_eight_bit_words_of_a_server_are_kept_readable() -> None:
    raw = (FIXTURES / "postfix.eml").read_bytes().replace(*EIGHT_BIT[0][1:])
    assert "Boîte inconnue" in classify(raw, UNSUBSCRIBE_TO).failures[0].detail
    raw = (FIXTURES / "arf_complaint.eml").read_bytes().replace(*EIGHT_BIT[1][1:])
    assert "ExampleFBL/1.0 (Boîte)" in classify(raw, UNSUBSCRIBE_TO).reason


def test_reports_without_a_usable_message_id_are_each_processed_once(tmp_path: Path) -> None:
    settings = load_settings(bounce_config(tmp_path, mailbox="bounces.mbox"))
    fixture_audience(settings)
    box = mailbox.mbox(tmp_path / "bounces.mbox", create=True)
    for n, (rcpt, message_id) in enumerate([("alice@example.net", "Message-ID: <>\n"),
                                            ("bob@example.com", "Message-ID: <>\n"),
                                            ("ivan@example.org", "Message-ID:  \n"),
                                            ("judy@example.net", "")]):
        report = DSN.format(verp="bounces@essays.example.org", n=n, rcpt=rcpt, action="failed", status="5.1.1",
                            diagnostic="550 5.1.1 user unknown")
        # The headers of the message that bounced, as relays return them: our Message-ID.
        quoted = (f"--b{n}\nContent-Type: text/rfc822-headers\n\n"
                  f"Message-ID: <fixture-{rcpt.split('@')[0]}-0001@essays.example.org>\n\n--b{n}--\n")
        box.add(report.replace(f"Message-Id: <dsn-{n}@relay.example.net>\n", message_id)
                .replace(f"--b{n}--\n", quoted))
    box.close()
    engine = db.connect(settings.database.url)

    first = process_mailbox(settings, engine)
    second = process_mailbox(settings, engine)

    assert (len({o.key for o in first.outcomes}), first.already) == (4, 0)
    assert (second.outcomes, second.already) == ([], 4)
    found = statuses(settings)
    assert [found[p] for p in ("alice@example.net", "bob@example.com", "ivan@example.org", "judy@example.net")] \
        == ["bounced"] * 4
    engine.dispose()


def test_a_report_that_names_no_message_we_sent_changes_nobody(tmp_path: Path) -> None:
    """Anyone can mail the bounce address. A bounce or complaint naming a reader, with neither
    our signed return path nor a Message-ID we sent, is forged or about someone else's mail: it
    must not unsubscribe the reader, nor count toward the complaint rate that pauses sending."""
    settings = load_settings(bounce_config(tmp_path))
    fixture_audience(settings)
    plain = "bounces@essays.example.org"  # the bounce address itself, with no token
    forged = [
        DSN.format(verp=plain, n=1, rcpt="alice@example.net", action="failed", status="5.1.1",
                   diagnostic="550 5.1.1 user unknown"),
        ARF.format(verp=plain, n=2).replace("Version: 1\n", "Version: 1\nOriginal-Rcpt-To: grace@example.net\n"),
        # Backscatter: someone else's spam, sent in our bounce address's name, bounced to us.
        DSN.format(verp=plain, n=3, rcpt="kim@example.org", action="failed", status="5.1.1",
                   diagnostic="550 5.1.1 user unknown").replace(
            "--b3--\n", "--b3\nContent-Type: text/rfc822-headers\n\nFrom: bounces@essays.example.org\n"
                        "Message-ID: <cheap-pills-77@spam.example>\n\n--b3--\n"),
    ]
    box = fill_maildir(tmp_path / "Maildir", [])
    for message in forged:
        box.add(message)
    engine = db.connect(settings.database.url)

    report = process_mailbox(settings, engine)

    found = statuses(settings)
    assert [found[a] for a in ("alice@example.net", "grace@example.net", "kim@example.org")] == ["active"] * 3
    assert len(report.outcomes) == 3
    assert all("names no message we sent" in o.reason and not o.action for o in report.outcomes)
    engine.dispose()


# Classified as a reader would: (what the message is, raw message, kind, status of its one failure).
MISREAD = [
    ("a reader's out-of-office reply whose wording looks like a bounce",
     "From: Alice <alice@example.net>\nTo: bounces+t@essays.example.org\nSubject: Automatic reply: On walking\n"
     "Message-ID: <ooo-1@example.net>\nAuto-Submitted: auto-replied\n\nThank you for your email.\n\n"
     "Your message could not be delivered to Alice personally as she has left Example Net.\n"
     "For anything else, please write to office@example.net.\n",
     BounceKind.AUTOREPLY, None),
    ("a DMARC authentication-failure report (RFC 6591), which no reader sent",
     ARF.format(verp="bounces+t@essays.example.org", n=1).replace("Feedback-Type: abuse", "Feedback-Type: auth-failure"),
     BounceKind.IGNORED, None),
    ("qmail's full mailbox, in its own words",
     "From: MAILER-DAEMON@mx.example.com\nTo: bounces+t@essays.example.org\nSubject: failure notice\n"
     "Message-ID: <q1@mx.example.com>\n\nHi. This is the qmail-send program at mx.example.com.\n"
     "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
     "This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
     "<bob@example.com>:\n552 sorry, mailbox full (over quota)\n",
     BounceKind.SOFT, ""),
    ("a policy refusal whose DSN gives its status only in the server's words",
     DSN.format(verp="bounces+t@essays.example.org", n=4, rcpt="bob@example.com", action="failed", status="",
                diagnostic="550 5.7.1 Message rejected as spam").replace("Status: \n", ""),
     BounceKind.SOFT, ""),
    ("a full mailbox under a DSN's catch-all Status 5.0.0",
     DSN.format(verp="bounces+t@essays.example.org", n=5, rcpt="bob@example.com", action="failed", status="5.0.0",
                diagnostic="552 5.2.2 Mailbox full"),
     BounceKind.SOFT, ""),
]


@pytest.mark.parametrize(("what", "raw", "kind", "status"), MISREAD, ids=[m[0] for m in MISREAD])
def test_what_is_no_bounce_or_no_lasting_one_is_not_read_as_one(what: str, raw: str, kind: BounceKind,
                                                                 status: str | None) -> None:
    finding = classify(raw.encode(), UNSUBSCRIBE_TO)
    assert finding.kind == kind, (what, finding)
    if status is not None:
        assert [f.kind for f in finding.failures] == [kind], (what, finding)


@pytest.mark.parametrize(("header", "subject", "why"), [
    ("Auto-Submitted: auto-replied\n", "Re: unsubscribe", "Auto-Submitted: auto-replied"),
    ("X-Autoreply: yes\n", "Re: unsubscribe", "X-Autoreply"),
    ("Precedence: auto_reply\n", "Re: unsubscribe", "Precedence: auto_reply"),
    ("", "Out of office: unsubscribe", "its subject"),
])
def test_an_automatic_reply_to_the_unsubscribe_address_unsubscribes_nobody(header: str, subject: str,
                                                                          why: str) -> None:
    """A reader's "out of office" answers the List-Unsubscribe mailto as it answers anything;
    they asked for nothing, and the reason names the marker that told."""
    raw = (f"From: reader@example.org\nTo: {UNSUBSCRIBE_TO}\n{header}Subject: {subject}\n"
           f"Message-ID: <auto@example.org>\n\nI am away until Monday.\n")
    finding = classify(raw.encode(), UNSUBSCRIBE_TO)
    assert finding.kind is BounceKind.AUTOREPLY and finding.reason == f"an automatic reply ({why}): left alone"
    assert classify(raw.replace(header, "").replace(subject, "unsubscribe").encode(),
                    UNSUBSCRIBE_TO).kind is BounceKind.UNSUBSCRIBE


def _quoting(report: str, n: int, name: str) -> str:
    """`report` (a DSN above) returning the bounced message's headers, our Message-ID in them."""
    return report.replace(f"--b{n}--\n", f"--b{n}\nContent-Type: text/rfc822-headers\n\n"
                                         f"Message-ID: <fixture-{name}-0001@essays.example.org>\n\n--b{n}--\n")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nul_byte_in_a_report_does_not_stop_the_mailbox(backend: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    """PostgreSQL text cannot hold NUL: one report with a NUL in the server's words made every run
    fail, so the reports behind it were never read (and a worker never got to send)."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = load_settings(bounce_config(tmp_path, url))
    fixture_audience(settings)
    box = fill_maildir(tmp_path / "Maildir", [])
    box.add(_quoting(DSN.format(verp="bounces@essays.example.org", n=1, rcpt="bob@example.com", action="failed",
                                status="5.1.1", diagnostic="550 5.1.1 no\x00such user"), 1, "bob"))
    box.add(_quoting(DSN.format(verp="bounces@essays.example.org", n=2, rcpt="alice@example.net", action="failed",
                                status="5.1.1", diagnostic="550 5.1.1 user unknown"), 2, "alice"))
    engine = db.connect(settings.database.url)

    report = process_mailbox(settings, engine)

    assert len(report.outcomes) == 2
    found = statuses(settings)
    assert (found["bob@example.com"], found["alice@example.net"]) == ("bounced", "bounced")
    assert any("550 5.1.1 nosuch user" in o.reason for o in report.outcomes)
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nul_in_a_message_id_or_half_a_surrogate_pair_in_a_report_does_not_stop_the_mailbox(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A NUL in the Message-ID went into the first look-up of the message, before it was even
    classified (PostgreSQL refused that query on every run); and a report in UTF-7 can decode to
    half of a UTF-16 surrogate pair, which no database can store either."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = load_settings(bounce_config(tmp_path, url))
    fixture_audience(settings)
    box = fill_maildir(tmp_path / "Maildir", [])
    box.add(_quoting(DSN.format(verp="bounces@essays.example.org", n=1, rcpt="bob@example.com", action="failed",
                                status="5.1.1", diagnostic="550 5.1.1 user unknown"), 1, "bob")
            .replace("<dsn-1@", "<dsn-1\x00@"))
    box.add((FIXTURES / "qmail.eml").read_bytes()
            .replace(b"Message-ID: <2026", b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-7\n"
                                           b"Message-ID: <2026", 1)
            .replace(b"User unknown", b"User unknown +2AA-"))
    engine = db.connect(settings.database.url)

    report = process_mailbox(settings, engine)

    assert [o.kind for o in report.outcomes] == ["hard", "hard"]
    found = statuses(settings)
    assert (found["bob@example.com"], found["judy@example.net"]) == ("bounced", "bounced")
    with Session(engine) as session:
        keys = set(session.exec(select(ProcessedMessage.key)))
        details = {e.email: e.detail for e in session.exec(select(BounceEvent))}
    assert "<dsn-1@relay.example.net>" in keys
    assert "User unknown \ufffd Giving up" in details["judy@example.net"]
    engine.dispose()


@pytest.mark.parametrize("encoding", ["base64", "quoted-printable"])
def test_a_delivery_status_part_sent_encoded_is_read(encoding: str) -> None:
    """Some MTAs send the message/delivery-status part base64 (or quoted-printable): Python's
    parser splits its encoded text as if it were fields, and the bounce read as an auto-reply."""
    fields = ("Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; alice@example.net\r\n"
              "Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n")
    body = (base64.encodebytes(fields.encode()) if encoding == "base64"
            else quopri.encodestring(fields.encode().replace(b"\r\n", b"\n"), quotetabs=True)).decode()
    raw = ("From: postmaster@mx.example.net\nTo: bounces+t@essays.example.org\nSubject: Delivery Status "
           "Notification (Failure)\nMessage-ID: <dsn-enc@mx.example.net>\nAuto-Submitted: auto-replied\n"
           'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary="r"\n\n'
           "--r\nContent-Type: text/plain\n\nNot delivered.\n\n--r\nContent-Type: message/delivery-status\n"
           f"Content-Transfer-Encoding: {encoding}\n\n{body}\n--r--\n")
    finding = classify(raw.encode(), UNSUBSCRIBE_TO)
    assert finding.kind == BounceKind.HARD, finding
    assert [(f.recipient, f.status) for f in finding.failures] == [("alice@example.net", "5.1.1")]


def test_a_dry_run_counts_the_soft_bounces_it_reads_as_the_real_run_does(tmp_path: Path) -> None:
    settings, box, first, second = _soft_bounce_twice(tmp_path)
    box.add(first)
    box.add(second)
    engine = db.connect(settings.database.url)

    dry = process_mailbox(settings, engine, dry_run=True)
    real = process_mailbox(settings, engine)

    assert [(o.action, o.reason.split(":")[0]) for o in dry.outcomes] \
        == [(o.action, o.reason.split(":")[0]) for o in real.outcomes]
    assert real.outcomes[-1].action == "bounced" and "soft bounce 2 of 2" in real.outcomes[-1].reason
    engine.dispose()


def test_a_complaint_whose_original_is_sent_base64_names_our_message() -> None:
    original = ("Return-Path: <bounces@essays.example.org>\r\nFrom: Essays <letters@essays.example.org>\r\n"
                "To: erin@example.com\r\nSubject: On walking\r\n"
                "Message-ID: <fixture-erin-0001@essays.example.org>\r\n\r\nThe digest.\r\n")
    raw = ARF.format(verp="bounces@essays.example.org", n=7).replace(
        "--f7--\n", "--f7\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
                    + base64.encodebytes(original.encode()).decode() + "\n--f7--\n")
    finding = classify(raw.encode(), UNSUBSCRIBE_TO)
    assert finding.kind == BounceKind.COMPLAINT
    assert finding.original_message_id == "<fixture-erin-0001@essays.example.org>"
    assert [f.recipient for f in finding.failures] == ["erin@example.com"]


def test_terminal_codes_in_a_report_print_escaped(tmp_path: Path) -> None:
    # A report is written by whoever sends it: its words must not retitle or clear the terminal.
    config = bounce_config(tmp_path)
    fixture_audience(load_settings(config))
    hostile = (FIXTURES / "postfix.eml").read_bytes().replace(
        b"Recipient address\n", b"Recipient \x1b]0;pwned\x07\x1b[2Jaddress\n")
    fill_maildir(tmp_path / "Maildir", []).add(hostile)
    run = CLI(config, CliRunner(env={"COLUMNS": "300"}))  # wide enough for a whole detail per line

    processed = run("bounces", "process")
    listed = run("bounces", "list")

    for result in (processed, listed):
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
    assert "Recipient \\x1b]0;pwned\\x07\\x1b[2Jaddress" in listed.output
