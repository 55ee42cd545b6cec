"""A misbehaving SMTP server: every reply is classified, then retried or failed as promised."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pipeline import db, ledger_reads
from pipeline.config import DeliverySettings
from pipeline.errors import PermanentDeliveryError, TransientDeliveryError
from pipeline.issues import requeue
from pipeline.publish import Ending, publish
from pipeline.transports import SMTPTransport, classify
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


def _lenient_relay(listener: socket.socket, log: list[tuple[str, bytes]]) -> None:
    """A pipelining relay that answers 354 to DATA even when it refused every recipient, which
    RFC 2920 allows; it refuses gone@example.org. `log`: (recipient or "", message) per DATA."""
    connection, _ = listener.accept()
    with connection, connection.makefile("rb") as lines:
        connection.sendall(b"220 relay\r\n")
        recipient = ""
        for line in lines:
            verb = line[:4].upper()
            if verb == b"EHLO":
                connection.sendall(b"250-relay\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT":
                gone = b"gone@" in line
                recipient = "" if gone else line.decode().split("<")[1].split(">")[0]
                connection.sendall(b"550 5.1.1 No such user\r\n" if gone else b"250 ok\r\n")
            elif verb == b"DATA":
                connection.sendall(b"354 go ahead\r\n")
                body = b"".join(iter(lines.readline, b".\r\n"))
                log.append((recipient, body))
                connection.sendall(b"250 queued\r\n" if recipient else b"554 5.5.1 No valid recipients\r\n")
            elif verb == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:  # MAIL, RSET
                recipient = "" if verb == b"RSET" else recipient
                connection.sendall(b"250 ok\r\n")


def test_a_relay_that_takes_data_after_refusing_the_recipient_gets_an_empty_message(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        log: list[tuple[str, bytes]] = []
        relay = threading.Thread(target=_lenient_relay, args=(listener, log), daemon=True)
        relay.start()
        transport = SMTPTransport(smtp_settings(tmp_path, listener.getsockname()[1]).delivery)
        raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
        with pytest.raises(PermanentDeliveryError, match="RCPT TO: 550 5.1.1 No such user"):
            transport.send("a@example.org", "gone@example.org", raw)
        transport.send("a@example.org", "r1@example.org", raw)
        transport.close()
        relay.join(5)
    # The refused recipient's DATA was ended at once, empty; the next message went through whole.
    assert log == [("", b""), ("r1@example.org", raw)]
    assert transport.connections == 1
