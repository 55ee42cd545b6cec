"""The `newsletter` command: a thin Click shell that parses, calls the library and prints.

Each command group lives in its own module under pipeline/commands/ (so each stays small and
each stage's commands sit beside nothing else); this module assembles them and is the one place
where domain errors become readable messages with a non-zero exit code.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from typing import Any

import click

from pipeline.errors import NewsletterError, database_words
from subscribers.errors import SubscriberError

# Every top-level command: its name -> (its module under pipeline/commands/, its one-line help).
# Commands are imported only when run, since their modules pull in the database layer, the
# templates, the web framework or scikit-learn: `newsletter --help` prints this table instead and
# starts in a fraction of the time. tests/test_cli_help.py checks each line against the command's
# own docstring, so the two cannot drift apart.
COMMANDS: dict[str, tuple[str, str]] = {
    "bounces": ("bounces", "Bounces, complaints and emailed unsubscribes from the bounce mailbox."),
    "db": ("database", "Create or upgrade the database schema."),
    "doctor": ("doctor", "Check this setup before the first real send, and print the fix for each problem."),
    "essays": ("essays", "Import essays (scraped pages, Markdown), list them, show one, hold one back, remove one."),
    "feeds": ("feeds", "Read essays from RSS or Atom feeds (WordPress, Ghost, Hugo, Substack, ...)."),
    "init": ("project", "Start a newsletter in FOLDER (default: here), or prepare an existing one."),
    "issues": ("issues", "Compose issues (digests) from the essays not sent yet, list them, show one."),
    "lint": ("issues", "Check ISSUE against the email checklist: the real message a subscriber (or a sample one) "
                       "would get, its headers, its text part and its inlined HTML."),
    "preview": ("issues", 'Write the exact HTML (or text) a subscriber would receive for ISSUE (id, key or "latest").'),
    "schedule": ("schedule", "Send the weekly digest on its schedule, exactly once per week."),
    "send": ("send", "Send an issue to every active subscriber it is owed to (ISSUE: id, key or latest)."),
    "send-test": ("send", "Send one copy of ISSUE to an address, subject prefixed [TEST]; records nothing."),
    "sends": ("sends", "The delivery ledger of an issue: counts, rows, retries."),
    "serve": ("web", "Serve the browser preview, the archive, and the unsubscribe, confirm and subscribe pages."),
    "subscribers": ("subscribers", "Add, import, export, list, unsubscribe and remove subscribers."),
    "worker": ("worker", "Deliver every issue in `sending` status, side by side with any number of other workers."),
}


class NewsletterGroup(click.Group):
    """The root group: loads a command's module when it runs, and turns a domain error anywhere
    below into a message and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module = importlib.import_module(f"pipeline.commands.{COMMANDS[cmd_name][0]}")
            for command in module.commands:  # each module exposes the commands it adds here
                self.add_command(command)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        """As Click's, but a mistyped command is told the commands it may have meant: Click
        suggests from the commands loaded, and here none are until one runs."""
        name = click.utils.make_str(args[0])
        if name in COMMANDS or name in self.commands or ctx.resilient_parsing or name.startswith("-"):
            return super().resolve_command(ctx, args)
        raise click.exceptions.NoSuchCommand(name, possibilities=list(COMMANDS), ctx=ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit))
                for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NewsletterError, SubscriberError) as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            # The database failing mid-command (read-only, full disk, gone away): the first line
            # of its own words, not SQLAlchemy's traceback with the statement and its values
            # (addresses) in it, nor the SQL the driver quotes on the lines after.
            errors = sys.modules.get("sqlalchemy.exc")  # loaded by any command that got this far
            if errors is not None and isinstance(exc, errors.DBAPIError):
                raise click.ClickException(f"the database failed: {database_words(exc)}") from None
            raise


@click.group(cls=NewsletterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="NEWSLETTER_CONFIG",
    help="The config file (default: ./config.toml, or $NEWSLETTER_CONFIG).",
)
@click.version_option(package_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Publish essays as an email newsletter: import, compose, preview, send, schedule.

    \b
    Example, the weekly job by hand:
      newsletter essays import examples/essays
      newsletter subscribers import examples/subscribers.csv
      newsletter issues new
      newsletter send --latest
    """
    from pipeline.commands.base import App  # noqa: PLC0415  (not for --help: see COMMANDS)

    ctx.obj = App(config_path=config_path)


def main() -> None:
    """The `newsletter` script: run the command, then leave at once.

    Tearing the interpreter down (freeing every module of SQLAlchemy, SQLModel, premailer ...)
    takes a fifth of a second after the work is done and nothing is left to write: a cron run
    and every send paid it. When the command has finished, its output is flushed and no thread is
    left but daemons (which never hold an exit back), the process exits without it; otherwise
    it exits the usual way.
    """
    try:
        cli(prog_name="newsletter")
    except SystemExit as exc:
        if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
            raise  # work may still be going on: the usual exit waits for it
        code = exc.code
        if isinstance(code, str):  # sys.exit("message"): printed, exit status 1
            print(code, file=sys.stderr)
            code = 1
        if "pipeline.db" in sys.modules:  # not imported just to close nothing (--help)
            sys.modules["pipeline.db"].close_all()
        logging.shutdown()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away, or a closed stream
            raise exc from None
        os._exit(code if isinstance(code, int) else 0)
