"""Messages: every M item of the email checklist, and the fast path equal to the slow EmailMessage."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import dkim
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import message
from pipeline.config import Settings, load_settings
from pipeline.errors import ConfigError, PermanentDeliveryError
from pipeline.issues import compose
from pipeline.lint import failures, lint_message
from pipeline.message import MessageFactory, clean_header_text, confirmation_message, list_id, new_message_id
from pipeline.models import Issue
from pipeline.render import Recipient, RenderedIssue
from pipeline.returnpath import feedback_id
from pipeline.signing import DKIM_HEADERS
from subscribers.model import Subscriber
from subscribers.tokens import CONFIRM, read_token
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, digest_essays, render_issue
from tests.reference_message import reference_message

BASE = "https://letters.example.org"
WHEN = datetime(2026, 11, 23, 7, 0, 1, tzinfo=UTC)
EVE = Recipient("Eve Öster", "eve@example.org", f"{BASE}/u/eve-token.abc_DEF-1")


@pytest.fixture
def msg_settings(tmp_path: Path, engine: Engine) -> Settings:
    return load_settings(write_config(tmp_path, web={"base_url": BASE}))


@pytest.fixture
def rendered(session: Session, msg_settings: Settings) -> RenderedIssue:
    """A real render (Jinja2 + premailer) of five essays with non-ASCII and HTML specials."""
    add_essays(session, *digest_essays(5))
    issue = compose(session, msg_settings, key="message-test")
    session.commit()
    return render_issue(session, msg_settings, issue)


def parse(raw: bytes) -> EmailMessage:
    return message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def leaves(msg: EmailMessage) -> list[tuple[str, str]]:
    return [(p.get_content_type(), p.get_content()) for p in msg.walk() if not p.is_multipart()]


def assert_same_message(fast: bytes, slow: bytes) -> None:
    """Both parse without defects to the same headers and the same decoded parts."""
    a, b = parse(fast), parse(slow)
    assert [p.defects for p in a.walk()] == [[] for _ in a.walk()]
    assert [p.defects for p in b.walk()] == [[] for _ in b.walk()]
    assert [k.lower() for k in a.keys()] == [k.lower() for k in b.keys()] or sorted(a.keys()) == sorted(b.keys())
    for name in b.keys():
        if name == "Content-Type":  # the boundary differs; the type must not
            assert a.get_content_type() == b.get_content_type() == "multipart/alternative"
        elif name not in ("From", "To"):
            assert str(a[name]).strip() == str(b[name]).strip(), name
    for name in ("From", "To"):
        # The stdlib's address parser puts a space between adjacent encoded words (RFC 2047
        # says to drop it), so long non-ASCII names are compared without whitespace here and
        # exactly, the RFC way, by display_name() below.
        assert [(squash(x.display_name), x.addr_spec) for x in a[name].addresses] == [
            (squash(x.display_name), x.addr_spec) for x in b[name].addresses]
    assert leaves(a) == leaves(b)


def squash(text: str) -> str:
    return "".join(text.split())


def display_name(raw: bytes, header: str = "To") -> str:
    """The display name decoded as RFC 2047 says (whitespace between encoded words dropped)."""
    head = raw.split(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    value = re.search(rf"^{header}: (.*)$", head, re.M).group(1)
    phrase = value.rpartition(" <")[0] if " <" in value else ""
    return str(make_header(decode_header(phrase))) if phrase else ""


def assert_wire_clean(raw: bytes) -> None:
    """M6/M7: 7-bit, CRLF only, no line over 998 octets."""
    assert raw.isascii()
    assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def test_the_message_meets_the_checklist(rendered: RenderedIssue, msg_settings: Settings) -> None:
    message_id = new_message_id(msg_settings)
    raw = MessageFactory(msg_settings, rendered).build(EVE, message_id, WHEN)
    assert_wire_clean(raw)
    msg = parse(raw)
    for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):  # M1
        assert len(msg.get_all(header)) == 1, header
    date = parsedate_to_datetime(msg["Date"])  # M2
    assert date == WHEN and re.search(r"[+-]\d{4}$", msg["Date"])
    assert msg["Message-ID"] == message_id  # M3
    assert re.fullmatch(r"<[0-9a-f]{32}@essays\.example\.org>", message_id)
    assert [p.get_content_type() for p in msg.walk()] == [  # M4
        "multipart/alternative", "text/plain", "text/html"]
    for part in msg.walk():  # M6
        if not part.is_multipart():
            assert part.get_content_charset() == "utf-8"
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert msg["To"].addresses[0].display_name == "Eve Öster"
    assert b"=?utf-8?" in raw.split(b"\r\n\r\n")[0]
    assert msg["List-Unsubscribe"] == (  # M9, M10
        f"<{EVE.unsubscribe_url}>, <mailto:letters@essays.example.org?subject=unsubscribe>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "Field Notes <field-notes.essays.example.org>"  # M12
    assert msg["Precedence"] == "bulk"  # M13
    assert msg.get_all("Bcc") is None and msg.get_all("Cc") is None  # M16
    assert len(msg["To"].addresses) == 1
    text, html = (p.get_content() for p in msg.walk() if not p.is_multipart())
    assert EVE.unsubscribe_url in text and EVE.unsubscribe_url in html  # M5: the same link
    # The renderer's own lint of the message: no MUST finding.
    assert failures(lint_message(raw, sender_domain="essays.example.org",
                                 postal_address=msg_settings.newsletter.postal_address)) == []


def test_list_id_and_message_ids_are_stable_where_they_should_be(rendered: RenderedIssue, msg_settings: Settings) -> None:
    factory = MessageFactory(msg_settings, rendered)
    first = parse(factory.build(EVE, "<a@essays.example.org>", WHEN))
    again = parse(factory.build(EVE, "<a@essays.example.org>", WHEN + timedelta(hours=2)))
    assert first["List-Id"] == again["List-Id"]
    assert first["Message-ID"] == again["Message-ID"]  # a retry keeps the id it was given
    assert first["Date"] != again["Date"]  # and the Date is the time of that attempt
    assert len({new_message_id(msg_settings) for _ in range(1000)}) == 1000


@pytest.mark.parametrize("name", ["A--B", "Essays & Notes", "  Über -- Briefe  ", "---"])
def test_list_id_and_feedback_id_name_the_list_by_one_label(tmp_path: Path, name: str) -> None:
    # Postmaster Tools' grouping and a reader's filter must agree on which list this is.
    settings = load_settings(write_config(tmp_path, web={"base_url": BASE}, newsletter={"name": name}))
    in_list_id = re.fullmatch(r".*<(.+)\.essays\.example\.org>", list_id(settings)).group(1)
    in_feedback_id = feedback_id(settings, Issue(key="weekly-2026-W48", subject="x")).split(":")[1]
    assert in_list_id == in_feedback_id


def test_header_injection_from_data_is_neutralised(rendered: RenderedIssue, msg_settings: Settings) -> None:
    evil = Recipient("Eve\r\nBcc: x@y", "eve@example.org", EVE.unsubscribe_url)
    bad_subject = dataclasses.replace(rendered, subject="Hello\r\nBcc: victim@example.org")
    raw = MessageFactory(msg_settings, bad_subject).build(evil, "<x@essays.example.org>", WHEN)
    assert_wire_clean(raw)
    msg = parse(raw)
    assert msg.get_all("Bcc") is None
    assert [a.addr_spec for a in msg["To"].addresses] == ["eve@example.org"]
    assert msg["To"].addresses[0].display_name == "Eve Bcc: x@y"
    assert msg["Subject"] == "Hello Bcc: victim@example.org"
    assert_same_message(raw, reference_message(msg_settings, bad_subject, evil, "<x@essays.example.org>", WHEN))


def test_non_ascii_subject_and_long_names_are_encoded_words(rendered: RenderedIssue, msg_settings: Settings) -> None:
    unicode_subject = dataclasses.replace(rendered, subject="Über Brot, Flüsse und Uhren — " * 4)
    long_name = "Zoë " + "Ünterwasser-Bäckerei " * 8
    raw = MessageFactory(msg_settings, unicode_subject).build(
        Recipient(long_name, "z@example.org", EVE.unsubscribe_url), "<z@essays.example.org>", WHEN)
    assert_wire_clean(raw)
    head = raw.split(b"\r\n\r\n")[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    msg = parse(raw)
    assert msg["Subject"] == " ".join(("Über Brot, Flüsse und Uhren — " * 4).split())
    assert display_name(raw) == long_name.strip()


def test_an_address_that_needs_smtputf8_is_refused(rendered: RenderedIssue, msg_settings: Settings) -> None:
    factory = MessageFactory(msg_settings, rendered)
    with pytest.raises(PermanentDeliveryError, match="SMTPUTF8"):
        factory.build(Recipient("", "jörg@example.org", EVE.unsubscribe_url), "<q@x.org>", WHEN)
    raw = factory.build(Recipient("", "jo@bücher.example", EVE.unsubscribe_url), "<q@x.org>", WHEN)
    assert parse(raw)["To"].addresses[0].addr_spec == "jo@xn--bcher-kva.example"


names = st.text(st.characters(codec="utf-8"), max_size=80)
tokens = st.from_regex(r"[A-Za-z0-9_.-]{1,90}", fullmatch=True)


@hypothesis_settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=names, email=st.emails(), token=tokens)
def test_fast_bytes_equal_the_slow_emailmessage(rendered: RenderedIssue, msg_settings: Settings,
                                                name: str, email: str, token: str) -> None:
    recipient = Recipient(name, email, f"{BASE}/u/{token}")
    factory = MessageFactory(msg_settings, rendered)
    fast = factory.build(recipient, "<p@essays.example.org>", WHEN)
    slow = reference_message(msg_settings, rendered, recipient, "<p@essays.example.org>", WHEN)
    assert_wire_clean(fast)
    assert_same_message(fast, slow)
    assert display_name(fast) == clean_header_text(name)


def test_the_named_and_unnamed_variants_both_take_the_fast_path(rendered: RenderedIssue, msg_settings: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    factory = MessageFactory(msg_settings, rendered)

    def slow_path(text: str) -> bytes:
        raise AssertionError("an ordinary recipient fell back to encoding the whole part")

    monkeypatch.setattr(message, "encode_whole", slow_path)
    for who in (EVE, Recipient("", "anon@example.org", EVE.unsubscribe_url),
                Recipient("Zoë Ünterwasser-Bäckerei", "zoe@example.org", EVE.unsubscribe_url + "x" * 40)):
        raw = factory.build(who, "<v@essays.example.org>", WHEN)
        assert_same_message(raw, reference_message(msg_settings, rendered, who, "<v@essays.example.org>", WHEN))
    # Both variants were planned into constant runs and a few personal lines.
    for html_plan, text_plan in factory._plans.values():
        assert html_plan is not None and text_plan is not None
        assert 0 < len(html_plan.dynamic) <= 6 and 0 < len(text_plan.dynamic) <= 6


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a DKIM test key")
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return key, base64.b64encode(der)


def test_dkim_signature_verifies_and_covers_the_list_headers(
    tmp_path: Path, rendered: RenderedIssue, dkim_key: tuple[Path, bytes]
) -> None:
    key, public = dkim_key
    signed_settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, delivery={"dkim_key": str(key), "dkim_selector": "news"}))
    raw = MessageFactory(signed_settings, rendered).build(EVE, "<d@essays.example.org>", WHEN)
    assert raw.startswith(b"DKIM-Signature: ")
    assert_wire_clean(raw)

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news._domainkey.essays.example.org."
        return b"v=DKIM1; k=rsa; p=" + public

    assert dkim.verify(raw, dnsfunc=dns)
    signed = parse(raw)["DKIM-Signature"]
    covered = re.search(r"h=([^;]+)", str(signed)).group(1).replace(" ", "").lower().split(":")
    assert set(h.decode() for h in DKIM_HEADERS) <= set(covered)
    tampered = raw.replace(b"Subject: ", b"Subject: Re: ", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_dkim_key_file_that_is_no_key_is_a_config_error(tmp_path: Path, rendered: RenderedIssue) -> None:
    key = tmp_path / "dkim.pem"
    key.write_text("this is the public key, pasted by mistake\n")
    settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, delivery={"dkim_key": str(key), "dkim_selector": "news"}))
    with pytest.raises(ConfigError, match="delivery.dkim_key: .*dkim.pem is not a PEM private key"):
        MessageFactory(settings, rendered)


def test_the_confirmation_email_links_to_the_confirm_page_of_this_subscriber(msg_settings: Settings) -> None:
    # The name is whatever the form was given, by anyone: it must not carry a stranger's text
    # (an advert, a link) into a mail our server sends to somebody else's address.
    spam = "WIN $500 at http://spam.example/claim"
    subscriber = Subscriber(id=41, email="back@example.org", email_normalized="back@example.org", name=spam)
    raw = confirmation_message(msg_settings, "message-test-secret", subscriber, "n0nce")
    msg = parse(raw)
    text = msg.get_content()
    url = re.search(rf"{BASE}/confirm/(\S+)", text)
    assert url is not None and read_token("message-test-secret", CONFIRM, url[1]) == 41
    assert str(msg["To"]) == "back@example.org" and text.startswith("Hello,")
    assert b"spam.example" not in raw and b"WIN" not in raw
    assert msg["Message-ID"] == f"<confirm.n0nce@{msg_settings.newsletter.sender_domain}>"
    assert msg["Subject"] == f"Please confirm your subscription to {msg_settings.newsletter.name}"
    assert text.endswith(f"--\r\n{msg_settings.newsletter.name}\r\n{msg_settings.newsletter.postal_address}\r\n")


def test_the_confirmation_email_is_dkim_signed_like_a_digest_when_a_key_is_configured(
    tmp_path: Path, dkim_key: tuple[Path, bytes]
) -> None:
    # Unsigned, it fails DMARC where the digests pass: the one mail a sign-up depends on lands in spam.
    key, public = dkim_key
    settings = load_settings(write_config(
        tmp_path, web={"base_url": BASE}, delivery={"dkim_key": str(key), "dkim_selector": "news"}))
    subscriber = Subscriber(id=41, email="back@example.org", email_normalized="back@example.org", name="Back")
    raw = confirmation_message(settings, "message-test-secret", subscriber, "n0nce")
    assert raw.startswith(b"DKIM-Signature: ")

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news._domainkey.essays.example.org."
        return b"v=DKIM1; k=rsa; p=" + public

    assert dkim.verify(raw, dnsfunc=dns)
    assert not dkim.verify(raw.replace(b"/confirm/", b"/confirm/x", 1), dnsfunc=dns)
