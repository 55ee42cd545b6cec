"""Editorial control of a draft: subject, intro note, essays, discarding; readable issue keys."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import Settings
from pipeline.issues import compose, find_issue, next_day_key
from pipeline.models import Issue
from pipeline.web import create_app
from tests.digest_fixtures import add_essays, make_essay
from tests.smtp_faults import add_audience

NOTE = "A short note **before** the essays.\n\nSee [the garden](https://example.org/garden) <script>x</script>.\n"


def test_manual_issues_are_keyed_by_day_and_old_keys_still_work(session: Session, settings: Settings) -> None:
    add_essays(session, *[make_essay(n) for n in range(3)])
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    first = compose(session, settings, slugs=["essay-000"])
    second = compose(session, settings, slugs=["essay-001"])
    third = compose(session, settings, slugs=["essay-002"])
    assert (first.key, second.key, third.key) == (today, f"{today}-2", f"{today}-3")
    session.add(Issue(key="manual-6f1c2d8e-0b7a-4c1e-9d3f-2a5b8c7e1f00", subject="From before"))
    session.commit()
    assert find_issue(session, "manual-6f1c2d8e-0b7a-4c1e-9d3f-2a5b8c7e1f00").subject == "From before"
    assert find_issue(session, f"{today}-2").id == second.id
    assert next_day_key(session, datetime(2030, 1, 2, tzinfo=UTC)) == "2030-01-02"


def test_edit_a_draft_then_see_the_intro_in_html_text_and_web_copy(  # type: ignore[no-untyped-def]
        run_cli, engine: Engine, settings: Settings, tmp_path) -> None:
    add_audience(engine, 2, essays=3)
    key = json.loads(run_cli("issues", "new", "--essay", "essay-000", "--essay", "essay-001", "--json").output)["key"]
    note = tmp_path / "note.md"
    note.write_text(NOTE, encoding="utf-8")
    edited = run_cli("issues", "edit", key, "--intro", str(note), "--add-essay", "essay-002",
                     "--remove-essay", "essay-000")
    assert edited.exit_code == 0, edited.output
    shown = json.loads(run_cli("issues", "show", key, "--json").output)
    assert [e["slug"] for e in shown["essays"]] == ["essay-001", "essay-002"]
    assert shown["subject"].startswith("On ") and "part 1" in shown["subject"]  # followed the essays
    assert run_cli("issues", "edit", key, "--subject", "Gardens, and a walk").exit_code == 0
    assert json.loads(run_cli("issues", "show", key, "--json").output)["subject"] == "Gardens, and a walk"

    html = run_cli("preview", key).output
    assert "A short note <strong>before</strong> the essays." in html
    assert '<a href="https://example.org/garden"' in html and "<script>" not in html
    assert html.index("A short note") < html.index("part 1")  # at the top, above the essays
    text = run_cli("preview", key, "--text").output
    assert "A short note before the essays." in text and "**" not in text
    assert "See the garden (https://example.org/garden)" in " ".join(text.split())
    assert text.index("A short note") < text.index("part 1")

    assert run_cli("send", key, "--yes").exit_code == 0
    page = create_app(settings, engine=engine).test_client().get(f"/archive/{key}")
    assert page.status_code == 200 and b"A short note <strong>before</strong> the essays." in page.data


def test_adding_an_essay_readers_had_warns_as_composing_does_and_resend_can_be_set(  # type: ignore[no-untyped-def]
        run_cli, engine: Engine) -> None:
    # Added by an edit, an essay every reader had made the next send reach nobody, with no word
    # before it; and the send's advice (--resend) could not be given to an existing draft.
    add_audience(engine, 2, essays=3)
    first = json.loads(run_cli("issues", "new", "--essay", "essay-000", "--json").output)["key"]
    assert run_cli("send", first, "--yes").exit_code == 0
    key = json.loads(run_cli("issues", "new", "--essay", "essay-001", "--json").output)["key"]
    edited = run_cli("issues", "edit", key, "--add-essay", "essay-000")
    assert edited.exit_code == 0, edited.output
    assert (f"2 readers already had essay-000: they will be left out (`newsletter issues edit {key} "
            "--resend` mails it to everyone).") in " ".join(edited.output.split())
    resent = run_cli("issues", "edit", key, "--resend")
    assert resent.exit_code == 0 and "2 readers already had essay-000: it is resent to everyone." \
        in " ".join(resent.output.split())
    sent = run_cli("send", key, "--yes", "--json")
    assert json.loads(sent.output)["sent"] == 2


def test_adding_a_held_essay_says_so_as_composing_does(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    """`issues new --essay` names a held essay it carries; an edit that adds one said nothing,
    and the draft was then left unsent by the scheduler and `send --latest` with no word why."""
    add_audience(engine, 1, essays=2)
    key = json.loads(run_cli("issues", "new", "--essay", "essay-000", "--json").output)["key"]
    assert run_cli("essays", "hold", "essay-001").exit_code == 0
    edited = run_cli("issues", "edit", key, "--add-essay", "essay-001")
    assert edited.exit_code == 0, edited.output
    words = " ".join(edited.output.split())
    assert "essay-001 is held: carried because it was named" in words
    assert f"the scheduler and `send --latest` refuse {key} while it carries a held essay" in words
    assert f"`newsletter send {key}` sends it" in words
    assert "is held" not in " ".join(run_cli("issues", "edit", key, "--subject", "Two").output.split())


@pytest.mark.parametrize("status", ["sent", "sending"])
def test_a_sent_or_sending_issue_is_neither_edited_nor_discarded(run_cli, session: Session, status: str) -> None:  # type: ignore[no-untyped-def]
    session.add(Issue(key="gone-out", subject="Out there", status=status))
    session.commit()
    edited = run_cli("issues", "edit", "gone-out", "--subject", "Changed")
    assert edited.exit_code == 1 and "issue gone-out cannot be edited" in " ".join(edited.output.split())
    dropped = run_cli("issues", "discard", "gone-out", "--yes")
    assert dropped.exit_code == 1 and "cannot be discarded" in dropped.output
    assert json.loads(run_cli("issues", "show", "gone-out", "--json").output)["subject"] == "Out there"


@pytest.mark.parametrize("subject", ["Notes\x0bweek", "Tabs\tinside", "A\u2028line", "Read\u202egnp.exe"])
def test_a_subject_with_control_characters_is_refused(run_cli, engine: Engine, subject: str) -> None:  # type: ignore[no-untyped-def]
    """A subject goes into headers, the archive and its Atom feed (where XML refuses most control
    characters, so one would break the public feed for good once the issue is sent)."""
    add_audience(engine, 1, essays=1)
    key = json.loads(run_cli("issues", "new", "--json").output)["key"]
    composed = json.loads(run_cli("issues", "show", key, "--json").output)["subject"]
    edited = run_cli("issues", "edit", key, "--subject", subject)
    assert edited.exit_code == 1 and "--subject must be one line of text" in edited.output
    assert json.loads(run_cli("issues", "show", key, "--json").output)["subject"] == composed


def test_discard_asks_first_and_the_essays_wait_for_the_next_issue(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    add_audience(engine, 1, essays=2)
    key = json.loads(run_cli("issues", "new", "--json").output)["key"]
    kept = run_cli("issues", "discard", key, input="n\n")
    assert kept.exit_code == 1 and len(json.loads(run_cli("issues", "list", "--json").output)) == 1
    gone = run_cli("issues", "discard", key, "--yes")
    assert gone.exit_code == 0 and json.loads(run_cli("issues", "list", "--json").output) == []
    again = json.loads(run_cli("issues", "new", "--json").output)
    assert [e["slug"] for e in again["essays"]] == ["essay-000", "essay-001"] and again["key"] == key


def test_edit_refuses_what_would_leave_no_essay_or_names_an_unknown_one(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    add_audience(engine, 1, essays=1)
    key = json.loads(run_cli("issues", "new", "--json").output)["key"]
    empty = run_cli("issues", "edit", key, "--remove-essay", "essay-000")
    assert empty.exit_code == 1 and "discard it instead" in " ".join(empty.output.split())
    unknown = run_cli("issues", "edit", key, "--add-essay", "no-such")
    assert unknown.exit_code == 1 and "no-such" in unknown.output
    assert run_cli("issues", "edit", key).exit_code == 2  # nothing to change: a usage error


def test_issue_list_at_80_columns_shows_the_title_not_a_uuid(run_cli, session: Session, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "80")
    session.add(Issue(key="manual-6f1c2d8e-0b7a-4c1e-9d3f-2a5b8c7e1f00", subject="Walking at dawn, and 4 more"))
    session.commit()
    listed = run_cli("issues", "list").output
    assert "Walking at dawn" in listed and "2a5b8c7e1f00" not in listed  # a long title wraps
    assert max(len(line) for line in listed.splitlines()) <= 80
