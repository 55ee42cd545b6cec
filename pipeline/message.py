"""Build every mail the newsletter sends: a subscriber's digest copy, and the double opt-in email.

A digest copy carries all list headers and is CRLF and 7-bit clean.

The stdlib `EmailMessage` needs about 3 ms to build and serialise a 27 KB digest, which would cap
sending near 300 messages a second per core. `MessageFactory` therefore encodes everything that
is the same for every subscriber once per issue (headers, the quoted-printable body lines that
hold no personal value, the MIME skeleton) and per subscriber encodes only the few lines that
carry a personal value (the plan: pipeline/mime_plan.py). tests/test_message.py builds the same
message the slow, obvious way with `EmailMessage` and proves both parse to the same headers and parts.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, formatdate
from typing import Any, Protocol

from pipeline.config import Settings
from pipeline.errors import PermanentDeliveryError
from pipeline.mime_plan import PartPlan, assemble, dynamic_lines, encode_whole, plan_part
from pipeline.signing import load_key, sign
from subscribers.model import Subscriber
from subscribers.tokens import CONFIRM, make_token

_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
# Two recipients with a name and two without (greetings differ): the lines that differ within a
# pair are the personal ones.
_PROBES = {
    True: (("Zqnamezqa", "zqemailzqa@probe.invalid", "https://probe.invalid/u/zqurlzqa"),
           ("Zqnamezqbb", "zqemailzqbb@probe.invalid", "https://probe.invalid/u/zqurlzqbb")),
    False: (("", "zqemailzqa@probe.invalid", "https://probe.invalid/u/zqurlzqa"),
            ("", "zqemailzqbb@probe.invalid", "https://probe.invalid/u/zqurlzqbb")),
}


class Rendered(Protocol):
    """What the renderer gives (pipeline.render.RenderedIssue): placeholders filled per recipient."""

    subject: str
    html: str
    text: str

    # Any: the renderer's own Recipient (frozen, with values()); this module stays free of it.
    def personalise(self, recipient: Any) -> tuple[str, str]: ...


class _Recipient(Protocol):
    # Read-only: the renderer's Recipient is a frozen dataclass.
    @property
    def name(self) -> str: ...

    @property
    def email(self) -> str: ...

    @property
    def unsubscribe_url(self) -> str: ...


@dataclass(frozen=True)
class _Probe:
    """A recipient of plain values, for renderers whose recipient is not a dataclass."""

    name: str
    email: str
    unsubscribe_url: str


def clean_header_text(value: str) -> str:
    """A value from data made safe for a header: no CR/LF or other control characters."""
    if value.isprintable() and "  " not in value and value == value.strip():
        return value  # the common case, checked in C
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
                    for c in value)
    return " ".join(value.split())


def new_message_id(settings: Settings) -> str:
    """A fresh `<random@sender-domain>`: made before the first attempt, kept across retries."""
    return f"<{secrets.token_hex(16)}@{settings.newsletter.sender_domain}>"


def message_id_frame(settings: Settings) -> tuple[str, str]:
    """(prefix, suffix) of one send's Message-IDs: subscriber n's is prefix + str(n) + suffix,
    `<random.n@sender-domain>`. The random part is fresh per call, so the ids are unique per
    send and per subscriber, and the database can make them all in one statement. The number
    tells a reader nothing new: their unsubscribe link carries it already."""
    return f"<{secrets.token_hex(12)}.", f"@{settings.newsletter.sender_domain}>"


def ascii_address(email: str) -> str:
    """The address as it goes on the wire: IDNA domain; a non-ASCII local part is refused."""
    email = clean_header_text(email)
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise PermanentDeliveryError(f"{email!r} is not an email address")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise PermanentDeliveryError(f"{email!r}: the domain is not a valid IDN") from None
    if not local.isascii():
        raise PermanentDeliveryError(f"{email!r} needs SMTPUTF8, which this sender does not use")
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


def encode_words(text: str) -> str:
    """RFC 2047 base64 encoded words, whole characters per word, folded with CRLF SP."""
    encoded = text.encode("utf-8")
    if len(encoded) <= 39:  # one word (most names): what the loop below makes, without it
        return "=?utf-8?b?" + binascii.b2a_base64(encoded, newline=False).decode("ascii") + "?="
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for char in text:
        width = len(char.encode("utf-8"))
        if size + width > 39:  # 39 bytes -> 52 base64 characters -> 64 with the wrapper
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(char)
        size += width
    words.append("".join(chunk))
    return "\r\n ".join("=?utf-8?b?" + binascii.b2a_base64(w.encode("utf-8"), newline=False)
                        .decode("ascii") + "?=" for w in words)


def encode_phrase(name: str) -> str:
    """A display name as a header phrase: plain when it is plain ASCII words, else encoded."""
    if not name:
        return ""
    if _ATOM_PHRASE.fullmatch(name) and "=?" not in name and len(name) < 60:
        return name
    return encode_words(name)


def format_mailbox(name: str, address: str) -> str:
    phrase = encode_phrase(clean_header_text(name))
    return f"{phrase} <{address}>" if phrase else f"<{address}>"


def encode_unstructured(text: str) -> str:
    text = clean_header_text(text)
    if text.isascii() and "=?" not in text and len(text) <= 66:
        return text
    return encode_words(text)


def list_label(settings: Settings) -> str:
    """The list's name as one label (`a-b` for "A--B"): List-Id and Feedback-ID both name it so."""
    return re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "list"


