"""Build one subscriber's MIME message (all list headers, CRLF, 7-bit clean) from a rendered issue.

The stdlib `EmailMessage` needs about 3 ms to build and serialise a 27 KB digest, which would cap
sending near 300 messages a second per core. `MessageFactory` therefore encodes everything that
is the same for every subscriber once per issue (headers, the quoted-printable body lines that
hold no personal value, the MIME skeleton) and per subscriber encodes only the few lines that
carry a personal value, with the C codecs in `binascii`. `reference_message` builds the same
message the slow, obvious way; the tests prove both parse to the same headers and parts.
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
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import dkim
import dkim.crypto

from pipeline.config import Settings
from pipeline.errors import ConfigError, PermanentDeliveryError

# The headers a DKIM signature covers (M14): what a forger would want to change.
DKIM_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
                b"list-unsubscribe", b"list-unsubscribe-post", b"feedback-id")
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*")
# Every line break str.splitlines() knows, which is what the stdlib's body encoder splits on.
_LINE_BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# A line up to (not including) its break: one scan of a character class, 3x faster per line
# than searching for _LINE_BREAK's alternation.
_LINE_BODY = re.compile("[^\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]*")
# Two recipients with a name and two without (greetings differ): the lines that differ within a
# pair are the personal ones.
_PROBES = {
    True: (("Zqnamezqa", "zqemailzqa@probe.invalid", "https://probe.invalid/u/zqurlzqa"),
           ("Zqnamezqbb", "zqemailzqbb@probe.invalid", "https://probe.invalid/u/zqurlzqbb")),
    False: (("", "zqemailzqa@probe.invalid", "https://probe.invalid/u/zqurlzqa"),
            ("", "zqemailzqbb@probe.invalid", "https://probe.invalid/u/zqurlzqbb")),
}
_CHECK = 24  # characters after each personal line that must match the plan (a cheap guard)


class Rendered(Protocol):
    """What the renderer gives (pipeline.render.RenderedIssue): placeholders filled per recipient."""

    subject: str
    html: str
    text: str

    def personalise(self, recipient: _Recipient) -> tuple[str, str]: ...


class _Recipient(Protocol):
    name: str
    email: str
    unsubscribe_url: str


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
    words, chunk, size = [], [], 0
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


def list_id(settings: Settings) -> str:
    """`Name <label.sender-domain>`, the same for every issue so filters keep working (M12)."""
    label = re.sub(r"[^a-z0-9]+", "-", settings.newsletter.name.lower()).strip("-") or "list"
    return f"{encode_phrase(settings.newsletter.name)} <{label}.{settings.newsletter.sender_domain}>"


def list_unsubscribe(settings: Settings, url: str) -> str:
    """The one-click URL first, a mailto second (M9): to the bounce mailbox when one is read."""
    mailto = (settings.bounces.unsubscribe_address if settings.bounces.enabled
              else settings.newsletter.sender_address)
    return f"<{url}>,\r\n <mailto:{mailto}?subject=unsubscribe>"


def _qp(text: str) -> bytes:
    """Quoted-printable of text whose lines end in CRLF (the trailing CRLF makes b2a_qp use CRLF)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True)


@dataclass(frozen=True)
class _PartPlan:
    """One body part: pre-encoded constant runs of lines and where the personal lines sit."""

    chunks: tuple[bytes, ...]  # len(dynamic) + 1 encoded runs (each b"" or ending in CRLF)
    dynamic: tuple[tuple[int, int, str], ...]  # (start, length, what follows) per personal line
    probe_length: int


def _plan_part(probe_a: str, probe_b: str) -> _PartPlan | None:
    """Split a probe output into constant and personal lines; None when it cannot be planned."""
    spans_a = _line_spans(probe_a)
    spans_b = _line_spans(probe_b)
    if len(spans_a) != len(spans_b):
        return None
    chunks, spans, run = [], [], []
    for (sa, ea), (sb, eb) in zip(spans_a, spans_b):
        line = probe_a[sa:ea]
        if line != probe_b[sb:eb] or "zq" in line.lower():
            chunks.append(_qp("".join(x + "\r\n" for x in run)))
            spans.append((sa, ea))
            run = []
        else:
            run.append(line)
    chunks.append(_qp("".join(x + "\r\n" for x in run)))
    # What follows each personal line up to the next one: constant, so it must match.
    starts = [start for start, _ in spans[1:]] + [len(probe_a)]
    dynamic = tuple((sa, ea - sa, probe_a[ea:min(ea + _CHECK, nxt)])
                    for (sa, ea), nxt in zip(spans, starts))
    return _PartPlan(tuple(chunks), dynamic, len(probe_a))


def _line_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _LINE_BREAK.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _dynamic_lines(plan: _PartPlan, text: str) -> list[str] | None:
    """The personal lines of a fully personalised part, found by the probe's offsets."""
    lines, shift = [], 0
    for start, length, follows in plan.dynamic:
        start += shift
        end = _LINE_BODY.match(text, start).end()  # type: ignore[union-attr]  (it matches "")
        if not text.startswith(follows, end):
            return None
        lines.append(text[start:end])
        shift += (end - start) - length
    return lines if len(text) == plan.probe_length + shift else None


def _assemble(plan: _PartPlan, lines: list[str]) -> bytes:
    out = [plan.chunks[0]]
    for line, chunk in zip(lines, plan.chunks[1:]):
        out.append(_qp(line + "\r\n"))
        out.append(chunk)
    out.append(b"\r\n")  # the CRLF before a boundary belongs to the boundary, not the content
    return b"".join(out)


