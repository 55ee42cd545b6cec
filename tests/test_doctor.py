"""`newsletter doctor` against real servers on loopback: a DNS server (dnslib) holding the
records each test publishes, and an SMTP server (aiosmtpd) that asks for a login."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from dnslib import MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from sqlmodel import Session

from pipeline import db
from pipeline.config import Settings, load_settings
from pipeline.copies import personal_copy
from pipeline.dns_records import Records
from pipeline.doctor import (
    MUST,
    SHOULD,
    Check,
    diagnose,
    dkim_checks,
    dmarc_checks,
    failed,
    lint_check,
    must_checks,
    return_path_check,
    secret_checks,
    smtp_checks,
    spf_checks,
    web_check,
)
from pipeline.issues import compose
from pipeline.signing import dkim_record
from tests.conftest import CLI, write_config
from tests.digest_fixtures import add_essays, digest_essays
from tests.smtp_faults import fault_server

# The test SMTP server asks for a login over plain TCP on loopback, which aiosmtpd warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
DOMAIN = "essays.example.org"  # the sender domain of the test config
SELECTOR = "nl2026"


class Zone(BaseResolver):  # type: ignore[misc]
    """An authoritative server for whatever the test puts in `records`: {(name, type): [rdata]}."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}

    def add(self, name: str, kind: str, *values: str | tuple[int, str]) -> None:
        for value in values:
            if kind == "TXT":  # strings of at most 255 bytes, as a long DKIM key is published
                assert isinstance(value, str)
                rdata: Any = TXT([value[i:i + 255] for i in range(0, len(value), 255)])
            elif kind == "MX":
                assert isinstance(value, tuple)
                rdata = MX(value[1], value[0])
            else:
                rdata = A(value)
            self.records.setdefault((name.lower().rstrip("."), kind), []).append(rdata)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        kind = QTYPE[request.q.qtype]
        if not any(n == name for n, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        for rdata in self.records.get((name, kind), []):
            reply.add_answer(RR(request.q.qname, getattr(QTYPE, kind), rdata=rdata, ttl=60))
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, str]]:
    """(the zone, "127.0.0.1:PORT"): a DNS server on loopback, UDP and TCP on one port."""
    resolver = Zone()
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    servers: list[DNSServer] = []
    for _try in range(50):  # a port free for UDP may be taken for TCP: try another
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        udp = DNSServer(resolver, port=port, address="127.0.0.1", tcp=False, logger=quiet)
        try:
            servers = [udp, DNSServer(resolver, port=port, address="127.0.0.1", tcp=True, logger=quiet)]
            break
        except OSError:
            udp.server.server_close()
    assert servers, "no loopback port was free for both UDP and TCP"
    for server in servers:
        server.start_thread()
    yield resolver, f"127.0.0.1:{port}"
    for server in servers:
        server.stop()


@pytest.fixture
def records(zone: tuple[Zone, str]) -> Records:
    return Records(zone[1], timeout=3)


@pytest.fixture
def dkim_key(tmp_path: Path) -> Path:
    path = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True)
    return path


def settings_with(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    sections.setdefault("web", {})["base_url"] = "https://letters.example.org"
    return load_settings(write_config(tmp_path, **sections))


def codes(checks: list[Check]) -> dict[str, bool]:
    return {c.code: c.ok for c in checks}


# The key that signs the tokens -------------------------------------------------------------

def test_secret_key_from_the_environment_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k" * 40)
    assert codes(secret_checks(tmp_path)) == {"secret-key": True, "secret-backup": True}


def test_secret_key_missing_fails_and_doctor_does_not_create_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    [check] = secret_checks(tmp_path)
    assert (check.code, check.level, check.ok) == ("secret-key", MUST, False)
    assert "newsletter init" in check.fix and not (tmp_path / ".secret_key").exists()


def test_secret_key_file_passes_and_asks_for_a_backup_and_a_private_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    key = tmp_path / ".secret_key"
    key.write_text("s" * 40)
    key.chmod(0o644)
    checks = secret_checks(tmp_path)
    assert codes(checks) == {"secret-key": True, "secret-mode": False, "secret-backup": False}
    assert all(c.level == SHOULD for c in checks if not c.ok)
    key.chmod(0o600)
    assert "secret-mode" not in codes(secret_checks(tmp_path))


# web.base_url --------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "ok"), [
    ("https://letters.example.org", True),
    ("http://letters.example.org", False),
    ("https://localhost:8025", False),
    ("https://127.0.0.1", False),
    ("https://10.1.2.3", False),
    ("https://[::1]:8443", False),
])
def test_base_url_must_be_public_https(url: str, ok: bool) -> None:
    check = web_check(url)
    assert (check.level, check.ok) == (MUST, ok), check


# SMTP: connect and log in, send nothing ---------------------------------------------------

