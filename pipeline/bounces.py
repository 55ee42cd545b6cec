"""Classify one message of the bounce mailbox: a bounce, a complaint, an unsubscribe, or neither.

Pure: bytes in, a `Finding` out; matching it to a delivery and changing statuses is
pipeline/feedback.py's work. Standard reports are read field by field with the stdlib parser:
RFC 3464 delivery status notifications (`multipart/report; report-type=delivery-status`: Action,
Status, Diagnostic-Code, Original-/Final-Recipient per recipient) and RFC 5965 feedback reports
(ARF). Everything else a mail server writes in its own words (qmail, old Exim, Yahoo, ...) goes to
flufl.bounce's detectors, which enters the project only here.

Every text is made storable where it is read from the message (`_as_text` for a header, `_decode`
for bytes, `_text` for encoded words): NUL dropped, half a surrogate pair made U+FFFD. So each
later step, the first look-up of the Message-ID included, sees only what a database can hold.
"""

from __future__ import annotations

import binascii
import hashlib
import quopri
import re
from dataclasses import dataclass, field
from email import errors, message_from_bytes, message_from_string, parser, policy
from email.header import Header, decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parseaddr

from flufl.bounce import all_failures

from pipeline.models import BounceKind
from pipeline.returnpath import is_unsubscribe_address

# Where the address a message was delivered to shows: the envelope recipient (VERP) is one.
ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
_SMTP_CODE = re.compile(r"\b([245])\d\d\b")
_MAILBOX_FULL = re.compile(r"mailbox (is )?full|over ?quota|quota exceeded|insufficient (disk )?space",
                           re.IGNORECASE)
_COMPLAINTS = ("abuse", "fraud")  # RFC 5965 feedback types a reader's "this is spam" button sends
_AUTO_SUBJECT = re.compile(r"^\s*(out of (the )?office|automatic reply|auto(matic)?[- ]?(reply|response)|"
                           r"autoreply|abwesenheitsnotiz|vacation)\b", re.IGNORECASE)
# What reading a hostile or broken message can raise: the stdlib parser and header decoder raise
# more than ValueError (HeaderParseError for bad encoded words, RecursionError for thousands of
# nested parts), and any of them must make that one message unparseable, never stop the mailbox.
_UNREADABLE = (ValueError, LookupError, TypeError, AttributeError, UnicodeError, errors.MessageError,
               RecursionError)
# Half of a UTF-16 surrogate pair, which no UTF-8 text (so no database) holds: a UTF-7 body or an
# `=?unicode-escape?...?=` word decodes to one.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Kinds by how much they weigh when one message reports several recipients.
_WEIGHT = {BounceKind.COMPLAINT: 5, BounceKind.HARD: 4, BounceKind.SOFT: 3, BounceKind.UNSUBSCRIBE: 2,
           BounceKind.AUTOREPLY: 1, BounceKind.IGNORED: 0}


@dataclass(frozen=True)
class Failure:
    """One recipient a report names: what happened to it and the server's own words."""

    recipient: str
    kind: BounceKind
    status: str = ""  # "5.1.1"; "" when the report gives none
    detail: str = ""


@dataclass(frozen=True)
class Finding:
    """What one mailbox message is, and everything needed to match it to a delivery."""

    key: str  # its Message-ID, else a hash of its bytes: each message is handled once
    kind: BounceKind
    reason: str  # one line for the operator
    failures: tuple[Failure, ...] = ()
    addressed_to: tuple[str, ...] = ()  # envelope/To addresses: a VERP return path is one
    original_message_id: str = ""  # the Message-ID of the message that bounced, when quoted
    sender: str = ""  # From: (the subscriber, for an emailed unsubscribe)
    subject: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Head:
    """What every finding about one message carries."""

    key: str
    addressed_to: tuple[str, ...]
    sender: str
    subject: str

    def finding(self, kind: BounceKind, reason: str, failures: tuple[Failure, ...] = (),
                original_message_id: str = "", also_to: tuple[str, ...] = (),
                extra: dict[str, str] | None = None) -> Finding:
        return Finding(self.key, kind, reason, failures, self.addressed_to + also_to, original_message_id,
                       self.sender, self.subject, extra or {})


