"""Hand finished message bytes to the world: an SMTP relay, an outbox folder, or memory (tests).

A transport has one method, `send(mail_from, to, raw)`, and `close()`. It raises
TransientDeliveryError (try later: 4xx, and 552 which servers use for "mailbox full"),
PermanentDeliveryError (other 5xx: this recipient, for good) or TransportUnavailable (no
connection or no login: the run pauses rather than failing every recipient). A connection lost
or timed out after the final dot of DATA raises AmbiguousDeliveryError: the server may have
stored the message, so it must not be sent again by itself. smtplib enters the project only here.
"""

from __future__ import annotations

import binascii
import functools
import itertools
import os
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline.config import DeliverySettings, Settings
from pipeline.errors import (
    AmbiguousDeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportUnavailable,
)

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@+-]+")
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*([^\r\n]*)", re.M | re.I)


class Transport(Protocol):
    """Sends one message to one recipient; raises a DeliveryError subclass when it cannot."""

    def send(self, mail_from: str, to: str, raw: bytes) -> None: ...

    def close(self) -> None: ...


def hand_over(transport: Transport, mail_from: str, to: str, raw: bytes) -> Callable[[], None]:
    """Start sending one message; returns `verdict()`, which waits for the server's answer and
    raises as `send` does. Over SMTP the message is out when this returns and the relay is still
    reading it: the caller can build the next message meanwhile. Other transports finish here."""
    if isinstance(transport, SMTPTransport):
        return transport.begin(mail_from, to, raw)
    transport.send(mail_from, to, raw)
    return _nothing


def _nothing() -> None:
    pass


def make_transport(settings: Settings, label: str = "") -> Transport:
    """The transport config.toml asks for: "smtp" or "outbox" (the embedded default).

    `label` says what is sent (an issue key, "confirm"): the outbox names its files by it.
    """
    if settings.delivery.transport == "smtp":
        return SMTPTransport(settings.delivery)
    return OutboxTransport(settings.delivery.outbox_dir, label)


def check_connection(delivery: DeliverySettings) -> str:
    """Connect, say EHLO, start TLS and log in as a send would, then QUIT: no message is sent.

    Returns how messages would travel (whether the envelope is pipelined); raises
    TransportUnavailable saying what failed (connection, TLS or login)."""
    transport = SMTPTransport(delivery)
    try:
        smtp = transport._connection()
        if transport._pipelining:
            return "offers PIPELINING: one round trip a message"
        if smtp.has_extn("pipelining"):
            return "offers PIPELINING, turned off by delivery.smtp_pipelining: four round trips a message"
        return "does not offer PIPELINING: four round trips a message"
    finally:
        transport.close()


def classify(code: int, message: bytes | str, where: str) -> TransientDeliveryError | PermanentDeliveryError:
    """The error an SMTP reply means: 4xx and 552 try again later, other 5xx never."""
    detail = f"{where}: {code} {_one_line(message)}"
    if 400 <= code < 500 or code == 552:
        return TransientDeliveryError(detail, code)
    return PermanentDeliveryError(detail, code)


