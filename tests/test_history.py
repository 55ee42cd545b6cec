"""Per-reader history: a reader never gets the same essay twice, unless an issue is composed --resend."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline import db, history
from pipeline.models import Delivery, Issue
from pipeline.publish import Ending, dry_run, publish
from subscribers import consent
from tests.digest_fixtures import add_essays, make_essay
from tests.smtp_faults import FaultServer, add_audience, new_issue, smtp_settings


def got(server: FaultServer) -> Counter[str]:
    """Who received a message since the last call (and forget them)."""
    counted = Counter(r.rcpt_tos[0] for r in server.received)
    server.received.clear()
    return counted


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_no_reader_gets_the_same_essay_twice_across_issues(
    backend: str, tmp_path: Path, server: FaultServer, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = smtp_settings(tmp_path, server.port, database_url=url)
    engine: Engine = db.connect(settings.database.url)
    early = [s.email for s in add_audience(engine, 3, essays=2)]  # essay-000, essay-001
    assert publish(settings, engine, latest=True).ending is Ending.FINISHED
    assert got(server) == Counter(early)

    # A late joiner and a new essay: the next digest carries only the new essay, to everyone.
    with Session(engine, expire_on_commit=False) as session:
        late = consent.add(session, "late@example.org")[0]
        add_essays(session, make_essay(2))
    second = publish(settings, engine, latest=True)
    assert second.ending is Ending.FINISHED and got(server) == Counter([*early, "late@example.org"])

    # A manual issue of an essay sent in the first issue: only the late joiner has not had it.
    third = new_issue(engine, settings, "again", ["essay-000"])
    assert dry_run(settings, engine, "again").built == 1
    report = publish(settings, engine, "again")
    assert report.left_out == {"essay-000": 3} and report.sent == 1
    assert got(server) == Counter(["late@example.org"])
    with Session(engine) as session:
        skipped = session.exec(select(Delivery).where(Delivery.issue_id == third.id,
                                                      Delivery.status == "skipped")).all()
        assert sorted(d.email for d in skipped) == sorted(early)
        assert {d.last_error for d in skipped} == {"already had essay-000 in an earlier issue"}
        assert history.received_essays(session, late.id or 0) == ["essay-002", "essay-000"]
        keys = [r.issue_key for r in history.history(session, late.id or 0)]
        assert keys[-1] == "again" and len(keys) == 2

    # Nobody left who has not had it: nothing is sent, and the reason says so.
    new_issue(engine, settings, "once-more", ["essay-000"])
    nothing = publish(settings, engine, "once-more")
    assert nothing.ending is Ending.NOTHING and "had essay-000 already" in nothing.why
    assert got(server) == Counter()

    # Composed --resend: everyone gets it again, the readers who had it included.
    new_issue(engine, settings, "resent", ["essay-001"], resend=True)
    resent = publish(settings, engine, "resent")
    assert resent.ending is Ending.FINISHED and resent.left_out == {}
    assert got(server) == Counter([*early, "late@example.org"])
    engine.dispose()


def test_an_unknown_delivery_counts_as_had_and_a_failed_one_does_not(session: Session, settings) -> None:  # type: ignore[no-untyped-def]
    add_essays(session, make_essay(0))
    a, _ = consent.add(session, "a@example.org")
    b, _ = consent.add(session, "b@example.org")
    c, _ = consent.add(session, "c@example.org")
    old = Issue(key="old", status="sent")
    session.add(old)
    session.commit()
    from pipeline.models import IssueEssay
    session.add(IssueEssay(issue_id=old.id or 0, position=0, essay_id=1))
    for person, status in ((a, "unknown"), (b, "failed"), (c, "sent")):
        session.add(Delivery(issue_id=old.id or 0, subscriber_id=person.id, email=person.email,
                             status=status, message_id=f"<{status}@x>"))
    session.commit()
    draft = Issue(key="new")
    session.add(draft)
    session.commit()
    session.add(IssueEssay(issue_id=draft.id or 0, position=0, essay_id=1))
    session.commit()
    assert history.had_before(session, draft) == {a.id: "essay-000", c.id: "essay-000"}
    assert history.repeats(session, draft) == {"essay-000": 2}


def test_cli_send_confirmation_and_subscriber_history(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    add_audience(engine, 2, essays=1)
    assert run_cli("send", "--latest", "--yes").exit_code == 0
    run_cli("subscribers", "add", "late@example.org")
    composed = run_cli("issues", "new", "--essay", "essay-000", "--key", "again")
    assert composed.exit_code == 0
    assert "2 readers already had essay-000: they will be left out" in " ".join(composed.output.split())
    asked = run_cli("send", "again", input="n\n")
    assert ('Send again "On bread, part 0" to 1 subscriber (2 readers already had essay-000: they are left out)?'
            in " ".join(asked.output.split())), asked.output
    sent = run_cli("send", "again", "--yes")
    assert sent.exit_code == 0 and "2 readers already had essay-000: they are left out" in sent.output

    shown = json.loads(run_cli("subscribers", "show", "reader1@example.org", "--json").output)
    assert [(r["issue_key"], r["status"], r["essays"]) for r in shown["history"]][-1] == \
        ("again", "skipped", ["essay-000"])
    assert shown["received_essays"] == ["essay-000"] and shown["subscriber"]["email"] == "reader1@example.org"
    text = run_cli("subscribers", "show", "late@example.org")
    assert text.exit_code == 0 and "again" in text.output and "sent" in text.output
    assert run_cli("subscribers", "show", "nobody@example.org").exit_code == 1

    run_cli("issues", "new", "--essay", "essay-000", "--key", "everyone", "--resend")
    asked = run_cli("send", "everyone", input="n\n")
    assert "3 readers already had essay-000: resent to everyone" in " ".join(asked.output.split())
