"""`newsletter issues edit` and `issues discard`: change a draft before it is sent, or drop it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipeline.commands.base import App, confirm, pass_app, shown
from pipeline.db import open_session, session_scope


@click.command("edit")
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--subject", default=None, help="The subject line (one line of text).")
@click.option("--intro", "intro_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="A Markdown file: the note shown above the essays (an empty file removes it; - reads stdin).")
@click.option("--add-essay", "add", multiple=True, metavar="SLUG", help="Carry this essay too, at the end (repeat).")
@click.option("--remove-essay", "remove", multiple=True, metavar="SLUG", help="Stop carrying this essay (repeat).")
@click.option("--resend/--no-resend", default=None,
              help="Mail it to every reader, those who had one of its essays included (--no-resend: leave them out).")
@pass_app
def edit_command(app: App, issue_ref: str, subject: str | None, intro_file: Path | None,
                 add: tuple[str, ...], remove: tuple[str, ...], resend: bool | None) -> None:
    """Change a draft ISSUE (id or key): its subject, an intro note above the essays (Markdown,
    shown in the HTML and text parts and the web copy), the essays it carries, whether readers
    who had one of its essays get it. An issue that is being sent or was sent is refused (exit
    code 1): readers have it as it is. A subject that was the composed one follows the essays
    when they change. Like `issues new`, it says how many readers had an essay it carries, and
    names a held essay it adds (the scheduler and `send --latest` then refuse the draft).

    \b
    Example:
      newsletter issues edit 2026-11-30 --intro note.md --subject "Rivers, and a walk"
      newsletter issues edit 2026-11-30 --add-essay on-rivers --remove-essay walking-at-dawn
      newsletter issues edit 2026-11-30 --resend
    """
    from pipeline import history  # noqa: PLC0415  (the ORM: only when a command changes a draft)
    from pipeline.editorial import edit  # noqa: PLC0415
    from pipeline.issues import issue_essays  # noqa: PLC0415

    if subject is None and intro_file is None and not add and not remove and resend is None:
        raise click.UsageError("nothing to change: give --subject, --intro, --add-essay, --remove-essay "
                               "or --resend/--no-resend")
    intro: str | None = None
    if intro_file is not None:
        try:
            if str(intro_file) == "-":
                intro = sys.stdin.read()
            else:
                intro = intro_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the intro note {intro_file}: {exc}") from None
    with session_scope(app.engine) as session:
        issue = edit(session, app.settings, issue_ref, subject=subject, intro=intro, add=add, remove=remove,
                     resend=resend)
        essays = issue_essays(session, issue)
        key, title, resent = issue.key, issue.subject, issue.resend
        repeats = history.repeats(session, issue)
        held = [e.slug for e in essays if e.held and e.slug in add]  # the others: told when added, or when held
    app.console.print(f"Edited issue {shown(key)}: {shown(title)}", soft_wrap=True)
    for essay in essays:
        app.console.print(f"  {shown(essay.slug)}  {shown(essay.title)}")
    tell_held(app, held, key)
    tell_repeats(app, repeats, resent, key)
    app.console.print(f"Preview it: newsletter preview {key} --open")


def tell_held(app: App, held: list[str], key: str) -> None:
    """The held essays (`essays hold`) a draft carries because they were named, and what that
    means for the draft: `issues new` and `issues edit --add-essay` say it alike."""
    for slug in held:
        name = shown(slug)
        app.console.print(f"{name} is held: carried because it was named, but the scheduler and `send --latest` "
                          f"refuse {shown(key)} while it carries a held essay (`newsletter send {shown(key)}` sends "
                          f"it; `newsletter essays release {name}` lets digests take it by themselves)",
                          soft_wrap=True)


def tell_repeats(app: App, repeats: dict[str, int], resend: bool, key: str) -> None:
    """How many readers had each essay of the issue already, and what the send does about it:
    `issues new` and `issues edit` say it alike, before a send could reach fewer than expected."""
    for slug, n in repeats.items():
        app.console.print(f"{n} {'reader' if n == 1 else 'readers'} already had {shown(slug)}: "
                          + ("it is resent to everyone." if resend else "they will be left out "
                             f"(`newsletter issues edit {key} --resend` mails it to everyone)."),
                          soft_wrap=True)


@click.command("discard")
@click.argument("issue_ref", metavar="ISSUE")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def discard_command(app: App, issue_ref: str, yes: bool) -> None:
    """Delete a draft ISSUE (id or key); its essays stay, unsent, for the next issue. An issue
    that is being sent or was sent is never deleted (exit code 1).

    \b
    Example:
      newsletter issues discard 2026-11-30
      newsletter issues discard 2026-11-30-2 --yes
    """
    from pipeline.editorial import discard  # noqa: PLC0415  (the ORM: only when a command changes a draft)
    from pipeline.issues import find_issue  # noqa: PLC0415

    with open_session(app.engine) as session:
        issue = find_issue(session, issue_ref)
        key, title = issue.key, issue.subject
    if not yes:
        if not confirm(f"Discard the draft {key} \"{title}\"?"):
            raise click.Abort
    with session_scope(app.engine) as session:
        discard(session, key)
    app.console.print(f"Discarded issue {shown(key)}; its essays wait for the next issue.")
