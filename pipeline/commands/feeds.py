"""`newsletter feeds`: read essays from RSS or Atom feeds: add, list, poll, remove."""

from __future__ import annotations

import click
from rich.table import Table

from pipeline import feed_list, polling
from pipeline.commands.base import App, confirm, finish_report, json_option, pass_app, print_changes, print_json, shown
from pipeline.polling import FeedResult, PollReport


@click.group("feeds")
def group() -> None:
    """Read essays from RSS or Atom feeds (WordPress, Ghost, Hugo, Substack, ...).

    Feeds come from [sources] feeds in config.toml and from `feeds add`. The scheduler polls
    them before it composes each digest; `feeds poll` does it by hand.

    \b
    Example:
      newsletter feeds add https://essays.example.org/feed.xml
      newsletter feeds poll --dry-run
      newsletter feeds list
    """


@group.command("add")
@click.argument("url")
@click.option("--no-check", is_flag=True, help="Register without fetching the feed first.")
@pass_app
def add_command(app: App, url: str, no_check: bool) -> None:
    """Register a feed to poll. It is fetched once first, to check that it is a feed.

    Nothing is imported yet: the next poll does that, and on that first poll only entries
    from the last [sources] first_poll_days days become essays.

    \b
    Example:
      newsletter feeds add https://essays.example.org/feed.xml
    """
    url = feed_list.check_url(url)
    if not no_check:
        document = feed_list.check_feed(app.settings, url)
        app.console.print(f"{shown(document.title or url)}: {len(document.entries)} entries")
    feed_list.add_feed(app.settings, app.engine, url)
    app.console.print(f"Added {shown(url)}. Import its recent entries: newsletter feeds poll")


@group.command("remove")
@click.argument("url")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def remove_command(app: App, url: str, yes: bool) -> None:
    """Stop polling a feed added with `feeds add`. Its essays stay.

    It forgets which entries it has seen; added again, the feed's entries match their essays
    by link, so none is imported twice.

    \b
    Example:
      newsletter feeds remove https://essays.example.org/feed.xml --yes
    """
    if not yes:
        if not confirm(f"Stop polling {url}?"):
            raise click.Abort
    forgotten = feed_list.remove_feed(app.settings, app.engine, url)
    app.console.print(f"Removed {shown(url)} ({forgotten} entries forgotten; essays kept).")


@group.command("list")
@json_option
@pass_app
def list_command(app: App, as_json: bool) -> None:
    """List the feeds: where each is configured, its last poll and how many essays it gave.

    \b
    Example:
      newsletter feeds list
      newsletter feeds list --json
    """
    rows = feed_list.list_feeds(app.settings, app.engine)
    if as_json:
        print_json(rows)
        return
    if not rows:
        app.console.print("No feeds. Add one: newsletter feeds add https://example.org/feed.xml")
        return
    table = Table()
    table.add_column("url", overflow="fold")  # typed back into `feeds remove`: never cut
    for name in ("from", "title", "last poll", "status", "essays"):
        table.add_column(name)
    for row in rows:
        status = row["last_status"] or "not polled"
        if row["last_error"]:
            status = f"[red]{status}[/]: {shown(row['last_error'])}"
        table.add_row(shown(row["url"]), row["origin"], shown(row["title"]),
                      row["last_polled_at"].strftime("%Y-%m-%d %H:%M") if row["last_polled_at"]
                      else "—", status, str(row["essays"]))
    app.console.print(table)


@group.command("poll")
@click.option("--dry-run", is_flag=True, help="Fetch and compare; write nothing.")
@json_option
@pass_app
def poll_command(app: App, dry_run: bool, as_json: bool) -> None:
    """Fetch every feed and store its new or changed entries as essays.

    Unchanged feeds cost one conditional request (ETag / Last-Modified). An entry becomes an
    essay once (by its guid, else its link); an edited entry updates its essay, and a sent
    essay is not sent again. A feed that fails is named with the reason, the others still
    poll, and the exit code is 1.

    \b
    Example:
      newsletter feeds poll
      newsletter feeds poll --dry-run --json
    """
    report = polling.poll_feeds(app.settings, app.engine, dry_run=dry_run)
    finish_report(app, report, as_json, dry_run, _print_report)


def _print_report(app: App, report: PollReport, dry_run: bool) -> None:
    if not report.feeds:
        app.console.print("No feeds. Add one: newsletter feeds add https://example.org/feed.xml")
    would = "would be " if dry_run else ""
    for result in report.feeds:
        app.console.print(f"[bold]{shown(result.url)}[/] {_summary(result, would)}")
        print_changes(app, result.added, result.updated, result.warnings, result.failed, would,
                      indent="  ", failed_label="Failed entry")
        if result.error:
            app.err.print(f"  [red]Failed:[/] {shown(result.url)}: {shown(result.error)}",
                          soft_wrap=True)
    failed = sum(1 for result in report.feeds if not result.ok)
    app.console.print(("[bold]" if report.ok else "[bold red]")
                      + f"{len(report.feeds)} feeds polled, {failed} failed[/]")
    if dry_run:
        app.console.print("Dry run: nothing was written.")


def _summary(result: FeedResult, would: str) -> str:
    if result.status == "failed":
        return "[red]failed[/]"
    if result.status == "not-modified":
        return "[dim]not modified[/]"
    summary = (f"{len(result.added)} {would}added, {len(result.updated)} {would}updated, "
               f"{result.unchanged} unchanged")
    if result.skipped:
        summary += (f", {len(result.skipped)} skipped (older than the first poll's window, "
                    "undated then, or imported from a file: --json lists them)")
    return summary


commands = [group]