@pytest.fixture
def auth_smtp() -> Iterator[tuple[int, list[bytes]]]:
    """An aiosmtpd server on loopback that wants the login ana / right-password."""
    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
            received.append(envelope.original_content)
            return "250 OK"

    def authenticate(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
        good = isinstance(data, LoginPassword) and (data.login, data.password) == (b"ana", b"right-password")
        return AuthResult(success=good, handled=False)  # handled=True: no reply at all

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticate,
                            auth_require_tls=False, auth_required=True)
    controller.start()
    yield port, received
    controller.stop()


def smtp_settings(tmp_path: Path, port: int, username: str = "ana") -> Settings:
    return settings_with(tmp_path, delivery={"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port,
                                             "smtp_tls": "none", "smtp_username": username, "smtp_timeout": 5})


def test_smtp_login_accepted_and_no_mail_sent(tmp_path: Path, auth_smtp: tuple[int, list[bytes]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "right-password")
    checks = smtp_checks(smtp_settings(tmp_path, auth_smtp[0]))
    assert codes(checks) == {"transport": True, "smtp-login": True}
    assert "does not offer PIPELINING: four round trips a message" in checks[-1].message
    assert auth_smtp[1] == []


@pytest.mark.parametrize(("allowed", "says"), [
    (True, "it offers PIPELINING: one round trip a message"),
    (False, "it offers PIPELINING, turned off by delivery.smtp_pipelining: four round trips a message")])
def test_doctor_says_whether_the_relay_takes_a_pipelined_envelope(tmp_path: Path, allowed: bool, says: str) -> None:
    with fault_server(pipelining=True) as server:
        settings = settings_with(tmp_path, delivery={
            "transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_tls": "none",
            "smtp_timeout": 5, "smtp_pipelining": allowed})
        check = smtp_checks(settings)[-1]
    assert check.ok and says in check.message and server.received == []


def test_smtp_login_refused_fails(tmp_path: Path, auth_smtp: tuple[int, list[bytes]],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "wrong")
    check = smtp_checks(smtp_settings(tmp_path, auth_smtp[0]))[-1]
    assert (check.code, check.ok) == ("smtp-login", False) and "refused" in check.message


def test_smtp_without_password_or_server_or_transport_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SMTP_PASSWORD", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert codes(smtp_checks(smtp_settings(tmp_path, closed_port))) == {"transport": True, "smtp-login": False}
    check = smtp_checks(smtp_settings(tmp_path, closed_port, username=""))[-1]
    assert not check.ok and "cannot connect" in check.message
    assert codes(smtp_checks(settings_with(tmp_path))) == {"transport": False}


# DKIM ----------------------------------------------------------------------------------------

def test_dkim_record_published_passes_and_verifies_a_signed_message(
    tmp_path: Path, dkim_key: Path, zone: tuple[Zone, str], records: Records
) -> None:
    settings = settings_with(tmp_path, delivery={"dkim_key": str(dkim_key), "dkim_selector": SELECTOR})
    name, value = dkim_record(settings)
    assert name == f"{SELECTOR}._domainkey.{DOMAIN}" and value.startswith("v=DKIM1; k=rsa; p=MII")
    before = dkim_checks(settings, records)
    assert codes(before) == {"dkim-key": True, "dkim-dns": False}
    assert f'{name} "{value}"' in before[1].fix  # the exact record to publish
    zone[0].add(name, "TXT", value)
    assert codes(dkim_checks(settings, records)) == {"dkim-key": True, "dkim-dns": True}
    # The record printed is the one a receiver verifies the newsletter's signature with.
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        add_essays(session, *digest_essays(1))
        issue = compose(session, settings, key="dkim")
        session.commit()
        raw = personal_copy(session, settings, "", issue, None)
    engine.dispose()
    assert dkim.verify(raw, dnsfunc=lambda qname, timeout=5: "".join(records.txt(qname.decode().rstrip("."))).encode())


def test_dkim_other_key_published_or_unreadable_key_fails(
    tmp_path: Path, dkim_key: Path, zone: tuple[Zone, str], records: Records
) -> None:
    settings = settings_with(tmp_path, delivery={"dkim_key": str(dkim_key), "dkim_selector": SELECTOR})
    zone[0].add(f"{SELECTOR}._domainkey.{DOMAIN}", "TXT", "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAother")
    other = dkim_checks(settings, records)[1]
    assert (other.ok, "another key" in other.message) == (False, True)
    dkim_key.write_text("not a key")
    [bad] = dkim_checks(settings, records)
    assert (bad.code, bad.level, bad.ok) == ("dkim-key", MUST, False)


def test_no_dkim_key_is_a_warning(tmp_path: Path, records: Records) -> None:
    [check] = dkim_checks(settings_with(tmp_path), records)
    assert (check.level, check.ok) == (SHOULD, False)


# SPF -----------------------------------------------------------------------------------------

RELAY = {"delivery": {"transport": "smtp", "smtp_host": "relay.mailer.example"}}


@pytest.mark.parametrize(("spf", "extra", "ok"), [
    ("v=spf1 ip4:192.0.2.0/24 -all", {}, True),
    ("v=spf1 include:spf.mailer.example -all", {"spf.mailer.example": "v=spf1 ip4:192.0.2.25 ~all"}, True),
    ("v=spf1 a:relay.mailer.example -all", {}, True),
    ("v=spf1 mx -all", {}, False),  # the domain's MX is not the relay
    ("v=spf1 redirect=_spf.mailer.example", {"_spf.mailer.example": "v=spf1 ip4:192.0.2.25 -all"}, True),
    ("v=spf1 ip4:198.51.100.7 ~all", {}, False),
    ("v=spf1 -ip4:192.0.2.25 +all", {}, False),
    ("v=spf1 " + " ".join(f"include:i{n}.mailer.example" for n in range(11)) + " -all",
     {f"i{n}.mailer.example": "v=spf1 -all" for n in range(11)}, False),
])
def test_spf_must_pass_the_relay(tmp_path: Path, zone: tuple[Zone, str], records: Records,
                                 spf: str, extra: dict[str, str], ok: bool) -> None:
    zone[0].add(DOMAIN, "TXT", spf, "google-site-verification=abc")
    zone[0].add(DOMAIN, "MX", (10, "mx.example.org"))
    zone[0].add("mx.example.org", "A", "203.0.113.5")
    zone[0].add("relay.mailer.example", "A", "192.0.2.25")
    for name, text in extra.items():
        zone[0].add(name, "TXT", text)
    checks = spf_checks(settings_with(tmp_path, **RELAY), records)
    assert codes(checks) == {"spf": True, "spf-relay": ok}, checks


def test_spf_missing_or_doubled_fails(tmp_path: Path, zone: tuple[Zone, str], records: Records) -> None:
    settings = settings_with(tmp_path, **RELAY)
    assert codes(spf_checks(settings, records)) == {"spf": False}
    zone[0].add(DOMAIN, "TXT", "v=spf1 -all", "v=spf1 ip4:192.0.2.25 -all")
    [check] = spf_checks(settings, records)
    assert not check.ok and "2 SPF records" in check.message


# DMARC and the return path -------------------------------------------------------------------

def test_dmarc_present_and_aligned_when_dkim_or_spf_passes(tmp_path: Path, zone: tuple[Zone, str], records: Records) -> None:
    settings = settings_with(tmp_path)
    missing = dmarc_checks(settings, records, spf_ok=True, dkim_ok=True)
    assert codes(missing) == {"dmarc": False} and f"_dmarc.{DOMAIN}" in missing[0].fix
    zone[0].add("_dmarc.example.org", "TXT", "v=DMARC1; p=quarantine; rua=mailto:d@example.org")  # the parent's
    assert codes(dmarc_checks(settings, records, spf_ok=False, dkim_ok=True)) == {"dmarc": True, "dmarc-aligned": True}
    assert codes(dmarc_checks(settings, records, spf_ok=True, dkim_ok=False)) == {"dmarc": True, "dmarc-aligned": True}
    assert codes(dmarc_checks(settings, records, spf_ok=False, dkim_ok=False)) == {"dmarc": True, "dmarc-aligned": False}


def test_dmarc_without_a_policy_fails(tmp_path: Path, zone: tuple[Zone, str], records: Records) -> None:
    zone[0].add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; rua=mailto:d@example.org")
    assert codes(dmarc_checks(settings_with(tmp_path), records, True, True)) == {"dmarc": False}


def test_return_path_needs_an_mx(tmp_path: Path, zone: tuple[Zone, str], records: Records) -> None:
    settings = settings_with(tmp_path)
    assert codes(return_path_check(settings, records)) == {"return-path-mx": False}
    zone[0].add(DOMAIN, "MX", (10, "mx.example.org"))
    assert codes(return_path_check(settings, records)) == {"return-path-mx": True}


def test_a_dns_server_that_does_not_answer_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        checks = diagnose(settings_with(tmp_path), lambda: db.connect(f"sqlite:///{tmp_path}/x.db"),
                          Records(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5))
    spf = next(c for c in checks if c.code == "spf")
    assert not spf.ok and "DNS lookup" in spf.message


# The latest issue ----------------------------------------------------------------------------

def test_lint_check_on_the_latest_issue(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    engine = db.connect(settings.database.url)
    none_yet = lint_check(settings, lambda: engine, lambda raw, s: [])
    assert (none_yet.level, none_yet.ok) == (SHOULD, False)
    with Session(engine) as session:
        add_essays(session, *digest_essays(2))
        compose(session, settings, key="lint-me")
        session.commit()
    assert lint_check(settings, lambda: engine, must_checks).ok
    plain = load_settings(write_config(tmp_path))  # web.base_url http://127.0.0.1: links fail H11
    check = lint_check(plain, lambda: engine, must_checks)
    assert (check.level, check.ok) == (MUST, False) and "H11" in check.message
    engine.dispose()


def test_a_database_that_is_no_database_fails_and_a_missing_one_is_left_missing(tmp_path: Path) -> None:
    # The only finding used to be the lint's "compose an issue", and doctor made a new
    # newsletter.db where there was none, though it promises to change nothing.
    settings = settings_with(tmp_path)
    path = tmp_path / "newsletter.db"
    path.unlink(missing_ok=True)
    checks = diagnose(settings, lambda: db.connect(settings.database.url), Records("127.0.0.1:9"))
    missing = next(c for c in checks if c.code == "database")
    assert (missing.level, missing.ok) == (SHOULD, False) and "no database yet" in missing.message
    assert not path.exists()
    path.write_bytes(b"\x00not a database at all\x7f" * 100)
    checks = diagnose(settings, lambda: db.connect(settings.database.url), Records("127.0.0.1:9"))
    broken = next(c for c in checks if c.code == "database")
    assert (broken.level, broken.ok) == (MUST, False) and broken in failed(checks)
    assert "file is not a database" in broken.message and "lint" not in {c.code for c in checks}


# The command ---------------------------------------------------------------------------------

def publish_everything(zone: Zone, settings: Settings) -> None:
    name, value = dkim_record(settings)
    zone.add(name, "TXT", value)
    zone.add(DOMAIN, "TXT", "v=spf1 include:spf.mailer.example -all")
    zone.add("spf.mailer.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.add(f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")
    zone.add(DOMAIN, "MX", (10, "mx.example.org"))


def test_doctor_command_passes_a_good_setup_and_fails_a_bad_one(
    tmp_path: Path, zone: tuple[Zone, str], dkim_key: Path, auth_smtp: tuple[int, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(tmp_path, web={"base_url": "https://letters.example.org"}, delivery={
        "transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": auth_smtp[0], "smtp_tls": "none",
        "smtp_username": "ana", "dkim_key": str(dkim_key), "dkim_selector": SELECTOR})
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", "right-password")
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "k" * 40)
    monkeypatch.setenv("NEWSLETTER_DNS_SERVER", zone[1])
    run = CLI(config, CliRunner())
    settings = load_settings(config)
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        add_essays(session, *digest_essays(2))
        compose(session, settings, key="first")
        session.commit()
    engine.dispose()

    bad = run("doctor")
    assert bad.exit_code == 1 and "not ready to send" in bad.output and "fix: publish the TXT record" in bad.output

    publish_everything(zone[0], settings)
    good = run("doctor", "--json")
    assert good.exit_code == 0, good.output
    report = json.loads(good.output)
    assert report["ok"] is True and not failed([Check(**c) for c in report["checks"]])
    assert {c["code"] for c in report["checks"]} >= {"config", "secret-key", "web-base-url", "smtp-login",
                                                    "dkim-dns", "spf", "dmarc", "dmarc-aligned",
                                                    "return-path-mx", "lint"}
    assert auth_smtp[1] == []  # two runs, two logins, no message


def test_doctor_prints_terminal_codes_in_a_dns_answer_escaped(
    tmp_path: Path, zone: tuple[Zone, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whoever runs the nameserver writes the answer: it must not retitle or clear the terminal.
    zone[0].add(DOMAIN, "TXT", "v=spf1 \x1b]0;pwned\x07\x1b[2J-all")
    monkeypatch.setenv("NEWSLETTER_DNS_SERVER", zone[1])
    config = write_config(tmp_path, web={"base_url": "https://letters.example.org"})
    result = CLI(config, CliRunner(env={"COLUMNS": "300"}))("doctor")
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert f"{DOMAIN}: v=spf1 \\x1b]0;pwned\\x07\\x1b[2J-all" in result.output


def test_doctor_prints_each_problem_of_a_broken_config_on_its_own_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[newsletter]\nname = 3\n[schedule]\nweekday = \"Caturday\"\n")
    result = CLI(config, CliRunner(env={"COLUMNS": "300"}))("doctor")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.strip().startswith("newsletter.name:") for line in lines), result.output
    assert any(line.strip().startswith("schedule.weekday:") for line in lines), result.output


def test_doctor_command_reports_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[newsletter]\nname = 3\n")
    result = CLI(config, CliRunner())("doctor", "--json")
    assert result.exit_code == 1
    [check] = json.loads(result.output)["checks"]
    assert (check["code"], check["ok"]) == ("config", False) and "newsletter.name" in check["message"]
