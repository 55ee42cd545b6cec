"""Sending through a real Postfix (Debian's package): PIPELINING as a production relay does it.

Each test starts a Postfix of its own: a generated configuration in a temporary folder, a
loopback port, and a relayhost that is this suite's SMTP server (tests/smtp_faults.py), so what
Postfix passes on can be read back. No system service is touched. With
`reject_unauth_pipelining` Postfix refuses a client that sends ahead where SMTP forbids it (the
message before the 354 to DATA, say) and logs "improper command pipelining". Postfix takes
MAIL and RCPT sent ahead even when it does not offer PIPELINING, so that the sender waits for
each reply then is shown by tests/test_faults.py, whose server records it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from pipeline import db, ledger_reads
from pipeline.publish import Ending, publish
from subscribers import consent
from tests.smtp_faults import FaultServer, _free_port, add_audience, fault_server, smtp_settings

POSTFIX = Path("/usr/sbin/postfix")
GONE = "gone@example.org"  # Postfix itself refuses this recipient


class Postfix:
    """A running private Postfix on `port`, its log in `log`."""

    def __init__(self, root: Path, port: int, offers_pipelining: bool) -> None:
        self.root, self.port, self.offers_pipelining = root, port, offers_pipelining
        self.log = root / "maillog"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _postfix(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Postfix writes its errors to stderr only on a terminal; maillog_file has them otherwise.
    return subprocess.run([str(POSTFIX), "-c", str(root / "conf"), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(params=[True, False], ids=["offers-pipelining", "no-pipelining"])
def postfix(request: pytest.FixtureRequest) -> Iterator[tuple[Postfix, FaultServer]]:
    if not POSTFIX.exists():
        pytest.skip(f"{POSTFIX} is not installed (Debian package postfix; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (its daemons change to the postfix user)")
    offers_pipelining: bool = request.param
    root = Path(tempfile.mkdtemp(prefix="newsletter-postfix-"))
    root.chmod(0o755)  # Postfix's daemons run as the postfix user and must reach it
    (root / "conf").mkdir()
    (root / "queue").mkdir()
    (root / "data").mkdir()
    shutil.chown(root / "data", "postfix")
    port = _free_port()
    with fault_server() as sink:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": root / "queue",
            "data_directory": root / "data",
            "maillog_file": root / "maillog",
            "maillog_file_prefixes": root,
            "myhostname": "relay.example.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{sink.port}",
            "alias_maps": "",
            "alias_database": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": f"check_recipient_access inline:{{{{ {GONE}=550 5.1.1 No such user }}}}",
            "smtpd_data_restrictions": "reject_unauth_pipelining",
            "smtpd_discard_ehlo_keywords": "" if offers_pipelining else "pipelining",
        }
        (root / "conf" / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        # The package's services, but its SMTP listener on our port instead of port 25.
        master = Path("/etc/postfix/master.cf").read_text()
        listener = "\nsmtp      inet  n       -       y       -       -       smtpd"
        assert listener in master, "/etc/postfix/master.cf has no smtpd listener line to move"
        (root / "conf" / "master.cf").write_text(
            master.replace(listener, f"\n127.0.0.1:{port} inet n - n - - smtpd", 1))
        started = _postfix(root, "start")
        running = Postfix(root, port, offers_pipelining)
        try:
            if started.returncode != 0:
                pytest.fail(f"postfix did not start: {(started.stderr + running.log_text())[-500:]}")
            yield running, sink
        finally:
            _postfix(root, "stop")
            shutil.rmtree(root, ignore_errors=True)


def test_a_send_through_postfix_reaches_every_reader_once(tmp_path: Path, postfix: tuple[Postfix, FaultServer]) -> None:
    relay, sink = postfix
    settings = smtp_settings(tmp_path, relay.port, batch_size=10)
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        consent.add(session, GONE, "Gone Reader")  # first: messages follow it on its connection
    readers = add_audience(engine, 24)

    report = publish(settings, engine, latest=True)

    # Postfix took every message but the one it refused, and refused it for good.
    assert report.sent == 24 and report.failed == 1 and report.bounced == 1, report
    assert report.ending is Ending.FINISHED
    with Session(engine) as session:
        rows = {r.email: r for r in ledger_reads.rows(session, report.issue_id or 0)}
    assert "RCPT TO: 550 5.1.1 <gone@example.org>: Recipient address rejected: No such user" in (
        rows[GONE].last_error or "")
    # ... and passed each on to the relayhost: one copy per reader, the one the ledger names.
    deadline = time.monotonic() + 60
    while len(sink.received) < 24 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(r.rcpt_tos[0] for r in sink.received) == sorted(p.email for p in readers)
    for received in sink.received:
        row = rows[received.rcpt_tos[0]]
        assert received.message["Message-ID"] == row.message_id
        assert received.message["Subject"]
    log = relay.log_text()
    assert "improper command pipelining" not in log
    # One connection for the whole run: the refused recipient did not put it out of step.
    assert log.count("]: connect from ") == 1, log
    engine.dispose()
