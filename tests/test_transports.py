"""Transports: the outbox folder, memory, and SMTP over STARTTLS and implicit TLS."""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pipeline.errors import TransientDeliveryError, TransportUnavailable
from pipeline.transports import MemoryTransport, OutboxTransport, SMTPTransport, make_transport
from tests.conftest import Received, SMTPServer
from tests.smtp_faults import FaultHandler, FaultServer, _free_port, smtp_settings

RAW = b"From: a@example.org\r\nTo: b@example.org\r\nMessage-ID: <abc.1@essays.example.org>\r\n\r\nHi\r\n"


def test_outbox_names_files_by_issue_and_recipient_and_a_retry_writes_nothing(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "outbox", "weekly-2025-W05")
    outbox.send("a@example.org", "b@example.org", RAW)
    # A retry of the same delivery (same Message-ID; the Date of a rebuilt copy differs).
    outbox.send("a@example.org", "b@example.org", RAW.replace(b"Hi", b"Hi again"))
    outbox.send("a@example.org", "c@example.org", RAW.replace(b"abc.1", b"abc.2"))
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == ["weekly-2025-W05-b@example.org.eml", "weekly-2025-W05-c@example.org.eml"]  # no .tmp left
    assert (tmp_path / "outbox" / files[0]).read_bytes() == RAW


def test_outbox_never_overwrites_a_file_of_another_message(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path, "confirm")
    (tmp_path / "confirm-b@example.org.eml").write_bytes(b"written by hand\r\n")
    for n in range(1, 4):  # three confirmation emails to one address, each its own Message-ID
        outbox.send("a@example.org", "b@example.org", RAW.replace(b"abc.1", f"abc.{n}".encode()))
    outbox.send("a@example.org", "b@example.org", RAW.replace(b"abc.1", b"abc.2"))  # a retry of the 2nd
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confirm-b@example.org-2.eml", "confirm-b@example.org-3.eml", "confirm-b@example.org-4.eml",
        "confirm-b@example.org.eml"]
    assert (tmp_path / "confirm-b@example.org.eml").read_bytes() == b"written by hand\r\n"
    assert b"abc.3" in (tmp_path / "confirm-b@example.org-4.eml").read_bytes()


@pytest.mark.parametrize("label, to, name", [
    ("weekly/2025 W05", "../../etc/passwd", "weekly_2025_W05-.._.._etc_passwd.eml"),
    ("", "Zoë <z@example.org>", "Zo_z@example.org.eml"),
    ("confirm", "a:b\\c*?@example.org", "confirm-a_b_c_@example.org.eml"),
])
def test_outbox_file_names_are_safe(tmp_path: Path, label: str, to: str, name: str) -> None:
    OutboxTransport(tmp_path, label).send("a@example.org", to, RAW)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_an_outbox_that_cannot_be_written_pauses(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TransportUnavailable, match="outbox"):
        OutboxTransport(blocker / "outbox").send("a@example.org", "b@example.org", RAW)


def test_make_transport_follows_the_config(tmp_path: Path, settings: Any) -> None:
    assert isinstance(make_transport(settings), OutboxTransport)
    assert isinstance(make_transport(smtp_settings(tmp_path, 2525)), SMTPTransport)


def test_memory_transport_raises_planned_errors_once() -> None:
    memory = MemoryTransport(fail={"b@example.org": [TransientDeliveryError("451 later", 451)]})
    with pytest.raises(TransientDeliveryError):
        memory.send("a@example.org", "b@example.org", RAW)
    memory.send("a@example.org", "b@example.org", RAW)
    assert [s.to for s in memory.sent] == ["b@example.org"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path], request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    """An SMTP server with the test certificate, which the client is told to trust."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = FaultServer(port=_free_port())
    if request.param == "starttls":
        options = dict(tls_context=context, require_starttls=True)
    else:
        options = dict(ssl_context=context)
    controller = Controller(FaultHandler(server), hostname="127.0.0.1", port=server.port,
                            server_hostname="127.0.0.1", **options)
    controller.start()
    yield server
    controller.stop()


@pytest.mark.parametrize("tls_server", ["starttls", "tls"], indirect=True)
def test_smtp_over_tls(tls_server: FaultServer, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["tls_server"]
    transport = SMTPTransport(smtp_settings(tmp_path, tls_server.port, smtp_tls=mode).delivery)
    for n in range(3):
        transport.send("a@example.org", f"r{n}@example.org", RAW)
    transport.close()
    assert transport.connections == 1
    assert [r.rcpt_tos for r in tls_server.received] == [[f"r{n}@example.org"] for n in range(3)]
    assert all(isinstance(r, Received) for r in tls_server.received)


@pytest.mark.parametrize("tls_server", ["starttls"], indirect=True)
def test_plain_smtp_to_a_server_demanding_starttls_pauses(tls_server: FaultServer, tmp_path: Path) -> None:
    # A setup problem, not this recipient's: pause instead of failing every recipient.
    transport = SMTPTransport(smtp_settings(tmp_path, tls_server.port, smtp_tls="none").delivery)
    with pytest.raises(TransportUnavailable, match="530"):
        transport.send("a@example.org", "b@example.org", RAW)
    assert not tls_server.received


@pytest.mark.parametrize("raw", [
    b".starts with a dot\r\nText\r\n.\r\n..two dots\r\n. and a space\r\nend\r\n",
    b"Subject: x\r\n\r\n.\r\nno final line break.",
    b"Subject: x\r\n\r\na bare LF\n.dot after it\r\n",
])
def test_lines_starting_with_a_dot_arrive_as_smtplib_sends_them(raw: bytes, smtp_server: SMTPServer,
                                                                 tmp_path: Path) -> None:
    # SMTPTransport dot-stuffs the message itself (faster than smtplib's regex): the server must
    # receive exactly what smtplib.sendmail delivers for the same bytes.
    with smtplib.SMTP(smtp_server.host, smtp_server.port) as smtp:
        smtp.sendmail("a@example.org", ["ref@example.org"], raw)
    transport = SMTPTransport(smtp_settings(tmp_path, smtp_server.port).delivery)
    transport.send("a@example.org", "b@example.org", raw)
    transport.close()
    reference, ours = smtp_server.received
    assert ours.raw == reference.raw
    assert b"dot" in ours.raw or b"no final" in ours.raw