def classify(raw: bytes, unsubscribe_address: str = "") -> Finding:
    """What `raw` is. `unsubscribe_address` is the List-Unsubscribe mailto of this list.

    Never raises on bad input: a message the parser cannot make sense of is IGNORED with the
    reason, so one broken message does not stop the mailbox."""
    try:
        return _classify(raw, unsubscribe_address)
    except _UNREADABLE as exc:
        key = "sha256:" + hashlib.sha256(raw).hexdigest()
        # Its key is the hash; the Message-ID, when the headers alone hold one, lets the operator
        # find the message in the mailbox.
        named = message_key(raw)
        which = f" ({named})" if not named.startswith("sha256:") else ""
        # The parser's words may quote the message.
        reason = f"unparseable{which}: {type(exc).__name__}: {_storable(str(exc))}"
        return Finding(key, BounceKind.IGNORED, reason[:300])


def _classify(raw: bytes, unsubscribe_address: str) -> Finding:
    msg = message_from_bytes(raw, policy=policy.compat32)
    key = message_key(raw, msg)
    if not msg.keys() or not (msg.get("From") or msg.get("Return-Path") or msg.get("Message-ID")):
        return Finding(key, BounceKind.IGNORED, "not an email message (no headers)")
    base = _Head(key, _addressed_to(msg), _address(_field(msg, "From")), _text(_field(msg, "Subject")))
    content_type = msg.get_content_type()
    param = msg.get_param("report-type") if content_type == "multipart/report" else None
    report_type = param.lower() if isinstance(param, str) else ""
    if report_type == "feedback-report" or _part(msg, "message/feedback-report") is not None:
        return _complaint(msg, base)
    if report_type == "delivery-status" or _part(msg, "message/delivery-status") is not None:
        finding = _dsn(msg, base)
        if finding is not None:
            return finding
    marker = _responder_marker(msg, base.subject)
    auto = _auto_submitted(msg, marker)
    if not auto and any(is_unsubscribe_address(unsubscribe_address, a) for a in base.addressed_to):
        return base.finding(BounceKind.UNSUBSCRIBE, f"asked to unsubscribe by mail to {unsubscribe_address}")
    if marker:
        # Before the bounce detectors: a reader's "out of office" can word itself like a bounce
        # ("your message could not be delivered to ...") and name an address in passing.
        return base.finding(BounceKind.AUTOREPLY, f"an automatic reply ({auto}): left alone")
    finding = _nonstandard(msg, base)
    if finding is not None:
        return finding
    if auto:
        return base.finding(BounceKind.AUTOREPLY, f"an automatic reply ({auto}): left alone")
    return base.finding(BounceKind.IGNORED, "not a bounce, complaint or unsubscribe")


def severity(kind: BounceKind) -> int:
    return _WEIGHT[kind]


def _dsn(msg: Message, base: _Head) -> Finding | None:
    """RFC 3464: one block of fields per recipient; None when it holds none (then flufl tries)."""
    failures: list[Failure] = []
    delivered = 0
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        decoded = _reassembled(part)
        if decoded is not None:
            blocks = _header_blocks(_decode(decoded, part.get_content_charset()))
        elif isinstance(payload, list):
            blocks = [b for b in payload if isinstance(b, Message)]
        else:  # as one string
            data = part.get_payload(decode=True)
            blocks = _header_blocks(_decode(data, part.get_content_charset()) if isinstance(data, bytes)
                                    else str(payload))
        for block in blocks[1:] if len(blocks) > 1 else blocks:
            recipient = _typed_address(_field(block, "Original-Recipient")) or \
                _typed_address(_field(block, "Final-Recipient"))
            action = _field(block, "Action").strip().lower()
            if not recipient or not action:
                continue
            if action in ("delivered", "relayed", "expanded"):
                delivered += 1
                continue
            status = _status(_field(block, "Status"))
            detail = _diagnostic(_field(block, "Diagnostic-Code"))
            # The server's own enhanced code is the better witness when the Status is missing or
            # only the catch-all X.0.0 (a full mailbox under "5.0.0" is still a full mailbox).
            said = _status(detail)
            weighed = said if said and (not status or status.endswith(".0.0")) else status
            failures.append(Failure(recipient, _kind(action, weighed, detail), status or said, detail))
    if not failures:
        if delivered:
            return base.finding(BounceKind.IGNORED, "a success notification (delivered/relayed), not a failure")
        return None
    kind = max((f.kind for f in failures), key=severity)
    worst = next(f for f in failures if f.kind == kind)
    return base.finding(kind, f"DSN {worst.status or 'without status'}: {worst.detail or kind.value}",
                        tuple(failures), _original_message_id(msg))


