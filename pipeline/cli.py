"""The `newsletter` command: a thin Click shell that parses, calls the library and prints.

Each command group lives in its own module under pipeline/commands/ (so each stays small and
each stage's commands sit beside nothing else); this module assembles them and is the one place
where domain errors become readable messages with a non-zero exit code.
"""

from __future__ import annotations

from typing import Any

import click

from pipeline.commands import (
    bounces,
    database,
    doctor,
    essays,
    feeds,
    issues,
    project,
    schedule,
    send,
    sends,
    subscribers,
    web,
    worker,
)
from pipeline.commands.base import App
from pipeline.errors import NewsletterError
from subscribers.errors import SubscriberError


class NewsletterGroup(click.Group):
    """The root group: turns a domain error anywhere below into a message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NewsletterError, SubscriberError) as exc:
            raise click.ClickException(str(exc)) from None


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
    ctx.obj = App(config_path=config_path)


# Each command module exposes `commands`: the groups and commands it adds at the top level.
for module in (bounces, database, doctor, essays, feeds, issues, project, schedule, subscribers, send, sends, web,
               worker):
    for command in module.commands:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="newsletter")
