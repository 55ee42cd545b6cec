"""A misbehaving SMTP server: every reply is classified, then retried or failed as promised."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from pipeline import db, ledger_reads
from pipeline.config import DeliverySettings
from pipeline.errors import (
    AmbiguousDeliveryError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TransportUnavailable,
)
from pipeline.issues import requeue
from pipeline.publish import Ending, publish
from pipeline.transports import SMTPTransport, check_connection, classify
from subscribers import consent
from subscribers.model import Subscriber, utcnow
from tests.smtp_faults import add_audience, fault_server, smtp_settings

# address -> (the fault on its first attempt, what the ledger must then say)
FAULTS = {
    "t421@example.org": (("rcpt", "421 4.3.2 Service shutting down"), "retry"),
    "t450@example.org": (("rcpt", "450 4.2.1 Mailbox busy"), "retry"),
    "t451@example.org": (("data", "451 4.3.0 Local error in processing"), "retry"),
    "t452@example.org": (("rcpt", "452 4.2.2 Insufficient system storage"), "retry"),
    "t454@example.org": (("mail", "454 4.7.0 TLS not available"), "retry"),
    "t552@example.org": (("data", "552 5.2.2 Mailbox full"), "retry"),
    "tcut@example.org": (("cut", ""), "retry"),  # lost before the message went out
    "tdrop@example.org": (("drop", ""), "unknown"),  # lost after it: maybe delivered
    "t550@example.org": (("rcpt", "550 5.1.1 User unknown"), "bounce"),
    "t554@example.org": (("data", "554 5.7.1 Message rejected as spam"), "failed"),
}


# Each case over a relay that answers command by command, and over one that advertises
# PIPELINING, where MAIL, RCPT and DATA arrive together and every refusal is read after all three.
PIPELINING = pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelining"])


@PIPELINING
def test_each_reply_is_classified_then_retried_or_failed(tmp_path: Path, pipelining: bool) -> None:
    with fault_server(pipelining=pipelining) as server:
        settings = smtp_settings(tmp_path, server.port, batch_size=50)
        engine = db.connect(settings.database.url)
        fine = add_audience(engine, 4)
        with Session(engine) as session:
            for address in FAULTS:
                consent.add(session, address, "Fault Case")
        for address, (fault, _) in FAULTS.items():
            server.faults[address] = [fault]

        first = publish(settings, engine, latest=True)

        with Session(engine) as session:
            rows = {r.email: r for r in ledger_reads.rows(session, first.issue_id)}
            statuses = {s.email: s.status for s in session.exec(select(Subscriber))}
        for address, (fault, expected) in FAULTS.items():
            row = rows[address]
            assert row.attempts == 1, address
            if expected == "retry":
                assert row.status == "pending" and row.next_attempt_at > utcnow(), address
                assert statuses[address] == "active"
            elif expected == "unknown":
                assert row.status == "unknown" and "maybe delivered" in row.last_error, address
            else:
                assert row.status == "failed", address
                assert statuses[address] == ("bounced" if expected == "bounce" else "active"), address
            code = fault[1].split(" ")[0]
            assert str(row.smtp_code or "") == ("" if fault[0] in ("drop", "cut") else code), address
            assert row.last_error, address
        # After the 421 (the server closing) the sender reconnected and carried on.
        assert len(server.peers) >= 2
        assert all(rows[p.email].status == "sent" for p in fine)
        assert first.retrying == 7 and first.failed == 2 and first.bounced == 1 and first.unknown == 1
        assert first.ending is not Ending.FINISHED

        # Before the backoff has passed, nothing is due; after it, the retries go out.
        assert publish(settings, engine, first.issue_key).sent == 0
        later = publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=2))
        assert later.sent == 7 and later.ending is Ending.FINISHED and later.counts["unknown"] == 1
        got = Counter(r.rcpt_tos[0] for r in server.received)
        assert all(got[a] == (1 if e == "retry" else 0) for a, (_, e) in FAULTS.items())
        assert all(got[p.email] == 1 for p in fine)
        engine.dispose()


def test_transient_failures_past_the_deadline_fail(tmp_path: Path) -> None:
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port, retry_hours=0)
        engine = db.connect(settings.database.url)
        people = add_audience(engine, 2)
        server.faults[people[0].email] = [("rcpt", "451 4.4.1 try later")]
        report = publish(settings, engine, latest=True)
        with Session(engine) as session:
            row = next(r for r in ledger_reads.rows(session, report.issue_id) if r.email == people[0].email)
        assert row.status == "failed" and row.last_error.startswith("gave up after 1 attempts")
        assert report.ending is Ending.FINISHED  # nothing owed: one sent, one failed


def test_the_retry_window_counts_from_the_issue_start_not_from_each_run(tmp_path: Path) -> None:
    # The scheduler (or a worker) runs the send again whenever a retry is due: were the window
    # to count from each run, an address that always says "later" would keep the issue owed forever.
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port, retry_hours=24)
        engine = db.connect(settings.database.url)
        people = add_audience(engine, 2)
        server.faults[people[0].email] = [("rcpt", "451 4.4.1 try later")] * 3
        first = publish(settings, engine, latest=True)
        assert first.retrying == 1 and first.ending is Ending.OWED
        within = publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=2))
        assert within.retrying == 1 and within.ending is Ending.OWED  # inside the window: retried
        past = publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=25))
        with Session(engine) as session:
            row = next(r for r in ledger_reads.rows(session, first.issue_id) if r.email == people[0].email)
        assert row.status == "failed" and row.last_error.startswith("gave up after 3 attempts")
        assert past.ending is Ending.FINISHED
        # `sends retry` past the window still gives the row its attempt; the relay takes it now.
        assert requeue(engine, first.issue_key, failed=True, unknown=False) == 1
        again = publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=26))
        assert again.sent == 1 and again.ending is Ending.FINISHED
        engine.dispose()


def test_resending_failures_leaves_a_bounced_reader_failed_with_the_relays_reply(tmp_path: Path) -> None:
    # `sends retry --failed` made every failed row owed again; the claim then found the bounced
    # reader inactive and turned the row `skipped`, "unsubscribed before it was sent": the 550
    # that bounced them was gone from the ledger, with a wrong reason in its place.
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port, retry_hours=0)
        engine = db.connect(settings.database.url)
        busy, gone = add_audience(engine, 2)
        server.faults[busy.email] = [("rcpt", "451 4.4.1 try later")]
        server.faults[gone.email] = [("rcpt", "550 5.1.1 no such user")]
        first = publish(settings, engine, latest=True)
        assert first.counts["failed"] == 2
        assert requeue(engine, first.issue_key, failed=True, unknown=False) == 1  # the active reader only
        again = publish(settings, engine, first.issue_key)
        assert again.sent == 1 and again.skipped == 0
        with Session(engine) as session:
            rows = {r.email: r for r in ledger_reads.rows(session, first.issue_id)}
        assert rows[busy.email].status == "sent"
        assert (rows[gone.email].status, rows[gone.email].smtp_code) == ("failed", 550)
        assert "no such user" in (rows[gone.email].last_error or "")
        engine.dispose()


@pytest.mark.parametrize(("code", "kind"), [
    (421, TransientDeliveryError), (450, TransientDeliveryError), (451, TransientDeliveryError),
    (452, TransientDeliveryError), (454, TransientDeliveryError), (552, TransientDeliveryError),
    (550, PermanentDeliveryError), (551, PermanentDeliveryError), (553, PermanentDeliveryError),
    (554, PermanentDeliveryError),
])
def test_classify(code: int, kind: type) -> None:
    error = classify(code, b"some text", "relay RCPT TO")
    assert isinstance(error, kind) and error.code == code and str(code) in str(error)


@PIPELINING
def test_one_connection_is_reused_and_a_drop_reconnects(tmp_path: Path, pipelining: bool) -> None:
    with fault_server(pipelining=pipelining) as server:
        delivery: DeliverySettings = smtp_settings(tmp_path, server.port).delivery
        transport = SMTPTransport(delivery)
        raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
        for n in range(5):
            transport.send("a@example.org", f"r{n}@example.org", raw)
        assert transport.connections == 1 and len(server.peers) == 1
        server.faults["r9@example.org"] = [("cut", "")]
        with pytest.raises(TransientDeliveryError, match="connection lost"):
            transport.send("a@example.org", "r9@example.org", raw)
        transport.send("a@example.org", "r10@example.org", raw)
        assert transport.connections == 2
        transport.close()
        assert [r.rcpt_tos[0] for r in server.received] == [f"r{n}@example.org" for n in (0, 1, 2, 3, 4, 10)]


@pytest.mark.parametrize(("pipelining", "allowed"), [(False, True), (True, True), (True, False)],
                         ids=["lockstep", "pipelining", "pipelining-turned-off"])
def test_the_envelope_is_pipelined_only_when_the_relay_offers_it(tmp_path: Path, pipelining: bool,
                                                                  allowed: bool) -> None:
    """Over a relay a network hop away each round trip costs its latency: with PIPELINING a
    message takes two (envelope, then the message) where lockstep takes four. Unless
    delivery.smtp_pipelining is false, for a relay that offers it and then mishandles it."""
    pipelining_used = pipelining and allowed
    with fault_server(pipelining=pipelining) as server:
        transport = SMTPTransport(smtp_settings(tmp_path, server.port, smtp_pipelining=allowed).delivery)
        raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\n.leading dot\r\nbody\r\n"
        for n in range(3):
            transport.send("a@example.org", f"r{n}@example.org", raw)
        server.faults["gone@example.org"] = [("rcpt", "550 5.1.1 User unknown")]
        with pytest.raises(PermanentDeliveryError, match="RCPT TO: 550 5.1.1 User unknown"):
            transport.send("a@example.org", "gone@example.org", raw)
        transport.send("a@example.org", "r3@example.org", raw)  # the connection is still in step
        # Nagle's algorithm would hold each small envelope behind the unacknowledged message
        # before it (a round trip a message again, over a real network).
        assert transport._smtp is not None and transport._smtp.sock is not None
        assert bool(transport._smtp.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is pipelining_used
        transport.close()
        assert server.grouped == [pipelining_used] * 5
        assert transport.connections == 1
        assert [r.rcpt_tos for r in server.received] == [[f"r{n}@example.org"] for n in range(4)]
        assert all(r.mail_from == "a@example.org" for r in server.received)
        assert all(b"\r\n.leading dot\r\n" in r.raw for r in server.received)


def test_over_a_pipelining_relay_the_next_envelope_travels_with_the_reply_before(tmp_path: Path) -> None:
    """One round trip a message: the sender does not wait for the reply to one message's final
    dot before it sends the next envelope (RFC 2920 lets message content open a group). The
    relay holds each such reply until the client's next command arrives, or for 3 s."""
    with fault_server(pipelining=True) as server:
        server.hold_final_reply = 3.0
        settings = smtp_settings(tmp_path, server.port, batch_size=50)
        engine = db.connect(settings.database.url)
        readers = add_audience(engine, 4)
        server.faults[readers[1].email] = [("data", "451 4.3.0 Try later")]
        report = publish(settings, engine, latest=True)
        # The last message of the batch has nothing behind it: its reply is waited for.
        assert server.next_came_first == [True, True, True, False]
        assert report.sent == 3 and report.retrying == 1
        with Session(engine) as session:
            rows = {r.email: r for r in ledger_reads.rows(session, report.issue_id or 0)}
        assert rows[readers[1].email].status == "pending"
        assert "451 4.3.0 Try later" in (rows[readers[1].email].last_error or "")
        assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(
            r.email for n, r in enumerate(readers) if n != 1)
        engine.dispose()


