"""The message checks of the email checklist (M1-M16) on the exact bytes one subscriber receives.

M11 (the unsubscribe URL answers a one-click POST) is behaviour of the web endpoint, tested there;
M15 is not in the checklist.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

from pipeline.lint_document import MUST, SHOULD, Document, Finding
from pipeline.lint_html import lint_html
from pipeline.signing import DKIM_HEADERS

ONCE = ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version")
_URL = re.compile(r"https://[^\s<>\"']+")


def lint_message(raw: bytes, sender_domain: str | None = None, postal_address: str | None = None) -> list[Finding]:
    """Every M check on one message's bytes, and the H checks on its HTML part."""
    found: list[Finding] = []
    found += _check_wire(raw)
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    for defect in msg.defects:
        found.append(Finding("M8", MUST, f"parser defect: {type(defect).__name__}: {defect}"))
    for name in ONCE:
        count = len(msg.get_all(name) or [])
        if count != 1:
            found.append(Finding("M1", MUST, f"{count} {name} headers (exactly one needed)"))
    if msg.get_all("Bcc"):
        found.append(Finding("M16", MUST, "a Bcc header"))
    to = msg.get("To")
    if to is not None and len(getattr(to, "addresses", ())) != 1:
        found.append(Finding("M16", MUST, f"To names {len(to.addresses)} recipients (one per message)"))
    found += _check_date(msg)
    found += _check_message_id(msg, sender_domain)
    found += _check_list_headers(msg, sender_domain)
    found += _check_parts(msg, postal_address)
    return found


def _check_wire(raw: bytes) -> list[Finding]:
    found: list[Finding] = []
    if any(b > 127 for b in raw):
        found.append(Finding("M6", MUST, "8-bit bytes on the wire (use quoted-printable or base64)"))
    lines = raw.split(b"\r\n")
    if b"\n" in raw.replace(b"\r\n", b""):
        found.append(Finding("M7", MUST, "bare LF line endings (CRLF needed on the wire)"))
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 998]
    if long:
        found.append(Finding("M7", MUST, f"{len(long)} lines over 998 octets (first: line {long[0]})"))
    header = raw.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    subject = re.search(r"^Subject:(.*(?:\r\n[ \t].*)*)", header, re.M | re.I)
    if subject and any(ord(c) > 127 for c in subject[1]):
        found.append(Finding("M6", MUST, "the Subject is not RFC 2047 encoded"))
    return found


def _check_date(msg: EmailMessage) -> list[Finding]:
    value = msg.get("Date")
    if value is None:
        return []
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return [Finding("M2", MUST, f"the Date {value!s} does not parse")]
    if when.tzinfo is None or not re.search(r"[+-]\d{4}\s*$", str(value)):
        return [Finding("M2", MUST, f"the Date {value!s} has no numeric zone")]
    return []


def _check_message_id(msg: EmailMessage, sender_domain: str | None) -> list[Finding]:
    value = str(msg.get("Message-ID") or "").strip()
    match = re.fullmatch(r"<[^<>@\s]+@([^<>@\s]+)>", value)
    if not match:
        return [Finding("M3", MUST, f"Message-ID {value!r} is not <unique@domain>")]
    if sender_domain and match[1].lower() != sender_domain.lower():
        return [Finding("M3", MUST, f"Message-ID {value!r} is not on the sender domain {sender_domain}")]
    return []