def _one_line(reply: bytes | str) -> str:
    """A relay's reply text on one line, for the ledger and the summary: smtplib joins the lines
    of a multi-line reply with newlines; they, and runs of spaces, become one space."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text.split())


HARD_BOUNCE_CODES = (550, 551, 553)


def is_hard_bounce(code: int | None, error: str) -> bool:
    """550/551/553 say the mailbox does not exist, unless the enhanced code says policy (5.7.x)."""
    return code in HARD_BOUNCE_CODES and " 5.7." not in f" {error}"


@dataclass
class _FinalReply:
    """The relay's reply to one message's final dot. Over a pipelining relay the next message's
    envelope goes out before it is read, so it may be read by that next `begin` and kept here
    for the verdict: a (code, text) reply, or the connection error that took it."""

    smtp: smtplib.SMTP
    answer: tuple[int, bytes] | OSError | None = None  # smtplib's errors are OSErrors


class SMTPTransport:
    """One reused SMTP connection (STARTTLS, implicit TLS or plain), reconnected when it drops.

    Over a relay that advertises PIPELINING (RFC 2920; Postfix and Exim do) a message costs one
    round trip where lockstep costs four: the envelope (MAIL, RCPT, DATA) goes out in one write,
    right behind the message before it, whose final reply is read first. Every reply is read
    before any is acted on, so a refusal leaves the connection in step."""

    def __init__(self, delivery: DeliverySettings) -> None:
        self.delivery = delivery
        self._smtp: smtplib.SMTP | None = None
        self._pipelining = False  # the connection's relay advertised PIPELINING
        self._unread: _FinalReply | None = None  # a final dot whose reply is not read yet
        self.connections = 0  # how many times it connected (tests, and the summary)

    def send(self, mail_from: str, to: str, raw: bytes) -> None:
        self.begin(mail_from, to, raw)()

    def begin(self, mail_from: str, to: str, raw: bytes) -> Callable[[], None]:
        """Everything up to and including the message's final dot; returns what reads the reply
        to it (see hand_over)."""
        group = f"MAIL FROM:<{_checked(mail_from)}>\r\nRCPT TO:<{_checked(to)}>\r\nDATA\r\n".encode()
        if not self._pipelining:
            try:
                self._settle()  # lockstep: the message before is answered before anything is sent
            except (smtplib.SMTPServerDisconnected, OSError):
                pass  # kept for its verdict; this message goes over a new connection
        reused = self._smtp is not None
        try:
            smtp, replies = self._envelope(group, reused)
        except (smtplib.SMTPServerDisconnected, OSError):
            # An idle connection the server closed (or closed after the message before): this
            # message was not taken, so reconnect once.
            self._drop()
            if not reused:
                raise TransportUnavailable(f"{self._where()}: the server closed the connection") from None
            try:
                smtp, replies = self._envelope(group, reused=False)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._drop()
                raise TransientDeliveryError(f"{self._where()}: connection lost: {exc}") from None
        steps = (("MAIL FROM", (250,)), ("RCPT TO", (250, 251)), ("DATA", (354,)))
        for (step, ok), (code, reply) in zip(steps, replies, strict=False):  # lockstep stops at a refusal
            if code in ok:
                continue
            if replies[-1][0] == 354 and len(replies) == 3 and replies[1][0] in (250, 251):
                # A broken relay refused MAIL yet took RCPT and DATA: a dot would deliver an
                # empty message to that recipient. Only dropping the line aborts it.
                self._drop()
            elif replies[-1][0] == 354:
                # A pipelining relay took DATA although the envelope failed: an empty message
                # ends it (RFC 2920 3.1), and with no recipient it cannot be delivered.
                try:
                    smtp.send(b".\r\n")
                    smtp.getreply()
                except (smtplib.SMTPServerDisconnected, OSError):
                    self._drop()
            self._check(smtp, code, reply, step, ok)
        try:
            _message(smtp, raw)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Before the final dot went out the server cannot have taken the message: try later.
            self._drop()
            raise TransientDeliveryError(f"{self._where()}: connection lost during DATA: {exc}") from None
        final = self._unread = _FinalReply(smtp)
        return functools.partial(self._verdict, final)

    def _envelope(self, group: bytes, reused: bool) -> tuple[smtplib.SMTP, list[tuple[int, bytes]]]:
        """MAIL, RCPT and DATA, and their replies (in lockstep, up to the first refusal). Raises
        SMTPServerDisconnected or OSError when the connection is lost before the reply to MAIL
        (the caller reconnects once), TransientDeliveryError when it is lost after it."""
        smtp = self._connection()
        lockstep = None if self._pipelining else group.splitlines(keepends=True)
        if lockstep is None:
            assert smtp.sock is not None  # a live connection
            try:
                # Not smtp.send, which closes the socket when the write fails, and with it the
                # reply to the message before, which may well be here already.
                smtp.sock.sendall(group)
                lost: OSError | None = None
            except OSError as exc:
                lost = exc
            self._settle()  # the message before: its reply comes first
            if lost is not None:
                raise lost
            if self._smtp is not smtp:  # that reply was 421 (closing) or garbled: the line is gone
                raise smtplib.SMTPServerDisconnected("the server closed the connection")
        else:
            smtp.send(lockstep[0])
        replies = [smtp.getreply()]
        if replies[0][0] == 421:
            text = _one_line(replies[0][1])
            if reused:
                # Most likely the relay closing a connection idle too long ("timeout exceeded"),
                # said before MAIL came: nothing of this message was answered, as after a silent
                # close, so the caller reconnects.
                raise smtplib.SMTPServerDisconnected(f"421 {text}")
            # A new connection turned away: the relay is shedding load. Every message would meet
            # the same, so the run pauses, as when the relay cannot be reached.
            self._drop()
            raise TransportUnavailable(f"{self._where()} is not taking mail now (421 {text})")
        try:
            if lockstep is None:
                replies += (smtp.getreply(), smtp.getreply())  # RCPT's and DATA's, whatever MAIL's was
            else:
                for line in lockstep[1:]:
                    if replies[-1][0] not in (250, 251):
                        break
                    smtp.send(line)
                    replies.append(smtp.getreply())
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Before the message went out the server cannot have taken it: try later.
            self._drop()
            raise TransientDeliveryError(f"{self._where()}: connection lost: {exc}") from None
        return smtp, replies

    def _settle(self) -> None:
        """Read the reply to the last final dot, if it is still unread, and keep it for its
        verdict. A lost connection is kept too (and raised), as is a 421, which closes it."""
        final, self._unread = self._unread, None
        if final is None:
            return
        try:
            final.answer = final.smtp.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            final.answer = exc
            self._drop()
            raise
        if final.answer[0] == 421 or not _ends_message(final.answer[0]):
            self._drop()  # closing (421), or out of step: the next send reconnects

    def _verdict(self, final: _FinalReply) -> None:
        """The reply to a message's final dot."""
        if final.answer is None:
            try:
                self._settle()
            except (smtplib.SMTPServerDisconnected, OSError):
                pass  # kept in final.answer
        answer = final.answer
        if not isinstance(answer, tuple):
            # The whole message is out; a server may store it and then drop (or stall) before its
            # 250. Sending it again by itself could be a second copy: the sender must decide.
            raise AmbiguousDeliveryError(
                f"{self._where()}: no reply after the end of DATA ({_reason(answer or OSError())}): "
                f"maybe delivered, maybe not")
        code, reply = answer
        if 200 <= code < 300:
            return
        if not _ends_message(code):
            # No code, or one that answers no end of a message: the relay may have taken it.
            text = _one_line(reply)
            raise AmbiguousDeliveryError(
                f"{self._where()}: unreadable reply after the end of DATA ({code if code > 0 else ''} "
                f"{text!r}): maybe delivered, maybe not")
        # The transaction is over whatever the reply (RFC 5321 4.1.1.4): nothing to reset.
        if code == 530:
            raise self._refused(code, reply)
        raise classify(code, reply, f"{self._where()} end of DATA")

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._settle()
                if self._smtp is not None:  # not closed by the reply it read (a 421)
                    self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._drop()

    def _check(self, smtp: smtplib.SMTP, code: int, reply: bytes, step: str, ok: tuple[int, ...]) -> None:
        if code in ok:
            return
        if code == 421 or code == -1:
            self._drop()  # 421: the server is closing this connection; the next send reconnects
        else:
            try:
                smtp.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
        if code == -1:
            raise TransientDeliveryError(f"{self._where()}: {step}: connection lost")
        if code == 530 or (step == "MAIL FROM" and code >= 500):
            raise self._refused(code, reply)
        raise classify(code, reply, f"{self._where()} {step}")

    def _refused(self, code: int, reply: bytes) -> TransportUnavailable:
        """TLS or login demanded, or our sender refused: every message would fail alike."""
        return TransportUnavailable(f"{self._where()} refused the sender ({code} {_one_line(reply)}); "
                                    f"check delivery.smtp_tls, smtp_username and the sender address")

    def _where(self) -> str:
        return f"{self.delivery.smtp_host}:{self.delivery.smtp_port}"

    def _drop(self) -> None:
        if self._unread is not None:  # its reply can no longer come
            self._unread.answer = smtplib.SMTPServerDisconnected("connection closed")
            self._unread = None
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp = None

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            return self._smtp
        d = self.delivery
        smtp: smtplib.SMTP | None = None
        try:
            if d.smtp_tls == "tls":
                smtp = smtplib.SMTP_SSL(d.smtp_host, d.smtp_port, timeout=d.smtp_timeout, context=_tls_context())
            else:
                smtp = smtplib.SMTP(d.smtp_host, d.smtp_port, timeout=d.smtp_timeout)
            smtp.ehlo_or_helo_if_needed()  # HELO for a relay that refuses EHLO (RFC 5321 4.1.4)
            if d.smtp_tls == "starttls":
                smtp.starttls(context=_tls_context())
                smtp.ehlo_or_helo_if_needed()
            if d.smtp_username:
                smtp.login(d.smtp_username, d.smtp_password or "")
        except BaseException as exc:
            if smtp is not None:
                smtp.close()  # the half-open connection goes too
            if isinstance(exc, smtplib.SMTPAuthenticationError):
                raise TransportUnavailable(
                    f"{self._where()}: login as {d.smtp_username!r} refused ({exc.smtp_code}); check "
                    f"delivery.smtp_username and $NEWSLETTER_SMTP_PASSWORD") from None
            if isinstance(exc, smtplib.SMTPNotSupportedError):
                raise TransportUnavailable(f"{self._where()}: {exc} (see delivery.smtp_tls)") from None
            if isinstance(exc, binascii.Error):  # smtplib decodes the server's login challenge unchecked
                raise TransportUnavailable(
                    f"{self._where()}: login as {d.smtp_username!r} failed: the server's challenge is "
                    f"not base64 ({exc})") from None
            if isinstance(exc, UnicodeError):
                raise TransportUnavailable(
                    f"{self._where()}: login as {d.smtp_username!r} failed: the login methods this relay "
                    f"offers take only ASCII user names and passwords") from None
            if isinstance(exc, (TimeoutError, smtplib.SMTPException, ssl.SSLError, OSError)):
                raise TransportUnavailable(f"cannot connect to the SMTP server {self._where()}: {exc}") from None
            raise
        self._smtp = smtp
        self._pipelining = d.smtp_pipelining and smtp.has_extn("pipelining")
        if self._pipelining and smtp.sock is not None:
            # The next envelope is a small write behind a message not yet acknowledged: Nagle's
            # algorithm would hold it until the relay's reply, a round trip a message again.
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        return smtp


