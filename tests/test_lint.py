"""The email checklist as checks: real issues pass every MUST item; broken mail is caught."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import Settings, load_settings
from pipeline.db import session_scope
from pipeline.essays import import_paths
from pipeline.issues import compose
from pipeline.lint import MUST, SHOULD, failures, lint_copy, lint_html, lint_message, warnings
from pipeline.lint_help import fix_for
from pipeline.message import MessageFactory, new_message_id
from pipeline.render import Recipient
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, digest_essays, render_issue

BASE = "https://letters.example.org"
POSTAL = "Field Notes, 12 Example Street, 1000 Example City"
RECIPIENTS = [
    Recipient("Ana Núñez", "ana@example.org", f"{BASE}/u/abc.DEF-123"),
    Recipient("", "plain@example.org", f"{BASE}/u/xyz"),
    Recipient('Eve\r\nBcc: x@example.org "<b>"', "eve@example.org", f"{BASE}/u/eve"),
    Recipient("محمد", "m@example.org", f"{BASE}/u/m"),
]


def codes(findings: list) -> set[str]:  # type: ignore[type-arg]
    return {f.code for f in findings}


@pytest.fixture
def https_settings(tmp_path: Path, engine: Engine) -> Settings:
    return load_settings(write_config(tmp_path, web={"base_url": BASE}))


def _check_every_copy(session: Session, settings: Settings, count: int, long: bool = False) -> int:
    issue = compose(session, settings)
    session.commit()
    rendered = render_issue(session, settings, issue)
    factory = MessageFactory(settings, rendered)
    checked = 0
    for recipient in RECIPIENTS:
        html, text = rendered.personalise(recipient)
        copy = lint_copy(html, text, recipient.unsubscribe_url, settings.newsletter.postal_address)
        assert not failures(copy), [str(f) for f in failures(copy)]
        assert not warnings(copy), [str(f) for f in warnings(copy)]
        raw = factory.build(recipient, new_message_id(settings), datetime(2026, 3, 2, 7, tzinfo=UTC))
        message = lint_message(raw, settings.newsletter.sender_domain, settings.newsletter.postal_address)
        assert not failures(message), [str(f) for f in failures(message)]
        checked += 1
    return checked


@pytest.mark.parametrize("count", [1, 5, 12])
def test_every_must_item_holds_for_issues_of_1_5_and_12_essays(tmp_path: Path, session: Session, count: int) -> None:
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"max_essays": count}))
    add_essays(session, *digest_essays(count))  # long titles, Greek, Arabic, Japanese, HTML specials
    assert _check_every_copy(session, settings, count) == len(RECIPIENTS)


def test_every_must_item_holds_right_to_left(tmp_path: Path, session: Session) -> None:
    settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, newsletter={"language": "ar", "direction": "rtl"}))
    add_essays(session, *digest_essays(5))
    _check_every_copy(session, settings, 5)


def test_every_must_item_holds_on_the_corpus(tmp_path: Path, engine: Engine, corpus_dir: Path) -> None:
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, digest={"max_essays": 30}))
    assert import_paths(engine, [corpus_dir]).ok
    with Session(engine, expire_on_commit=False) as session:
        _check_every_copy(session, settings, 30)


# Broken mail, one fault at a time, starting from a copy that passes.


@pytest.fixture
def good(session: Session, https_settings: Settings) -> tuple[str, str]:
    add_essays(session, *digest_essays(3))
    issue = compose(session, https_settings)
    session.commit()
    return render_issue(session, https_settings, issue).personalise(RECIPIENTS[0])


def _lint(html: str) -> set[str]:
    return codes(failures(lint_html(html, RECIPIENTS[0].unsubscribe_url, POSTAL)))


@pytest.mark.parametrize(
    ("code", "old", "new"),
    [
        ("H2", "@media screen", "@media screen { @media print { p { color: red } } }\n@media screen"),
        ("H3", "<style>@media", "<style>p { color: red }\n@media"),
        ("H4", "padding: 0 !important", "padding: 0"),
        ("H5", "<body", "<body onload=\"x()\""),
        ("H5", "</body>", "<script>alert(1)</script></body>"),
        ("H5", "</body>", "<form><input name=q></form></body>"),
        ("H5", 'href="https://essays.example.org/essay-000"', 'href="javascript:alert(1)"'),
        ("H6", "</head>", '<link rel="stylesheet" href="https://x.example.org/a.css"></head>'),
        ("H8", 'role="presentation" border="0" cellpadding="0" cellspacing="0" width="100%" class="wrapper"',
         'width="100%" class="wrapper"'),
        ("H9", "</body>", '<img src="https://x.example.org/a.png" width="20"></body>'),
        ("H10", "</body>", '<img src="https://x.example.org/a.png" alt="" width="100%"></body>'),
        ("H11", 'href="https://essays.example.org/essay-000"', 'href="/essay-000"'),
        ("H12", '<html lang="en" dir="ltr">', "<html>"),
        ("H13", '<meta charset="utf-8">', ""),
        ("H19", 'color:#222; text-decoration:none', 'color:#fdfdfd; text-decoration:none'),
        ("H20", "<title>", '<title id="a"></title><meta id="a"><title>'),
        ("H20", '<p class="intro"', '<p><div>nested</div></p><p class="intro"'),
        ("H21", "Unsubscribe</a>", "</a>"),
        ("H21", POSTAL, "somewhere"),
        ("H24", 'style="margin:0 0 8px 0"', 'style="a:hover{color:red}"'),
    ],
)
def test_each_must_check_catches_its_fault(good: tuple[str, str], code: str, old: str, new: str) -> None:
    html = good[0]
    assert not _lint(html)
    assert old in html, old
    assert code in _lint(html.replace(old, new, 1))


def test_size_limits(good: tuple[str, str]) -> None:
    html = good[0]
    padded = html.replace("</body>", "<p>" + "x" * 95_000 + "</p></body>")
    assert [(f.code, f.level) for f in lint_html(padded) if f.code == "H1"] == [("H1", SHOULD)]
    clipped = html.replace("</body>", "<p>" + "x" * 110_000 + "</p></body>")
    assert [(f.code, f.level) for f in lint_html(clipped) if f.code == "H1"] == [("H1", MUST)]


@pytest.mark.parametrize(
    ("code", "old", "new"),
    [
        ("H7", 'style="margin:0 0 8px 0"', 'style="margin:0 0 8px 0; display:flex"'),
        ("H14", "<!DOCTYPE html>", ""),
        ("H15", '<div class="preheader"', '<p>visible first</p><div class="preheader"'),
        ("H16", "<!--[if mso]></td></tr></table><![endif]-->", "<!--[if mso]></td></tr></table>-->"),
        ("H17", 'bgcolor="#ffffff"', ""),
        ("H18", '<meta name="color-scheme" content="light dark">', ""),
        ("H22", "https://essays.example.org/essay-000", "https://bit.ly/abc"),
    ],
)
def test_each_should_check_warns(good: tuple[str, str], code: str, old: str, new: str) -> None:
    html = good[0]
    assert old in html, old
    found = lint_html(html.replace(old, new, 1), RECIPIENTS[0].unsubscribe_url, POSTAL)
    assert code in codes(warnings(found)) and code not in codes(failures(found))


def test_a_stub_text_part_fails(good: tuple[str, str]) -> None:
    html, text = good
    assert codes(failures(lint_copy(html, "Read it on the web.", RECIPIENTS[0].unsubscribe_url, POSTAL))) == {"M5"}
    missing_link = text.replace("https://essays.example.org/essay-001", "")
    assert "M5" in codes(failures(lint_copy(html, missing_link)))


def test_broken_messages_fail(session: Session, https_settings: Settings) -> None:
    add_essays(session, *digest_essays(2))
    issue = compose(session, https_settings)
    session.commit()
    raw = MessageFactory(https_settings, render_issue(session, https_settings, issue)).build(
        RECIPIENTS[0], new_message_id(https_settings), datetime(2026, 3, 2, 7, tzinfo=UTC))
    domain = https_settings.newsletter.sender_domain
    assert not failures(lint_message(raw, domain, POSTAL))
    head, body = raw.split(b"\r\n\r\n", 1)

    def broken(new_head: bytes, new_body: bytes = body) -> set[str]:
        return codes(failures(lint_message(new_head + b"\r\n\r\n" + new_body, domain, POSTAL)))

    assert "M1" in broken(head + b"\r\nSubject: again")
    assert "M16" in broken(head + b"\r\nBcc: spy@example.org")
    assert "M2" in broken(head.replace(b"Date: ", b"Date: yesterday, ", 1))
    assert "M3" in broken(re.sub(rb"(Message-ID: <[^@]+)@[^>]+>", rb"\1@elsewhere.example>", head))
    assert "M3" in broken(re.sub(rb"Message-ID: <([^@]+)@", rb"Message-ID: \1@", head))
    assert "M9" in broken(b"\r\n".join(line for line in head.split(b"\r\n")
                                       if not line.startswith(b"List-Unsubscribe:")))
    assert "M10" in broken(head.replace(b"List-Unsubscribe=One-Click", b"yes", 1))
    assert "M7" in broken(head, body.replace(b"\r\n", b"\n"))
    assert "M6" in broken(head + "\r\nX-Note: é".encode())


def test_a_dkim_signature_must_cover_the_feedback_id_a_message_carries(session: Session, https_settings: Settings) -> None:
    add_essays(session, *digest_essays(1))
    issue = compose(session, https_settings)
    session.commit()
    domain = https_settings.newsletter.sender_domain
    signed = b"from:to:subject:date:message-id:list-id:list-unsubscribe:list-unsubscribe-post"

    def m14(feedback_id: str, covered: bytes) -> set[str]:
        raw = MessageFactory(https_settings, render_issue(session, https_settings, issue), feedback_id=feedback_id).build(
            RECIPIENTS[0], new_message_id(https_settings), datetime(2026, 3, 2, 7, tzinfo=UTC))
        signature = b"DKIM-Signature: v=1; a=rsa-sha256; d=" + domain.encode() + b"; s=news; h=" + covered + b"; b=x\r\n"
        return {f.message for f in lint_message(signature + raw, domain, POSTAL) if f.code == "M14"}

    assert m14("", signed) == set()
    assert m14("issue-7:essays", signed) == {"DKIM does not sign feedback-id"}
    assert m14("issue-7:essays", signed + b":feedback-id") == set()
    assert m14("", b"from:to:subject:date:message-id") == {
        "DKIM does not sign list-id, list-unsubscribe, list-unsubscribe-post"}


def test_cli_lint_passes_a_good_issue_and_fails_an_http_config(run_cli, engine: Engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, *digest_essays(3))
    assert run_cli("issues", "new").exit_code == 0
    failing = run_cli("lint", "latest")  # the default config links to http://127.0.0.1:8025
    assert failing.exit_code == 1
    assert "H11 MUST" in failing.output and "web.base_url" in failing.output
    # Each finding says how to fix it and where the checklist explains it (inside the project).
    assert f"fix: {fix_for('H11')} (docs/email-checklist.md#h11)" in " ".join(failing.output.split())
    assert "shared/design" not in failing.output
    write_config(tmp_path, web={"base_url": BASE})
    passing = run_cli("lint", "latest", "--json")
    assert passing.exit_code == 0, passing.output
    assert json.loads(passing.output)["failures"] == []


def test_cli_lint_summary_counts_in_good_english(run_cli, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        add_essays(session, *digest_essays(2))
    assert run_cli("issues", "new").exit_code == 0
    result = run_cli("lint", "latest")  # http base_url: H11 and M9 fail; no DKIM: one warning
    flat = " ".join(result.output.split())
    assert result.exit_code == 1 and "MUST failures, 1 warning." in flat and "1 warnings" not in flat
