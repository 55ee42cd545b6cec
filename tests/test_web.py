"""The web app through Flask's test client: every route, its security rules, and RFC 8058."""

from __future__ import annotations

import dataclasses
import html as html_module
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from pipeline import confirmations
from pipeline.config import PROJECT_ROOT, Settings, load_settings
from pipeline.issues import compose
from pipeline.lint import lint_message
from pipeline.lint_help import FIXES, fix_for
from pipeline.models import Delivery, Essay, Issue, IssueStatus
from pipeline.publish import publish
from pipeline.web import create_app, wsgi_app
from subscribers import confirmation_queue, consent
from subscribers.model import Subscriber
from subscribers.tokens import CONFIRM, UNSUBSCRIBE, load_secret, make_token, read_token
from tests.conftest import CLI, PUBLIC_WEB, SMTPServer, write_config
from tests.digest_fixtures import add_essays, make_essay

LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


@pytest.fixture
def app(settings: Settings, engine: Engine) -> Flask:
    return create_app(settings, engine=engine)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def secret(settings: Settings) -> str:
    return load_secret(settings.base_dir)


def store(session: Session, *essays: object) -> None:
    """Add essays and end the transaction: on SQLite every transaction holds the write lock."""
    add_essays(session, *essays)  # type: ignore[arg-type]
    session.commit()


def add(session: Session, email: str, name: str = "", pending: bool = False) -> Subscriber:
    subscriber, _ = consent.add(session, email, name=name, pending=pending)
    return subscriber


def status_of(engine: Engine, email: str) -> str:
    with Session(engine) as s:
        found = consent.find(s, email)
        assert found is not None
        return found.status


def consent_find_id(engine: Engine, email: str) -> int:
    with Session(engine) as s:
        found = consent.find(s, email)
        assert found is not None and found.id is not None
        return found.id


