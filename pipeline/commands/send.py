"""`newsletter send`, `send-test` and `sends status/list/retry`: sending by hand, and the ledger."""

from __future__ import annotations

import threading

import click
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlmodel import Session

from pipeline import leases, ledger
from pipeline.commands.base import (
    EXIT_ERROR,
    EXIT_OWED,
    EXIT_UNDECIDED,
    App,
    json_option,
    pass_app,
    print_json,
    stop_on_signals,
)
from pipeline.complaints import issue_feedback
from pipeline.copies import send_test
from pipeline.issues import requeue
from pipeline.models import DeliveryStatus, Issue
from pipeline.publish import Ending, Report, enqueue, publish
from pipeline.publish import dry_run as dry_run_of

STATUSES = [s.value for s in DeliveryStatus]


@click.command("send")
@click.argument("issue", required=False)
@click.option("--latest", is_flag=True,
              help="The newest open issue; composes one from unsent essays when none is open.")
@click.option("--dry-run", is_flag=True, help="Build every message, send none, write nothing.")
@click.option("--enqueue", is_flag=True,
              help="Freeze the audience and leave the sending to `newsletter worker` processes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True,
              help="Send over SMTP even when the message fails a MUST check of `newsletter lint` (logged).")
@json_option
@pass_app
def send(app: App, issue: str | None, latest: bool, dry_run: bool, enqueue: bool, yes: bool,
         force: bool, as_json: bool) -> None:
    """Send an issue to every active subscriber it is owed to (ISSUE: id, key or latest).

    The audience is frozen when sending starts. Running it again sends only what is still
    owed. Ctrl-C finishes the batch in flight and stops; `send` again carries on. A server that
    cannot be reached, or refuses the login, pauses the run without using up any attempts
    (exit code 1).

    Over SMTP the message is first checked against the email checklist (as `newsletter lint`
    does): a MUST failure, such as unsubscribe links on a web.base_url that is not public https,
    stops the send with the reasons and their fixes (exit code 1). --force sends anyway and
    logs a warning naming the failures. The outbox transport is not checked.

    \b
    Example:
      newsletter send --latest
      newsletter send weekly-2026-W48 --dry-run
      newsletter send 3 --yes
      newsletter send --latest --enqueue --yes
    """
    if issue is not None and latest:
        raise click.UsageError("name an ISSUE or pass --latest, not both")
    if issue is None and not latest:
        raise click.UsageError("name an ISSUE (id, key or latest) or pass --latest (composes one "
                               "from the unsent essays when no issue is open)")
    if enqueue and dry_run:
        raise click.UsageError("--enqueue hands an issue to the workers; a --dry-run sends nothing anyway")
    report = _run(app, issue, latest=latest, dry_run=dry_run, yes=yes or as_json, quiet=as_json,
                  deliver=not enqueue, force=force)
    if as_json:
        print_json(report.as_dict())
    else:
        _summary(app, report)
    raise SystemExit(exit_status(report, dry_run))


@click.command("send-test")
@click.argument("issue")
@click.option("--to", "to", required=True, help="The address that gets the test copy.")
@pass_app
def send_test_command(app: App, issue: str, to: str) -> None:
    """Send one copy of ISSUE to an address, subject prefixed [TEST]; records nothing.

    When the address belongs to a subscriber the copy is theirs (name, unsubscribe link);
    otherwise its unsubscribe link is an inert sample.

    \b
    Example:
      newsletter send-test weekly-2026-W48 --to me@example.org
    """
    raw = send_test(app.settings, app.engine, issue, to)
    where = (f"the outbox {app.settings.delivery.outbox_dir}"
             if app.settings.delivery.transport == "outbox" else app.settings.delivery.smtp_host)
    app.console.print(f"Sent a test copy to {escape(to)} through {escape(str(where))} ({len(raw):,} bytes).")


