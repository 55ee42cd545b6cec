"""`newsletter bounces process/list`: read the bounce mailbox, and show what it said."""

from __future__ import annotations

import click
from rich.table import Table

from pipeline.bounce_log import recent_events
from pipeline.commands.base import App, json_option, pass_app, print_json, shown
from pipeline.db import open_session
from pipeline.feedback import MailboxReport, process_mailbox
from pipeline.models import BounceKind

KINDS = [k.value for k in BounceKind]


@click.group("bounces")
def bounces() -> None:
    """Bounces, complaints and emailed unsubscribes from the bounce mailbox.

    \b
    Example:
      newsletter bounces process --dry-run
      newsletter bounces process --mailbox ~/Maildir/.Bounces
      newsletter bounces list --kind complaint
    """


@bounces.command("process")
@click.option("--dry-run", is_flag=True, help="Show what would happen; change and mark nothing.")
@click.option("--mailbox", "location", metavar="PATH|URL",
              help="Read this Maildir, mbox or imaps:// URL instead of bounces.mailbox.")
@json_option
@pass_app
def process(app: App, dry_run: bool, location: str | None, as_json: bool) -> None:
    """Read the bounce mailbox once and apply what it says.

    Hard bounces and complaints take the subscriber off the list at once; soft bounces count
    (bounces.soft_bounce_limit within bounces.soft_bounce_days); a mail to the List-Unsubscribe
    address unsubscribes its sender; auto-replies and anything unreadable are left alone and
    listed. Each message is handled once: running it again changes nothing.

    \b
    Example:
      newsletter bounces process --dry-run
      newsletter bounces process
      newsletter bounces process --mailbox ~/Maildir/.bounces --json
    """
    if not app.settings.bounces.enabled and location is None:
        raise click.ClickException("bounces are not read: set enabled = true and mailbox in the "
                                   "[bounces] section of config.toml (or pass --mailbox)")
    report = process_mailbox(app.settings, app.engine, dry_run=dry_run, location=location)
    if as_json:
        print_json(report.as_dict())
        return
    _summary(app, report)


@bounces.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@json_option
@pass_app
def list_command(app: App, kind: str | None, limit: int, as_json: bool) -> None:
    """The most recent bounces, complaints and emailed unsubscribes, newest first.

    \b
    Example:
      newsletter bounces list
      newsletter bounces list --kind complaint --json
    """
    with open_session(app.engine) as session:
        events = recent_events(session, limit, kind)
    fields = ("id", "created_at", "kind", "email", "subscriber_id", "issue_id", "delivery_id", "status",
              "detail", "matched_by", "report_key")
    if as_json:
        print_json([{f: getattr(e, f) for f in fields} for e in events])
        return
    if not events:
        app.console.print("No bounces, complaints or emailed unsubscribes recorded"
                          + (f" of kind {kind}." if kind else "."))
        return
    table = Table(title=f"{len(events)} most recent" + (f" ({kind})" if kind else ""))
    for column in ("when (UTC)", "kind", "address", "issue", "status", "detail", "matched by"):
        table.add_column(column)
    for e in events:
        table.add_row(f"{e.created_at:%Y-%m-%d %H:%M}", e.kind, shown(e.email), str(e.issue_id or ""),
                      e.status, shown(e.detail[:120]), e.matched_by)
    app.console.print(table)


def _summary(app: App, report: MailboxReport) -> None:
    out = app.console.print
    if report.outcomes:
        table = Table(title=f"{report.source}" + (" (dry run: nothing changed)" if report.dry_run else ""))
        for column in ("kind", "address", "issue", "matched by", "done", "why"):
            table.add_column(column)
        for o in report.outcomes:
            table.add_row(o.kind, shown(o.email), str(o.issue_id or ""), o.matched_by,
                          ("would be " + o.action if report.dry_run and o.action else o.action) or "-",
                          shown(o.reason[:160]))
        out(table)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    verb = "would process" if report.dry_run else "processed"
    out(f"{report.source}: {verb} {len({o.key for o in report.outcomes})} new messages"
        + (f" ({counts})" if counts else "")
        + (f"; {report.already} handled by an earlier run" if report.already else "") + ".",
        soft_wrap=True)


commands = [bounces]