Answer = Callable[[bytes, bytes], "bytes | None"]
CLOSE = b"<close>"  # an answer that ends with it closes the connection after writing the rest
RESET = b"<reset>"  # ... resets it (an abortive close: RST) after writing the rest
PIPELINING_EHLO = b"250-relay\r\n250 PIPELINING\r\n"


class ScriptedRelay:
    """A relay on loopback whose every reply a test may script: `answer(verb, line)` returns the
    reply to a command (verb b"." for the end of a message, line its body), or None for the
    usual one; its first connections' EHLO replies are `ehlo`. It takes a recipient's DATA even
    after refusing MAIL, as a broken relay might. `log`: (recipient or "", message) per DATA,
    `commands`: every command line, per connection."""

    def __init__(self, answer: Answer = lambda verb, line: None, ehlo: bytes = PIPELINING_EHLO) -> None:
        self.answer, self.ehlo = answer, ehlo
        self.log: list[tuple[str, bytes]] = []
        self.commands: list[list[bytes]] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection, connection.makefile("rb") as lines:
                self._session(connection, lines)

    def _session(self, connection: socket.socket, lines: Any) -> None:
        commands: list[bytes] = []
        self.commands.append(commands)
        connection.sendall(b"220 relay\r\n")
        recipient = ""
        for line in lines:
            commands.append(line.rstrip(b"\r\n"))
            verb = line[:4].upper()
            default = {b"EHLO": self.ehlo, b"QUIT": b"221 bye\r\n" + CLOSE, b"DATA": b"354 go ahead\r\n"}
            reply = self.answer(verb, line)
            reply = default.get(verb, b"250 ok\r\n") if reply is None else reply
            if verb == b"RCPT":
                recipient = line.decode().split("<")[1].split(">")[0] if reply[:1] == b"2" else ""
            elif verb == b"RSET":
                recipient = ""
            elif verb == b"DATA" and reply[:3] == b"354":
                connection.sendall(reply)
                body = b""
                for piece in iter(lines.readline, b""):
                    if piece == b".\r\n":
                        break
                    body += piece
                else:
                    return  # the client went away mid-message: nothing is taken
                self.log.append((recipient, body))
                end = self.answer(b".", body)
                reply = (b"250 queued\r\n" if recipient else b"554 5.5.1 No valid recipients\r\n") if end is None else end
                recipient = ""
            connection.sendall(reply.removesuffix(CLOSE).removesuffix(RESET))
            if reply.endswith(RESET):
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if reply.endswith((CLOSE, RESET)):
                return

    def close(self) -> None:
        self.listener.close()


