"""`newsletter issues`, `preview` and `lint`: compose a digest, see it as a subscriber will, check it."""

from __future__ import annotations

import tempfile
import webbrowser
from collections.abc import Sequence
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from pipeline import glance
from pipeline.commands.base import App, json_option, literal, pass_app, print_json, readable_time, shown
from pipeline.commands.issue_edits import discard_command, edit_command, tell_held, tell_repeats
from pipeline.config import Settings
from pipeline.db import open_session, scratch_session, session_scope
from pipeline.lint_help import anchor, fix_for
from subscribers.text import has_controls

# `issues list` and `issues show` read through glance.py and start without the ORM; the
# commands that compose, render or check an issue import their stages when they run.
if TYPE_CHECKING:
    from pipeline.lint import Finding
    from pipeline.models import Essay, Issue


@click.group("issues")
def group() -> None:
    """Compose issues (digests) from the essays not sent yet, list them, show one.

    \b
    Example:
      newsletter issues new
      newsletter issues list
      newsletter issues edit latest --intro note.md
    """


@group.command("new")
@click.option("--essay", "slugs", multiple=True, metavar="SLUG",
              help="Carry this essay (repeat for several, in order). Default: the oldest unsent.")
@click.option("--key", default=None, help="The issue's unique key (default: the day, 2026-11-30, then 2026-11-30-2).")
@click.option("--resend", is_flag=True,
              help="Mail an --essay that went out already to everyone, readers who had it included.")
@click.option("--dry-run", is_flag=True, help="Show what the issue would carry; store nothing.")
@json_option
@pass_app
def new(app: App, slugs: tuple[str, ...], key: str | None, resend: bool, dry_run: bool,
        as_json: bool) -> None:
    """Compose a draft issue from the essays not sent yet (oldest first, up to digest.max_essays),
    or from the essays named. Nothing is sent; see it with `newsletter preview`.

    An --essay that went out already goes only to readers who have not had it (the send leaves
    the others out and says how many), or with --resend to everyone. An --essay held back with
    `essays hold` is carried (named, it is chosen), with a note. An --essay being sent right
    now, or a --key that another issue has, is refused (nothing is composed; exit code 1).

    \b
    Example:
      newsletter issues new --dry-run
      newsletter issues new
      newsletter issues new --essay walking-at-dawn --essay on-rivers
      newsletter issues new --essay walking-at-dawn --resend
    """
    from pipeline import history  # noqa: PLC0415  (composing: the ORM)
    from pipeline.issues import compose, issue_essays  # noqa: PLC0415

    if key is not None and not key.strip():
        raise click.BadParameter("is empty: give a key, or leave --key out for the day's key",
                                 param_hint="--key")
    if key is not None and has_controls(key):  # a key is printed, and named in URLs and file names
        raise click.BadParameter("must be one line of text without control characters", param_hint="--key")
    # A dry run composes in a session that is never committed: it stores nothing.
    with (scratch_session if dry_run else session_scope)(app.engine) as session:
        issue = compose(session, app.settings, slugs=list(slugs) or None, key=key,
                        resend=resend, existing_ok=False)
        essays = issue_essays(session, issue)
        data = describe_issue(issue, essays)
        repeats = history.repeats(session, issue)
        held = [e.slug for e in essays if e.held]  # only a named essay can be: see issues.kept_back
    if dry_run:
        data["id"] = None
    data["readers_who_had"] = repeats
    if as_json:
        print_json(data)
        return
    if dry_run:
        app.console.print(f"Would compose: {shown(data['subject'])}  (dry run: nothing stored)", soft_wrap=True)
        for essay in data["essays"]:
            app.console.print(f"  {shown(essay['slug'])}  {shown(essay['title'])}")
        tell_held(app, held, issue.key)
        return
    app.console.print(f"Composed issue [bold]{data['id']}[/] ({shown(issue.key)}): {shown(issue.subject)}",
                      soft_wrap=True)
    for essay in data["essays"]:
        app.console.print(f"  {shown(essay['slug'])}  {shown(essay['title'])}")
    tell_held(app, held, issue.key)
    tell_repeats(app, repeats, resend, issue.key)
    app.console.print(f"Preview it: newsletter preview {issue.key} --open")


