"""`newsletter sends status/list/retry`: an issue's delivery ledger, and resending from it."""

from __future__ import annotations

import click
from rich.table import Table

from pipeline import glance
from pipeline.commands.base import (
    UNKNOWN_HELP,
    App,
    confirm,
    json_option,
    literal,
    pass_app,
    print_json,
    readable_time,
    shown,
)
from pipeline.complaints import issue_feedback
from pipeline.db import open_session
from pipeline.statuses import DeliveryStatus

STATUSES = [s.value for s in DeliveryStatus]
# The command is quick (glance.py, no ORM) unless rows are in flight: those are reconciled first.


@click.group("sends")
def sends() -> None:
    """The delivery ledger of an issue: counts, rows, retries.

    \b
    Example:
      newsletter sends status latest
      newsletter sends list latest --status failed
      newsletter sends retry latest --unknown
    """


@sends.command("status")
@click.argument("issue")
@json_option
@pass_app
def status(app: App, issue: str, as_json: bool) -> None:
    """How many deliveries of ISSUE have each status.

    \b
    Example:
      newsletter sends status weekly-2026-W48
      newsletter sends status 3 --json
    """
    target, counts = settled(app, issue)
    with app.engine.connect() as connection:
        next_retry = glance.next_retry(connection, target.id) if counts["pending"] else None
        feedback = issue_feedback(connection, target.id)
    holders = []
    if counts["sending"]:
        from pipeline import leases  # noqa: PLC0415  (the ORM: only with rows in flight)

        with open_session(app.engine) as session:
            holders = leases.in_flight(session, target.id)
    verdict, why = feedback.verdict(app.settings.bounces)
    if as_json:
        print_json({"issue": target.key, "status": target.status, "counts": counts,
                    "next_retry_at": next_retry,
                    "in_flight": [{"holder": h.holder, "count": h.count, "lease_until": h.lease_until}
                                  for h in holders],
                    "feedback": {"bounced": feedback.bounced, "soft_bounced": feedback.soft,
                                 "complained": feedback.complained,
                                 "complaint_rate": feedback.complaint_rate,
                                 "complaint_verdict": verdict, "explanation": why}})
        return
    # The key above the table, not as its title: a title wraps to the narrow table's width.
    app.console.print(f"{shown(target.key)} ({target.status})", soft_wrap=True)
    table = Table()
    table.add_column("status")
    table.add_column("deliveries", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    table.add_row("[bold]total[/]", f"[bold]{sum(counts.values())}[/]")
    for name, count in (("bounced after sending", feedback.bounced), ("soft bounces", feedback.soft),
                        ("complained", feedback.complained)):
        table.add_row(name, str(count))
    app.console.print(table)
    colour = {"ok": "", "warn": "[yellow]Warning:[/] ", "pause": "[bold red]Paused:[/] "}[verdict]
    if feedback.complained or verdict != "ok":
        app.console.print(colour + literal(why[0].upper() + why[1:]), soft_wrap=True)
    if next_retry:
        app.console.print(f"Next retry due at {readable_time(next_retry, not_before=True)}.")
    if holders:
        app.console.print(f"In flight ({counts['sending']} sending): "
                          f"{shown(leases.describe_in_flight(holders))}.")
    _hints(app, target, counts)


@sends.command("list")
@click.argument("issue")
@click.option("--status", "wanted", type=click.Choice(STATUSES), help="Only rows with this status.")
@click.option("--limit", type=click.IntRange(min=0), default=200, show_default=True,
              help="At most this many rows (0: all).")
@json_option
@pass_app
def list_command(app: App, issue: str, wanted: str | None, limit: int, as_json: bool) -> None:
    """The deliveries of ISSUE: address, status, attempts, last SMTP reply.

    \b
    Example:
      newsletter sends list weekly-2026-W48 --status failed
      newsletter sends list 3 --status unknown --json
    """
    from pipeline import ledger_reads  # noqa: PLC0415  (the ORM: rows are Delivery objects)

    target, counts = settled(app, issue)
    with open_session(app.engine) as session:
        found = ledger_reads.rows(session, target.id, wanted, limit or None)
    total = counts[wanted] if wanted else sum(counts.values())
    fields = ("id", "subscriber_id", "email", "name", "status", "attempts", "smtp_code",
              "last_error", "message_id", "next_attempt_at", "sent_at", "holder", "feedback",
              "feedback_status", "feedback_detail", "feedback_at")
    if as_json:
        print_json([{f: getattr(row, f) for f in fields} for row in found])
        if len(found) < total:  # on stderr: the JSON stays a plain list for scripts
            click.echo(f"Showing {len(found)} of {total}; --limit 0 shows all.", err=True)
        return
    table = Table(title=f"{target.key}: {len(found)} deliveries" + (f" ({wanted})" if wanted else ""))
    for column in ("email", "status", "attempts", "code", "last error / sent at", "later"):
        table.add_column(column)
    for row in found:
        note = row.last_error or (f"{row.sent_at:%Y-%m-%d %H:%M:%S}" if row.sent_at else "")
        later = " ".join(filter(None, (row.feedback, row.feedback_status)))  # the bounce mailbox's word
        table.add_row(shown(row.email), row.status, str(row.attempts), str(row.smtp_code or ""),
                      shown(note), shown(later))
    app.console.print(table)
    if len(found) < total:
        app.console.print(f"Showing {len(found)} of {total}; --limit 0 shows all.")


@sends.command("retry")
@click.argument("issue")
@click.option("--failed", is_flag=True, help="Resend deliveries that failed.")
@click.option("--unknown", is_flag=True, help="Resend deliveries whose outcome is unknown (a crash mid-send).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Send even when the message fails a MUST check (see `send`).")
@pass_app
def retry(app: App, issue: str, failed: bool, unknown: bool, yes: bool, force: bool) -> None:
    """Make failed and/or unknown deliveries of ISSUE owed again, and send them.

    An `unknown` delivery may have arrived already: resending can give that subscriber a
    second copy (with the same Message-ID, which many mail clients merge). Deliveries to
    subscribers who unsubscribed, bounced or complained meanwhile are left as they are.

    \b
    Example:
      newsletter sends retry weekly-2026-W48 --unknown
      newsletter sends retry 3 --failed --unknown --yes
    """
    if not (failed or unknown):
        raise click.UsageError("say what to resend: --failed, --unknown or both")
    kinds = [w for w, on in (("failed", failed), ("unknown", unknown)) if on]
    what = " and ".join(kinds)
    from pipeline.commands.send import exit_status, run_publish, summary  # noqa: PLC0415  (the sender)
    from pipeline.issues import requeue  # noqa: PLC0415

    target, counts = settled(app, issue)
    if failed:  # a hard bounce its sender saved but could not mark is marked, not resent
        from pipeline.sender import mark_lost_bounces  # noqa: PLC0415  (loaded by the send anyway)

        mark_lost_bounces(app.engine, target.id)
    found = counts["failed"] * failed + counts["unknown"] * unknown
    from pipeline.ledger import resendable  # noqa: PLC0415  (the ORM: only to resend)

    with open_session(app.engine) as session:
        count = resendable(session, target.id, kinds)
    # Rows of readers who bounced, unsubscribed or complained since keep what happened to them.
    kept = (f" ({found - count} to readers no longer subscribed stay as they are)"
            if found > count else "")
    if not count:
        app.console.print(f"No {' or '.join(kinds)} deliveries to resend in {target.key}{kept}.")
        return
    if not yes:
        if not confirm(f"Resend {count} {what} deliveries of {target.key}{kept}?"):
            raise click.Abort
    elif kept:
        app.console.print(f"Resending {count} {what} deliveries of {target.key}{kept}.")
    requeue(app.engine, target.key, failed, unknown)
    report = run_publish(app, target.key, latest=False, dry_run=False, yes=True, quiet=False, force=force)
    summary(app, report)
    raise SystemExit(exit_status(report))


def settled(app: App, ref: str) -> tuple[glance.IssueRow, dict[str, int]]:
    """The issue `ref` names and its counts, after rows a stopped sender left in flight are
    reconciled (leases.settle): what every command here reads first."""
    with app.engine.connect() as connection:
        target = glance.find_issue(connection, ref)
        counts = glance.counts(connection, target.id)
    if not counts["sending"]:
        return target, counts
    from pipeline import leases  # noqa: PLC0415  (the ORM: only with rows in flight)

    with open_session(app.engine) as session:
        leases.settle(session, target.id)
    with app.engine.connect() as connection:  # reconciling changes counts, never the issue itself
        return target, glance.counts(connection, target.id)


def _hints(app: App, issue: glance.IssueRow, counts: dict[str, int]) -> None:

    if counts["unknown"]:
        app.console.print(f"{counts['unknown']} unknown: the message went out and no reply came, or "
                          f"its sender stopped mid-attempt; maybe delivered, maybe not. "
                          + UNKNOWN_HELP.format(key=shown(issue.key)))
    if counts["failed"]:
        app.console.print(f"`newsletter sends list {issue.key} --status failed` shows why they failed.")



commands = [sends]
