"""Check a setup before its first real send: each finding says what holds or not, and the fix.

`diagnose` runs the checks in the order a user would fix them: the config, the signing key,
the public address, the SMTP relay (connect and log in, no mail sent), DKIM, SPF, DMARC, the
return path's MX, and the latest issue against the email checklist. DNS comes through a
`Records` (pipeline/dns_records.py), which the caller may point at one nameserver.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import Settings
from pipeline.copies import personal_copy
from pipeline.errors import NewsletterError
from pipeline.issues import latest_issue
from pipeline.lint import Finding, lint_message
from pipeline.sender_policy import Lookups, dmarc_record, spf_allows, spf_records, tags
from pipeline.signing import dkim_record
from pipeline.transports import check_connection
from subscribers.tokens import SECRET_ENV, SECRET_FILE

MUST = "MUST"  # a failure here stops `newsletter doctor` with exit code 1
SHOULD = "SHOULD"


@dataclass(frozen=True)
class Check:
    """One finding: which check, how much it matters, whether it holds, what is seen, the fix."""

    code: str
    level: str
    ok: bool
    message: str
    fix: str = ""


def diagnose(settings: Settings, engine: Callable[[], Engine], records: Lookups,
             message_checks: Callable[[bytes, Settings], list[Finding]] | None = None) -> list[Check]:
    """Every check on this setup, in the order to fix them."""
    checks = [Check("config", MUST, True, f"{settings.path} is read and valid")]
    checks += secret_checks(settings.base_dir)
    checks.append(web_check(settings.web.base_url))
    checks += smtp_checks(settings)
    checks += _guarded("dkim-dns", lambda: dkim_checks(settings, records))
    checks += _guarded("spf", lambda: spf_checks(settings, records))
    spf_ok = any(c.code == "spf-relay" and c.ok for c in checks)
    dkim_ok = any(c.code == "dkim-dns" and c.ok for c in checks)
    checks += _guarded("dmarc", lambda: dmarc_checks(settings, records, spf_ok, dkim_ok))
    checks += _guarded("return-path-mx", lambda: return_path_check(settings, records))
    database = database_check(settings, engine)
    checks.append(database)
    if database.ok:
        checks.append(lint_check(settings, engine, message_checks or must_checks))
    return checks


def database_check(settings: Settings, engine: Callable[[], Engine]) -> Check:
    """The database opens and its schema is this version's. A SQLite file that does not exist
    yet is left so (doctor changes nothing): the first command that stores something makes it."""
    url = settings.database.url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return Check("database", SHOULD, False, f"no database yet ({url[len('sqlite:///'):]})",
                     "the first command that stores something creates it: `newsletter essays import FOLDER`")
    try:
        with engine().connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except NewsletterError as exc:  # pipeline.db's DatabaseError: cannot open, not a database, newer
        return Check("database", MUST, False, str(exc),
                     "check database.url; a SQLite file must be a newsletter database (restore it from "
                     "a backup, or point database.url at a new file)")
    return Check("database", MUST, True, "the database opens and its schema is up to date")


def failed(checks: list[Check]) -> list[Check]:
    """The MUST checks that do not hold: any of them means exit code 1."""
    return [c for c in checks if c.level == MUST and not c.ok]


def config_failure(error: NewsletterError) -> Check:
    return Check("config", MUST, False, str(error), "fix the key named, then run `newsletter doctor` again")


def secret_checks(base_dir: Path) -> list[Check]:
    path = base_dir / SECRET_FILE
    if os.environ.get(SECRET_ENV, "").strip():
        return [Check("secret-key", MUST, True, f"the token-signing key comes from ${SECRET_ENV}"),
                Check("secret-backup", SHOULD, True, f"${SECRET_ENV} is set from outside this folder "
                      "(keep its source, e.g. the secrets file of the service, backed up)")]
    try:
        present = bool(path.read_text(encoding="utf-8").strip())
    except OSError:
        present = False
    if not present:
        return [Check("secret-key", MUST, False, f"no token-signing key: ${SECRET_ENV} is unset and "
                      f"{path} is missing or empty", f"run `newsletter init`, or set ${SECRET_ENV}")]
    checks = [Check("secret-key", MUST, True, f"the token-signing key is in {path}")]
    if path.stat().st_mode & 0o077:
        checks.append(Check("secret-mode", SHOULD, False, f"{path} is readable by other users",
                            f"chmod 600 {path}"))
    # Only the operator knows whether a copy exists elsewhere: say what losing it costs.
    checks.append(Check("secret-backup", SHOULD, False, f"the key exists only in {path}, as far as "
                        "this machine can tell; without it every unsubscribe link already sent breaks",
                        f"copy it to your password manager or backup, or deploy it as ${SECRET_ENV}"))
    return checks


def web_check(base_url: str) -> Check:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        return Check("web-base-url", MUST, False, f"web.base_url is {base_url}: unsubscribe and web-copy "
                     "links need https", 'set web.base_url = "https://your-public-host"')
    if host == "localhost" or host.endswith(".localhost") or _is_local_address(host):
        return Check("web-base-url", MUST, False, f"web.base_url is {base_url}: subscribers cannot reach "
                     "a loopback or private address", "set web.base_url to the public address of "
                     "`newsletter serve` (behind your web server)")
    return Check("web-base-url", MUST, True, f"web.base_url is {base_url}")


def _is_local_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def smtp_checks(settings: Settings) -> list[Check]:
    d = settings.delivery
    if d.transport != "smtp":
        return [Check("transport", MUST, False, f"delivery.transport is {d.transport!r}: messages are "
                      f"written to {d.outbox_dir}, not sent", 'set delivery.transport = "smtp" and the '
                      "smtp_* keys of your relay")]
    checks = [Check("transport", MUST, True, f"delivery.transport is smtp ({d.smtp_host}:{d.smtp_port}, "
                    f"tls {d.smtp_tls})")]
    if d.smtp_username and not d.smtp_password:
        checks.append(Check("smtp-login", MUST, False, f"delivery.smtp_username is {d.smtp_username!r} "
                            "but $NEWSLETTER_SMTP_PASSWORD is unset", "export NEWSLETTER_SMTP_PASSWORD"))
        return checks
    try:
        travel = check_connection(d)
    except NewsletterError as exc:
        return checks + [Check("smtp-login", MUST, False, str(exc),
                               "check delivery.smtp_host, smtp_port, smtp_tls, smtp_username and "
                               "$NEWSLETTER_SMTP_PASSWORD")]
    who = f"logged in as {d.smtp_username!r}" if d.smtp_username else "no login configured"
    return checks + [Check("smtp-login", MUST, True, f"{d.smtp_host}:{d.smtp_port} answers; {who}; "
                           f"it {travel}; no message sent")]


def dkim_checks(settings: Settings, records: Lookups) -> list[Check]:
    if settings.delivery.dkim_key is None:
        return [Check("dkim-key", SHOULD, False, "messages are not DKIM-signed: DMARC then rests on "
                      "SPF alone, which forwarding breaks", "generate a key (openssl genrsa -out "
                      "dkim.pem 2048), set delivery.dkim_key and dkim_selector, run doctor again")]
    try:
        name, value = dkim_record(settings)
    except NewsletterError as exc:
        return [Check("dkim-key", MUST, False, str(exc), "point delivery.dkim_key at a readable PEM "
                      "RSA private key")]
    checks = [Check("dkim-key", MUST, True, f"{settings.delivery.dkim_key} is a readable RSA key")]
    published = [_dkim_key(t) for t in records.txt(name)]
    publish = f'publish the TXT record {name} "{value}"'
    if _dkim_key(value) in published:
        checks.append(Check("dkim-dns", MUST, True, f"{name} publishes the key messages are signed with"))
    elif published:
        checks.append(Check("dkim-dns", MUST, False, f"{name} publishes another key than "
                            f"{settings.delivery.dkim_key}: signatures would fail", "replace it: " + publish))
    else:
        checks.append(Check("dkim-dns", MUST, False, f"no DKIM record at {name}", publish))
    return checks


def _dkim_key(text: str) -> str:
    return "".join(tags(text).get("p", "").split())


def spf_checks(settings: Settings, records: Lookups) -> list[Check]:
    domain = settings.newsletter.sender_domain  # also the envelope sender's (return path) domain
    found = spf_records(records, domain)
    if len(found) != 1:
        what = "no SPF record" if not found else f"{len(found)} SPF records (receivers then ignore all)"
        return [Check("spf", MUST, False, f"{domain} has {what}",
                      f'publish one TXT record at {domain}: "v=spf1 include:<your relay\'s domain> ~all"')]
    checks = [Check("spf", MUST, True, f"{domain}: {found[0]}")]
    d = settings.delivery
    if d.transport != "smtp":
        return checks
    addresses = records.addresses(d.smtp_host)
    if not addresses or any(ipaddress.ip_address(a).is_loopback for a in addresses):
        checks.append(Check("spf-relay", SHOULD, False, f"delivery.smtp_host {d.smtp_host} is "
                            f"{'loopback' if addresses else 'not in the DNS'}: which address the mail "
                            "leaves from is not known here", "make sure the SPF record names the "
                            "public address of the machine that delivers the mail"))
        return checks
    refused = [(a, v) for a in addresses if not (v := spf_allows(records, domain, a)).allowed]
    if refused:
        address, verdict = refused[0]
        checks.append(Check("spf-relay", MUST, False, f"SPF of {domain} does not pass the relay "
                            f"{d.smtp_host} ({address}): {verdict.why}", f"add the relay to the record: "
                            f"include:<the relay's SPF domain> or ip4:{address}"))
    else:
        checks.append(Check("spf-relay", MUST, True, f"SPF of {domain} passes the relay {d.smtp_host}"))
    return checks


def dmarc_checks(settings: Settings, records: Lookups, spf_ok: bool, dkim_ok: bool) -> list[Check]:
    domain = settings.newsletter.sender_domain
    found = dmarc_record(records, domain)
    if found is None or found[1].get("p") not in ("none", "quarantine", "reject"):
        return [Check("dmarc", MUST, False, f"no valid DMARC record for {domain} (_dmarc.{domain})",
                      f'publish the TXT record _dmarc.{domain} "v=DMARC1; p=none; rua=mailto:'
                      f'dmarc@{domain}" (p=none to watch first)')]
    name, tags = found
    checks = [Check("dmarc", MUST, True, f"{name}: p={tags['p']}")]
    # Both the DKIM d= and the envelope sender are the From domain itself: aligned in strict and
    # relaxed mode alike, so DMARC passes when either of them passes.
    if spf_ok or dkim_ok:
        how = " and ".join(x for x, ok in (("DKIM", dkim_ok), ("SPF", spf_ok)) if ok)
        checks.append(Check("dmarc-aligned", MUST, True, f"{how} pass for {domain}, the From domain"))
    else:
        checks.append(Check("dmarc-aligned", MUST, False, f"neither DKIM nor SPF passes for {domain}: "
                            "DMARC fails and receivers apply p=" + tags["p"],
                            "fix the dkim-dns or spf-relay finding above"))
    return checks


def return_path_check(settings: Settings, records: Lookups) -> list[Check]:
    domain = settings.newsletter.sender_domain
    exchanges = records.mx(domain)
    if not exchanges:
        return [Check("return-path-mx", MUST, False, f"{domain} (the return path of every message) "
                      "has no MX record: bounces cannot come back and many receivers refuse the mail",
                      f"publish an MX record for {domain}, or use a sender address on a domain that has one")]
    return [Check("return-path-mx", MUST, True, f"{domain} receives mail at {exchanges[0][1]}")]


def must_checks(raw: bytes, settings: Settings) -> list[Finding]:
    """The email checklist on one built message: the checks a send must pass."""
    return lint_message(raw, settings.newsletter.sender_domain, settings.newsletter.postal_address)


def lint_check(settings: Settings, engine: Callable[[], Engine],
               message_checks: Callable[[bytes, Settings], list[Finding]]) -> Check:
    try:
        with Session(engine()) as session:
            issue = latest_issue(session)
            # A sample reader (None) gets an inert unsubscribe link: no key is needed to sign it.
            raw = personal_copy(session, settings, "", issue, None)
    except NewsletterError as exc:
        return Check("lint", SHOULD, False, f"the latest issue cannot be checked: {exc}",
                     "compose one with `newsletter issues new`, then run doctor again")
    findings = message_checks(raw, settings)
    must = [f for f in findings if f.level == MUST]
    if must:
        return Check("lint", MUST, False, f"issue {issue.key}: " + "; ".join(map(str, must)),
                     f"see `newsletter lint {issue.key}`")
    others = f" ({len(findings)} warnings: `newsletter lint {issue.key}`)" if findings else ""
    return Check("lint", MUST, True, f"issue {issue.key} passes the email checklist{others}")


def _guarded(code: str, check: Callable[[], list[Check]]) -> list[Check]:
    """A DNS check whose lookups failed is one failing finding naming the lookup, not a crash."""
    try:
        return check()
    except NewsletterError as exc:
        return [Check(code, MUST, False, str(exc), "check the DNS server, or point doctor at one "
                      "with --dns-server")]