def _encode_whole(text: str) -> bytes:
    """A personalisation that changed the line structure: encode it all (slow, correct)."""
    return _qp("".join(line + "\r\n" for line in text.splitlines())) + b"\r\n"


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
        self._dkim = _load_dkim(settings)
        # Planned on the first build, with probes of the caller's own recipient type.
        self._plans: dict[bool, tuple[_PartPlan | None, _PartPlan | None]] = {}
        self._date_cache: tuple[int, bytes] = (-1, b"")

    def build(self, recipient: _Recipient, message_id: str, date: datetime) -> bytes:
        """One subscriber's message, CRLF, ready for SMTP DATA (DKIM-signed when configured)."""
        to = ascii_address(recipient.email)
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
        if self._dkim is not None:
            selector, domain, key = self._dkim
            raw = dkim.sign(raw, selector, domain, key, include_headers=list(DKIM_HEADERS),
                            canonicalize=(b"relaxed", b"relaxed")) + raw
        return raw

    def _bodies(self, recipient: _Recipient) -> tuple[bytes, bytes]:
        """The encoded text and html parts, reusing the constant lines' encoding."""
        named = bool(recipient.name)
        if named not in self._plans:
            self._plans[named] = self._plan(recipient, named)
        html, text = self.rendered.personalise(recipient)
        parts = []
        for plan, body in zip(reversed(self._plans[named]), (text, html)):
            lines = _dynamic_lines(plan, body) if plan is not None else None
            parts.append(_encode_whole(body) if plan is None or lines is None
                         else _assemble(plan, lines))
        return parts[0], parts[1]

    def _plan(self, like: _Recipient, named: bool) -> tuple[_PartPlan | None, _PartPlan | None]:
        (html_a, text_a), (html_b, text_b) = (
            self.rendered.personalise(_with_values(like, *values)) for values in _PROBES[named])
        return _plan_part(html_a, html_b), _plan_part(text_a, text_b)

    def _date(self, date: datetime) -> bytes:
        second = int(date.timestamp())
        if self._date_cache[0] != second:
            self._date_cache = (second, f"Date: {format_datetime(date)}\r\n".encode("ascii"))
        return self._date_cache[1]


def _with_values(recipient: _Recipient, name: str, email: str, url: str) -> Any:
    """A recipient of the caller's own type carrying other values."""
    if dataclasses.is_dataclass(recipient):
        return dataclasses.replace(recipient, name=name, email=email,  # type: ignore[type-var]
                                   unsubscribe_url=url)
    return _Probe(name, email, url)


def _load_dkim(settings: Settings) -> tuple[bytes, bytes, bytes] | None:
    path: Path | None = settings.delivery.dkim_key
    if path is None:
        return None
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"delivery.dkim_key: cannot read {path}: {exc.strerror}") from None
    try:  # now, not at the first message: a bad key must not fail every delivery of a send
        dkim.crypto.parse_pem_private_key(key)
    except (dkim.crypto.UnparsableKeyError, dkim.KeyFormatError) as exc:
        raise ConfigError(f"delivery.dkim_key: {path} is not a PEM private key: {exc}") from None
    domain = settings.newsletter.sender_domain.encode("ascii")
    return settings.delivery.dkim_selector.encode("ascii"), domain, key


def dkim_record(settings: Settings) -> tuple[str, str]:
    """The DNS name and TXT value receivers look up to check this newsletter's DKIM signatures.

    Built from the configured private key (RSA), so what it says is what `_load_dkim` signs with;
    ConfigError when no key is configured or the key cannot be read.
    """
    loaded = _load_dkim(settings)
    if loaded is None:
        raise ConfigError("delivery.dkim_key: no DKIM key is configured")
    selector, domain, pem = loaded
    key = dkim.crypto.parse_pem_private_key(pem)
    rsa_public_key = _der(0x30, _der_int(key["modulus"]) + _der_int(key["publicExponent"]))
    rsa_encryption = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    spki = _der(0x30, rsa_encryption + _der(0x03, b"\x00" + rsa_public_key))
    value = "v=DKIM1; k=rsa; p=" + binascii.b2a_base64(spki, newline=False).decode("ascii")
    return f"{selector.decode()}._domainkey.{domain.decode()}", value


def _der(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content (X.690 8.1)."""
    n = len(content)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    # One more byte than the bits need: a leading zero keeps a high first bit from meaning negative.
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def reference_message(settings: Settings, rendered: Rendered, recipient: _Recipient,
                      message_id: str, date: datetime, subject_prefix: str = "",
                      feedback_id: str = "") -> bytes:
    """The same message built the slow, obvious way with EmailMessage (tests, benchmarks)."""
    news = settings.newsletter
    clean = _with_values(recipient, clean_header_text(recipient.name),
                         clean_header_text(recipient.email),
                         clean_header_text(recipient.unsubscribe_url))
    html, text = rendered.personalise(clean)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = Address(news.sender_name, addr_spec=news.sender_address)
    msg["To"] = Address(clean.name, addr_spec=ascii_address(recipient.email))
    msg["Subject"] = clean_header_text(subject_prefix + rendered.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["List-Id"] = list_id(settings).replace("\r\n", "")
    if feedback_id:
        msg["Feedback-ID"] = feedback_id
    msg["List-Unsubscribe"] = list_unsubscribe(settings, clean.unsubscribe_url).replace("\r\n", "")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Precedence"] = "bulk"
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)