def list_id(settings: Settings) -> str:
    """`Name <label.sender-domain>`, the same for every issue so filters keep working (M12)."""
    return f"{encode_phrase(settings.newsletter.name)} <{list_label(settings)}.{settings.newsletter.sender_domain}>"


def list_unsubscribe(settings: Settings, url: str) -> str:
    """The one-click URL first, a mailto second (M9): to the bounce mailbox when one is read."""
    mailto = (settings.bounces.unsubscribe_address if settings.bounces.enabled
              else settings.newsletter.sender_address)
    return f"<{url}>,\r\n <mailto:{mailto}?subject=unsubscribe>"


class MessageFactory:
    """Encodes an issue's constant parts once; `build` makes one subscriber's bytes fast."""

    def __init__(self, settings: Settings, rendered: Rendered, subject_prefix: str = "",
                 feedback_id: str = "") -> None:
        self.settings = settings
        self.rendered = rendered
        news = settings.newsletter
        self.mail_from = news.sender_address
        digest = hashlib.sha256((rendered.html + rendered.text).encode("utf-8")).hexdigest()
        boundary = f"=_{digest[:28]}"  # "=_" never occurs in quoted-printable output
        self._head = (f"From: {format_mailbox(news.sender_name, news.sender_address)}\r\n"
                      f"Subject: {encode_unstructured(subject_prefix + rendered.subject)}\r\n"
                      ).encode("ascii")
        self._middle = (f"MIME-Version: 1.0\r\n"
                        f"List-Id: {list_id(settings)}\r\n"
                        + (f"Feedback-ID: {clean_header_text(feedback_id)}\r\n" if feedback_id else "")
                        ).encode("ascii")
        self._tail = (f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                      f"Precedence: bulk\r\n"
                      f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'
                      f"\r\n"
                      f"--{boundary}\r\n"
                      f'Content-Type: text/plain; charset="utf-8"\r\n'
                      f"Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
        self._between = (f"--{boundary}\r\n"
                         f'Content-Type: text/html; charset="utf-8"\r\n'
                         f"Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
        self._end = f"--{boundary}--\r\n".encode("ascii")
        self._dkim = load_key(settings)
        # Planned on the first build, with probes of the caller's own recipient type.
        self._plans: dict[bool, tuple[PartPlan | None, PartPlan | None]] = {}
        self._date_cache: tuple[int, bytes] = (-1, b"")

    def build(self, recipient: _Recipient, message_id: str, date: datetime, to: str | None = None) -> bytes:
        """One subscriber's message, CRLF, ready for SMTP DATA (DKIM-signed when configured).
        `to`: ascii_address(recipient.email), when the caller has it already (the sender, which
        needs it for RCPT TO)."""
        to = ascii_address(recipient.email) if to is None else to
        name, email, url = (clean_header_text(recipient.name), clean_header_text(recipient.email),
                            clean_header_text(recipient.unsubscribe_url))
        clean = recipient
        if (name, email, url) != (recipient.name, recipient.email, recipient.unsubscribe_url):
            clean = _with_values(recipient, name, email, url)  # a copy only when cleaning changed it
        text_body, html_body = self._bodies(clean)
        raw = b"".join((
            self._head,
            b"To: ", format_mailbox(clean.name, to).encode("ascii"), b"\r\n",
            self._date(date),
            b"Message-ID: ", clean_header_text(message_id).encode("ascii"), b"\r\n",
            self._middle,
            b"List-Unsubscribe: ", list_unsubscribe(self.settings, clean.unsubscribe_url)
            .encode("ascii"), b"\r\n",
            self._tail,
            text_body,
            self._between,
            html_body,
            self._end,
        ))
        return raw if self._dkim is None else sign(raw, self._dkim)

    def _bodies(self, recipient: _Recipient) -> tuple[bytes, bytes]:
        """The encoded text and html parts, reusing the constant lines' encoding."""
        named = bool(recipient.name)
        if named not in self._plans:
            self._plans[named] = self._plan(recipient, named)
        html, text = self.rendered.personalise(recipient)
        parts = []
        for plan, body in zip(reversed(self._plans[named]), (text, html), strict=True):
            lines = dynamic_lines(plan, body) if plan is not None else None
            parts.append(encode_whole(body) if plan is None or lines is None
                         else assemble(plan, lines))
        return parts[0], parts[1]

    def _plan(self, like: _Recipient, named: bool) -> tuple[PartPlan | None, PartPlan | None]:
        (html_a, text_a), (html_b, text_b) = (
            self.rendered.personalise(_with_values(like, *values)) for values in _PROBES[named])
        return plan_part(html_a, html_b), plan_part(text_a, text_b)

    def _date(self, date: datetime) -> bytes:
        second = int(date.timestamp())
        if self._date_cache[0] != second:
            self._date_cache = (second, f"Date: {format_datetime(date)}\r\n".encode("ascii"))
        return self._date_cache[1]


def _with_values(recipient: _Recipient, name: str, email: str, url: str) -> Any:
    """A recipient of the caller's own type carrying other values."""
    if dataclasses.is_dataclass(recipient):
        return dataclasses.replace(recipient, name=name, email=email, unsubscribe_url=url)
    return _Probe(name, email, url)


def confirmation_message(settings: Settings, secret: str, subscriber: Subscriber, nonce: str) -> bytes:
    """The double opt-in email: a link to web.base_url/confirm/<token>, valid for 7 days.

    Its Message-ID comes from the request's nonce, so every attempt of one request is one message;
    it is DKIM-signed when delivery.dkim_key is set.
    """
    assert subscriber.id is not None
    n = settings.newsletter
    url = f"{settings.web.base_url.rstrip('/')}/confirm/{make_token(secret, CONFIRM, subscriber.id)}"
    # No name, in the greeting or in To: it is whatever the form was given, by anyone, and must
    # not carry a stranger's text (an advert, a link) into a mail to somebody else's address.
    text = (
        "Hello,\n\n"
        f"please confirm that you want to receive {n.name} at {subscriber.email}:\n\n"
        f"    {url}\n\n"
        "The link works for 7 days. If you did not ask for this, ignore this message: "
        "you will not hear from us again.\n"
    )
    msg = EmailMessage()
    msg["From"] = formataddr((n.sender_name, n.sender_address))
    to = ascii_address(subscriber.email)  # the domain in IDNA form, as in a digest
    msg["To"] = to
    msg["Subject"] = f"Please confirm your subscription to {n.name}"
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<confirm.{nonce}@{n.sender_domain}>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text + f"\n--\n{n.name}\n{n.postal_address}\n")
    raw = msg.as_bytes(policy=SMTP)
    # Signed like a digest: unsigned, it would fail DMARC where the issues pass.
    key = load_key(settings)
    return raw if key is None else sign(raw, key)
