"""Rendering: once per issue with placeholders, personalised cheaply, equal to a full render."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.errors import RenderError
from pipeline.issue_view import issue_view
from pipeline.issues import compose
from pipeline.lint import failures, lint_copy
from pipeline.models import Issue
from pipeline.render import (
    SIZE_BUDGET,
    Recipient,
    render_view,
    render_view_for,
    sample_recipient,
)
from tests.conftest import write_config
from tests.digest_fixtures import (
    add_essays,
    digest_essays,
    make_essay,
    render_issue,
    render_personal,
    render_web_copy,
)

GOLDEN = Path(__file__).parent / "golden"
BASE = "https://letters.example.org"
ANA = Recipient("Ana Núñez", "ana@example.org", f"{BASE}/u/token-for-ana")


@pytest.fixture
def digest_settings(tmp_path: Path, engine: Engine) -> Settings:
    """The test's config with an https web address (the default points at localhost over http)."""
    return load_settings(write_config(tmp_path, web={"base_url": BASE}))


def _issue(session: Session, settings: Settings, count: int, long: bool = False) -> Issue:
    add_essays(session, *digest_essays(count, long))
    issue = compose(session, settings, key=f"test-{count}")
    session.commit()
    return issue


def test_personalise_puts_the_subscriber_in_and_nothing_else_changes(session: Session, digest_settings: Settings) -> None:
    rendered = render_issue(session, digest_settings, _issue(session, digest_settings, 3))
    html, text = rendered.personalise(ANA)
    assert "Hi Ana Núñez," in html and "Hi Ana Núñez," in text
    assert f'href="{BASE}/u/token-for-ana"' in html and f"{BASE}/u/token-for-ana" in text
    assert "ana@example.org" in html and "ana@example.org" in text
    for token in rendered.placeholders.values():
        assert token in rendered.html and token not in html and token not in text
    anonymous, anonymous_text = rendered.personalise(Recipient("  ", "x@example.org", f"{BASE}/u/t"))
    assert "Hello," in anonymous and "Hello," in anonymous_text and "Hi " not in anonymous_text


def test_the_text_part_carries_the_real_content(session: Session, digest_settings: Settings) -> None:
    issue = _issue(session, digest_settings, 3)
    html, text = render_issue(session, digest_settings, issue).personalise(ANA)
    assert "On bread, part 0" in text and "1 January 2025" in text
    assert "A short walk through bread: what the sourdough teaches." in text
    assert "Read the essay: https://essays.example.org/essay-000" in text
    assert "https://essays.example.org/essay-001" in text
    assert digest_settings.newsletter.postal_address in text
    assert f"{BASE}/archive/test-3" in text
    assert not failures(lint_copy(html, text, ANA.unsubscribe_url, digest_settings.newsletter.postal_address))


NAMES = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", "   ", "<script>alert(1)</script>", 'O"Brien & <Sons>', "d'Arc", "Zoë Ångström",
        "محمد عبد الله", "שלום עליכם", "\u202eevil\u202c", "Eve\r\nBcc: x@y", "&amp; &lt;",
        "名前", "🙂 emoji", "a\x00b\x1fc", "tab\there",
    ]),
)


def test_control_characters_of_a_title_stored_before_import_cleaned_them_reach_no_copy(
        session: Session, digest_settings: Settings) -> None:
    """DEL was dropped from a title in an email, but not the C1 controls (U+0080-U+009F), which
    HTML counts as controls too: an old row's 8-bit CSI (U+009B) went into the text part as is,
    for a terminal mail reader to obey."""
    add_essays(session, make_essay(1, title="Bread\x9b31m and\x7f salt\x85today"))
    issue = compose(session, digest_settings, key="controls")
    issue.subject = "Controls"  # the subject, made from the title, is not what this is about
    session.commit()
    html, text = render_issue(session, digest_settings, issue).personalise(ANA)
    for part in (html, text):
        assert "Bread31m and salt today" in part
        assert not any("\x7f" <= c <= "\x9f" for c in part)


