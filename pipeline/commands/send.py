"""`newsletter send` and `send-test`: sending by hand, with a prompt, a progress bar and a summary."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from pipeline import history, issues
from pipeline.commands.base import (
    EXIT_ERROR,
    EXIT_OWED,
    EXIT_UNDECIDED,
    UNKNOWN_HELP,
    App,
    confirm,
    json_option,
    pass_app,
    print_json,
    readable_time,
    shown,
    shown_lines,
    stop_on_signals,
)
from pipeline.db import open_session
from pipeline.models import Issue

if TYPE_CHECKING:  # the renderer and the sender load when a command sends (`sends status` does not)
    from pipeline.publish import Report



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

    A draft that carries an essay held with `essays hold` is refused by --latest (and by ISSUE
    `latest`): the program picked it (exit code 1, naming the essays and the fixes). Named by
    key or id, it is sent, with a note that it carries held essays.

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
    report = run_publish(app, issue, latest=latest, dry_run=dry_run, yes=yes or as_json, quiet=as_json,
                  deliver=not enqueue, force=force)
    if as_json:
        print_json(report.as_dict())
    else:
        summary(app, report)
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
    from pipeline.copies import send_test  # noqa: PLC0415

    raw = send_test(app.settings, app.engine, issue, to)
    where = (f"the outbox {app.settings.delivery.outbox_dir}"
             if app.settings.delivery.transport == "outbox" else app.settings.delivery.smtp_host)
    app.console.print(f"Sent a test copy to {shown(to)} through {shown(str(where))} ({len(raw):,} bytes).")


def exit_status(report: Report, dry_run: bool = False) -> int:
    """The exit code a run ends with (README, "Exit codes")."""
    from pipeline.publish import Ending  # noqa: PLC0415

    if report.ending is Ending.PAUSED or report.refused:  # refused: as the real send would be
        return EXIT_ERROR
    if report.undecided:
        return EXIT_UNDECIDED
    settled = (Ending.STOPPED, Ending.ENQUEUED, Ending.DECLINED, Ending.DRY_RUN)
    if report.owed and not dry_run and report.ending not in settled:
        return EXIT_OWED
    return 0


def run_publish(app: App, issue: str | None, latest: bool, dry_run: bool, yes: bool, quiet: bool,
         deliver: bool = True, force: bool = False) -> Report:
    """publish with a confirmation prompt, a progress bar and Ctrl-C turned into a stop flag."""
    from pipeline.publish import dry_run as dry_run_of  # noqa: PLC0415
    from pipeline.publish import enqueue, publish  # noqa: PLC0415

    stop = threading.Event()

    def ask(target: Issue, audience: int) -> bool:
        noun = "subscriber" if audience == 1 else "subscribers"
        question = f"Send {target.key} \"{target.subject}\" to {audience} {noun}{_notes(app, target)}?"
        if target.status == "sending":
            question = f"Carry on sending {target.key} \"{target.subject}\" ({audience} deliveries in its ledger)?"
        return yes or confirm(question)

    if dry_run:
        return dry_run_of(app.settings, app.engine, issue, latest=latest)
    if not deliver:
        return enqueue(app.settings, app.engine, issue, latest=latest, confirm=ask, force=force)
    with _progress_bar(app, quiet) as progress, stop_on_signals(stop, app, "`newsletter send` again carries on"):
        return publish(app.settings, app.engine, issue, latest=latest, confirm=ask, stop=stop,
                       progress=progress, force=force)


@contextmanager
def _progress_bar(app: App, quiet: bool) -> Iterator[Callable[[Report], None] | None]:
    """A bar on a terminal only, as `progress(report)`: in a log or cron mail it is noise (and
    a thread redrawing nothing); rich.progress is not even loaded then."""
    if quiet or not app.err.is_terminal:
        yield None
        return
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("Sending"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.0f}/s"), TimeRemainingColumn(),
               TextColumn("{task.fields[problems]}"))
    with Progress(*columns, console=app.err, transient=True) as bar:
        task = bar.add_task("", total=None, rate=0.0, problems="")

        def progress(report: Report) -> None:
            elapsed = max(bar.tasks[0].elapsed or 0.0, 1e-6)
            problems = (f"{report.failed} failed, {report.retrying} to retry"
                        if report.failed or report.retrying else "")
            bar.update(task, total=report.to_send, completed=report.handled, rate=report.sent / elapsed,
                       problems=problems)

        yield progress


def _notes(app: App, target: Issue) -> str:
    """What the confirmation says of readers who had one of the issue's essays already, and of
    the held essays it carries (named, the issue is sent with them)."""
    with open_session(app.engine) as session:
        repeats, held = history.repeats(session, target), issues.held_in(session, target)
    had = "; ".join(f"{n} {'reader' if n == 1 else 'readers'} already had {slug}" for slug, n in repeats.items())
    return ((f" ({had}: {'resent to everyone' if target.resend else 'they are left out'})" if repeats else "")
            + (f" (it carries {', '.join(held)}, held)" if held else ""))


def summary(app: App, report: Report) -> None:
    from pipeline.publish import Ending  # noqa: PLC0415

    out = app.console.print
    for slug, n in report.left_out.items() if report.ending not in (Ending.NOTHING, Ending.DECLINED) else ():
        out(f"{n} {'reader' if n == 1 else 'readers'} already had {shown(slug)}: they are left out "
            f"(compose the issue with --resend to mail it to everyone).")
    if report.held and report.ending not in (Ending.NOTHING, Ending.DECLINED):
        out(f"{shown(report.issue_key)} carries {shown(', '.join(report.held))}, held: "
            + ("it would be sent because it was named." if report.ending is Ending.DRY_RUN
               else "sent because it was named."))
    if report.ending is Ending.DECLINED:
        out("Nothing sent.")
        return
    if report.ending is Ending.NOTHING:
        out(shown(report.why[0].upper() + report.why[1:]))
        _undecided(app, report)
        return
    if report.ending is Ending.ENQUEUED:
        out(f"Handed {report.issue_key} \"{shown(report.subject)}\" to the workers: "
            f"{report.to_send} deliveries owed ({report.total} in its ledger). "
            f"Run `newsletter worker` to send them; `newsletter sends status {report.issue_key}` "
            f"shows how far they got.")
        return
    if report.ending is Ending.DRY_RUN:
        out(f"Dry run of {report.issue_key} \"{shown(report.subject)}\": {report.built} messages "
            f"built ({report.built_bytes / max(report.built, 1) / 1024:.1f} KB each), none sent, "
            f"nothing written." + (f" {report.failed} could not be built." if report.failed else ""))
        if report.refused:
            app.err.print("[bold red]A real send would be refused:[/] " + shown_lines(report.refused), soft_wrap=True)
        return
    extra = [f"{n} {what}" for n, what in ((report.retrying, "to retry"), (report.failed, "failed"),
                                          (report.skipped, "skipped (no longer subscribed)"),
                                          (report.bounced, "bounced and suppressed")) if n]
    out(f"{report.issue_key} \"{shown(report.subject)}\": {report.sent} sent this run in "
        f"{report.seconds:.1f} s" + "".join(f", {e}" for e in extra) + ".")
    counts = ", ".join(f"{n} {s}" for s, n in report.counts.items() if n)
    out(f"Ledger: {counts or 'empty'}.")
    if report.reconciled:
        app.err.print(f"[yellow]{report.reconciled} deliveries were left in flight by a sender that "
                      f"stopped mid-attempt (a crash, kill -9, a database failure it could not outwait): they "
                      f"are now unknown.[/]")
    for email, error in report.errors[:10]:
        out(f"  [red]{shown(email)}[/]: {shown(error)}")
    if report.ending is Ending.PAUSED:
        app.err.print(f"[bold red]Paused:[/] {shown(report.why)}")
    elif report.ending is Ending.STOPPED:
        out(f"Stopped by request; nothing is in flight. Run `newsletter send {report.issue_key}` to carry on.")
    if report.ending is Ending.FINISHED and not report.undecided:
        out(f"[green]{report.issue_key} is sent.[/]")
    elif report.next_retry_at:
        out(f"Deliveries waiting for a retry; the next is due at "
            f"{readable_time(report.next_retry_at, not_before=True)}: run `newsletter send "
            f"{report.issue_key}` then (the scheduler does it by itself).")
    elif report.counts.get("sending"):
        out(f"{report.counts['sending']} deliveries are held by another sender: "
            f"`newsletter sends status {report.issue_key}` says which, and until when.")
    _undecided(app, report)
    if app.settings.delivery.transport == "outbox" and report.sent:
        out(f"Messages are in {app.settings.delivery.outbox_dir}/ (one .eml file each).")
        # A first try of the quick start is a real send to the outbox: its essays are then had.
        out("Nothing was mailed, but these essays now count as sent to these readers. To mail them "
            "once config.toml's delivery section names an SMTP relay: `newsletter issues new --resend "
            "--essay SLUG ...`, then `newsletter send --latest`.")


def _undecided(app: App, report: Report) -> None:
    unknown = report.counts.get("unknown", 0)
    if not unknown:
        return
    finished = "finished, but " if report.undecided else ""
    app.err.print(f"[bold yellow]{shown(report.issue_key)} is {finished}{unknown} deliveries are "
                  f"unknown[/] (maybe delivered, maybe not). {UNKNOWN_HELP.format(key=shown(report.issue_key))}")


commands = [send, send_test_command]