def test_a_garbled_login_challenge_is_a_login_problem_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "secret")
    relay = ScriptedRelay(lambda verb, line: b"334 abc\r\n" if verb == b"AUTH" else None,
                          ehlo=b"250-relay\r\n250 AUTH LOGIN\r\n")
    delivery = smtp_settings(tmp_path, relay.port, smtp_username="ana").delivery
    with pytest.raises(TransportUnavailable, match="login as 'ana' failed: the server's challenge"):
        check_connection(delivery)
    relay.close()


def test_a_password_beyond_ascii_is_a_login_problem_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "pässwort")  # smtplib's AUTH PLAIN and LOGIN send ASCII
    with fault_server(login=("ana", "pässwort")) as server:
        delivery = smtp_settings(tmp_path, server.port, smtp_username="ana").delivery
        with pytest.raises(TransportUnavailable, match="take only ASCII user names and passwords"):
            check_connection(delivery)


@PIPELINING
def test_closing_with_a_421_owed_for_the_last_message_does_not_raise(tmp_path: Path, pipelining: bool) -> None:
    with fault_server(pipelining=pipelining) as server:
        server.faults["r0@example.org"] = [("data", "421 4.3.2 Shutting down")]
        transport = SMTPTransport(smtp_settings(tmp_path, server.port).delivery)
        verdict = transport.begin("a@example.org", "r0@example.org", b"Subject: x\r\n\r\nbody\r\n")
        transport.close()  # reads the owed 421, which closes the connection
        with pytest.raises(TransientDeliveryError, match="421 4.3.2 Shutting down"):
            verdict()