def test_personalise_equals_a_full_render_for_any_name(session: Session, digest_settings: Settings) -> None:
    """The property the cheap path rests on: substitution == Jinja2 + premailer per subscriber."""
    issue = _issue(session, digest_settings, 5)
    view = issue_view(session, digest_settings, issue)
    rendered = render_view(digest_settings, view)
    # Names that contain the placeholders themselves must not be substituted again.
    tricky = " ".join(rendered.placeholders.values())

    @hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=st.one_of(NAMES, st.just(tricky)), email=st.one_of(st.emails(), NAMES),
           token=st.from_regex(r"[A-Za-z0-9_\-.~!$&'()*+,;=:@/?#\[\]%]{1,80}", fullmatch=True))
    def check(name: str, email: str, token: str) -> None:
        recipient = Recipient(name, email, f"{BASE}/u/{token}")
        assert rendered.personalise(recipient) == render_view_for(digest_settings, view, recipient, rendered.shape)

    check()


def test_render_personal_is_the_same_slow_path(session: Session, digest_settings: Settings) -> None:
    issue = _issue(session, digest_settings, 2)
    assert render_personal(session, digest_settings, issue, ANA) == render_issue(session, digest_settings, issue).personalise(ANA)


def test_a_bad_unsubscribe_url_is_refused(session: Session, digest_settings: Settings) -> None:
    rendered = render_issue(session, digest_settings, _issue(session, digest_settings, 1))
    with pytest.raises(RenderError, match="unsubscribe URL"):
        rendered.personalise(Recipient("A", "a@example.org", 'javascript:alert("x")'))


def test_the_web_copy_has_no_personal_data(session: Session, digest_settings: Settings) -> None:
    issue = _issue(session, digest_settings, 3)
    page = render_web_copy(session, digest_settings, issue)
    rendered = render_issue(session, digest_settings, issue)
    assert "https://essays.example.org/essay-002" in page
    assert "/u/" not in page and "Hi " not in page and "subscribed as" not in page
    assert not any(token in page for token in rendered.placeholders.values())
    assert digest_settings.newsletter.postal_address in page


def test_templates_are_overridden_file_by_file(tmp_path: Path, session: Session) -> None:
    mine = tmp_path / "my-templates" / "email"
    mine.mkdir(parents=True)
    (mine / "digest.txt").write_text(
        "{% for essay in essays %}* {{ essay.title }} <{{ essay.url }}>\n{% endfor %}"
        "Bye {{ recipient.name }}: {{ recipient.unsubscribe_url }}\n", encoding="utf-8")
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"templates": "my-templates"}))
    html, text = render_issue(session, settings, _issue(session, settings, 2)).personalise(ANA)
    assert text.startswith("* On bread, part 0 <https://essays.example.org/essay-000>\n")
    assert text.endswith(f"Bye Ana Núñez: {BASE}/u/token-for-ana\n")
    assert "<!DOCTYPE html>" in html  # the HTML is still the built-in template


def test_a_template_error_names_the_file_and_line(tmp_path: Path, session: Session) -> None:
    mine = tmp_path / "t" / "email"
    mine.mkdir(parents=True)
    (mine / "digest.txt").write_text("line one\n{{ essays|length }}\n{{ no_such_value }}\n", encoding="utf-8")
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"templates": "t"}))
    issue = _issue(session, settings, 1)
    with pytest.raises(RenderError, match=r"digest\.txt:3: 'no_such_value' is undefined"):
        render_issue(session, settings, issue)
    (mine / "digest.txt").write_text("{% for x in %}\n", encoding="utf-8")
    with pytest.raises(RenderError, match=r"digest\.txt:1"):
        render_issue(session, settings, issue)


def test_long_excerpts_are_shortened_to_fit(tmp_path: Path, session: Session) -> None:
    settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, digest={"max_essays": 40, "excerpt_length": 4000}))
    issue = _issue(session, settings, 40, long=True)
    rendered = render_issue(session, settings, issue)
    assert len(rendered_full_size(settings, session, issue).encode()) > SIZE_BUDGET
    assert rendered.size <= SIZE_BUDGET
    assert rendered.shape is not None and rendered.shape.excerpt_length < 4000
    assert rendered.shape.full == 40  # shorter excerpts were enough: every essay still shown
    html, text = rendered.personalise(ANA)
    assert not failures(lint_copy(html, text, ANA.unsubscribe_url, settings.newsletter.postal_address))