def csrf_from(page: bytes) -> str:
    match = re.search(rb'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1).decode()


# --- RFC 8058 one-click unsubscribe ---------------------------------------------------------


@pytest.fixture
def reader(session: Session, secret: str) -> tuple[Subscriber, str]:
    subscriber = add(session, "ada@example.org", "Ada")
    assert subscriber.id is not None
    return subscriber, make_token(secret, UNSUBSCRIBE, subscriber.id)


def test_one_click_post_form_encoded_unsubscribes_with_2xx_and_no_redirect(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    response = client.post(f"/u/{token}", data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert 200 <= response.status_code < 300
    assert "Location" not in response.headers
    assert "Set-Cookie" not in response.headers  # works without cookies, leaves none behind
    assert b"You are unsubscribed" in response.data
    assert status_of(engine, "ada@example.org") == "unsubscribed"


def test_one_click_post_multipart_unsubscribes(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    response = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"},
                           content_type="multipart/form-data")
    assert response.status_code == 200 and "Location" not in response.headers
    assert status_of(engine, "ada@example.org") == "unsubscribed"


def test_one_click_twice_says_already_unsubscribed(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    again = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert b"already unsubscribed" in again.data
    assert b"Already unsubscribed" in client.get(f"/u/{token}").data


def test_get_shows_a_button_and_changes_nothing(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    page = client.get(f"/u/{token}")
    assert page.status_code == 200
    assert b'<form method="post"' in page.data and b"<button" in page.data
    assert b"a\xe2\x80\xa2\xe2\x80\xa2@example.org" in page.data  # masked address: a••@example.org
    assert b"ada@example.org" not in page.data
    assert status_of(engine, "ada@example.org") == "active"


@pytest.mark.parametrize("how", ["altered", "cut", "confirm-token", "garbage"])
def test_forged_tokens_get_4xx_and_change_nothing(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str], secret: str, how: str
) -> None:
    subscriber, token = reader
    assert subscriber.id is not None
    bad = {
        # One character inside the signature (the last one may carry unused padding bits).
        "altered": token[:-10] + ("B" if token[-10] != "B" else "C") + token[-9:],
        "cut": token[: len(token) // 2],
        "confirm-token": make_token(secret, CONFIRM, subscriber.id),
        "garbage": "not-a-token",
    }[how]
    for response in (client.post(f"/u/{bad}", data={"List-Unsubscribe": "One-Click"}), client.get(f"/u/{bad}")):
        assert 400 <= response.status_code < 500
    assert status_of(engine, "ada@example.org") == "active"


def test_head_on_unsubscribe_and_confirm_links_answers_like_get_and_changes_nothing(
    client: FlaskClient, engine: Engine, session: Session, secret: str, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    head, get = client.head(f"/u/{token}"), client.get(f"/u/{token}")
    assert head.status_code == get.status_code == 200 and head.data == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert status_of(engine, "ada@example.org") == "active"
    pending = add(session, "hal@example.org", pending=True)
    assert pending.id is not None
    assert client.head(f"/confirm/{make_token(secret, CONFIRM, pending.id)}").status_code == 200
    assert status_of(engine, "hal@example.org") == "pending"


def test_page_form_needs_its_csrf_token(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    refused = client.post(f"/u/{token}", data={"csrf_token": "forged"})
    assert refused.status_code == 400
    assert status_of(engine, "ada@example.org") == "active"
    field = csrf_from(client.get(f"/u/{token}").data)
    done = client.post(f"/u/{token}", data={"csrf_token": field})
    assert done.status_code == 200 and b"You are unsubscribed" in done.data
    assert status_of(engine, "ada@example.org") == "unsubscribed"


def test_one_click_with_another_value_is_not_one_click(
    client: FlaskClient, engine: Engine, reader: tuple[Subscriber, str]
) -> None:
    _, token = reader
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "Yes"}).status_code == 400
    assert status_of(engine, "ada@example.org") == "active"


# --- double opt-in: confirm and subscribe ---------------------------------------------------


def test_confirm_page_then_button(client: FlaskClient, engine: Engine, session: Session, secret: str) -> None:
    pending = add(session, "bo@example.org", pending=True)
    assert pending.id is not None
    token = make_token(secret, CONFIRM, pending.id)
    page = client.get(f"/confirm/{token}")
    assert page.status_code == 200 and b"Yes, subscribe me" in page.data
    assert status_of(engine, "bo@example.org") == "pending"  # a GET (a link scanner) confirms nothing
    assert client.post(f"/confirm/{token}", data={"csrf_token": "x"}).status_code == 400
    assert status_of(engine, "bo@example.org") == "pending"
    done = client.post(f"/confirm/{token}", data={"csrf_token": csrf_from(page.data)})
    assert done.status_code == 200 and b"You are subscribed" in done.data
    assert status_of(engine, "bo@example.org") == "active"
    assert b"Already confirmed" in client.get(f"/confirm/{token}").data


def test_confirm_refuses_bad_and_expired_tokens(
    client: FlaskClient, session: Session, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = add(session, "cy@example.org", pending=True)
    assert pending.id is not None
    assert client.get(f"/confirm/{make_token(secret, UNSUBSCRIBE, pending.id)}").status_code == 400
    token = make_token(secret, CONFIRM, pending.id)
    monkeypatch.setattr("subscribers.tokens.CONFIRM_MAX_AGE", -1)  # every token is now too old
    expired = client.get(f"/confirm/{token}")
    assert expired.status_code == 410 and b"expired" in expired.data


@pytest.fixture
def smtp_settings(tmp_path: Path, smtp_server: SMTPServer) -> Settings:
    return load_settings(write_config(tmp_path, delivery={
        "transport": "smtp", "smtp_host": smtp_server.host, "smtp_port": smtp_server.port, "smtp_tls": "none",
    }, web=PUBLIC_WEB))


@pytest.fixture
def smtp_client(smtp_settings: Settings) -> Iterator[tuple[FlaskClient, Engine]]:
    app = create_app(smtp_settings)
    engine = app.extensions["newsletter"].engine
    yield app.test_client(), engine
    engine.dispose()


def sign_up(client: FlaskClient, email: str, name: str = "", **extra: str) -> tuple[int, bytes]:
    field = csrf_from(client.get("/subscribe").data)
    response = client.post("/subscribe", data={"csrf_token": field, "email": email, "name": name, **extra},
                           environ_base=LOCAL)
    return response.status_code, response.data


def test_subscribe_queues_the_confirmation_the_mailer_sends_it_and_its_link_confirms(
    smtp_client: tuple[FlaskClient, Engine], smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    client, engine = smtp_client
    code, page = sign_up(client, "Dee@Example.org", "Dee")
    assert code == 200 and b"Check your inbox" in page
    assert status_of(engine, "dee@example.org") == "pending"
    assert smtp_server.received == []  # the request made no SMTP connection
    assert confirmation_queue.queued(engine) == 1
    assert confirmations.send_queued(smtp_settings, engine).sent == 1
    assert confirmations.send_queued(smtp_settings, engine).sent == 0  # sent once only
    assert len(smtp_server.received) == 1
    mail = smtp_server.received[0]
    assert mail.rcpt_tos == ["Dee@example.org"]  # the domain lower-cased, the local part as typed
    body = mail.message.get_body(("plain",)).get_content()
    link = re.search(re.escape(PUBLIC_WEB["base_url"]) + r"(/confirm/\S+)", body)
    assert link, body
    confirm_page = client.get(link.group(1))
    client.post(link.group(1), data={"csrf_token": csrf_from(confirm_page.data)})
    assert status_of(engine, "dee@example.org") == "active"


def test_subscribe_form_refuses_without_csrf_and_explains_bad_addresses(
    smtp_client: tuple[FlaskClient, Engine], smtp_server: SMTPServer
) -> None:
    client, engine = smtp_client
    assert client.post("/subscribe", data={"email": "x@example.org"}).status_code == 400
    code, page = sign_up(client, "not an address")
    assert code == 400 and b'role="alert"' in page and b'value="not an address"' in page
    # Letters beyond ASCII before the @ need SMTPUTF8, which this sender does not speak: such
    # a reader could never be mailed, so the form says so instead of signing them up.
    code, page = sign_up(client, "zo\u00eb@example.org")
    assert code == 400 and b'role="alert"' in page and b"before the @-sign" in page
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Subscriber)).one() == 0
    assert smtp_server.received == []


def _answers(client: FlaskClient, engine: Engine) -> dict[str, tuple[int, bytes]]:
    """The sign-up answer for an active, a new, an unsubscribed and a pending address."""
    with Session(engine) as s:
        add(s, "eve@example.org", "Eve")
        add(s, "una@example.org")
        consent.unsubscribe(s, "una@example.org")
        add(s, "pat@example.org", pending=True)
    answers = {}
    for who in ("eve", "fay", "una", "pat"):
        code, page = sign_up(client, f"{who}@example.org")
        answers[who] = (code, page.replace(f"{who}@example.org".encode(), b"X@example.org"))
    return answers


def test_subscribe_answers_byte_for_byte_the_same_for_every_address_and_mails_no_active_one(
    smtp_client: tuple[FlaskClient, Engine], smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    client, engine = smtp_client
    answers = _answers(client, engine)
    assert len(set(answers.values())) == 1 and answers["eve"][0] == 200, answers
    assert smtp_server.received == []  # the same work for each: a queued row, no SMTP
    assert confirmation_queue.queued(engine) == 4
    mailed = confirmations.send_queued(smtp_settings, engine)
    assert (mailed.sent, mailed.dropped) == (3, 1)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.received) == [
        "fay@example.org", "pat@example.org", "una@example.org"]
    assert status_of(engine, "una@example.org") == "unsubscribed"  # until they confirm


def test_subscribe_answers_the_same_with_the_relay_down_and_mails_once_it_is_back(
    tmp_path: Path, smtp_server: SMTPServer
) -> None:
    down = load_settings(write_config(tmp_path, delivery={
        "transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": _closed_port(), "smtp_tls": "none"}))
    app = create_app(down)
    engine = app.extensions["newsletter"].engine
    answers = _answers(app.test_client(), engine)
    assert len(set(answers.values())) == 1 and answers["fay"][0] == 200, answers
    mailed = confirmations.send_queued(down, engine)
    assert mailed.sent == 0 and "cannot connect" in (mailed.error or "")
    assert confirmation_queue.queued(engine) == 3  # nothing lost (the active address needs nothing)
    back = dataclasses.replace(down, delivery=dataclasses.replace(down.delivery, smtp_port=smtp_server.port))
    assert confirmations.send_queued(back, engine).sent == 3
    engine.dispose()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_repeated_sign_ups_get_at_most_three_emails_a_day_each_in_its_own_outbox_file(
    settings: Settings, engine: Engine, client: FlaskClient
) -> None:
    for _ in range(4):
        sign_up(client, "rex@example.org")
    assert confirmations.send_queued(settings, engine).sent == 3
    files = sorted(p.name for p in settings.delivery.outbox_dir.iterdir())
    assert files == ["confirm-rex@example.org-2.eml", "confirm-rex@example.org-3.eml", "confirm-rex@example.org.eml"]


def test_serve_sends_queued_confirmations_in_the_background(config_file: Path) -> None:
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "newsletter"), "--config", str(config_file), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
    )
    outbox = load_settings(config_file).delivery.outbox_dir
    try:
        assert process.stdout is not None
        base = re.search(r"(http://127\.0\.0\.1:\d+)/", process.stdout.readline()).group(1)  # type: ignore[union-attr]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(base + "/subscribe", timeout=10) as response:
            field = csrf_from(response.read())
        form = urllib.parse.urlencode({"csrf_token": field, "email": "sam@example.org"}).encode()
        with opener.open(base + "/subscribe", data=form, timeout=10) as response:
            assert response.status == 200
        for _ in range(100):  # woken by the sign-up: well within a second on any machine
            if (outbox / "confirm-sam@example.org.eml").exists():
                break
            time.sleep(0.1)
        assert (outbox / "confirm-sam@example.org.eml").exists()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


def test_subscribe_is_rate_limited_per_client_and_the_honeypot_adds_nobody(
    smtp_client: tuple[FlaskClient, Engine], smtp_server: SMTPServer
) -> None:
    client, engine = smtp_client
    assert sign_up(client, "bot@example.org", website="http://spam.example")[0] == 200
    codes = [sign_up(client, f"p{i}@example.org")[0] for i in range(6)]
    assert codes == [200] * 5 + [429]
    with Session(engine) as s:
        emails = set(s.exec(select(Subscriber.email)))
    assert emails == {f"p{i}@example.org" for i in range(5)}


# --- archive --------------------------------------------------------------------------------


@pytest.fixture
def issues(session: Session, settings: Settings) -> dict[str, Issue]:
    """A sent issue and a draft, each of two essays; one active subscriber."""
    store(session, *(make_essay(n) for n in range(1, 5)))
    sent = compose(session, settings, slugs=["essay-001", "essay-002"], key="weekly-2025-W05")
    sent.status = IssueStatus.SENT.value
    for essay in session.exec(select(Essay).where(col(Essay.slug).in_(["essay-001", "essay-002"]))):
        essay.sent_in_issue_id = sent.id  # as a finished send marks them
        session.add(essay)
    draft = compose(session, settings, slugs=["essay-003", "essay-004"], key="manual-draft")
    session.commit()
    add(session, "gus@example.org", "Gus")
    return {"sent": sent, "draft": draft}


def test_archive_lists_sent_issues_only(client: FlaskClient, issues: dict[str, Issue]) -> None:
    page = client.get("/archive/", environ_base=REMOTE)
    assert page.status_code == 200
    assert issues["sent"].subject.encode() in page.data
    assert issues["draft"].subject.encode() not in page.data
    assert b"gus@example.org" not in page.data


def test_web_copy_has_the_essays_and_no_personal_data(client: FlaskClient, issues: dict[str, Issue]) -> None:
    page = client.get("/archive/weekly-2025-W05", environ_base=REMOTE)
    assert page.status_code == 200
    assert b"On rivers, part 1" in page.data
    assert b"/u/" not in page.data and b"gus@" not in page.data and b"Zo\xc3\xab" not in page.data


@pytest.mark.parametrize("url", ["/archive/manual-draft", "/archive/no-such-issue", "/preview/issue/999",
                                 "/u/", "/nothing-here",
                                 # ids no database column holds: 404 too, not the database's overflow
                                 "/preview/issue/99999999999999999999", "/preview/issue/9223372036854775808.eml",
                                 "/preview/issue/2147483648"])
def test_unknown_or_private_ids_are_404(client: FlaskClient, issues: dict[str, Issue], url: str) -> None:
    assert client.get(url, environ_base=LOCAL).status_code == 404


def test_every_page_sends_security_headers(client: FlaskClient, issues: dict[str, Issue]) -> None:
    for url in ("/archive/", "/subscribe", "/preview/"):
        headers = client.get(url, environ_base=LOCAL).headers
        assert "script-src 'none'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"


# --- preview access -------------------------------------------------------------------------


def test_preview_answers_on_loopback_only(client: FlaskClient, issues: dict[str, Issue]) -> None:
    assert client.get("/preview/", environ_base=LOCAL).status_code == 200
    assert client.get("/preview/", environ_base=REMOTE).status_code == 403
    # Behind a reverse proxy on the same machine every request looks local: refuse those too.
    proxied = client.get("/preview/", environ_base=LOCAL, headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 403
    assert client.get("/", environ_base=REMOTE).headers["Location"].endswith("/archive/")
    assert client.get("/", environ_base=LOCAL).headers["Location"].endswith("/preview/")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8025", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "[::1", "127.0.0.1:x"])
def test_preview_refuses_a_host_name_that_is_not_this_server(client: FlaskClient, issues: dict[str, Issue],
                                                            host: str) -> None:
    """DNS rebinding: a page on evil.example points its name at 127.0.0.1 and reads the list."""
    for url in ("/preview/", f"/preview/issue/{issues['sent'].id}", "/preview/next.eml"):
        refused = client.get(url, environ_base=LOCAL, headers={"Host": host})
        assert refused.status_code == 400, (url, host)
        assert b"gus@example.org" not in refused.data
    assert client.get("/", environ_base=LOCAL, headers={"Host": host}).headers["Location"].endswith("/archive/")


@pytest.mark.parametrize("host", ["127.0.0.1:8025", "localhost", "LOCALHOST:5000", "[::1]:8025", "127.0.0.1"])
def test_preview_answers_under_loopback_host_names(client: FlaskClient, issues: dict[str, Issue], host: str) -> None:
    assert client.get("/preview/", environ_base=LOCAL, headers={"Host": host}).status_code == 200


def test_preview_answers_under_the_base_url_host_with_the_token(settings: Settings, engine: Engine) -> None:
    web = dataclasses.replace(settings.web, preview_token="s3cret-Token", base_url="https://news.example.org/")
    client = create_app(dataclasses.replace(settings, web=web), host="0.0.0.0", engine=engine).test_client()
    token = {"X-Preview-Token": "s3cret-Token"}
    assert client.get("/preview/", environ_base=REMOTE, headers={**token, "Host": "news.example.org"}).status_code == 200
    assert client.get("/preview/", environ_base=REMOTE, headers={**token, "Host": "evil.example"}).status_code == 400
    assert client.get("/preview/", environ_base=REMOTE, headers={"Host": "news.example.org"}).status_code == 403


def test_preview_is_off_on_a_public_host_without_a_token(settings: Settings, engine: Engine) -> None:
    client = create_app(settings, host="0.0.0.0", engine=engine).test_client()
    refused = client.get("/preview/", environ_base=LOCAL)
    assert refused.status_code == 403 and b"preview token" in refused.data
    assert client.get("/archive/", environ_base=LOCAL).status_code == 200


def test_preview_token_once_in_the_url_then_a_cookie_or_the_header(settings: Settings, engine: Engine) -> None:
    with_token = dataclasses.replace(settings, web=dataclasses.replace(settings.web, preview_token="s3cret-Token"))
    client = create_app(with_token, host="0.0.0.0", engine=engine).test_client()
    assert client.get("/preview/", environ_base=LOCAL).status_code == 403
    assert client.get("/preview/?token=wrong", environ_base=REMOTE).status_code == 403
    assert client.get("/preview/", headers={"X-Preview-Token": "s3cret-Token"}, environ_base=REMOTE).status_code == 200
    trade = client.get("/preview/?token=s3cret-Token&tab=text", environ_base=REMOTE)
    assert trade.status_code == 302 and trade.headers["Location"] == "/preview/?tab=text"
    cookie = trade.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "s3cret-Token" not in cookie
    assert client.get("/preview/", environ_base=REMOTE).status_code == 200  # the cookie now



def test_tokens_beyond_ascii_are_refused_not_a_server_error(settings: Settings, engine: Engine) -> None:
    """Secrets are compared as bytes: a form token or preview token with a letter beyond ASCII
    (anyone can send one) is a wrong token, not a 500, and public pages do not care about it."""
    with_token = dataclasses.replace(settings, web=dataclasses.replace(settings.web, preview_token="s3cret-Token"))
    app = create_app(with_token, host="0.0.0.0", engine=engine)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    client.get("/subscribe")  # a session with a form token
    assert client.post("/subscribe", data={"csrf_token": "\u00e9", "email": "x@example.org"}).status_code == 400
    assert client.get("/subscribe", headers={"X-Preview-Token": "\u00e9"}).status_code == 200
    assert client.get("/preview/?token=\u00e9", environ_base=REMOTE).status_code == 403
    client.set_cookie("newsletter_preview", "\u00e9")
    assert client.get("/preview/", environ_base=REMOTE).status_code == 403


def test_a_nul_anywhere_in_a_request_is_a_400_on_both_databases(any_settings: Settings, any_engine: Engine) -> None:
    """PostgreSQL refuses a NUL in text (a driver error, so a 500): a request carrying one in its
    path, query or form is refused before any page looks it up."""
    app = create_app(any_settings, engine=any_engine)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    assert client.get("/archive/nope").status_code == 404
    assert client.get("/archive/x%00y").status_code == 400
    assert client.get("/preview/issue/1?as=a%00b@example.org", environ_base=LOCAL).status_code == 400
    client.get("/subscribe")
    assert client.post("/subscribe", data={"csrf_token": "x", "email": "a\x00b@example.org"}).status_code == 400


def test_a_host_header_that_cannot_be_encoded_is_a_400_page(client: FlaskClient) -> None:
    """werkzeug cannot make URLs for a host like a..b; the error page needs none."""
    for host in ["a" * 64 + ".example", "a..b"]:
        page = client.get("/archive/", headers={"Host": host})
        assert page.status_code == 400, host

# --- preview pages --------------------------------------------------------------------------


@pytest.fixture
def ledger(session: Session, issues: dict[str, Issue]) -> Issue:
    """The sent issue's ledger: two sent, one failed with the server's answer, one unknown."""
    sent = issues["sent"]
    assert sent.id is not None
    rows = [("h1@example.org", "sent", None, None), ("h2@example.org", "sent", None, None),
            ("h3@example.org", "failed", 550, "550 5.1.1 mailbox unavailable"),
            ("h4@example.org", "unknown", None, "lease ran out mid-attempt")]
    for n, (email, status, code, error) in enumerate(rows):
        session.add(Delivery(issue_id=sent.id, subscriber_id=None, email=email, status=status,
                             message_id=f"<m{n}@essays.example.org>", smtp_code=code, last_error=error))
    session.commit()
    return sent


def test_preview_index_shows_issues_with_counts_and_the_next_digest(
    client: FlaskClient, session: Session, ledger: Issue
) -> None:
    store(session, make_essay(9, slug="essay-new", title="A <script>alert(1)</script> title"))
    page = client.get("/preview/", environ_base=LOCAL).data.decode()
    assert "weekly-2025-W05" in page and "manual-draft" in page
    assert "2 sent" in page and "1 failed" in page and "1 unknown" in page
    assert "Next digest" in page and "A &lt;script&gt;alert(1)&lt;/script&gt; title" in page
    assert "<script>" not in page


def test_preview_issue_tabs(client: FlaskClient, ledger: Issue) -> None:
    url = f"/preview/issue/{ledger.id}"
    html = client.get(url, environ_base=LOCAL).data.decode()
    frame = re.search(r"<iframe[^>]*>", html)
    assert frame and 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frame.group()
    assert "allow-scripts" not in frame.group() and "allow-same-origin" not in frame.group()
    assert "On rivers, part 1" in frame.group()  # the email itself, escaped into srcdoc
    assert "a sample subscriber" in html
    text = client.get(url + "?tab=text", environ_base=LOCAL).data.decode()
    assert "On rivers, part 1" in text and "/u/" in text
    headers = client.get(url + "?tab=headers", environ_base=LOCAL).data.decode()
    assert re.search(r'class="list-header"><th>List-Unsubscribe</th>', headers)
    assert "List-Unsubscribe-Post" in headers and "bytes on the wire" in headers
    checks = client.get(url + "?tab=lint", environ_base=LOCAL)
    assert checks.status_code == 200
    status = client.get(url + "?tab=status", environ_base=LOCAL).data.decode()
    assert "h3@example.org" in status and "550 5.1.1 mailbox unavailable" in status
    assert "h4@example.org" in status and "h1@example.org" not in status


def test_send_status_tab_settles_rows_a_stopped_sender_left_in_flight(
    client: FlaskClient, session: Session, issues: dict[str, Issue]
) -> None:
    """The tab reads the ledger as `sends status` does: rows held by a process of this host that
    no longer runs are `unknown` (maybe sent), not "sending"; a live holder is named."""
    issue = issues["sent"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = datetime.now(UTC) + timedelta(minutes=10)
    for n, holder in enumerate([f"{socket.gethostname()}:{dead.pid}"] * 2 + [f"{socket.gethostname()}:{os.getpid()}"]):
        session.add(Delivery(issue_id=issue.id, subscriber_id=None, email=f"f{n}@example.org", status="sending",
                             message_id=f"<f{n}@essays.example.org>", holder=holder, lease_until=lease))
    session.commit()
    status = client.get(f"/preview/issue/{issue.id}?tab=status", environ_base=LOCAL).data.decode()
    assert "2 unknown" in status and "1 sending" in status
    assert f"1 being sent by {socket.gethostname()}:{os.getpid()} (running on this host)" in status
    assert "f0@example.org" in status and "is gone (it stopped mid-attempt)" in status


def test_preview_as_a_chosen_subscriber_and_the_eml_download(
    client: FlaskClient, ledger: Issue, secret: str
) -> None:
    url = f"/preview/issue/{ledger.id}"
    page = client.get(url + "?as=GUS@example.org&tab=headers", environ_base=LOCAL).data.decode()
    assert "Gus &lt;gus@example.org&gt;" in page
    assert client.get(url + "?as=nobody@example.org", environ_base=LOCAL).status_code == 404
    eml = client.get(url + ".eml?as=gus@example.org", environ_base=LOCAL)
    assert eml.mimetype == "message/rfc822"
    assert eml.headers["Content-Disposition"] == 'attachment; filename="weekly-2025-W05.eml"'
    message = message_from_bytes(eml.data, policy=policy.default)
    assert not message.defects
    assert message["To"].addresses[0].addr_spec == "gus@example.org"
    with Session(client.application.extensions["newsletter"].engine) as s:
        gus = consent.find(s, "gus@example.org")
    assert gus is not None and gus.id is not None
    token = re.search(r"/u/([A-Za-z0-9_.-]+)>", message["List-Unsubscribe"])
    assert token and read_token(secret, UNSUBSCRIBE, token.group(1)) == gus.id


def test_preview_of_the_next_digest_saves_nothing(
    client: FlaskClient, engine: Engine, session: Session, issues: dict[str, Issue]
) -> None:
    store(session, make_essay(7, slug="essay-next", title="Next week's essay"))
    with Session(engine) as s:
        before = s.exec(select(func.count()).select_from(Issue)).one()
    page = client.get("/preview/next?tab=text", environ_base=LOCAL)
    assert page.status_code == 200 and b"Next week&#39;s essay" in page.data
    assert client.get("/preview/next.eml", environ_base=LOCAL).status_code == 200
    with Session(engine) as s:
        assert s.exec(select(func.count()).select_from(Issue)).one() == before


def test_preview_of_the_next_digest_with_nothing_to_send_is_a_404_that_says_so(client: FlaskClient) -> None:
    page = client.get("/preview/next", environ_base=LOCAL)
    assert page.status_code == 404 and b"nothing to send" in page.data


def test_preview_shows_byte_for_byte_what_sending_delivered(
    smtp_client: tuple[FlaskClient, Engine], smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    """Preview is sending without the transport: the parts a subscriber received are the parts shown."""
    client, engine = smtp_client
    with Session(engine, expire_on_commit=False) as s:
        store(s, *(make_essay(n) for n in range(1, 4)))
        issue = compose(s, smtp_settings)
        s.commit()
        add(s, "ivy@example.org", "Ivy \"<b>\" Ó'Neil")
    report = publish(smtp_settings, engine, issue.id)
    assert report.sent == 1
    received = smtp_server.received[0].message
    url = f"/preview/issue/{issue.id}"
    eml = message_from_bytes(client.get(url + ".eml?as=ivy@example.org", environ_base=LOCAL).data,
                             policy=policy.default)
    secret = load_secret(smtp_settings.base_dir)
    ivy_id = consent_find_id(engine, "ivy@example.org")

    def same_token(text: str) -> str:
        """Tokens carry the second they were signed in: check each names Ivy, then mask it."""
        for token in re.findall(r"/u/([A-Za-z0-9_.-]+)", text):
            assert read_token(secret, UNSUBSCRIBE, token) == ivy_id
        return re.sub(r"/u/[A-Za-z0-9_.-]+", "/u/TOKEN", text)

    for kind in ("html", "plain"):
        assert same_token(eml.get_body((kind,)).get_content()) == same_token(received.get_body((kind,)).get_content())
    for header in ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        assert same_token(eml[header]) == same_token(received[header])
    page = client.get(url + "?as=ivy@example.org", environ_base=LOCAL).data.decode()
    srcdoc = re.search(r'srcdoc="([^"]*)"', page)
    assert srcdoc
    assert same_token(html_module.unescape(srcdoc.group(1))) == same_token(received.get_body(("html",)).get_content())
    status = client.get(url + "?tab=status", environ_base=LOCAL).data.decode()
    assert "1 sent" in status and "No failed or unknown deliveries" in status


def test_preview_of_a_sent_issue_shows_the_copy_as_it_was_sent(
    smtp_client: tuple[FlaskClient, Engine], smtp_settings: Settings, smtp_server: SMTPServer
) -> None:
    """Renamed after the send, Ivy's preview of that issue still shows the name her copy went
    out with (the ledger's frozen row), not today's."""
    client, engine = smtp_client
    with Session(engine, expire_on_commit=False) as s:
        store(s, make_essay(1))
        issue = compose(s, smtp_settings)
        s.commit()
        add(s, "ivy@example.org", "Ivy Old")
    assert publish(smtp_settings, engine, issue.id).sent == 1
    received = smtp_server.received[0].message
    with Session(engine) as s:
        add(s, "IVY@example.org", "Ivy New")
        assert consent.find(s, "ivy@example.org").name == "Ivy New"  # type: ignore[union-attr]
    eml = message_from_bytes(client.get(f"/preview/issue/{issue.id}.eml?as=ivy@example.org",
                                        environ_base=LOCAL).data, policy=policy.default)
    assert str(eml["To"]) == str(received["To"]) == "Ivy Old <ivy@example.org>"
    assert eml["Message-ID"] != received["Message-ID"]  # a preview, not that delivery
    assert "Ivy New" not in eml.get_body(("plain",)).get_content()

def test_lint_tab_lists_what_the_checklist_finds_in_the_message(client: FlaskClient, settings: Settings,
                                                                issues: dict[str, Issue]) -> None:
    url = f"/preview/issue/{issues['draft'].id}"
    raw = client.get(url + ".eml", environ_base=LOCAL).data
    expected = lint_message(raw, settings.newsletter.sender_domain, settings.newsletter.postal_address)
    page = client.get(url + "?tab=lint", environ_base=LOCAL).data.decode()
    shown = re.findall(r'<td><a href="/preview/checklist#([hm]\d+)"><code>([HM]\d+)</code></a></td>', page)
    assert shown == [(f.code.lower(), f.code) for f in expected]
    if not expected:
        assert "Every check of the email checklist passes" in page
        return
    failed = sum(f.level == "MUST" for f in expected)
    assert f"{failed} MUST failure{'' if failed == 1 else 's'}</strong>" in page
    for f in expected:  # each finding with its fix, from the checklist's table of fixes
        assert str(escape(fix_for(f.code))) in page
    checklist = client.get("/preview/checklist", environ_base=LOCAL).data.decode()
    for code, _ in shown:  # every link lands on a section of the checklist
        assert f'<a id="{code}"></a>' in checklist


def test_the_checklist_explains_and_fixes_every_code_the_lint_can_report() -> None:
    import pipeline.lint_html
    import pipeline.lint_message
    codes = set()
    for module in (pipeline.lint_html, pipeline.lint_message):
        codes |= set(re.findall(r'Finding\("([HM]\d+)"', Path(module.__file__ or "").read_text(encoding="utf-8")))
    assert codes and codes <= set(FIXES)
    doc = (PROJECT_ROOT / "docs" / "email-checklist.md").read_text(encoding="utf-8")
    for code, fix in FIXES.items():
        section = doc.split(f'<a id="{code.lower()}"></a>', 1)[1].split("<a id=", 1)[0]
        assert f"### {code}\n" in section and "**Fix:**" in section
        assert section.split("**Fix:** ", 1)[1].split("\n", 1)[0].replace("`", "") == fix.replace("`", "")


def test_serve_command_answers_http_and_stops(config_file: Path) -> None:
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "newsletter"), "--config", str(config_file), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT_ROOT,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"Preview:\s+(http://127\.0\.0\.1:\d+)/preview/", first)
        assert match, first
        with urllib.request.urlopen(match.group(1) + "/archive/", timeout=10) as response:
            assert response.status == 200 and b"the archive" in response.read()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


def test_serve_says_so_when_the_port_is_taken(run_cli: CLI) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("serve", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 1 and "is in use by another program" in result.output


def test_wsgi_app_behind_a_proxy_counts_sign_ups_per_real_client_and_keeps_preview_shut(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_CONFIG", str(config_file))
    app = wsgi_app(proxies=1, mailer=False)
    client = app.test_client()
    assert client.get("/preview/", environ_base=LOCAL).status_code == 403  # host unknown: token only
    codes = {}
    for reader in ("198.51.100.1", "198.51.100.2"):
        codes[reader] = [
            client.post("/subscribe", environ_base=LOCAL, headers={"X-Forwarded-For": reader},
                        data={"csrf_token": csrf_from(client.get("/subscribe").data),
                              "email": f"r{i}-{reader}@example.org"}).status_code
            for i in range(6)
        ]
    assert codes == {"198.51.100.1": [200] * 5 + [429], "198.51.100.2": [200] * 5 + [429]}
    # The outbox transport (the default) got one confirmation per sign-up.
    confirmations.send_queued(load_settings(config_file), app.extensions["newsletter"].engine)
    outbox = load_settings(config_file).delivery.outbox_dir
    assert len(list(outbox.rglob("*.eml"))) == 10
    app.extensions["newsletter"].engine.dispose()


def test_no_public_page_reaches_a_subscriber_address(client: FlaskClient, ledger: Issue) -> None:
    """Crawl every link a visitor from elsewhere can follow: no address of the list shows up."""
    with Session(client.application.extensions["newsletter"].engine) as s:
        addresses = [e for e in s.exec(select(Subscriber.email))] + ["h1@example.org", "h3@example.org"]
    seen, queue = set(), ["/"]
    while queue:
        url = queue.pop()
        if url in seen or len(seen) > 50:
            continue
        seen.add(url)
        response = client.get(url, environ_base=REMOTE, follow_redirects=True)
        if url.startswith("/preview"):
            assert response.status_code == 403, url
            continue
        body = response.data.decode()
        assert not any(address in body for address in addresses), url
        queue += [h for h in re.findall(r'href="(/[^"]*)"', body) if not h.startswith("/static/")]
    assert {"/archive/", "/archive/weekly-2025-W05", "/subscribe", "/preview/"} <= seen


def test_one_click_on_sqlite_and_postgresql(any_settings: Settings, any_engine: Engine) -> None:
    client = create_app(any_settings, engine=any_engine).test_client()
    with Session(any_engine) as s:
        subscriber = add(s, "kim@example.org")
        assert subscriber.id is not None
    token = make_token(load_secret(any_settings.base_dir), UNSUBSCRIBE, subscriber.id)
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status_of(any_engine, "kim@example.org") == "unsubscribed"
    again = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
    assert again.status_code == 200 and b"already unsubscribed" in again.data


def test_without_double_opt_in_a_sign_up_is_active_at_once(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, subscribers={"double_opt_in": False}))
    app = create_app(settings)
    code, page = sign_up(app.test_client(), "lee@example.org", "Lee")
    engine = app.extensions["newsletter"].engine
    assert code == 200 and b"is on the list" in page
    assert status_of(engine, "lee@example.org") == "active"
    assert not settings.delivery.outbox_dir.exists() or not any(settings.delivery.outbox_dir.rglob("*.eml"))
    engine.dispose()


def test_preview_as_an_erased_subscriber_is_404(
    client: FlaskClient, session: Session, ledger: Issue
) -> None:
    """Neither the address nor the tombstone's key names an erased subscriber: the preview shows
    no copy made for a row that has no address."""
    gus = consent.find(session, "gus@example.org")
    assert gus is not None
    consent.remove(session, "gus@example.org")
    url = f"/preview/issue/{ledger.id}"
    for who in ("gus@example.org", f"removed:{gus.id}"):
        assert client.get(f"{url}?as={who}", environ_base=LOCAL).status_code == 404


def test_confirm_link_of_a_removed_address_is_404(client: FlaskClient, session: Session, secret: str) -> None:
    pending = add(session, "max@example.org", pending=True)
    assert pending.id is not None
    consent.remove(session, "max@example.org")
    assert client.get(f"/confirm/{make_token(secret, CONFIRM, pending.id)}").status_code == 404


def test_preview_index_on_an_empty_archive_says_to_import_not_that_all_went_out(client: FlaskClient) -> None:
    page = client.get("/preview/", environ_base=LOCAL)
    assert page.status_code == 200 and b"No essays yet" in page.data
    assert b"every essay has gone out" not in page.data  # none ever came in


def test_serve_names_a_host_it_cannot_resolve(run_cli: CLI) -> None:
    result = run_cli("serve", "--host", "no-such-host.invalid")  # .invalid never resolves (RFC 6761)
    assert result.exit_code == 1
    assert "Error: --host no-such-host.invalid: no such host name" in result.output


# --- the archive's Atom feed, and the web copy's way back ------------------------------------


def test_archive_feed_is_atom_with_the_sent_issues_only(client: FlaskClient, issues: dict[str, Issue]) -> None:
    import feedparser

    reply = client.get("/archive/feed.xml", environ_base=REMOTE)
    assert reply.status_code == 200 and reply.mimetype == "application/atom+xml"
    feed = feedparser.parse(reply.data)
    assert not feed.bozo and feed.version == "atom10"
    assert feed.feed.title == "Field Notes"
    assert [e.title for e in feed.entries] == [issues["sent"].subject]
    assert feed.entries[0].link == "http://127.0.0.1:8025/archive/weekly-2025-W05"  # web.base_url
    assert b"gus@" not in reply.data and issues["draft"].subject.encode() not in reply.data
    page = client.get("/archive/", environ_base=REMOTE).data
    assert b'type="application/atom+xml"' in page and b'href="/archive/feed.xml"' in page


def test_archive_feed_survives_a_control_character_already_stored(
    client: FlaskClient, session: Session, issues: dict[str, Issue]
) -> None:
    """An issue sent before subjects were checked may hold a character XML refuses: the feed
    leaves it out rather than failing for every reader, for good."""
    import feedparser

    sent = session.get(Issue, issues["sent"].id)
    assert sent is not None
    sent.subject, sent.preheader = "Notes\x0bweek", "Before\x01after"
    session.add(sent)
    session.commit()
    reply = client.get("/archive/feed.xml", environ_base=REMOTE)
    assert reply.status_code == 200
    feed = feedparser.parse(reply.data)
    assert not feed.bozo and [e.title for e in feed.entries] == ["Notesweek"]
    assert feed.entries[0].summary == "Beforeafter"

def test_the_web_copy_of_an_issue_that_expired_half_sent_stays(
    client: FlaskClient, session: Session, issues: dict[str, Issue]
) -> None:
    """Copies that went out link to their web copy; the issue expiring before every reader had
    it (a relay down for days) took that page away from the readers who had it."""
    sent = session.get(Issue, issues["sent"].id)
    assert sent is not None
    sent.status, sent.started_at = "expired", datetime.now(UTC)
    session.add(sent)
    session.commit()
    assert client.get(f"/archive/{sent.key}", environ_base=REMOTE).status_code == 200
    never = Issue(key="weekly-2025-W09", subject="Never went out", status="expired")
    session.add(never)
    session.commit()
    assert client.get("/archive/weekly-2025-W09", environ_base=REMOTE).status_code == 404

def test_web_copy_carries_the_name_a_subscribe_link_and_the_archive(
    client: FlaskClient, issues: dict[str, Issue]
) -> None:
    page = client.get("/archive/weekly-2025-W05", environ_base=REMOTE).data.decode()
    assert "Field Notes" in page
    assert 'href="http://127.0.0.1:8025/subscribe"' in page
    assert 'href="http://127.0.0.1:8025/archive/"' in page