def _check_list_headers(msg: EmailMessage, sender_domain: str | None) -> list[Finding]:
    found: list[Finding] = []
    unsubscribe = str(msg.get("List-Unsubscribe") or "")
    targets = re.findall(r"<([^<>]+)>", unsubscribe)
    if not any(t.startswith("https://") and "/u/" in t for t in targets):
        found.append(Finding("M9", MUST, f"List-Unsubscribe has no https one-click URL: {unsubscribe!r}"))
    if not any(t.startswith("mailto:") for t in targets):
        found.append(Finding("M9", MUST, f"List-Unsubscribe has no mailto: {unsubscribe!r}"))
    if str(msg.get("List-Unsubscribe-Post") or "").strip() != "List-Unsubscribe=One-Click":
        found.append(Finding("M10", MUST, "no List-Unsubscribe-Post: List-Unsubscribe=One-Click"))
    list_id = str(msg.get("List-Id") or "")
    match = re.search(r"<([^<>\s]+)>", list_id)
    if not match or (sender_domain and not match[1].lower().endswith("." + sender_domain.lower())):
        found.append(Finding("M12", MUST, f"List-Id {list_id!r} is not 'Name <label.{sender_domain or 'domain'}>'"))
    if str(msg.get("Precedence") or "").strip().lower() != "bulk":
        found.append(Finding("M13", SHOULD, "no Precedence: bulk"))
    dkim = str(msg.get("DKIM-Signature") or "")
    if not dkim:
        found.append(Finding("M14", SHOULD, "not DKIM-signed"))
    else:
        signed = re.search(r"h=([^;]+)", dkim.replace("\r\n", "").replace(" ", ""))
        wanted = {h.decode() for h in DKIM_HEADERS}
        if "Feedback-ID" not in msg:  # the one optional header the signer covers
            wanted.discard("feedback-id")
        missing = wanted - set((signed[1] if signed else "").lower().split(":"))
        if missing:
            found.append(Finding("M14", SHOULD, "DKIM does not sign " + ", ".join(sorted(missing))))
    return found


def _check_parts(msg: EmailMessage, postal_address: str | None) -> list[Finding]:
    if msg.get_content_type() != "multipart/alternative":
        return [Finding("M4", MUST, f"the message is {msg.get_content_type()}, not multipart/alternative")]
    parts = list(msg.iter_parts())
    types = [p.get_content_type() for p in parts]
    if not types or types[0] != "text/plain" or types[-1] != "text/html":
        return [Finding("M4", MUST, f"parts are {types}: text/plain first, text/html last")]
    found: list[Finding] = []
    for part in parts:
        if (part.get_content_charset() or "").lower() != "utf-8":
            found.append(Finding("M6", MUST, f"{part.get_content_type()} is not utf-8"))
        if part.get("Content-Transfer-Encoding", "").lower() not in {"quoted-printable", "base64", "7bit"}:
            found.append(Finding("M6", MUST, f"{part.get_content_type()} transfer encoding "
                                 f"{part.get('Content-Transfer-Encoding')}"))
    text, html = parts[0].get_content(), parts[-1].get_content()
    unsubscribe = re.findall(r"<(https://[^<>]+)>", str(msg.get("List-Unsubscribe") or ""))
    found += lint_text(text, html, unsubscribe[0] if unsubscribe else None, postal_address)
    found += lint_html(html, unsubscribe[0] if unsubscribe else None, postal_address)
    return found


def lint_text(text: str, html: str, unsubscribe_url: str | None = None,
              postal_address: str | None = None) -> list[Finding]:
    """M5: the text part carries what the HTML carries: every https link, titles, footer."""
    found: list[Finding] = []
    doc = Document(html)
    flat = " ".join(text.split()).lower()
    missing_links = sorted({n.attrs["href"] for n in doc.elements
                            if n.tag == "a" and n.attrs.get("href", "").startswith("https://")
                            and not n.hidden} - set(_URL.findall(text)))
    for href in missing_links:
        found.append(Finding("M5", MUST, f"the text part lacks the link {href}"))
    titles = [t for t, n in doc.texts if n.tag == "a" and n.attrs.get("href", "") not in missing_links
              and not n.hidden and len(t) > 20]
    for title in titles:
        if " ".join(title.split()).lower() not in flat:
            found.append(Finding("M5", MUST, f"the text part lacks {title[:50]!r}"))
    if unsubscribe_url and unsubscribe_url not in text:
        found.append(Finding("M5", MUST, "the text part lacks the unsubscribe URL"))
    if postal_address and " ".join(postal_address.split()).lower() not in flat:
        found.append(Finding("M5", MUST, "the text part lacks the postal address"))
    if len(flat) < 200:
        found.append(Finding("M5", MUST, f"the text part is a stub ({len(flat)} characters)"))
    return found