def test_a_huge_digest_links_to_the_rest_never_clipped(tmp_path: Path, session: Session) -> None:
    settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, digest={"max_essays": 150, "excerpt_length": 4000}))
    issue = _issue(session, settings, 150, long=True)
    rendered = render_issue(session, settings, issue)
    html, text = rendered.personalise(ANA)
    assert rendered.size <= SIZE_BUDGET
    assert rendered.shape is not None and rendered.shape.full < 150
    body, footer = html.rsplit("Unsubscribe", 1)
    assert f"{BASE}/archive/test-150" in body and "on the web" in body  # the rest, on the web
    assert "subscribed as ana@example.org" in body and footer.rstrip().endswith("</html>")
    assert f"{BASE}/archive/test-150" in text and "on the web" in text
    assert not failures(lint_copy(html, text, ANA.unsubscribe_url, settings.newsletter.postal_address))


def rendered_full_size(settings: Settings, session: Session, issue: Issue) -> str:
    view = issue_view(session, settings, issue)
    return render_view_for(settings, view, ANA)[0]


def test_sample_recipient_unsubscribes_nobody(digest_settings: Settings) -> None:
    sample = sample_recipient(digest_settings)
    assert sample.unsubscribe_url.startswith(BASE + "/u/") and sample.name


RENDER_SCRIPT = """
import sys
from sqlmodel import Session
from pipeline import db
from pipeline.config import load_settings
from pipeline.issues import find_issue
from pipeline.render import Recipient
from tests.digest_fixtures import render_issue, render_web_copy
settings = load_settings(sys.argv[1])
with Session(db.connect(settings.database.url)) as session:
    issue = find_issue(session, "test-5")
    rendered = render_issue(session, settings, issue)
    html, text = rendered.personalise(Recipient("Ana", "ana@example.org", "https://x.example.org/u/t"))
    sys.stdout.buffer.write((rendered.html + rendered.text + html + text
                             + render_web_copy(session, settings, issue)).encode())
"""


@pytest.mark.slow
def test_two_processes_with_different_hash_seeds_render_identical_bytes(
    session: Session, digest_settings: Settings
) -> None:
    """H23: the same inputs give byte-identical output."""
    _issue(session, digest_settings, 5)
    runs = [
        subprocess.Popen([sys.executable, "-c", RENDER_SCRIPT, str(digest_settings.path)],
                         stdout=subprocess.PIPE, env=dict(os.environ, PYTHONHASHSEED=seed), cwd=PROJECT_ROOT)
        for seed in ("1", "4242")
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert len(outputs[0]) > 10_000 and outputs[0] == outputs[1]


def _golden_issue(session: Session, settings: Settings) -> Issue:
    """A fixed sample issue: essays written here, fixed dates, fixed key."""
    essays = add_essays(
        session,
        make_essay(1, title="Walking the canal before six", published_on=date(2026, 3, 2),
                   dek="Herons, rowers and the bakers' vans: who owns the towpath at dawn."),
        make_essay(6, title="The river that moved a market", published_on=date(2026, 3, 4)),
        make_essay(2, title="A clock for the whole street", published_on=date(2026, 3, 9), dek="",
                   url="https://essays.example.org/clocks/street"),
        make_essay(11, title="Ferries & bridges: \"crossing\" <notes>", published_on=date(2026, 1, 5)),
        make_essay(16, title="Über Flüsse und Fähren", published_on=date(2026, 1, 7),
                   sent_in_issue_id=None),
    )
    issue = compose(session, settings, slugs=[e.slug for e in essays[:3]], key="golden-sample")
    issue.created_at = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)
    session.commit()
    return issue


@pytest.mark.parametrize("part", ["html", "txt", "web.html"])
def test_golden_files(session: Session, digest_settings: Settings, update_golden: bool, part: str) -> None:
    """The sample issue as a subscriber gets it; `pytest --update-golden` rewrites on purpose."""
    issue = _golden_issue(session, digest_settings)
    html, text = render_issue(session, digest_settings, issue).personalise(ANA)
    got = {"html": html, "txt": text, "web.html": render_web_copy(session, digest_settings, issue)}[part]
    path = GOLDEN / f"digest.{part}"
    if update_golden or not path.exists():
        path.write_text(got, encoding="utf-8")
        if not update_golden:
            pytest.fail(f"{path} did not exist; written now: check it and commit it")
    assert got == path.read_text(encoding="utf-8"), f"{path} changed: rerun with --update-golden if on purpose"
