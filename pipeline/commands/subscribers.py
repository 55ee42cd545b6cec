"""`newsletter subscribers`: the audience from the command line."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from pipeline import history
from pipeline.commands.base import App, confirm, json_option, pass_app, print_json, shown
from pipeline.confirmations import send_queued
from pipeline.db import open_session
from subscribers import consent, roster
from subscribers.confirmation_queue import latest_for
from subscribers.csvfile import MAPPABLE, sniff
from subscribers.importer import ImportReport, export_csv, import_csv
from subscribers.model import SubscriberStatus
from subscribers.tokens import load_secret

STATUSES = click.Choice([s.value for s in SubscriberStatus])
SHOW_AT_MOST = 20  # problem rows printed per kind; --json has them all
PROGRESS_FROM = 5000  # lines; below this a progress bar is only flicker


@click.group("subscribers")
def group() -> None:
    """Add, import, export, list, unsubscribe and remove subscribers.

    \b
    Example:
      newsletter subscribers import examples/subscribers.csv
      newsletter subscribers add ann@example.org --name "Ann Lee"
      newsletter subscribers list --status active
    """


@group.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name, as it should appear in the To: header.")
@click.option("--pending", is_flag=True, help="Add as pending (not mailed until they confirm).")
@click.option("--confirm", "send_confirm", is_flag=True, help="Add as pending and email them a confirmation link.")
@pass_app
def add(app: App, email: str, name: str, pending: bool, send_confirm: bool) -> None:
    """Add one subscriber, active at once: you vouch that they asked for the newsletter.

    An address that unsubscribed, bounced, complained or was removed is refused: only the
    person can come back, by signing up again and confirming. With --confirm the address is
    added as pending and gets a confirmation email (through the configured transport); the
    same is how a person who left can be invited back.

    \b
    Example:
      newsletter subscribers add ann@example.org --name "Ann Lee"
      newsletter subscribers add bob@example.org --confirm
    """
    settings = app.settings
    with open_session(app.engine, expire_on_commit=False) as session:
        if send_confirm:
            subscriber, needs = consent.subscribe(
                session, email, name=name, source="cli", double_opt_in=True,
                check_deliverability=settings.subscribers.check_deliverability,
            )
            if not needs:
                app.console.print(f"{shown(subscriber.email)} is already an active subscriber.")
                return
            # Queued like a web sign-up's, then sent now, so you see whether it went.
            send_queued(settings, app.engine, secret=load_secret(settings.base_dir, announce=app.err.print))
            request = latest_for(app.engine, subscriber.id or 0)
            if request is None or request.status != "sent":
                status = request.status if request else "missing"
                why = request.last_error if request and request.last_error else status
                later = (" It stays queued: `newsletter worker`, `newsletter schedule` or `newsletter serve` "
                         "send it when the relay takes it.") if status == "queued" else ""
                raise click.ClickException(
                    f"The confirmation email to {subscriber.email} was not sent: {why}.{later}")
            app.console.print(
                f"Sent a confirmation link to {shown(subscriber.email)} "
                f"(status {subscriber.status} until they follow it; valid 7 days)."
            )
            return
        subscriber, outcome = consent.add(
            session, email, name=name, source="cli", pending=pending,
            check_deliverability=settings.subscribers.check_deliverability,
        )
    app.console.print(f"{outcome.capitalize()}: {shown(subscriber.email)} ({subscriber.status})")


@group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what the import would do; change nothing.")
@click.option(
    "--column", "columns", multiple=True, metavar="FIELD=HEADER",
    help="Which column holds the address, name or status, e.g. --column email=E-mail --column 'name=Full name'.",
)
@click.option("--pending", is_flag=True, help="Add new addresses as pending instead of active.")
@json_option
@pass_app
def import_command(app: App, file: Path, dry_run: bool, columns: tuple[str, ...], pending: bool, as_json: bool) -> None:
    """Import subscribers from a CSV file and report what happened to every row.

    Reads UTF-8 (with or without BOM), UTF-16 or Windows-1252, separated by commas, semicolons
    or tabs; finds the address and name columns by their usual headers (or --column), joins
    first and last name columns, skips blank lines and extra columns. New addresses become
    active (you vouch for their consent; --pending otherwise); known ones get their name
    updated; addresses that left are never brought back. A status column (as `export` writes,
    or another tool's "unsubscribed", "cleaned", "pending") is honoured: opt-outs in the file
    are recorded as opt-outs. Rows that are not addresses are refused with their line number;
    the good rows are imported all the same and the exit code is 1.

    FILE "-" reads standard input.

    \b
    Example:
      newsletter subscribers import examples/subscribers.csv --dry-run
      newsletter subscribers import export.csv --column email=E-mail --column "name=Full name"
      other-tool export | newsletter subscribers import -
    """
    mapping = _parse_columns(columns)
    settings = app.settings
    with _read_twice(file) as file, open_session(app.engine, expire_on_commit=False) as session, Progress(
        TextColumn("Importing"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} lines"),
        console=app.err, transient=True, disable=as_json,
    ) as bar:
        lines = sniff(file).lines
        task = bar.add_task("", total=lines, visible=lines >= PROGRESS_FROM)
        report = import_csv(
            session, file, columns=mapping, pending=pending, dry_run=dry_run,
            check_deliverability=settings.subscribers.check_deliverability,
            progress=lambda line: bar.update(task, completed=min(line, lines)),
        )
    if as_json:
        print_json(asdict(report))
    else:
        _print_report(app, report)
    if report.refused:
        raise SystemExit(1)


@contextmanager
def _read_twice(file: Path) -> Iterator[Path]:
    """`file` itself when it is a regular file; else (standard input as "-", a pipe) a copy kept
    aside while the import runs: the import reads the file twice, once to find its encoding and
    separator, which a pipe cannot be."""
    if str(file) != "-" and file.is_file():
        yield file
        return
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / ("stdin.csv" if str(file) == "-" else file.name)
        with copy.open("wb") as kept:
            if str(file) == "-":
                shutil.copyfileobj(sys.stdin.buffer, kept)
            else:
                with file.open("rb") as source:
                    shutil.copyfileobj(source, kept)
        yield copy


def _parse_columns(columns: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in columns:
        field, sep, header = item.partition("=")
        if not sep or field.strip().lower() not in MAPPABLE or not header.strip():
            raise click.BadParameter(
                f"{item!r}: expected email=HEADER, name=HEADER or status=HEADER", param_hint="--column"
            )
        mapping[field.strip().lower()] = header.strip()
    return mapping


def _print_report(app: App, report: ImportReport) -> None:
    out = app.console
    verb = "would be" if report.dry_run else "were"
    for title, problems, style in (
        ("Refused (not imported: fix these rows)", report.refused, "red"),
        ("Left alone: they unsubscribed, bounced, complained or were removed", report.opted_out, "yellow"),
        ("Opt-outs recorded from the file's status column", report.opt_outs_recorded, "yellow"),
        ("Skipped as duplicates", report.duplicates, "dim"),
    ):
        if problems:
            out.print(f"[{style}]{title}:[/]")
            for problem in problems[:SHOW_AT_MOST]:
                out.print(f"  line {problem.line}: {shown(problem.email or '(empty)')}: "
                          f"{shown(problem.reason)}", soft_wrap=True)
            if len(problems) > SHOW_AT_MOST:
                out.print(f"  ... and {len(problems) - SHOW_AT_MOST} more (--json lists them all)")
    if report.names_cleaned:
        out.print(f"Names with line breaks or control characters {verb} cleaned: {report.names_cleaned}.")
    out.print(
        f"{'Dry run: ' if report.dry_run else ''}{report.rows} row{'' if report.rows == 1 else 's'}: "
        f"{report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.duplicates)} duplicates, "
        f"{len(report.opted_out)} left alone, "
        f"{f'{len(report.opt_outs_recorded)} opt-outs recorded, ' if report.opt_outs_recorded else ''}"
        f"{len(report.refused)} refused"
        f"{' (nothing was written)' if report.dry_run else ''}.",
        soft_wrap=True,
    )


@group.command("export")
@click.option("--status", type=STATUSES, help="Only subscribers with this status.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write here instead of to stdout.")
@pass_app
def export(app: App, status: str | None, output: Path | None) -> None:
    """Write subscribers as CSV (UTF-8): email, name, status, source and dates.

    Cells that a spreadsheet would run as a formula (starting with =, +, -, @) get a leading
    ' so they show as text; `subscribers import` removes it again. Removed subscribers have no
    data left and are never exported.

    \b
    Example:
      newsletter subscribers export > subscribers.csv
      newsletter subscribers export --status unsubscribed -o left.csv
    """
    with open_session(app.engine) as session:
        if output is None:
            count = export_csv(session, sys.stdout, status)
        else:
            try:
                handle = output.open("w", encoding="utf-8", newline="")
            except OSError as exc:  # a missing folder, no permission: the user's to fix
                raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
            with handle:
                count = export_csv(session, handle, status)
    noun = "subscriber" if count == 1 else "subscribers"
    # soft_wrap: a long path printed whole, as a terminal wraps it, not broken mid-name
    app.err.print(f"Exported {count} {noun}{f' to {shown(str(output))}' if output else ''}.", soft_wrap=True)


@group.command("list")
@click.option("--status", type=STATUSES, help="Only subscribers with this status.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0: all).")
@json_option
@pass_app
def list_command(app: App, status: str | None, limit: int, as_json: bool) -> None:
    """List subscribers, newest first, with the count for each status.

    \b
    Example:
      newsletter subscribers list
      newsletter subscribers list --status pending --json
    """
    with open_session(app.engine) as session:
        counts = consent.counts(session)
        rows = roster.newest_first(session, status, limit)
    fields = ("email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")
    total = counts[status] if status else sum(n for key, n in counts.items() if key != SubscriberStatus.REMOVED.value)
    cut = status != SubscriberStatus.REMOVED.value and len(rows) < total
    if as_json:
        print_json({"counts": counts, "subscribers": [{f: getattr(s, f) for f in ("id", *fields)} for s in rows],
                    "truncated": cut})
        if cut:  # on stderr too, as `sends list --json` says it: a script may not look for the key
            click.echo(f"Showing {len(rows)} of {total}; --limit 0 shows all.", err=True)
        return
    table = Table("email", "name", "status", "source", "since")
    for column in (0, 2, 4):  # address, status, date whole (`unsubscribe` takes the address)
        table.columns[column].no_wrap = True  # so Rich shrinks the name and source instead
    for s in rows:
        table.add_row(shown(s.email), shown(s.name), s.status, shown(s.source), s.created_at.date().isoformat())
    if rows:
        app.console.print(table)
    if status == SubscriberStatus.REMOVED.value:  # tombstones: nothing left to show
        app.console.print(f"{total} removed: their addresses and names are erased, so none is listed.")
    elif cut:
        app.console.print(f"Showing {len(rows)} of {total}; --limit 0 shows all.")
    app.console.print(", ".join(f"{n} {key}" for key, n in counts.items()))


@group.command("show")
@click.argument("email")
@json_option
@pass_app
def show(app: App, email: str, as_json: bool) -> None:
    """Show one subscriber and their history: every issue they were in the audience of (key,
    date, essays, what became of it) and the essays they have had. "Had" counts sent and unknown
    deliveries (unknown: handed to the relay, no reply; most arrive), so a later issue leaves
    them out rather than risk a second copy.

    \b
    Example:
      newsletter subscribers show ana@example.org
      newsletter subscribers show ana@example.org --json
    """
    with open_session(app.engine) as session:
        subscriber = consent.by_address(session, email)
        issues, had = history.history(session, subscriber.id or 0), history.received_essays(session, subscriber.id or 0)
    fields = ("id", "email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")
    if as_json:
        print_json({"subscriber": {f: getattr(subscriber, f) for f in fields},
                    "history": [asdict(r) for r in issues], "received_essays": had})
        return
    app.console.print(f"{shown(subscriber.email)}  {shown(subscriber.name)}  {subscriber.status}, "
                      f"since {subscriber.created_at.date().isoformat()}", soft_wrap=True)
    if not issues:
        app.console.print("No issue has been sent to them yet.")
        return
    table = Table("issue", "date", "status", "essays")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in issues:
        note = f" ({r.note})" if r.note and r.status != "sent" else ""
        table.add_row(shown(r.issue_key), r.date.date().isoformat() if r.date else "", r.status + shown(note),
                      shown(", ".join(r.essays)))
    app.console.print(table)
    app.console.print(f"{len(had)} {'essay' if len(had) == 1 else 'essays'} had (sent or maybe sent).")


@group.command("unsubscribe")
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def unsubscribe(app: App, email: str, yes: bool) -> None:
    """Unsubscribe an address (say, one that asked by email). Nothing is erased.

    Asks first: only the reader can come back (by signing up and confirming), so a mistyped
    address cannot be undone from here. An address not on the list fails before the question,
    and one already off it is not asked about.

    \b
    Example:
      newsletter subscribers unsubscribe ann@example.org --yes
    """
    # Looked up before asking, in a session of its own (none is held open while a person
    # answers): a mistyped address is named at once, and one already off the list is no question.
    with open_session(app.engine) as session:
        status = consent.by_address(session, email).status
    if not consent.would_opt_out(status, SubscriberStatus.UNSUBSCRIBED):
        app.console.print(f"{shown(email)} was already off the list.")
        return
    if not yes and not confirm(f"Unsubscribe {email}? Only they can come back, by signing up again."):
        raise click.Abort
    with open_session(app.engine) as session:
        changed = consent.unsubscribe(session, email)
    app.console.print(f"Unsubscribed {shown(email)}." if changed else f"{shown(email)} was already off the list.")


@group.command("remove")
@click.argument("email")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def remove(app: App, email: str, yes: bool) -> None:
    """Erase an address and its name everywhere (a data-protection request).

    The address is kept only as a one-way hash on the suppression list, so no later import or
    `add` can bring it back; only the person can, by signing up again and confirming. The
    send history keeps its counts but no longer says who. For an address not on the list the
    question says so (nothing to erase; a yes only suppresses it), and the command exits 1.

    \b
    Example:
      newsletter subscribers remove ann@example.org --yes
    """
    if not yes and not confirm(_removal_question(app, email)):
        raise click.Abort
    with open_session(app.engine) as session:
        consent.remove(session, email)
    app.console.print(f"Removed {shown(email)}: personal data erased, address suppressed.")


def _removal_question(app: App, email: str) -> str:
    """What a yes to `remove` does: erase a subscriber, or, for an address not on the list (a
    typo, say), only suppress it; said before the answer, not after it."""
    with open_session(app.engine) as session:  # closed before the question: a person may take a while
        known = consent.find(session, email) is not None
    if known:
        return f"Erase {email} and its name from the list and the send history?"
    return (f"{email} is not on the list: there is nothing to erase. Suppress it anyway, so that no "
            "import or add can put it on the list?")


commands = [group]
