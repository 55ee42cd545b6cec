"""After the final dot of DATA, a lost connection or a timeout means "maybe delivered": the row
is `unknown`, never resent by itself; before the dot, the same loss is "try again later"."""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlmodel import Session

from pipeline import db, ledger_reads
from pipeline.errors import AmbiguousDeliveryError, TransientDeliveryError
from pipeline.publish import Ending, enqueue, publish
from pipeline.transports import SMTPTransport
from pipeline.worker import run_worker
from subscribers import consent
from subscribers.model import utcnow
from tests.conftest import CLI
from tests.smtp_faults import add_audience, fault_server, smtp_settings

# address -> (its faults, one per attempt; the status after the runs; copies the server keeps)
CASES = {
    "store-drop@example.org": ([("store-drop", "")], "unknown", 1),
    "store-hang@example.org": ([("store-hang", "")], "unknown", 1),
    "drop-after-dot@example.org": ([("drop", "")], "unknown", 0),
    # A reply to the final dot that is no reply (no code, or one that does not end a message):
    # the relay may hold the message, so it is not sent again by itself.
    "garbled-final@example.org": ([("data", "Hello? queued as 4XyZ")], "unknown", 0),
    "odd-final@example.org": ([("data", "354 go on")], "unknown", 0),
    "cut-mid-data@example.org": ([("cut", "")], "sent", 1),
    "twice-cut@example.org": ([("cut", ""), ("cut", "")], "sent", 1),
    **{f"r{code}-{stage}@example.org": ([(stage, f"{code} 4.0.0 {stage} later")], "sent", 1)
       for code in (421, 451, 452) for stage in ("rcpt", "command", "data")},
}


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelining"])
def test_each_fault_gives_each_recipient_the_right_number_of_copies(tmp_path: Path, pipelining: bool) -> None:
    with fault_server(pipelining=pipelining) as server:
        server.hang_seconds = 5.0
        settings = smtp_settings(tmp_path, server.port, batch_size=50, smtp_timeout=1)
        engine = db.connect(settings.database.url)
        fine = add_audience(engine, 3)
        with Session(engine) as session:
            for address in CASES:
                consent.add(session, address, "Fault Case")
        for address, (faults, _, _) in CASES.items():
            server.faults[address] = list(faults)

        first = publish(settings, engine, latest=True)
        # Several later runs with every retry due: unknown rows stay unknown, retries go out once.
        for hours in (2, 4, 6, 8):
            publish(settings, engine, first.issue_key, now=utcnow() + timedelta(hours=hours))

        got = Counter(r.rcpt_tos[0] for r in server.received)
        with Session(engine) as session:
            rows = {r.email: r for r in ledger_reads.rows(session, first.issue_id or 0)}
        for address, (_, status, copies) in CASES.items():
            assert (rows[address].status, got[address]) == (status, copies), address
        for address in ("store-drop@example.org", "drop-after-dot@example.org"):
            assert "maybe delivered" in (rows[address].last_error or ""), address
        assert "timed out" in (rows["store-hang@example.org"].last_error or "")
        assert all(got[p.email] == 1 for p in fine)
        assert first.unknown == 5 and first.ending is not Ending.FINISHED
        assert "queued as 4XyZ" in (rows["garbled-final@example.org"].last_error or "")

        # Resending the unknown ones is a decision the operator takes, and it is taken once.
        cli = CLI(settings.path, CliRunner())
        result = cli("sends", "retry", first.issue_key, "--unknown", "--yes")
        assert result.exit_code == 0, result.output
        got = Counter(r.rcpt_tos[0] for r in server.received)
        assert got["store-drop@example.org"] == 2 and got["store-hang@example.org"] == 2
        assert got["drop-after-dot@example.org"] == 1
        with Session(engine) as session:
            assert set(ledger_reads.counts(session, first.issue_id or 0).items()) >= {("unknown", 0), ("sending", 0)}
        engine.dispose()


def test_a_worker_records_an_ambiguous_reply_as_unknown_too(tmp_path: Path) -> None:
    with fault_server() as server:
        settings = smtp_settings(tmp_path, server.port, batch_size=5)
        engine = db.connect(settings.database.url)
        people = add_audience(engine, 6)
        server.faults[people[2].email] = [("store-drop", "")]
        report = enqueue(settings, engine, latest=True)
        for _ in range(3):
            run_worker(settings, engine, once=True, idle_seconds=0.1)
        got = Counter(r.rcpt_tos[0] for r in server.received)
        assert got[people[2].email] == 1 and all(got[p.email] == 1 for p in people)
        with Session(engine) as session:
            assert ledger_reads.counts(session, report.issue_id or 0)["unknown"] == 1
        engine.dispose()


def _rst_after(listener: socket.socket, keep: int) -> None:
    """A server that answers up to 354, reads `keep` bytes of the message, then resets."""
    connection, _ = listener.accept()
    with connection:
        reader = connection.makefile("rb")
        connection.sendall(b"220 fault ESMTP\r\n")
        for _ in range(4):  # EHLO, MAIL, RCPT, DATA
            line = reader.readline()
            if line.upper().startswith(b"EHLO"):
                connection.sendall(b"250 fault\r\n")
            elif line.upper().startswith(b"DATA"):
                connection.sendall(b"354 go on\r\n")
            else:
                connection.sendall(b"250 OK\r\n")
        reader.read(keep)
        # Linger 0: the close is a reset, so the client's writes fail mid-message.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_connection_lost_mid_message_is_transient(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=_rst_after, args=(listener, 64 * 1024), daemon=True)
        server.start()
        transport = SMTPTransport(smtp_settings(tmp_path, listener.getsockname()[1]).delivery)
        # Larger than any loopback socket buffers, so the reset arrives while it is being sent.
        raw = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 400_000
        with pytest.raises(TransientDeliveryError, match="during DATA") as caught:
            transport.send("a@example.org", "r@example.org", raw)
        assert not isinstance(caught.value, AmbiguousDeliveryError)
        server.join(5)
        transport.close()


def test_the_transport_tells_a_lost_reply_from_a_lost_message(tmp_path: Path) -> None:
    with fault_server() as server:
        server.hang_seconds = 3.0
        transport = SMTPTransport(smtp_settings(tmp_path, server.port, smtp_timeout=1).delivery)
        raw = b"Subject: x\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
        server.faults = {"a@example.org": [("store-drop", "")], "b@example.org": [("store-hang", "")],
                         "c@example.org": [("cut", "")]}
        with pytest.raises(AmbiguousDeliveryError, match="connection lost"):
            transport.send("s@example.org", "a@example.org", raw)
        with pytest.raises(AmbiguousDeliveryError, match="timed out"):
            transport.send("s@example.org", "b@example.org", raw)
        with pytest.raises(TransientDeliveryError) as cut:
            transport.send("s@example.org", "c@example.org", raw)
        assert not isinstance(cut.value, AmbiguousDeliveryError)
        transport.send("s@example.org", "d@example.org", raw)  # reconnects and carries on
        transport.close()
        assert [r.rcpt_tos[0] for r in server.received] == ["a@example.org", "b@example.org", "d@example.org"]
