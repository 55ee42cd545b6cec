"""What every command shares: settings read once, the database opened on first use, JSON output."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

import click
from rich.console import Console
from sqlalchemy.engine import Engine

from pipeline import db, signals
from pipeline.config import Settings, load_settings
from subscribers.text import printable

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes of every command (README, "Exit codes"); 1 (an error) and 2 (usage) are Click's.
EXIT_ERROR = 1  # something failed, or the relay refused and the run paused
EXIT_EXPIRED = 3  # `schedule run-due`: a period was recorded as expired
EXIT_OWED = 4  # deliveries are still owed (retries waiting, a run stopped or held elsewhere)
EXIT_UNDECIDED = 5  # finished, but some deliveries are `unknown` (maybe delivered): decide

# What to do about `unknown` deliveries: `send`, `sends status` and run-due say it alike.
UNKNOWN_HELP = ("`newsletter sends list {key} --status unknown` shows why; `newsletter sends retry "
                "{key} --unknown` resends them (a second copy, same Message-ID, for whoever got one).")


# Rich's markup, as rich.markup reads it: a tag is `[`, then a-z, #, / or @, up to the first `]`
# with no `[` before it. The backslashes right before a tag escape it two for one; anywhere else
# only the one backslash right before a `[` means something (it is dropped).
_BRACKET = re.compile(r"(\\*)\[")
_TAG_BODY = re.compile(r"[a-z#/@][^\[]*?\]")
# Text ending in backslashes, or in a `[` that what follows could complete into a tag, reads
# differently depending on what the message puts after it (a bare `[` too: a backslash before
# it is kept by doubling, so a "b]" after it made `[b]` a tag); an empty style ends it for good.
_OPEN_END = re.compile(r"(?:\\|\[(?:[a-z#/@][^\[\]]*)?)\Z")
_END = "[dim][/dim]"


def _bracket(match: re.Match[str]) -> str:
    backslashes = len(match.group(1))
    if _TAG_BODY.match(match.string, match.end()):
        return "\\" * (2 * backslashes + 1) + "["
    return "\\" * (backslashes + 1) + "["


def literal(text: str) -> str:
    """`text` as console markup that prints exactly `text`, whatever markup comes before or after.

    rich.markup.escape only escapes what looks like a whole tag, so a backslash before any
    other `[` was lost ("\\[1]" printed "[1]"), and a trailing backslash printed doubled unless a
    tag followed it.
    """
    escaped = _BRACKET.sub(_bracket, text)
    if not _OPEN_END.search(text):
        return escaped
    trailing = len(text) - len(text.rstrip("\\"))
    return escaped + "\\" * trailing + _END  # before a tag, backslashes count half


def shown(text: str) -> str:
    """Stored or file-given text for console.print: markup and control characters shown literally.

    "[red]" stays "[red]" (not a colour), "\\[" stays "\\[", and ESC, NUL or a bidi override print
    as `\\x1b`, `\\x00`, `\\u202e` instead of steering the terminal: rows imported before the
    import stripped them, or names that came in another way, print harmlessly too.
    """
    return literal(printable(text))


def shown_lines(text: str) -> str:
    """`shown`, line by line, for a message of several lines the program wrote around stored or
    external words (a config error listing each key, a refusal listing each failed check): its
    line breaks stay line breaks, and everything else prints as `shown` prints it."""
    return "\n".join(shown(line) for line in text.split("\n"))


@dataclass
class App:
    """What every command gets: settings read once, and the database opened when first asked."""

    config_path: str | None
    _settings: Settings | None = None
    _engine: Engine | None = None
    # No emoji codes: a title with ":fire:" in it prints the word, not a picture.
    console: Console = field(default_factory=lambda: Console(highlight=False, emoji=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False, emoji=False))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.connect(self.settings.database.url)
        return self._engine


pass_app = click.make_pass_decorator(App)


def confirm(question: str, *, default: bool = False) -> bool:
    """click.confirm, except that with no terminal to ask on (cron, a pipe with nothing more to
    read) the command stops with an error naming --yes, instead of a bare "Aborted!"."""
    try:
        return click.confirm(question, default=default)
    except click.Abort:
        if sys.stdin is not None and not sys.stdin.isatty():
            raise click.ClickException(f"{question} needs an answer, and there is no terminal to ask "
                                       "on: pass --yes to answer yes") from None
        raise


def to_jsonable(value: Any) -> Any:
    """Dates as ISO strings, containers recursively, everything else as json understands it."""
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def readable_time(value: datetime, *, not_before: bool = False) -> str:
    """A moment as people read it in a terminal: "2026-11-30 17:05 UTC" (no seconds, no offset
    arithmetic); --json keeps the full ISO value. Naive values are UTC, as the ledger stores them.
    `not_before`: a moment to act at or after (a retry coming due), rounded up to the minute, so
    that doing it at the minute shown finds it due (17:04:26 shows as 17:05)."""
    moment = value if value.tzinfo is None else value.astimezone(UTC)
    if not_before and (moment.second or moment.microsecond):
        moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def print_json(value: Any) -> None:
    """Machine-readable output for `--json`: the same fields the table shows."""
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


class Report(Protocol):
    """What an import-like command reports: `ok` is False when anything failed."""

    @property
    def ok(self) -> bool: ...

    def as_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Report)


def finish_report(app: App, report: R, as_json: bool, dry_run: bool,
                  print_report: Callable[[App, R, bool], None]) -> None:
    """Print an import's report (JSON for scripts, else for people) and exit 1 if anything failed:
    the other files or feeds were still taken, but a script must notice the one that was not."""
    if as_json:
        print_json({**report.as_dict(), "dry_run": dry_run})
    else:
        print_report(app, report, dry_run)
    if not report.ok:
        raise SystemExit(1)


def print_changes(app: App, added: Iterable[str], updated: Iterable[str], warnings: Iterable[str],
                  failed: Iterable[object], would: str, indent: str = "", failed_label: str = "Failed") -> None:
    """The essays an import or a feed poll added or updated (or `would` have), its warnings and
    its failures, one line each: `essays import` and `feeds poll` print them alike."""
    for slug in added:
        app.console.print(f"{indent}[green]{would}added[/]     {shown(slug)}")
    for slug in updated:
        app.console.print(f"{indent}[yellow]{would}updated[/]   {shown(slug)}")
    for warning in warnings:
        app.err.print(f"{indent}[yellow]Warning:[/] {shown(warning)}", soft_wrap=True)
    for failure in failed:
        app.err.print(f"{indent}[red]{failed_label}:[/] {shown(str(failure))}", soft_wrap=True)


def json_option(f: F) -> F:
    """The `--json` flag every list and show command takes."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


@contextmanager
def stop_on_signals(stop: threading.Event, app: App, then: str = "") -> Iterator[None]:
    """Ctrl-C or SIGTERM: finish and record the batch in flight, then stop; a second one aborts.

    The abort is abrupt on purpose (os._exit, no cleanup): the batch in flight stays `sending`
    and turns `unknown` when its lease runs out, never silently resent (README, "Delivery
    semantics"). `then` says what happens next, e.g. "the next run resumes".
    """
    def first(name: str) -> None:
        app.err.print(f"{name}: stopping after the batch in flight (again to abort at once)"
                      + (f"; {then}." if then else "."))

    def again(signum: int) -> None:
        app.err.print(f"{signals.name_of(signum)} again: aborted. Rows in flight show as unknown "
                      f"after their lease.")
        os._exit(130)

    with signals.stop_on(stop, first, again):
        yield
