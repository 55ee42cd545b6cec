"""Composing issues: which essays, in what order, subject and preheader, the unique key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.db import session_scope
from pipeline.errors import ConfigError, NotFound, Refused
from pipeline.issues import (
    adopt_draft,
    compose,
    find_issue,
    issue_essays,
    latest_issue,
    list_issues,
    past_deadline,
    sending_issues,
    start_sending,
    unsent_essays,
)
from pipeline.links import unsubscribe_url
from pipeline.models import Issue, IssueEssay
from pipeline.render import Recipient
from subscribers.addresses import normalize_email
from subscribers.model import Subscriber, utcnow
from subscribers.tokens import load_secret, read_token
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, make_essay, render_issue
from tests.smtp_faults import add_audience


def test_compose_takes_the_oldest_unsent_essays_up_to_the_maximum(session: Session, settings: Settings) -> None:
    sent = Issue(key="old")
    session.add(sent)
    session.commit()
    add_essays(
        session,
        make_essay(1, published_on=date(2025, 3, 1)),
        make_essay(2, published_on=date(2025, 1, 1), sent_in_issue_id=sent.id),  # sent already
        make_essay(3, published_on=None),  # undated: after every dated essay
        make_essay(4, published_on=date(2025, 2, 1)),
        *[make_essay(n, published_on=date(2025, 4, n)) for n in range(5, 12)],
    )
    issue = compose(session, settings)
    session.commit()
    slugs = [e.slug for e in issue_essays(session, issue)]
    assert slugs == ["essay-004", "essay-001", "essay-005", "essay-006", "essay-007"]
    assert len(slugs) == settings.digest.max_essays
    assert issue.status == "draft" and re.fullmatch(r"\d{4}-\d\d-\d\d", issue.key)
    assert issue.subject == "On trains, part 4 and 4 more"
    assert issue.preheader == "A short walk through trains: what the train teaches."


def test_same_date_keeps_the_import_order_and_undated_come_last(session: Session, tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, digest={"max_essays": 10}))
    add_essays(session, make_essay(1, published_on=None), make_essay(2, published_on=date(2025, 5, 5)),
               make_essay(3, published_on=date(2025, 5, 5)))
    issue = compose(session, settings)
    assert [e.slug for e in issue_essays(session, issue)] == ["essay-002", "essay-003", "essay-001"]


def test_named_essays_in_the_order_named_one_being_sent_only_with_resend(session: Session, settings: Settings) -> None:
    sending = Issue(key="earlier", status="sending")
    session.add(sending)
    session.commit()
    add_essays(session, make_essay(1), make_essay(2), make_essay(3))
    session.add(IssueEssay(issue_id=sending.id or 0, position=0, essay_id=3))
    session.commit()
    with pytest.raises(Refused, match="'essay-003' is being sent in issue earlier.*--resend"):
        compose(session, settings, slugs=["essay-003", "essay-001"])
    assert session.exec(select(Issue).where(Issue.key != "earlier")).all() == []
    issue = compose(session, settings, slugs=["essay-003", "essay-001", "essay-003"], resend=True)
    assert [e.slug for e in issue_essays(session, issue)] == ["essay-003", "essay-001"] and issue.resend
    assert issue.subject == "On gardens, part 3 and 1 more"


def test_unknown_slug_is_named(session: Session, settings: Settings) -> None:
    add_essays(session, make_essay(1))
    with pytest.raises(NotFound, match="'no-such-essay'"):
        compose(session, settings, slugs=["essay-001", "no-such-essay"])
    assert session.exec(select(Issue)).all() == []


def test_nothing_to_send_is_a_clear_error(session: Session, settings: Settings) -> None:
    with pytest.raises(NotFound, match="nothing to send"):
        compose(session, settings)


def test_a_held_essay_is_taken_only_when_named(session: Session, settings: Settings) -> None:
    """`essays hold`: every composition that picks essays by itself (the scheduler, `send
    --latest`, `issues new`, the preview's next digest) leaves it out, and the scheduler adopts no
    draft that carries it; naming it (`issues new --essay`) still carries it."""
    held, _, _ = add_essays(session, make_essay(1, held=True), make_essay(2), make_essay(3))
    assert [e.slug for e in unsent_essays(session, settings)] == ["essay-002", "essay-003"]
    picked = compose(session, settings)
    assert [e.slug for e in issue_essays(session, picked)] == ["essay-002", "essay-003"]
    by_hand = compose(session, settings, slugs=["essay-001"], key="by-hand")
    assert [e.slug for e in issue_essays(session, by_hand)] == ["essay-001"]
    session.commit()
    # The newest draft prepared by hand would be the week's issue: not while its essay is held.
    adopted = adopt_draft(session, "weekly-2026-W48")
    assert adopted is not None and adopted.id == picked.id
    held.held = False  # `essays release`
    session.add(held)
    session.flush()
    assert adopt_draft(session, "weekly-2026-W49") == by_hand


def test_nothing_to_send_says_when_the_essays_left_are_held(session: Session, settings: Settings) -> None:
    add_essays(session, make_essay(1, held=True))
    with pytest.raises(NotFound, match="nothing to send: .*held.*newsletter essays release"):
        compose(session, settings)


def test_subject_patterns_come_from_the_config(session: Session, tmp_path: Path) -> None:
    settings = load_settings(write_config(
        tmp_path, digest={"subject_one": "New: {title}", "subject_many": "{count} essays: {title} +{more}"}))
    add_essays(session, make_essay(1, title="A title\r\nBcc: evil@example.org"), make_essay(2))
    one = compose(session, settings, slugs=["essay-001"])
    assert one.subject == "New: A title Bcc: evil@example.org"  # never a line break in a header
    assert compose(session, settings).subject == "2 essays: A title Bcc: evil@example.org +1"


def test_a_bad_subject_pattern_names_the_key(tmp_path: Path) -> None:
    # Found as the config loads, before any command composes (or sends) anything.
    with pytest.raises(ConfigError, match="digest.subject_many: .* can use only .*found {others}"):
        load_settings(write_config(tmp_path, digest={"subject_many": "{title} and {others}"}))


def test_a_key_makes_one_issue_however_often_asked(any_engine: Engine, any_settings: Settings) -> None:
    with session_scope(any_engine) as session:
        add_essays(session, make_essay(1), make_essay(2))
    with session_scope(any_engine) as session:
        first = compose(session, any_settings, key="weekly-2026-W48")
    with session_scope(any_engine) as session:
        again = compose(session, any_settings, key="weekly-2026-W48")
        assert again.id == first.id
        assert len(session.exec(select(Issue)).all()) == 1


def _together(*work: Callable[[], None]) -> None:
    """Run each on a thread of its own at once, and wait (30 s at most each) for all of them."""
    threads = [threading.Thread(target=w) for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_two_schedulers_racing_for_one_key_get_the_same_issue(any_engine: Engine, any_settings: Settings) -> None:
    """The database's unique key decides: the loser of the race gets the winner's issue back."""
    with session_scope(any_engine) as session:
        add_essays(session, make_essay(1), make_essay(2))
    ids: list[int | None] = []
    errors: list[BaseException] = []
    inserted = threading.Event()

    def first() -> None:
        try:
            with session_scope(any_engine) as session:
                ids.append(compose(session, any_settings, key="weekly-2026-W49").id)
                inserted.set()
                time.sleep(0.5)  # hold the transaction open while the other one tries
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)
            inserted.set()

    def second() -> None:
        inserted.wait(10)
        try:
            with session_scope(any_engine) as session:
                ids.append(compose(session, any_settings, key="weekly-2026-W49").id)
        except BaseException as exc:
            errors.append(exc)

    _together(first, second)
    assert not errors
    assert len(ids) == 2 and ids[0] == ids[1]
    with Session(any_engine) as session:
        assert len(session.exec(select(Issue)).all()) == 1


def test_of_two_drafts_sharing_an_essay_started_at_once_one_starts(any_engine: Engine,
                                                                    any_settings: Settings) -> None:
    """start_sending decides: the second waits for the first and sees it sending the essay."""
    with session_scope(any_engine) as session:
        add_essays(session, make_essay(1), make_essay(2))
    with Session(any_engine, expire_on_commit=False) as session:
        drafts = [compose(session, any_settings, ["essay-001", "essay-002"], key="one"),
                  compose(session, any_settings, ["essay-002"], key="two")]
        rendered = [render_issue(session, any_settings, issue) for issue in drafts]
        session.commit()
    errors: list[BaseException] = []
    started = threading.Event()

    def first() -> None:
        with session_scope(any_engine) as session:
            assert start_sending(session, drafts[0].id or 0, rendered[0], utcnow()) is not None
            started.set()
            time.sleep(0.5)  # hold the transaction open while the other one tries

    def second() -> None:
        started.wait(10)
        try:
            with session_scope(any_engine) as session:
                start_sending(session, drafts[1].id or 0, rendered[1], utcnow())
        except BaseException as exc:
            errors.append(exc)

    _together(first, second)
    assert [str(e) for e in errors] == [
        "issue two was not sent: issue one is sending essay-002 now, and readers still waiting for it "
        "there would get it twice. Wait until issue one finishes, then send two again (readers who had "
        "it are left out then), or take it out (`newsletter issues edit two --remove-essay essay-002`)"]
    with Session(any_engine) as session:
        assert {i.key: i.status for i in session.exec(select(Issue))} == {"one": "sending", "two": "draft"}


@pytest.mark.parametrize("offset", [timedelta(microseconds=-1), timedelta(0), timedelta(microseconds=1)])
def test_sending_stops_at_not_after_the_same_for_the_sender_and_the_workers(any_engine: Engine,
                                                                            offset: timedelta) -> None:
    """The sender asks `past_deadline` before each batch, a worker asks `sending_issues` which
    issues to pick up: at not_after itself both say no more, a microsecond before both say go on."""
    not_after = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    now = not_after + offset
    with Session(any_engine, expire_on_commit=False) as session:
        issue = Issue(key="bounded", status="sending", started_at=not_after - timedelta(hours=1),
                      not_after=not_after)
        session.add(issue)
        session.commit()
        stored = find_issue(session, "bounded")
        picked = sending_issues(session, now)
    stops = offset >= timedelta(0)
    assert (past_deadline(stored, now) is not None) is stops
    assert picked == ([] if stops else [(issue.id, "bounded")])


def test_find_by_id_or_key_and_latest(session: Session, settings: Settings) -> None:
    add_essays(session, make_essay(1), make_essay(2))
    a = compose(session, settings, key="weekly-2026-W01")
    b = compose(session, settings, slugs=["essay-002"])
    session.commit()
    assert find_issue(session, str(a.id)).key == "weekly-2026-W01"
    assert find_issue(session, "weekly-2026-W01").id == a.id
    assert latest_issue(session).id == b.id
    assert find_issue(session, "latest").id == b.id  # every command taking ISSUE accepts it
    assert [i.id for i in list_issues(session)] == [b.id, a.id]
    with pytest.raises(NotFound, match="'weekly-1999-W01'"):
        find_issue(session, "weekly-1999-W01")


def test_cli_new_list_show(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, *[make_essay(n) for n in range(1, 4)])
    dry = run_cli("issues", "new", "--dry-run", "--json")
    assert dry.exit_code == 0 and json.loads(dry.stdout)["subject"] == "On rivers, part 1 and 2 more"
    assert json.loads(run_cli("issues", "list", "--json").stdout) == []  # nothing stored
    made = run_cli("issues", "new", "--essay", "essay-002", "--essay", "essay-001")
    assert made.exit_code == 0, made.output
    assert "On clocks, part 2 and 1 more" in made.output
    listed = json.loads(run_cli("issues", "list", "--json").output)
    assert [row["subject"] for row in listed] == ["On clocks, part 2 and 1 more"]
    shown = json.loads(run_cli("issues", "show", listed[0]["key"], "--json").output)
    assert [e["slug"] for e in shown["essays"]] == ["essay-002", "essay-001"]
    assert shown["id"] == listed[0]["id"]
    text = run_cli("issues", "show", str(listed[0]["id"])).output
    assert "essay-002" in text and "draft" in text
    created = re.search(r"created_at\s+(.*)", text)
    assert created and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", created[1].strip()), text


def test_cli_new_carries_a_sent_essay_for_the_readers_who_have_not_had_it(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    add_audience(engine, 2, essays=0)
    with session_scope(engine) as session:
        add_essays(session, *[make_essay(n) for n in range(1, 3)])
    assert run_cli("send", "--latest", "--yes").exit_code == 0  # both essays go out
    again = run_cli("issues", "new", "--essay", "essay-001")
    assert again.exit_code == 0
    words = " ".join(again.output.split())
    assert "2 readers already had essay-001: they will be left out (`newsletter issues edit" in words
    nothing = run_cli("send", "--latest", "--yes")  # both readers had it: nobody to send it to
    said = " ".join(nothing.output.split())
    assert nothing.exit_code == 0 and "every active subscriber had essay-001 already" in said
    assert "--resend` mails it to everyone" in said
    resent = run_cli("issues", "new", "--essay", "essay-001", "--resend")
    assert resent.exit_code == 0 and "it is resent to everyone" in resent.output
    assert len(json.loads(run_cli("issues", "list", "--json").output)) == 3


def test_cli_new_with_a_taken_key_says_so_and_composes_nothing(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, *[make_essay(n) for n in range(1, 4)])
    assert run_cli("issues", "new", "--key", "spring", "--essay", "essay-001").exit_code == 0
    for extra in ((), ("--dry-run",), ("--essay", "essay-002")):
        taken = run_cli("issues", "new", "--key", "spring", *extra)
        words = " ".join(taken.output.split())
        assert taken.exit_code == 1, taken.output
        assert "Composed" not in words and "Would compose" not in words
        assert "the key 'spring' exists already (id 1, draft): nothing was composed" in words
    shown = json.loads(run_cli("issues", "show", "spring", "--json").output)
    assert [e["slug"] for e in shown["essays"]] == ["essay-001"]  # unchanged
    assert len(json.loads(run_cli("issues", "list", "--json").output)) == 1


def test_cli_errors_name_the_problem(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    empty = run_cli("issues", "new")
    assert empty.exit_code == 1 and "nothing to send" in empty.output
    missing = run_cli("issues", "show", "42")
    assert missing.exit_code == 1 and "'42'" in missing.output


def test_cli_preview_as_a_subscriber_text_file_and_browser(
    run_cli, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    with session_scope(engine) as session:
        add_essays(session, *[make_essay(n) for n in range(1, 3)])
        session.add(Subscriber(email="Ana@Example.org", email_normalized=normalize_email("Ana@Example.org"),
                               name="Ana <Núñez>", status="active"))
    assert run_cli("issues", "new").exit_code == 0
    sample = run_cli("preview", "latest")
    assert sample.exit_code == 0 and sample.stdout.startswith("<!DOCTYPE html>")  # stderr: a new key
    assert "Hi Zoë Sample," in sample.stdout and "/u/preview-sample" in sample.stdout

    out = tmp_path / "[draft] ana.html"  # a name the console must print as it is
    written = run_cli("preview", "1", "--as", "ana@example.org", "-o", str(out))
    assert f"Wrote {out} (" in written.stderr
    assert written.exit_code == 0, written.output
    html = out.read_text(encoding="utf-8")
    assert "Hi Ana &lt;Núñez&gt;," in html and "subscribed as Ana@Example.org" in html
    with Session(engine) as session:
        subscriber = session.exec(select(Subscriber)).one()
    token = re.search(r'href="http://127\.0\.0\.1:8025/u/([^"]+)"', html)
    assert token and read_token(load_secret(tmp_path), "unsubscribe", token[1]) == subscriber.id
    with Session(engine) as session:  # exactly what a send makes for her
        settings = load_settings(run_cli.config_file)
        expected = render_issue(session, settings, find_issue(session, "1")).personalise(Recipient(
            subscriber.name, subscriber.email, unsubscribe_url(settings, load_secret(tmp_path), subscriber.id or 0)))
    assert html == expected[0]

    text = run_cli("preview", "1", "--as", "ana@example.org", "--text")
    assert text.stdout.startswith("Field Notes: On rivers, part 1 and 1 more") and "Hi Ana <Núñez>," in text.stdout

    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    assert run_cli("preview", "latest", "--open").exit_code == 0
    assert opened and opened[0].startswith("file://") and Path(opened[0][7:]).read_text().startswith("<!DOCTYPE")

    unknown = run_cli("preview", "1", "--as", "nobody@example.org")
    assert unknown.exit_code == 1 and "nobody@example.org" in unknown.output


def test_cli_preview_open_without_a_browser_says_so(config_file: Path, engine: Engine, tmp_path: Path) -> None:
    with session_scope(engine) as session:
        add_essays(session, make_essay(1))
    # A headless machine, as over ssh: no display, and $BROWSER names nothing that runs.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(BROWSER=str(tmp_path / "no-such-browser"), PYTHONPATH=str(PROJECT_ROOT))
    command = [sys.executable, "-c", "from pipeline.cli import main; main()", "--config", str(config_file)]
    assert subprocess.run([*command, "issues", "new"], env=env, capture_output=True, check=False).returncode == 0
    out = tmp_path / "p.html"
    result = subprocess.run([*command, "preview", "latest", "--open", "-o", str(out)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "Could not open a browser" in result.stderr and str(out) in result.stderr


def test_cli_preview_into_a_missing_folder_says_so(run_cli, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, make_essay(1))
    assert run_cli("issues", "new").exit_code == 0
    target = tmp_path / "no-such-folder" / "preview.html"
    result = run_cli("preview", "latest", "-o", str(target))
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert "Error: cannot write" in result.output and str(target) in result.output
    assert "No such file or directory" in result.output


def test_cli_new_on_an_empty_archive_says_there_are_no_essays(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    empty = run_cli("issues", "new")
    assert empty.exit_code == 1
    assert "nothing to send: there are no essays yet" in empty.output
    assert "gone out" not in empty.output  # nothing has gone out: nothing was ever imported
    with session_scope(engine) as session:
        sent = Issue(key="old")
        session.add(sent)
        session.flush()
        add_essays(session, make_essay(1, sent_in_issue_id=sent.id))
    all_sent = run_cli("issues", "new")
    assert all_sent.exit_code == 1 and "every essay has gone out in an issue already" in all_sent.output


def test_cli_new_leaves_out_essays_an_issue_is_sending_now(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    # An issue still `sending` (retries owed, a paused relay, workers busy) has not marked its
    # essays sent yet; a second digest carrying them would mail every subscriber them twice.
    with session_scope(engine) as session:
        add_essays(session, *[make_essay(n) for n in range(1, 4)])
    assert run_cli("issues", "new", "--essay", "essay-001", "--essay", "essay-002").exit_code == 0
    with session_scope(engine) as session:
        in_flight = find_issue(session, "latest")
        in_flight.status = "sending"
        session.add(in_flight)
    dry = run_cli("issues", "new", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [e["slug"] for e in json.loads(dry.stdout)["essays"]] == ["essay-003"]
    with session_scope(engine) as session:
        expired = find_issue(session, "latest")
        expired.status = "expired"  # it stopped for good: its essays go out in a later digest
        session.add(expired)
    again = json.loads(run_cli("issues", "new", "--dry-run", "--json").stdout)
    assert [e["slug"] for e in again["essays"]] == ["essay-001", "essay-002", "essay-003"]


def test_cli_new_refuses_an_empty_key(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, make_essay(1))
    result = run_cli("issues", "new", "--key", " ")
    assert result.exit_code == 2 and "--key" in result.output and "empty" in result.output
    assert json.loads(run_cli("issues", "list", "--json").stdout) == []  # no manual-<uuid> made instead


@pytest.mark.parametrize("key", ["week\x1b[2J", "two\nlines", "rtl\u202eoverride"])
def test_cli_new_refuses_a_key_with_control_characters(run_cli, engine: Engine, key: str) -> None:  # type: ignore[no-untyped-def]
    # A key is printed by many commands and named in URLs and file names: one line of plain text.
    with session_scope(engine) as session:
        add_essays(session, make_essay(1))
    result = run_cli("issues", "new", "--key", key)
    assert result.exit_code == 2 and "--key" in result.output and "control characters" in result.output
    assert json.loads(run_cli("issues", "list", "--json").stdout) == []


def test_after_an_issue_expires_half_sent_every_reader_still_gets_every_essay_once(engine: Engine,
                                                                                  settings: Settings) -> None:
    """W02 reached 2 of 5 readers, then expired. W03 was composed of W02's essays plus a new one,
    and left out the 2 (they had one of its essays): they never got the new essay, which was then
    marked sent. The essays some readers had go out first, alone; the new one in the next issue."""
    from pipeline import history
    from pipeline.errors import TransportUnavailable
    from pipeline.issues import expire
    from pipeline.publish import publish
    from pipeline.transports import MemoryTransport

    readers = add_audience(engine, 5, essays=2)

    class CutOff(MemoryTransport):
        def send(self, mail_from: str, to: str, raw: bytes) -> None:
            if len(self.sent) == 2:
                raise TransportUnavailable("the relay went away")
            super().send(mail_from, to, raw)

    with Session(engine, expire_on_commit=False) as session:
        w02 = compose(session, settings, key="weekly-2027-W02")
        session.commit()
    assert publish(settings, engine, w02.key, transport_factory=CutOff).sent == 2
    with Session(engine, expire_on_commit=False) as session:
        expire(session, session.get(Issue, w02.id), w02.key, utcnow(), utcnow())
        session.commit()
        add_essays(session, make_essay(2))
    for key in ("weekly-2027-W03", "weekly-2027-W04"):
        with Session(engine, expire_on_commit=False) as session:
            issue = compose(session, settings, key=key)
            session.commit()
        publish(settings, engine, issue.key, transport_factory=MemoryTransport)
    with Session(engine) as session:
        carried = {key: [e.slug for e in issue_essays(session, find_issue(session, key))]
                   for key in ("weekly-2027-W03", "weekly-2027-W04")}
        assert carried == {"weekly-2027-W03": ["essay-000", "essay-001"], "weekly-2027-W04": ["essay-002"]}
        for reader in readers:
            assert history.received_essays(session, reader.id or 0) == ["essay-000", "essay-001", "essay-002"]


@pytest.mark.parametrize("ref", ["99999999999999999999", "²", "٣"])
def test_an_issue_number_no_database_holds_is_not_found_not_a_traceback(run_cli, ref: str) -> None:  # type: ignore[no-untyped-def]
    """str.isdigit() is true for "²" and Arabic-Indic digits, and int() of 20 digits overflows the
    database's integer: each was a traceback in every command that takes an ISSUE."""
    shown = run_cli("issues", "show", ref)
    assert shown.exit_code == 1 and f"no issue with the id or key {ref!r}" in shown.output