def _tls_context() -> ssl.SSLContext:
    """The default TLS context, made only for TLS connections and shared by them: loading the
    system's CA certificates costs ~30 ms of CPU, which each of 8 connections paid at the start
    of a send (plain ones too). Keyed by where OpenSSL reads them from and when that file last
    changed, so a long-running worker sees an updated CA bundle at its next connection."""
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile or paths.openssl_cafile
    try:
        changed = os.stat(cafile).st_mtime_ns
    except OSError:
        changed = 0
    return _context_for(cafile, paths.capath, changed)


@functools.cache
def _context_for(cafile: str | None, capath: str | None, changed: int) -> ssl.SSLContext:
    return ssl.create_default_context()  # reads the certificates the arguments name


def _ends_message(code: int) -> bool:
    """Whether `code` is a reply that can end a message: 2xx, 4xx or 5xx (RFC 5321 4.2.1)."""
    return 200 <= code < 300 or 400 <= code < 600


def _checked(address: str) -> str:
    """The address, unless it would break the command line it goes into. Not smtplib's
    quoteaddr, whose email.utils parse costs more than the rest of the command: the addresses
    are already checked ASCII addr-specs (message.py)."""
    if any(c in address for c in "\r\n<>"):
        raise PermanentDeliveryError(f"{address!r} cannot be used in an SMTP command")
    return address