@pytest.mark.parametrize(("sender", "recipient", "refused", "blank", "connections"), [
    ("a@example.org", "refused@example.org", "RCPT TO: 550 5.1.1 Refused", [("", b"")], 1),
    ("refused@example.org", "r1@example.org", "MAIL FROM: 451 4.7.1 Refused", [], 2),
], ids=["recipient-refused", "sender-refused"])
def test_a_relay_that_takes_data_after_a_refusal_never_delivers_an_empty_message(
        tmp_path: Path, sender: str, recipient: str, refused: str, blank: list[tuple[str, bytes]],
        connections: int) -> None:
    """RFC 2920 lets a pipelining relay answer 354 to DATA after refusing every recipient: an
    empty message ends that DATA, and with no recipient it goes nowhere. A broken relay that
    refuses MAIL yet takes RCPT and DATA would deliver that empty message to a real reader: the
    connection is dropped instead, which aborts it."""
    def answer(verb: bytes, line: bytes) -> bytes | None:
        if b"refused@" not in line:
            return None
        return b"550 5.1.1 Refused\r\n" if verb == b"RCPT" else b"451 4.7.1 Refused\r\n"

    relay = ScriptedRelay(answer)
    transport = SMTPTransport(smtp_settings(tmp_path, relay.port).delivery)
    raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    with pytest.raises(DeliveryError, match=refused):
        transport.send(sender, recipient, raw)
    transport.send("a@example.org", "r2@example.org", raw)
    transport.close()
    relay.close()
    assert relay.log == [*blank, ("r2@example.org", raw)]
    assert transport.connections == connections