@click.group("sends")
def sends() -> None:
    """The delivery ledger of an issue: counts, rows, retries."""


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
    with Session(app.engine) as session:
        target = leases.settle(session, issue)
        counts = ledger.counts(session, target.id or 0)
        next_retry = ledger.next_retry(session, target.id or 0) if counts["pending"] else None
        holders = leases.in_flight(session, target.id or 0)
        feedback = issue_feedback(session, target.id or 0)
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
    app.console.print(f"{escape(target.key)} ({target.status})", soft_wrap=True)
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
        app.console.print(colour + escape(why[0].upper() + why[1:]), soft_wrap=True)
    if next_retry:
        app.console.print(f"Next retry due at {next_retry:%Y-%m-%d %H:%M} UTC.")
    if holders:
        app.console.print(f"In flight ({counts['sending']} sending): {escape(leases.describe_in_flight(holders))}.")
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
    with Session(app.engine) as session:
        target = leases.settle(session, issue)
        found = ledger.rows(session, target.id or 0, wanted, limit or None)
        counts = ledger.counts(session, target.id or 0)
    total = counts[wanted] if wanted else sum(counts.values())
    fields = ("id", "subscriber_id", "email", "name", "status", "attempts", "smtp_code",
              "last_error", "message_id", "next_attempt_at", "sent_at", "holder", "feedback",
              "feedback_status", "feedback_detail", "feedback_at")
    if as_json:
        print_json([{f: getattr(row, f) for f in fields} for row in found])
        return
    table = Table(title=f"{target.key}: {len(found)} deliveries" + (f" ({wanted})" if wanted else ""))
    for column in ("email", "status", "attempts", "code", "last error / sent at", "later"):
        table.add_column(column)
    for row in found:
        note = row.last_error or (f"{row.sent_at:%Y-%m-%d %H:%M:%S}" if row.sent_at else "")
        later = " ".join(filter(None, (row.feedback, row.feedback_status)))  # the bounce mailbox's word
        table.add_row(escape(row.email), row.status, str(row.attempts), str(row.smtp_code or ""),
                      escape(note), escape(later))
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
    second copy (with the same Message-ID, which many mail clients merge). Subscribers who
    unsubscribed or bounced meanwhile are skipped.

    \b
    Example:
      newsletter sends retry weekly-2026-W48 --unknown
      newsletter sends retry 3 --failed --unknown --yes
    """
    if not (failed or unknown):
        raise click.UsageError("say what to resend: --failed, --unknown or both")
    kinds = [w for w, on in (("failed", failed), ("unknown", unknown)) if on]
    what = " and ".join(kinds)
    with Session(app.engine) as session:
        target = leases.settle(session, issue)
        counts = ledger.counts(session, target.id or 0)
    count = counts["failed"] * failed + counts["unknown"] * unknown
    if not count:
        app.console.print(f"No {' or '.join(kinds)} deliveries in {target.key}.")
        return
    if not yes:
        click.confirm(f"Resend {count} {what} deliveries of {target.key}?", abort=True)
    requeue(app.engine, target.key, failed, unknown)
    report = _run(app, target.key, latest=False, dry_run=False, yes=True, quiet=False, force=force)
    _summary(app, report)
    raise SystemExit(exit_status(report))


def exit_status(report: Report, dry_run: bool = False) -> int:
    """The exit code a run ends with (README, "Exit codes")."""
    if report.ending is Ending.PAUSED:
        return EXIT_ERROR
    if report.undecided:
        return EXIT_UNDECIDED
    settled = (Ending.STOPPED, Ending.ENQUEUED, Ending.DECLINED, Ending.DRY_RUN)
    if report.owed and not dry_run and report.ending not in settled:
        return EXIT_OWED
    return 0


def _run(app: App, issue: str | None, latest: bool, dry_run: bool, yes: bool, quiet: bool,
         deliver: bool = True, force: bool = False) -> Report:
    """publish with a confirmation prompt, a progress bar and Ctrl-C turned into a stop flag."""
    stop = threading.Event()

    def confirm(target: Issue, audience: int) -> bool:
        noun = "subscriber" if audience == 1 else "subscribers"
        question = f"Send {target.key} \"{target.subject}\" to {audience} {noun}?"
        if target.status == "sending":
            question = f"Carry on sending {target.key} \"{target.subject}\" ({audience} deliveries in its ledger)?"
        return yes or click.confirm(question, default=False)

    columns = (TextColumn("Sending"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.0f}/s"), TimeRemainingColumn(),
               TextColumn("{task.fields[problems]}"))
    if dry_run:
        return dry_run_of(app.settings, app.engine, issue, latest=latest)
    if not deliver:
        return enqueue(app.settings, app.engine, issue, latest=latest, confirm=confirm, force=force)
    with Progress(*columns, console=app.err, transient=True, disable=quiet) as bar, \
            stop_on_signals(stop, app, "`newsletter send` again carries on"):
        task = bar.add_task("", total=None, rate=0.0, problems="")

        def progress(report: Report) -> None:
            done = report.sent + report.failed + report.retrying + report.unknown + report.skipped
            elapsed = max(bar.tasks[0].elapsed or 0.0, 1e-6)
            problems = (f"{report.failed} failed, {report.retrying} to retry"
                        if report.failed or report.retrying else "")
            bar.update(task, total=report.to_send, completed=done, rate=report.sent / elapsed,
                       problems=problems)

        return publish(app.settings, app.engine, issue, latest=latest, confirm=confirm, stop=stop,
                       progress=progress, force=force)


def _summary(app: App, report: Report) -> None:
    out = app.console.print
    if report.ending is Ending.DECLINED:
        out("Nothing sent.")
        return
    if report.ending is Ending.NOTHING:
        out(escape(report.why[0].upper() + report.why[1:]))
        _undecided(app, report)
        return
    if report.ending is Ending.ENQUEUED:
        out(f"Handed {report.issue_key} \"{escape(report.subject)}\" to the workers: "
            f"{report.to_send} deliveries owed ({report.total} in its ledger). "
            f"Run `newsletter worker` to send them; `newsletter sends status {report.issue_key}` "
            f"shows how far they got.")
        return
    if report.ending is Ending.DRY_RUN:
        out(f"Dry run of {report.issue_key} \"{escape(report.subject)}\": {report.sent} messages "
            f"built ({report.built_bytes / max(report.sent, 1) / 1024:.1f} KB each), none sent, "
            f"nothing written." + (f" {report.failed} could not be built." if report.failed else ""))
        return
    extra = [f"{n} {what}" for n, what in ((report.retrying, "to retry"), (report.failed, "failed"),
                                          (report.skipped, "skipped (unsubscribed since)"),
                                          (report.bounced, "bounced and suppressed")) if n]
    out(f"{report.issue_key} \"{escape(report.subject)}\": {report.sent} sent this run in "
        f"{report.seconds:.1f} s" + "".join(f", {e}" for e in extra) + ".")
    counts = ", ".join(f"{n} {s}" for s, n in report.counts.items() if n)
    out(f"Ledger: {counts or 'empty'}.")
    if report.reconciled:
        app.err.print(f"[yellow]{report.reconciled} deliveries were left in flight by a sender that "
                      f"stopped mid-attempt (a crash, kill -9): they are now unknown.[/]")
    for email, error in report.errors[:10]:
        out(f"  [red]{escape(email)}[/]: {escape(error)}")
    if report.ending is Ending.PAUSED:
        app.err.print(f"[bold red]Paused:[/] {escape(report.why)}")
    elif report.ending is Ending.STOPPED:
        out(f"Stopped by request; nothing is in flight. Run `newsletter send {report.issue_key}` to carry on.")
    if report.ending is Ending.FINISHED and not report.undecided:
        out(f"[green]{report.issue_key} is sent.[/]")
    elif report.next_retry_at:
        out(f"Deliveries waiting for a retry; the next is due at {report.next_retry_at:%Y-%m-%d %H:%M} "
            f"UTC: run `newsletter send {report.issue_key}` then (the scheduler does it by itself).")
    elif report.counts.get("sending"):
        out(f"{report.counts['sending']} deliveries are held by another sender: "
            f"`newsletter sends status {report.issue_key}` says which, and until when.")
    _undecided(app, report)
    if app.settings.delivery.transport == "outbox" and report.sent:
        out(f"Messages are in {app.settings.delivery.outbox_dir}/ (one .eml file each).")


def _undecided(app: App, report: Report) -> None:
    unknown = report.counts.get("unknown", 0)
    if not unknown:
        return
    finished = "finished, but " if report.undecided else ""
    app.err.print(f"[bold yellow]{escape(report.issue_key)} is {finished}{unknown} deliveries are "
                  f"unknown[/] (maybe delivered, maybe not). {UNKNOWN_HELP.format(key=escape(report.issue_key))}")


UNKNOWN_HELP = ("`newsletter sends list {key} --status unknown` shows why; `newsletter sends retry "
                "{key} --unknown` resends them (a second copy, same Message-ID, for whoever got one).")


def _hints(app: App, issue: Issue, counts: dict[str, int]) -> None:
    if counts["unknown"]:
        app.console.print(f"{counts['unknown']} unknown: the message went out and no reply came, or "
                          f"its sender stopped mid-attempt; maybe delivered, maybe not. "
                          + UNKNOWN_HELP.format(key=escape(issue.key)))
    if counts["failed"]:
        app.console.print(f"`newsletter sends list {issue.key} --status failed` shows why they failed.")


commands = [send, send_test_command, sends]