def _complaint(msg: Message, base: _Head) -> Finding:
    """RFC 5965 ARF: Feedback-Type abuse/fraud/...; who complained is in the attached original."""
    report = _part(msg, "message/feedback-report")
    fields: Message = Message()
    if report is not None:
        payload = report.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            fields = payload[0]
        elif str(payload).strip():
            fields = _header_blocks(str(payload))[0]
    original = _original_headers(msg)
    recipient = (_address(_field(fields, "Original-Rcpt-To")) or _address(_field(fields, "Removal-Recipient"))
                 or (_address(_field(original, "To")) if original is not None else ""))
    feedback_type = (_field(fields, "Feedback-Type") or "abuse").strip().lower()
    if feedback_type not in _COMPLAINTS:
        # not-spam, auth-failure (DMARC, RFC 6591), virus, other: no reader said this is spam.
        return base.finding(BounceKind.IGNORED, f"a {feedback_type} feedback report, not a reader's complaint")
    agent = _field(fields, "User-Agent").strip()
    detail = f"{feedback_type} report" + (f" from {agent}" if agent else "")
    # The original's envelope sender is our VERP return path: it names the delivery.
    mail_from = _address(_field(fields, "Original-Mail-From"))
    if original is not None:
        mail_from = mail_from or _address(_field(original, "Return-Path"))
    return base.finding(BounceKind.COMPLAINT, f"complaint: {detail}",
                        (Failure(recipient, BounceKind.COMPLAINT, "", detail),), _original_message_id(msg),
                        (mail_from,) if mail_from else (), {"feedback_type": feedback_type})


