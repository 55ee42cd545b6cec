"""The send gate: the email checklist's MUST checks on the real message, before real mail goes out.

A message that fails a MUST check (say, unsubscribe links on `http://127.0.0.1`, because
web.base_url was never set) cannot be called back once an SMTP relay has it. So before the
confirmation prompt, `newsletter send`, the scheduler and `newsletter worker` (all through
publish) build the message one subscriber would get and lint it here:

    must_failures(settings, raw)      the MUST findings on one message's bytes (any transport)
    is_real_mail(settings)            True when the configured transport hands mail to the world
    check(settings, raw, what, force) raise Refused over real mail, unless `force` (then log)
    fix(settings, finding)            what to change so that the finding goes away

The outbox transport writes files nobody receives, so it stays permissive (the demo runs on the
default loopback base_url). A `newsletter doctor` can call must_failures and fix the same way.
"""

from __future__ import annotations

import logging

from pipeline.config import Settings
from pipeline.errors import Refused
from pipeline.lint import Finding, failures, lint_message

log = logging.getLogger("newsletter.gate")


class SendRefused(Refused):
    """The message fails the checklist's MUST checks and would go out as real mail."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message)
        self.findings = findings


def is_real_mail(settings: Settings) -> bool:
    """Whether sending reaches people: SMTP does, the outbox folder does not."""
    return settings.delivery.transport == "smtp"


def must_failures(settings: Settings, raw: bytes) -> list[Finding]:
    """The checklist's MUST findings on one message's exact bytes, as `newsletter lint` finds them."""
    n = settings.newsletter
    return failures(lint_message(raw, n.sender_domain, n.postal_address))


def check(settings: Settings, raw: bytes, what: str, force: bool = False, stored: bool = True) -> list[Finding]:
    """Gate one message of `what` (an issue key): over real mail a MUST failure raises
    SendRefused naming each failure and its fix; with `force` the send goes on and a warning
    naming the failures is logged. Returns the failures let through (none over the outbox)."""
    if not is_real_mail(settings):
        return []
    found = must_failures(settings, raw)
    if not found:
        return []
    if force:
        log.warning("sending %s despite %d failed MUST check(s) (--force): %s", what, len(found),
                    "; ".join(f"{f.code} {f.message}" for f in found))
        return found
    raise SendRefused(describe(settings, found, what, stored), found)


def describe(settings: Settings, found: list[Finding], what: str, stored: bool = True) -> str:
    """The refusal: one line per failed check with its fix, and the ways out."""
    lines = [(f"{what} is not sent: its message fails {len(found)} MUST check(s) of the email "
              f"checklist, and over SMTP it would reach every subscriber as it is:")]
    by_fix: dict[str, list[Finding]] = {}
    for finding in found:  # failures with one cause share one fix line
        by_fix.setdefault(fix(settings, finding), []).append(finding)
    for remedy, findings in by_fix.items():
        lines += [f"  {f.code} {f.message}" for f in findings]
        lines.append(f"    fix: {remedy}")
    # A draft a dry run composed is not kept: `lint` would not find it by its key.
    lint = f"`newsletter lint {what}`" if stored else "`newsletter issues new`, then `newsletter lint latest`,"
    lines.append(f"Nothing was sent. {lint} shows the full report; `--force` sends anyway (logged).")
    return "\n".join(lines)


def fix(settings: Settings, finding: Finding) -> str:
    """What to change so that `finding` goes away, as precisely as the finding allows."""
    base = settings.web.base_url
    if finding.code in ("H11", "M9") and (base in finding.message or not base.startswith("https://")):
        return (f"set web.base_url in {settings.path} to the public https address where "
                f"`newsletter serve` answers (now {base}): unsubscribe and web-copy links point there")
    if finding.code in ("M3", "M12"):
        return f"check newsletter.sender_address in {settings.path}: its domain names the Message-ID and List-Id"
    if finding.code in ("H21", "M5") and "postal address" in finding.message:
        return f"set newsletter.postal_address in {settings.path} (every footer must carry it)"
    if finding.code.startswith("H") or finding.code == "M5":
        where = (f"the templates in {settings.digest.templates}" if settings.digest.templates
                 else "the essays' titles and text")
        return f"change {where} so the rendered issue passes; `newsletter preview` shows it"
    return "the message builder made a wrong message: please report it with `newsletter lint` output"
