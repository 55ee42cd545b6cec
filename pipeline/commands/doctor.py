"""`newsletter doctor`: check a setup before the first real send and say how to fix each finding."""

from __future__ import annotations

import click

from pipeline.commands.base import App, json_option, pass_app, print_json, shown_lines
from pipeline.dns_records import Records
from pipeline.doctor import MUST, Check, config_failure, diagnose, failed
from pipeline.errors import ConfigError


@click.command("doctor")
@click.option("--dns-server", metavar="IP[:PORT]", envvar="NEWSLETTER_DNS_SERVER",
              help="Ask this nameserver instead of the system's (e.g. the domain's own, before a "
                   "new record has spread). Default: $NEWSLETTER_DNS_SERVER, else the system's.")
@json_option
@pass_app
def doctor(app: App, dns_server: str | None, as_json: bool) -> None:
    """Check this setup before the first real send, and print the fix for each problem.

    Checks the config, the token-signing key, web.base_url (https, public), the SMTP relay
    (connects and logs in, sends nothing), the DKIM key and its DNS record (printing the exact
    TXT record to publish), SPF for the relay, DMARC, the return path's MX, and the latest
    issue against the email checklist. Exit code 1 when a MUST check fails.

    \b
    Example:
      newsletter doctor
      newsletter doctor --dns-server 192.0.2.53 --json
    """
    try:
        settings = app.settings
    except ConfigError as exc:
        checks = [config_failure(exc)]
    else:
        checks = diagnose(settings, lambda: app.engine, Records(dns_server))
    if as_json:
        print_json({"ok": not failed(checks), "checks": [vars(c) for c in checks]})
    else:
        _print(app, checks)
    if failed(checks):
        raise SystemExit(1)


def _print(app: App, checks: list[Check]) -> None:
    for check in checks:
        if check.ok:
            mark = "[green]ok[/]     "
        else:
            mark = "[red]FAIL[/]   " if check.level == MUST else "[yellow]WARN[/]   "
        app.console.print(f"{mark}{check.code:<15} {shown_lines(check.message)}", soft_wrap=True)
        if not check.ok and check.fix:
            app.console.print(f"       {'':<15} fix: {shown_lines(check.fix)}", soft_wrap=True)
    bad = failed(checks)
    warned = sum(1 for c in checks if not c.ok and c.level != MUST)
    verdict = "[red]not ready to send[/]" if bad else "[green]ready to send[/]"
    app.console.print(f"{verdict}: {len(bad)} MUST failure{'' if len(bad) == 1 else 's'}, "
                      f"{warned} warning{'' if warned == 1 else 's'}.")


commands = [doctor]
