"""`newsletter essays`: import essay files, list the essays, show one, hold one back, remove one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from pipeline.commands.base import App, confirm, finish_report, json_option, pass_app, print_changes, print_json, shown
from pipeline.db import open_session, session_scope
from pipeline.errors import NotFound
from pipeline.essays import ImportReport, describe_essay, get_essay, import_paths, list_essays, sent_key, set_held
from pipeline.issues import backlog, carriers, taking_out
from pipeline.related import related_for_essay
from pipeline.related_cache import cached_index, folder, warm
from pipeline.removal import Removal, remove_essays
from subscribers.text import printable

if TYPE_CHECKING:
    from sqlmodel import Session

PROGRESS_FROM = 20  # below this many files a progress bar is only flicker


@click.group("essays")
def group() -> None:
    """Import essays (scraped pages, Markdown), list them, show one, hold one back, remove one.

    \b
    Example:
      newsletter essays import examples/essays
      newsletter essays list
      newsletter essays show walking-at-dawn
      newsletter essays hold walking-at-dawn
      newsletter essays remove walking-at-dawn-copy --dry-run
    """


@group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Read and check the files, show what would change.")
@click.option("--archive", is_flag=True,
              help="Published before the newsletter: link to these essays, never mail them by themselves.")
@json_option
@pass_app
def import_command(app: App, paths: tuple[Path, ...], dry_run: bool, archive: bool, as_json: bool) -> None:
    """Import essay files or folders (searched for .txt, .md, .markdown).

    A .txt file is read as a page scraped from an essay site (title, dek, date, body; share
    lines, ads and bylines dropped; the page's related articles kept). A .md file is Markdown
    with YAML front matter between --- lines, or TOML between +++ lines (title, date, dek or
    summary, tags, slug, url). The slug is the front matter's `slug`, else the file name, so an
    edited file updates its essay. Unchanged files are left alone; a file that fails is named
    with the reason, the others still import, and the exit code is 1.

    An archive of essays published before the newsletter goes in with --archive: related
    links point to them, no digest takes them by itself (`issues new --essay SLUG` still can),
    and the first digests carry the new essays instead of years of old ones.

    \b
    Example:
      newsletter essays import examples/essays
      newsletter essays import drafts/walking-at-dawn.md notes/ --dry-run
      newsletter essays import drafts/ --json
      newsletter essays import ~/blog/content/posts --archive
    """
    engine = app.engine
    with Progress(
        TextColumn("Importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=app.err,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("", total=None, visible=False)

        def advance(done: int, total: int, path: Path) -> None:
            if total >= PROGRESS_FROM:
                bar.update(task, completed=done, total=total, description=path.name, visible=True)

        report = import_paths(engine, paths, progress=advance, dry_run=dry_run, archive=archive)
    if not dry_run:  # build the related links now, so that rendering the next issue need not
        with open_session(engine) as session:
            warm(session, app.settings)
    finish_report(app, report, as_json, dry_run, _print_report)


def _print_report(app: App, report: ImportReport, dry_run: bool) -> None:
    would = "would be " if dry_run else ""
    counts = (
        f"{len(report.added)} {would}added, {len(report.updated)} {would}updated, "
        f"{len(report.unchanged)} unchanged, {len(report.failed)} failed"
    )
    print_changes(app, report.added, report.updated, report.warnings, report.failed, would)
    app.console.print(("[bold]" if report.ok else "[bold red]") + counts + "[/]")
    if dry_run:
        app.console.print("Dry run: nothing was written.")


@group.command("list")
@json_option
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """List the essays, newest first: slug, title, date, sent (an issue key, "not yet",
    "held": held back with `essays hold`, or "archive": imported with --archive, never mailed
    by itself).

    \b
    Example:
      newsletter essays list
      newsletter essays list --json | jq -r '.[] | select(.sent == null) | .slug'
    """
    with open_session(app.engine) as session:
        rows: list[dict[str, Any]] = [
            {"slug": e.slug, "title": e.title, "date": e.published_on, "sent": key, "archive": e.archive,
             "held": e.held}
            for e, key in list_essays(session)
        ]
        counted = backlog(session)
    if as_json:
        print_json(rows)
        return
    if not rows:
        app.console.print("No essays yet. Import some: newsletter essays import essays "
                          "(the folder `newsletter init` made; any folder of .md or .txt files)")
        return
    # One line per essay. A slug is typed back into `essays show`, so it is never cut; titles
    # are shortened to what the terminal has left (`essays show` has the whole title).
    slug_width = max(len(printable(row["slug"])) for row in rows)
    sent_width = max([7, *(len(printable(row["sent"] or "")) for row in rows)])
    title_width = max(12, app.console.width - slug_width - 10 - sent_width - 13)
    table = Table()
    for name in ("slug", "title", "date", "sent"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(
            shown(row["slug"]),
            shown(_shorten(printable(row["title"]), title_width)),
            row["date"].isoformat() if row["date"] else "—",
            _sent_cell(row),
        )
    app.console.print(table)
    app.console.print(f"{counted.total} essays, {counted.owed} not sent yet"
                      + (f", {counted.held} held (no digest takes them until `essays release`)"
                         if counted.held else "")
                      + (f", {counted.archive} in the archive (never mailed by themselves)"
                         if counted.archive else ""))


def _sent_cell(row: dict[str, Any]) -> str:
    if row["sent"]:
        return shown(row["sent"])
    return "[dim]archive[/]" if row["archive"] else "[yellow]held[/]" if row["held"] else "[dim]not yet[/]"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


@group.command("show")
@click.argument("slug")
@json_option
@pass_app
def show_command(app: App, slug: str, as_json: bool) -> None:
    """Show one essay: dek, date, headings, excerpt, words, related.

    "Related links" are the essays a digest would link under this one, and why: the source
    page listed it ("source hint") or its text is similar (the score; see README, Issues). In
    a digest, essays of the same issue and titles already linked in it are skipped.

    \b
    Example:
      newsletter essays show proofing-in-a-cold-kitchen
      newsletter essays show proofing-in-a-cold-kitchen --json
    """
    with open_session(app.engine) as session:
        essay = get_essay(session, slug)
        info = describe_essay(essay, app.settings.digest.excerpt_length, sent_key(session, essay))
        links = related_for_essay(session, essay, app.settings.digest.related_per_essay,
                                  lambda: cached_index(session, folder(app.settings)))
        info["related_links"] = [
            {"slug": s.essay.slug, "title": s.essay.title, "reason": s.reason, "score": s.score}
            for s in links
        ]
    if as_json:
        print_json(info)
        return
    out = app.console
    out.print(f"[bold]{shown(info['title'])}[/]")
    if info["dek"]:
        out.print(f"[italic]{shown(info['dek'])}[/]")
    out.print(
        f"slug {shown(info['slug'])} · "
        f"{info['date'].isoformat() if info['date'] else 'no date'} · "
        f"{info['word_count']} words · "
        + (f"sent in {shown(info['sent_in'])}" if info["sent_in"] else "not sent yet")
        + (f" · held: no digest takes it until `newsletter essays release {shown(info['slug'])}`"
           if info["held"] else "")
    )
    if info["tags"]:
        out.print("tags: " + shown(", ".join(info["tags"])))
    if info["url"]:
        out.print(f"url: {shown(info['url'])}")
    out.print(f"\n[bold]Excerpt[/]\n{shown(info['excerpt'])}")
    if info["headings"]:
        out.print("\n[bold]Headings[/]")
        for heading in info["headings"]:
            out.print(f"  • {shown(heading)}")
    if info["related"]:
        out.print(f"\n[bold]Related on the source page[/] ({len(info['related'])})")
        for item in info["related"]:
            out.print(f"  • [dim]{item['date'] or 'no date':10}[/]  {shown(item['summary'])}")
    out.print(f"\n[bold]Related links[/] ({len(links)})")
    if not links:
        out.print("  none: no other essay is close enough (fewer links rather than unrelated ones)")
    for link in links:
        why = "source hint" if link.score is None else f"score {link.score:.3f}"
        out.print(f"  • [dim]{why:11}[/]  {shown(link.essay.slug)}  {shown(link.essay.title)}")


@group.command("hold")
@click.argument("slugs", nargs=-1, required=True, metavar="SLUG...")
@pass_app
def hold_command(app: App, slugs: tuple[str, ...]) -> None:
    """Hold essays back: no digest takes them by itself (the scheduler, `send --latest`,
    `issues new` without --essay) until `essays release`, and the scheduler and `send --latest`
    refuse a draft that carries one (exit code 1, naming the essay and the fixes). Naming one
    still carries it (`issues new --essay SLUG`, `issues edit --add-essay SLUG`), and `send
    ISSUE` naming the draft sends it: those are choices made for this essay. `essays list` and
    `essays show` say "held". An unknown slug is named, the others are still held, and the exit
    code is 1.

    \b
    Example:
      newsletter essays hold walking-at-dawn
      newsletter essays hold walking-at-dawn on-rivers
    """
    _hold_or_release(app, slugs, held=True)


@group.command("release")
@click.argument("slugs", nargs=-1, required=True, metavar="SLUG...")
@pass_app
def release_command(app: App, slugs: tuple[str, ...]) -> None:
    """Release held essays: the next digest may take them again, oldest first as ever. An
    unknown slug is named, the others are still released, and the exit code is 1.

    \b
    Example:
      newsletter essays release walking-at-dawn
    """
    _hold_or_release(app, slugs, held=False)


def _hold_or_release(app: App, slugs: tuple[str, ...], held: bool) -> None:
    unknown = False
    with session_scope(app.engine) as session:
        for slug in dict.fromkeys(slugs):
            try:
                essay, changed = set_held(session, slug, held)
            except NotFound as exc:
                app.err.print(f"[red]Failed:[/] {shown(str(exc))}", soft_wrap=True)
                unknown = True
                continue
            name = shown(slug)
            if not changed:
                app.console.print(f"{name} was held already" if held else f"{name} was not held")
            elif not held:
                app.console.print(f"released {name}: the next digest may take it")
            else:
                app.console.print(f"held {name}: no digest takes it until `newsletter essays release {name}`",
                                  soft_wrap=True)
                _tell_drafts(app, session, essay.id or 0, name)
    if unknown:
        raise SystemExit(1)


def _tell_drafts(app: App, session: Session, essay_id: int, name: str) -> None:
    """A hold keeps the essay out of new digests; a draft that carries it already still does,
    and is then sent only by name (see publish._held)."""
    for issue in carriers(session, essay_id).drafts:
        key = shown(issue.key)
        app.console.print(f"  the draft {key} carries it: the scheduler and `send --latest` refuse that "
                          f"draft while it is held (`newsletter send {key}` sends it as it is); "
                          f"{taking_out(key, [name])} takes it out", soft_wrap=True)


@group.command("remove")
@click.argument("slugs", nargs=-1, required=True, metavar="SLUG...")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, and what may not be; remove nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def remove_command(app: App, slugs: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Remove essays imported by mistake, after asking: only essays no issue has carried or
    carries. An essay that went out stays (readers had it, the web archive shows it; to keep
    an essay out of the digests, `essays hold` it); one a draft carries stays until the draft
    no longer does (`issues edit ISSUE --remove-essay SLUG`, or `issues discard ISSUE`). Related
    links stop pointing at a removed essay. Its file is left alone: move it out of the folder,
    or the next import of that folder brings it back; an essay from a feed does not come back.
    Every essay that may not go (or an unknown slug) is named, the others still go, and the
    exit code is 1.

    \b
    Example:
      newsletter essays remove walking-at-dawn-copy --dry-run
      newsletter essays remove walking-at-dawn-copy
      newsletter essays remove walking-at-dawn-copy draft-of-rivers --yes
    """
    with open_session(app.engine) as session:
        plan = remove_essays(session, slugs, dry_run=True)
    _print_refused(app, plan)
    if dry_run:
        for essay in plan.removed:
            app.console.print(f"would remove {shown(essay.slug)}  {shown(essay.title)}", soft_wrap=True)
        app.console.print("Dry run: nothing was removed.")
    elif plan.removed:
        plan.refused += _remove(app, [e.slug for e in plan.removed], yes).refused
    if not plan.ok:
        raise SystemExit(1)


def _remove(app: App, slugs: list[str], yes: bool) -> Removal:
    """Ask, then remove; each essay is checked again (an issue may have taken one since)."""
    count = f"{len(slugs)} essay{'' if len(slugs) == 1 else 's'}"
    if not yes and not confirm(f"Remove {count} ({printable(', '.join(slugs))}) from the database? "
                               "Files are left alone."):
        raise click.Abort
    with session_scope(app.engine) as session:
        done = remove_essays(session, slugs)
        _print_refused(app, done)
        for essay in done.removed:
            app.console.print(f"removed {shown(essay.slug)}" + (
                f" (its file {shown(essay.source_path)} is left alone: move it out of the folder, or the "
                "next import of it brings it back)" if essay.source_path else ""), soft_wrap=True)
    with open_session(app.engine) as session:  # the related links of the archive as it is now
        warm(session, app.settings)
    return done


def _print_refused(app: App, report: Removal) -> None:
    for why in report.refused:
        app.err.print(f"[red]Failed:[/] {shown(why)}", soft_wrap=True)


commands = [group]