@PIPELINING
def test_an_idle_connection_closed_with_a_421_is_reopened_for_the_next_message(tmp_path: Path, pipelining: bool) -> None:
    """Relays close connections idle too long with an unasked 421 (Postfix: "timeout exceeded");
    the sender reads it as the reply to its next MAIL. No command of that message was answered,
    so it goes out over a new connection at once, as after a silent close."""
    def answer(verb: bytes, line: bytes) -> bytes | None:
        first_connection = len(relay.commands) == 1
        mails = [c for c in relay.commands[-1] if c[:4].upper() == b"MAIL"]
        if verb == b"MAIL" and first_connection and len(mails) == 2:
            return b"421 4.4.2 relay.example: timeout exceeded\r\n" + CLOSE
        return None

    relay = ScriptedRelay(answer, ehlo=PIPELINING_EHLO if pipelining else b"250 relay\r\n")
    transport = SMTPTransport(smtp_settings(tmp_path, relay.port).delivery)
    raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    transport.send("a@example.org", "r1@example.org", raw)
    transport.send("a@example.org", "r2@example.org", raw)
    transport.close()
    relay.close()
    assert relay.log == [("r1@example.org", raw), ("r2@example.org", raw)]
    assert transport.connections == 2


def test_a_relay_that_does_not_know_ehlo_is_greeted_with_helo(tmp_path: Path) -> None:
    """RFC 5321 4.1.4: a client whose EHLO is refused falls back to HELO."""
    def answer(verb: bytes, line: bytes) -> bytes | None:
        if verb == b"MAIL" and not any(c[:4].upper() == b"HELO" for c in relay.commands[-1]):
            return b"503 5.5.1 Say HELO first\r\n"
        return None

    relay = ScriptedRelay(answer, ehlo=b"502 5.5.2 EHLO not implemented\r\n")
    transport = SMTPTransport(smtp_settings(tmp_path, relay.port).delivery)
    raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    transport.send("a@example.org", "r1@example.org", raw)
    transport.close()
    relay.close()
    assert relay.log == [("r1@example.org", raw)]