def _nonstandard(msg: Message, base: _Head) -> Finding | None:
    """A bounce in a mail server's own words: flufl.bounce's detectors find the recipients."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # noqa: BLE001  (a detector choking on odd input must not stop the mailbox)
        return base.finding(BounceKind.IGNORED, f"unparseable: the bounce detectors failed ({type(exc).__name__})")
    if not temporary and not permanent:
        return None
    body = _body_text(msg)
    failures = []
    for addresses, kind in ((permanent, BounceKind.HARD), (temporary, BounceKind.SOFT)):
        for address in sorted(_storable(a.decode("ascii", "replace")) for a in addresses):
            line = _line_about(body, address)
            status = _status(line)
            # flufl says permanent or temporary; the server's own code refines a "permanent"
            # full mailbox or policy refusal into a soft bounce, like a DSN's Status would.
            kind_here = _kind("failed", status, line) if kind == BounceKind.HARD else kind
            failures.append(Failure(address, kind_here, status, line))
    kind = max((f.kind for f in failures), key=severity)
    worst = next(f for f in failures if f.kind == kind)
    return base.finding(kind, f"non-standard bounce: {worst.detail or kind.value}", tuple(failures),
                        _original_message_id(msg) or _quoted_message_id(body))


def _kind(action: str, status: str, detail: str) -> BounceKind:
    """Hard for 5.x.x (the address is gone); soft for delays, 4.x.x, a full mailbox (5.2.2) and
    policy refusals (5.7.x: about the message or sender, not the address)."""
    if action == "delayed":
        return BounceKind.SOFT
    if status:
        klass, subject, _ = status.split(".")
        if klass == "4" or status == "5.2.2" or subject == "7":
            return BounceKind.SOFT
        return BounceKind.HARD if klass == "5" else BounceKind.SOFT
    if _MAILBOX_FULL.search(detail):  # a server's own words for 5.2.2, without the code
        return BounceKind.SOFT
    code = _SMTP_CODE.search(detail)
    if code is not None:
        return BounceKind.SOFT if code.group(1) == "4" or code.group(0).startswith("552") else BounceKind.HARD
    return BounceKind.HARD if action == "failed" else BounceKind.SOFT


def _status(text: str) -> str:
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else ""


def _diagnostic(text: str) -> str:
    """`smtp; 550 5.1.1 <x>: user unknown` -> `550 5.1.1 <x>: user unknown`, on one line."""
    text = " ".join((text or "").split())
    kind, sep, rest = text.partition(";")
    return rest.strip() if sep and kind.strip().lower() in ("smtp", "x-unix", "x-postfix", "x-local") else text


def _typed_address(value: str) -> str:
    """`rfc822; user@example.org` -> `user@example.org`."""
    value = " ".join((value or "").split())
    _, sep, rest = value.partition(";")
    return _address(rest if sep else value)


def _address(value: str) -> str:
    address = parseaddr(str(value or ""))[1].strip()
    return address if "@" in address else ""


def _addressed_to(msg: Message) -> tuple[str, ...]:
    found: list[str] = []
    for header in ENVELOPE_HEADERS:
        for _, address in getaddresses([_as_text(v) for v in msg.get_all(header, [])]):
            if "@" in address and address not in found:
                found.append(address)
    return tuple(found)


def _responder_marker(msg: Message, subject: str) -> str:
    """Which marker only an auto-responder sets `msg` (whose decoded Subject is `subject`)
    carries (X-Autoreply, X-Autorespond, Precedence: auto_reply, an "out of office" subject), or
    "". Not Auto-Submitted, which mail systems set on their bounces too (RFC 3834)."""
    for header in ("X-Autoreply", "X-Autorespond"):
        if msg.get(header):
            return header
    if _field(msg, "Precedence").strip().lower() == "auto_reply":
        return "Precedence: auto_reply"
    if _AUTO_SUBJECT.match(subject):
        return "its subject"
    return ""


def _auto_submitted(msg: Message, marker: str) -> str:
    """Why `msg` is an automatic reply (RFC 3834's Auto-Submitted, else its responder `marker`),
    or ""."""
    auto = _field(msg, "Auto-Submitted").strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    return marker


def _part(msg: Message, content_type: str) -> Message | None:
    return next((p for p in msg.walk() if p.get_content_type() == content_type), None)


def _original_headers(msg: Message) -> Message | None:
    """The headers of the message that bounced: an attached message/rfc822 or text/rfc822-headers."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            decoded = _reassembled(part)
            if decoded is not None:
                return message_from_string(_decode(decoded, None).lstrip(), policy=policy.compat32)
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        if kind in ("text/rfc822-headers", "message/rfc822-headers"):
            data = part.get_payload(decode=True)
            text = _decode(data, part.get_content_charset()) if isinstance(data, bytes) else str(part.get_payload())
            return message_from_string(text.lstrip(), policy=policy.compat32)
    return None


def _reassembled(part: Message) -> bytes | None:
    """The decoded bytes of a message/* part sent base64 or quoted-printable (some MTAs and
    feedback loops encode them, though RFC 2046 forbids it), which the parser split as if the
    encoded text were fields or a message; None when the part is not encoded so."""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    payload = part.get_payload()
    if encoding not in ("base64", "quoted-printable") or not isinstance(payload, list):
        return None
    encoded = "\n".join(p.as_string() for p in payload if isinstance(p, Message)).encode("ascii", "replace")
    return binascii.a2b_base64(encoded) if encoding == "base64" else quopri.decodestring(encoded)


def _original_message_id(msg: Message) -> str:
    original = _original_headers(msg)
    if original is not None and original.get("Message-ID"):
        return " ".join(_field(original, "Message-ID").split())
    return ""


def _header_blocks(text: str) -> list[Message]:
    return [message_from_string(block.strip() + "\n", policy=policy.compat32)
            for block in re.split(r"\r?\n\s*\r?\n", text) if block.strip()] or [Message()]


def message_key(raw: bytes, msg: Message | None = None) -> str:
    """Its Message-ID, else a hash of its bytes; without `msg` read from the headers alone (cheap)."""
    if msg is None:
        try:
            msg = parser.BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        except _UNREADABLE:
            msg = Message()  # then the hash, as `classify` gives an unparseable message
    message_id = " ".join(_field(msg, "Message-ID").split())
    # Only a real `<left@right>` names one message: mail servers send `<>` or a blank field too, and
    # keying on that made every later message with it look handled by an earlier run.
    if _MESSAGE_ID.fullmatch(message_id) and len(message_id) <= 240:
        return message_id
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _field(msg: Message, name: str) -> str:
    """Header `name` of `msg` as text, "" when absent (see `_as_text`)."""
    value = msg.get(name)
    return "" if value is None else _as_text(value)


def _as_text(value: object) -> str:
    """A header value as text. The compat32 parser hands back a `Header`, not a str, for a value
    holding 8-bit bytes (a server writing Latin-1 into Diagnostic-Code or User-Agent): its bytes
    are decoded like a body of unknown charset instead of failing every str method later."""
    if not isinstance(value, Header):
        return _storable(str(value))
    return _storable("".join(_decode(chunk, charset) if isinstance(chunk, bytes) else chunk
                             for chunk, charset in decode_header(value)))


def _decode(data: bytes, charset: str | None) -> str:
    """Bytes in their declared charset; one Python does not know (`x-unknown-8bit`, a typo), cannot
    use (a NUL in its name, `idna`, `undefined`) or none is read as UTF-8 when the bytes are UTF-8,
    else as Latin-1, which decodes any byte."""
    return _storable(_in_charset(data, charset))


def _in_charset(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            return data.decode(charset, "replace")
        # An unknown name is a LookupError; a NUL in the name, or a codec that refuses "replace"
        # or refuses everything, a ValueError (UnicodeError is one).
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _storable(text: str) -> str:
    """`text` without what no database can store: NUL (PostgreSQL's text refuses it) dropped, a
    surrogate made U+FFFD. One report with a NUL in the server's words, or in its Message-ID,
    made every later run of the mailbox fail on it."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def _text(value: object) -> str:
    """An encoded-word header (`=?utf-8?q?...?=`) as the text it stands for, on one line."""
    try:
        return _storable(" ".join(str(make_header(decode_header(str(value)))).split()))
    except (UnicodeError, LookupError, ValueError, TypeError, errors.HeaderParseError):
        # A broken encoded word (`=?utf-8?b?A?=`) is shown as written: the rest of the message counts.
        return " ".join(str(value).split())


def _body_text(msg: Message) -> str:
    texts = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                texts.append(_decode(data, part.get_content_charset()))
    return "\n".join(texts)


def _line_about(body: str, address: str) -> str:
    """The server's words about `address`: its paragraph (up to five lines), on one line."""
    lines = body.splitlines()
    for n, line in enumerate(lines):
        if address.lower() in line.lower():
            paragraph = [line.strip()]
            for after in lines[n + 1:n + 5]:
                if not after.strip() or after.lstrip().startswith("---"):
                    break
                paragraph.append(after.strip())
            return " ".join(" ".join(paragraph).split())[:500]
    return ""


def _quoted_message_id(body: str) -> str:
    """The Message-ID in a bounce that quotes the original as plain text (qmail, Exim, Yahoo)."""
    for line in body.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "message-id" and "@" in value:
            return " ".join(value.split())
    return ""