def _reason(exc: BaseException) -> str:
    """Why the reply never came, in words: smtplib reports a timeout as a disconnection."""
    cause = exc.__context__ if isinstance(exc, smtplib.SMTPServerDisconnected) else exc
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError) or "timed out" in str(exc):
        return "timed out"
    return f"connection lost: {exc}"


def _message(smtp: smtplib.SMTP, raw: bytes) -> None:
    """The message after a 354, up to and including its final dot. The dot-stuffing is done by
    bytes.replace: smtplib's line-start regex takes ~60 us on a 12 KB digest, a third of what
    the rest of a send costs in Python. A line that starts with "." gets one more, as RFC 5321
    4.5.2 says; the message ends with CRLF "." CRLF."""
    if b"\n." in raw:
        raw = raw.replace(b"\n.", b"\n..")
    if raw[:1] == b".":
        raw = b"." + raw
    smtp.send(raw + (b".\r\n" if raw[-2:] == b"\r\n" else b"\r\n.\r\n"))


class OutboxTransport:
    """Writes each message as a .eml file into a folder: the default, no mail server needed.

    A file is named `<label>-<recipient>.eml` (the label is the issue key, or "confirm"), made
    safe for any file system. A name in use gets -2, -3 ...: nothing is ever overwritten. A retry
    of a delivery already written (the same Message-ID) writes nothing, as a relay that took the
    message would have dropped the duplicate; a retry keeps its Message-ID (ledger.py).
    """

    def __init__(self, folder: Path, label: str = "") -> None:
        self.folder = Path(folder)
        self.label = label

    def send(self, mail_from: str, to: str, raw: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransportUnavailable(f"cannot create the outbox folder {self.folder}: {exc.strerror}") from None
        stem = outbox_stem(self.label, to)
        message_id = _message_id(raw)
        temporary = self.folder / f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            # Written aside, then linked under a free name: link() never replaces a file, and a
            # reader (or a crash) never sees half a message.
            with open(temporary, "wb") as handle:
                handle.write(raw)
            for n in itertools.count(1):
                path = self.folder / (f"{stem}.eml" if n == 1 else f"{stem}-{n}.eml")
                try:
                    os.link(temporary, path)
                    return
                except FileExistsError:
                    if message_id is not None and _message_id_of(path) == message_id:
                        return  # this very delivery was written before
        except OSError as exc:
            raise TransportUnavailable(f"cannot write into {self.folder}: {exc.strerror}") from None
        finally:
            temporary.unlink(missing_ok=True)

    def close(self) -> None:
        pass


def outbox_stem(label: str, to: str) -> str:
    """`label-recipient` with every character a file system might refuse made an underscore."""
    stem = _UNSAFE_NAME.sub("_", f"{label}-{to}" if label else to).strip("._") or "message"
    return stem[:200]  # file names have a length limit (255 bytes on most systems)


def _message_id(raw: bytes) -> bytes | None:
    """The Message-ID header's value, looked for in the head only (a body may quote one)."""
    end = raw.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(raw if end < 0 else raw[:end])
    return match.group(1).strip() if match else None


def _message_id_of(path: Path) -> bytes | None:
    """The Message-ID in the head of a written .eml file (None when it has none or is gone)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64 * 1024)
    except OSError:
        return None
    return _message_id(head)


@dataclass
class Sent:
    mail_from: str
    to: str
    raw: bytes


@dataclass
class MemoryTransport:
    """Keeps messages in a list; `fail` maps an address to errors to raise, one per attempt."""

    sent: list[Sent] = field(default_factory=list)
    fail: dict[str, list[Exception]] = field(default_factory=dict)
    closed: bool = False

    def send(self, mail_from: str, to: str, raw: bytes) -> None:
        errors = self.fail.get(to)
        if errors:
            raise errors.pop(0)
        self.sent.append(Sent(mail_from, to, raw))

    def close(self) -> None:
        self.closed = True