@PIPELINING
def test_a_250_that_came_before_the_relay_reset_the_connection_counts(tmp_path: Path, pipelining: bool) -> None:
    """The relay answers a message 250, then resets the connection before the sender, busy
    building the next copy, writes again. Over PIPELINING that write comes before the 250 is
    read: the write fails, and the 250 (already here) must still be read, not thrown away."""
    def answer(verb: bytes, line: bytes) -> bytes | None:
        return b"250 2.0.0 queued\r\n" + RESET if verb == b"." and len(relay.log) == 1 else None

    relay = ScriptedRelay(answer, ehlo=PIPELINING_EHLO if pipelining else b"250 relay\r\n")
    transport = SMTPTransport(smtp_settings(tmp_path, relay.port).delivery)
    raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    first = transport.begin("a@example.org", "r1@example.org", raw)
    time.sleep(0.2)  # the next copy is being built; the reset arrives meanwhile
    second = transport.begin("a@example.org", "r2@example.org", raw)
    first()  # sent: no AmbiguousDeliveryError
    second()
    transport.close()
    relay.close()
    assert relay.log == [("r1@example.org", raw), ("r2@example.org", raw)]
    assert transport.connections == 2


@pytest.mark.parametrize(("verb", "reply", "error", "said"), [
    (b"RCPT", b"550-5.1.1 The account\r\n550 5.1.1   does not exist\r\n", PermanentDeliveryError,
     "RCPT TO: 550 5.1.1 The account 5.1.1 does not exist"),
    (b"MAIL", b"421-4.3.2 Too busy,\r\n421 4.3.2 try later\r\n" + CLOSE, TransportUnavailable,
     "is not taking mail now (421 4.3.2 Too busy, 4.3.2 try later)"),
    (b".", b"399-not\r\n399 a   reply\r\n", AmbiguousDeliveryError,
     "unreadable reply after the end of DATA (399 'not a reply')"),
    (b"MAIL", b"553-5.7.1 Sender address\r\n553 5.7.1   rejected\r\n", TransportUnavailable,
     "refused the sender (553 5.7.1 Sender address 5.7.1 rejected)"),
], ids=["refused recipient", "421 on a new connection", "unreadable end of DATA", "refused sender"])
def test_a_reply_of_several_lines_is_reported_on_one(tmp_path: Path, verb: bytes, reply: bytes,
                                                     error: type[Exception], said: str) -> None:
    """What a relay says goes into the ledger's last error and the run's summary, one line each."""
    relay = ScriptedRelay(lambda asked, line: reply if asked == verb else None)
    transport = SMTPTransport(smtp_settings(tmp_path, relay.port).delivery)
    with pytest.raises(error) as raised:
        transport.begin("a@example.org", "r0@example.org", b"Subject: x\r\n\r\nbody\r\n")()
    transport.close()
    relay.close()
    assert said in str(raised.value) and "\n" not in str(raised.value)


@PIPELINING
def test_a_relay_that_answers_421_to_a_new_connection_pauses_the_run(tmp_path: Path, pipelining: bool) -> None:
    """A relay shedding load answers every new connection's MAIL with 421 and closes it: as when
    it cannot be reached, the run pauses, nothing is attempted, no backoff is burnt."""
    relay = ScriptedRelay(lambda verb, line: b"421 4.3.2 Too busy, try later\r\n" + CLOSE if verb == b"MAIL" else None,
                          ehlo=PIPELINING_EHLO if pipelining else b"250 relay\r\n")
    settings = smtp_settings(tmp_path, relay.port, batch_size=4)
    engine = db.connect(settings.database.url)
    add_audience(engine, 6)
    report = publish(settings, engine, latest=True)
    relay.close()
    assert report.ending is Ending.PAUSED and report.sent == 0
    assert "421 4.3.2 Too busy, try later" in report.why and "Nothing was lost" in report.why
    with Session(engine) as session:
        rows = ledger_reads.rows(session, report.issue_id or 0)
    assert {(r.status, r.attempts) for r in rows} == {("pending", 0)}
    assert len(relay.commands) == 1  # one connection tried, not one per reader
    engine.dispose()
