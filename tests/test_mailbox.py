"""The bounce mailbox sources: Maildir and mbox on disk, and a real IMAP server (Debian's dovecot)."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import db, feedback
from pipeline.bounces import classify, message_key
from pipeline.config import load_settings
from pipeline.feedback import process_mailbox
from pipeline.mailbox import PROCESSED_KEYWORD, MailboxError, open_source
from tests.test_bounces import (
    FIXTURES,
    PEOPLE,
    UNSUBSCRIBE_TO,
    bounce_config,
    fixture_audience,
    fixture_mbox,
    statuses,
)

DOVECOT = Path("/usr/sbin/dovecot")
PASSWORD_ENV = "NEWSLETTER_IMAP_PASSWORD"


@dataclass
class IMAPServer:
    port: int
    user: str
    password: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def dovecot() -> Iterator[IMAPServer]:
    """A dovecot of its own: generated config in a temporary folder, a passwd-file user, a
    loopback port, Maildir storage there; no system service is touched."""
    if not DOVECOT.exists():
        pytest.skip(f"{DOVECOT} is not installed (Debian package dovecot-imapd; .ci/run installs it)")
    root = Path(tempfile.mkdtemp(prefix="newsletter-dovecot-"))
    root.chmod(0o755)  # the mail processes run as an unprivileged user and must reach it
    (root / "mail").mkdir()
    if os.getuid() == 0:  # dovecot refuses to access mail as root: use its own user
        account = pwd.getpwnam("dovecot")
        uid, gid = account.pw_uid, account.pw_gid
        shutil.chown(root / "mail", uid, gid)
    else:
        uid, gid = os.getuid(), os.getgid()
    server = IMAPServer(_free_port(), "bounces", "s3cret-for-tests")
    (root / "passwd").write_text(f"{server.user}:{{PLAIN}}{server.password}::::::\n")
    (root / "dovecot.conf").write_text(f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
# The system user dovecot's own mail processes run as has a uid below the default floor (500).
first_valid_uid = {min(uid, 500)}
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {server.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
""")
    process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(root / "dovecot.conf")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.skip(f"dovecot did not start: {(output + log)[-500:]}")
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


def imap_client(server: IMAPServer) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port, timeout=10)
    client.login(server.user, server.password)
    client.select("INBOX")
    return client


def test_an_imap_folder_is_processed_once(tmp_path: Path, dovecot: IMAPServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, dovecot.password)
    settings = load_settings(bounce_config(tmp_path, mailbox=f"imap://127.0.0.1:{dovecot.port}/INBOX",
                                           imap_username=dovecot.user))
    fixture_audience(settings)
    client = imap_client(dovecot)
    for path in sorted(FIXTURES.glob("*.eml")):
        status, _ = client.append("INBOX", None, None, path.read_bytes().replace(b"\n", b"\r\n"))
        assert status == "OK"
    engine = db.connect(settings.database.url)

    dry = process_mailbox(settings, engine, dry_run=True)
    assert len({o.key for o in dry.outcomes}) == 13
    assert client.uid("SEARCH", "KEYWORD", PROCESSED_KEYWORD)[1] == [b""]  # nothing marked
    first = process_mailbox(settings, engine)
    second = process_mailbox(settings, engine)

    assert len({o.key for o in first.outcomes}) == 13
    assert second.outcomes == [] and second.already == 0  # flagged: not even read again
    assert statuses(settings) == PEOPLE
    client.select("INBOX")
    flagged = client.uid("SEARCH", "KEYWORD", PROCESSED_KEYWORD)[1][0].split()
    seen = client.uid("SEARCH", "SEEN")[1][0].split()
    assert len(flagged) == 13 and len(seen) == 13
    client.logout()
    engine.dispose()


def test_a_wrong_imap_password_is_a_clear_error(tmp_path: Path, dovecot: IMAPServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    settings = load_settings(bounce_config(tmp_path, mailbox=f"imap://127.0.0.1:{dovecot.port}/INBOX",
                                           imap_username=dovecot.user))
    with pytest.raises(MailboxError, match=f"IMAP imap://127.0.0.1:{dovecot.port}/INBOX: .*"):
        open_source(settings.bounces)


def test_sources_refuse_what_they_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(bounce_config(tmp_path, imap_username="someone"))
    with pytest.raises(MailboxError, match="no such Maildir folder or mbox file"):
        open_source(settings.bounces)
    (tmp_path / "Maildir").mkdir()
    with pytest.raises(MailboxError, match="not a Maildir"):
        open_source(settings.bounces)
    monkeypatch.setenv(PASSWORD_ENV, "x")
    settings = load_settings(bounce_config(tmp_path, imap_username="someone"))
    with pytest.raises(MailboxError, match="only for a local port; use imaps://mail.example.org"):
        open_source(settings.bounces, "imap://mail.example.org/INBOX")


def test_the_cli_explains_when_bounces_are_off(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    config = bounce_config(tmp_path, enabled=False, mailbox="")
    result = CliRunner().invoke(cli, ["--config", str(config), "bounces", "process"])
    assert result.exit_code == 1 and "set enabled = true and mailbox" in result.output


def test_the_key_read_from_the_headers_alone_is_the_key_of_the_finding() -> None:
    for path in sorted(FIXTURES.glob("*.eml")):
        raw = path.read_bytes()
        assert message_key(raw) == classify(raw, UNSUBSCRIBE_TO).key, path.name


def test_a_rerun_classifies_only_the_messages_not_processed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An mbox is never rewritten: every run sees every message ever received again.
    settings, box = fixture_mbox(tmp_path)
    engine = db.connect(settings.database.url)
    process_mailbox(settings, engine)
    classified: list[bytes] = []
    real = feedback.classify

    def counting(raw: bytes, unsubscribe_address: str = "") -> object:
        classified.append(raw)
        return real(raw, unsubscribe_address)

    monkeypatch.setattr(feedback, "classify", counting)
    newer = b"Message-ID: <a-later-report@mx.example.net>\n" + (FIXTURES / "postfix.eml").read_bytes()
    box.add(newer)
    box.flush()
    box.close()

    second = process_mailbox(settings, engine)

    assert second.already == 13 and len(second.outcomes) == 1
    assert len(classified) == 1  # the new one; what was processed before is skipped unread
    engine.dispose()