@group.command("list")
@json_option
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """List every issue, newest first.

    \b
    Example:
      newsletter issues list
      newsletter issues list --json
    """
    with app.engine.connect() as connection:
        rows = [describe_issue(issue, essays) for issue, essays in glance.issues(connection)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        app.console.print("No issues yet: compose one with `newsletter issues new`.")
        return
    # At 80 columns the subject keeps its room: an old manual-<uuid> key is cut, not the title.
    table = Table("id")
    table.add_column("key", max_width=12, no_wrap=True, overflow="ellipsis")
    table.add_column("status")
    table.add_column("essays", justify="right")
    table.add_column("created", no_wrap=True)  # the day; `issues show` and --json have the time
    table.add_column("subject", ratio=1)
    for row in rows:
        table.add_row(str(row["id"]), shown(row["key"]), row["status"], str(len(row["essays"])),
                      f"{row['created_at']:%Y-%m-%d}", shown(row["subject"]))
    app.console.print(table)


@group.command("show")
@click.argument("issue_ref", metavar="ID")
@json_option
@pass_app
def show(app: App, issue_ref: str, as_json: bool) -> None:
    """Show one issue (by numeric id, key or "latest"): subject, preheader, status, its essays.

    \b
    Example:
      newsletter issues show 3
      newsletter issues show weekly-2026-W48 --json
    """
    with app.engine.connect() as connection:
        issue = glance.find_issue(connection, issue_ref)
        data = describe_issue(issue, glance.essays_of(connection, issue.id))
    if as_json:
        print_json(data)
        return
    for label in ("id", "key", "status", "subject", "preheader", "intro", "created_at", "started_at",
                  "finished_at"):
        value = data[label]
        if value is not None:
            text = readable_time(value) if isinstance(value, datetime) else str(value)
            app.console.print(f"[bold]{label:<12}[/]{shown(text)}")
    app.console.print("[bold]essays[/]")
    for essay in data["essays"]:
        app.console.print(f"  {essay['position'] + 1}. {shown(essay['slug'])}  {shown(essay['title'])}")


@click.command("preview")
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--as", "as_email", metavar="EMAIL", help="The subscriber to render for (default: a sample one).")
@click.option("--text", "text_part", is_flag=True, help="The plain-text part instead of the HTML.")
@click.option("--open", "open_browser", is_flag=True, help="Open the result in the default browser.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file.")
@pass_app
def preview(app: App, issue_ref: str, as_email: str | None, text_part: bool, open_browser: bool,
            output: Path | None) -> None:
    """Write the exact HTML (or text) a subscriber would receive for ISSUE (id, key or "latest").

    It is taken from the very message a send would make (the same function builds both), so
    what you see is what they get. Without --as, a sample subscriber is used (a made-up name and
    an unsubscribe link that unsubscribes nobody). Without -o, the result goes to standard output.

    \b
    Example:
      newsletter preview latest --open
      newsletter preview 3 --as ana@example.org -o ana.html
      newsletter preview weekly-2026-W48 --text
    """
    issue, raw = _message(app, issue_ref, as_email)
    # The parts of the very message a send would hand to the transport (preview is sending
    # without the transport): decoded, they are the exact HTML and text the subscriber gets.
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    part = message.get_body(("plain",) if text_part else ("html",))
    assert part is not None
    body = part.get_content().replace("\r\n", "\n")
    recipient = str(message["To"])
    if output is None and open_browser:
        suffix = ".txt" if text_part else ".html"
        with tempfile.NamedTemporaryFile("w", suffix=suffix, prefix="newsletter-preview-", delete=False,
                                         encoding="utf-8") as handle:
            output = Path(handle.name)
    if output is not None:
        try:
            output.write_text(body, encoding="utf-8")
        except OSError as exc:  # a missing folder, no permission: the user's to fix, not a bug
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
        size = len(body.encode("utf-8")) / 1024
        app.err.print(f"Wrote {shown(str(output))} ({size:.1f} KB) for {shown(recipient)}", soft_wrap=True)
    else:
        click.echo(body, nl=False)
    # False: no browser found (a server over ssh, no $DISPLAY); silence would look like a hang.
    if open_browser and output is not None and not webbrowser.open(output.resolve().as_uri()):
        app.err.print(f"Could not open a browser on this machine: open {shown(str(output))} where "
                      "you can, or run `newsletter serve` and browse to its preview.", soft_wrap=True)


@click.command("lint")
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--as", "as_email", metavar="EMAIL", help="The subscriber to build the message for.")
@json_option
@pass_app
def lint(app: App, issue_ref: str, as_email: str | None, as_json: bool) -> None:
    """Check ISSUE against the email checklist: the real message a subscriber (or a sample one)
    would get, its headers, its text part and its inlined HTML. MUST failures are listed and the
    exit code is 1; SHOULD items are warnings.

    \b
    Example:
      newsletter lint latest
      newsletter lint weekly-2026-W48 --as ana@example.org --json
    """
    from pipeline.lint import failures, lint_message  # noqa: PLC0415

    settings = app.settings
    issue, raw = _message(app, issue_ref, as_email)
    findings = lint_message(raw, settings.newsletter.sender_domain, settings.newsletter.postal_address)
    _report(app, settings, issue, findings, as_json)
    if failures(findings):
        raise SystemExit(1)


def _report(app: App, settings: Settings, issue: Issue, findings: list[Finding], as_json: bool) -> None:
    from pipeline.lint import failures, warnings  # noqa: PLC0415

    if as_json:
        def described(f: Finding) -> dict[str, str]:
            return {**vars(f), "fix": fix_for(f.code), "explained": anchor(f.code)}
        print_json({"issue": issue.key, "failures": [described(f) for f in failures(findings)],
                    "warnings": [described(f) for f in warnings(findings)]})
        return
    for finding in [*failures(findings), *warnings(findings)]:
        label = "[red]{} MUST[/]  " if finding.level == "MUST" else "[yellow]{} SHOULD[/]"
        app.console.print(f"{label.format(finding.code)}  {shown(finding.message)}", soft_wrap=True)
        app.console.print(f"     fix: {literal(fix_for(finding.code))} ({anchor(finding.code)})",
                          soft_wrap=True, style="dim")
    failed, warned = len(failures(findings)), len(warnings(findings))
    verdict = "[red]fails[/]" if failed else "[green]passes[/]"
    app.console.print(f"Issue {shown(issue.key)} {verdict} the email checklist: "
                      f"{failed} MUST failure{'' if failed == 1 else 's'}, "
                      f"{warned} warning{'' if warned == 1 else 's'}.")
    if any(f.code == "H11" and "http://" in f.message for f in findings) and \
            settings.web.base_url.startswith("http://"):
        app.console.print(f"Hint: web.base_url is {settings.web.base_url}; subscribers need an https "
                          "address there for the unsubscribe and web-copy links.")


def _message(app: App, issue_ref: str, email: str | None) -> tuple[Issue, bytes]:
    """The issue, and the message bytes a send would make of it for this subscriber (or a sample
    with an inert link)."""
    from pipeline.copies import personal_copy  # noqa: PLC0415
    from pipeline.issues import find_issue  # noqa: PLC0415
    from subscribers.consent import by_address  # noqa: PLC0415
    from subscribers.tokens import load_secret  # noqa: PLC0415

    with open_session(app.engine) as session:
        issue = find_issue(session, issue_ref)
        subscriber = None if email is None else by_address(session, email)
        secret = load_secret(app.settings.base_dir, announce=lambda note: app.err.print(shown(note)))
        return issue, personal_copy(session, app.settings, secret, issue, subscriber)


def describe_issue(issue: Issue | glance.IssueRow,
                   essays: Sequence[Essay | glance.CarriedEssay]) -> dict[str, Any]:
    """An issue and its essays as the list/show commands print them (and --json gives them)."""
    return {
        "id": issue.id,
        "key": issue.key,
        "status": issue.status,
        "subject": issue.subject,
        "preheader": issue.preheader,
        "intro": issue.intro or None,
        "resend": issue.resend,
        "created_at": issue.created_at,
        "started_at": issue.started_at,
        "finished_at": issue.finished_at,
        "not_after": issue.not_after,
        "essays": [
            {"position": i, "slug": e.slug, "title": e.title, "published_on": e.published_on}
            for i, e in enumerate(essays)
        ],
    }


commands = [group, preview, lint]
group.add_command(edit_command)
group.add_command(discard_command)
