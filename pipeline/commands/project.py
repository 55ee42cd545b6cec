"""`newsletter init`: a new newsletter folder, or the database and key of an existing one."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path

import click

from pipeline.commands.base import App, pass_app, shown
from pipeline.config import find_config
from pipeline.config_reader import address_problem
from pipeline.starter import Answers, write_starter
from pipeline.web_addresses import url_problem
from subscribers.tokens import SECRET_ENV, SECRET_FILE, load_secret

LOCAL_BASE_URL = "http://127.0.0.1:8025"  # `newsletter serve`'s own address: fine for trying out


@click.command("init")
@click.argument("folder", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="The newsletter's name (From name, page titles).")
@click.option("--site-url", help="Where the essays live on the web, e.g. https://essays.example.org.")
@click.option("--sender", help="The From address, on a domain you control, e.g. letters@example.org.")
@click.option("--base-url", help=f"The public https address of `newsletter serve` (default {LOCAL_BASE_URL}).")
@click.option("--postal-address", default="", help="The postal address every footer carries (may be set later).")
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: take the values from the options.")
@pass_app
def init(app: App, folder: Path | None, name: str | None, site_url: str | None, sender: str | None,
         base_url: str | None, postal_address: str, yes: bool) -> None:
    """Start a newsletter in FOLDER (default: here), or prepare an existing one.

    Without a config.toml, writes one holding only what must be decided (name, site URL,
    sender, public base URL; asked for unless given as options; the postal address every
    footer carries may wait, but a send over SMTP refuses to go without it), every other key commented
    out with its default; a .gitignore (database, secret key, outbox); and a sample essay in
    essays/. An existing config.toml is never overwritten. Then creates the database and a
    token-signing key: $NEWSLETTER_SECRET_KEY, or else the file .secret_key beside
    config.toml (readable by you only, kept out of git). Keep it: links in emails already
    sent stop working without it.

    \b
    Example:
      newsletter init letters
      newsletter init letters --yes --name "Field Notes" --site-url https://essays.example.org \\
          --sender letters@essays.example.org --base-url https://letters.example.org \\
          --postal-address "Field Notes, 1 Mill Lane, Riverton"
      newsletter init
    """
    if folder is not None:
        config = folder / "config.toml"
    else:
        config = find_config(app.config_path)
    given = {"--name": name, "--site-url": site_url, "--sender": sender, "--base-url": base_url,
             "--postal-address": postal_address}
    if config.exists():
        if any(given.values()):
            raise click.ClickException(f"{config} exists: not overwritten. Edit it, or run "
                                       "`newsletter init NEW-FOLDER` for another newsletter.")
        app.console.print(f"Using the existing {shown(str(config))} (not changed).")
    else:
        answers = _ask(name, site_url, sender, base_url, postal_address, interactive=not yes)
        written = write_starter(config.parent, answers, date.today())  # checked before writing
        for path in written:
            app.console.print(f"Wrote {shown(str(path))}")
    app.config_path = str(config)
    settings = app.settings
    _ = app.engine  # opening the database creates and migrates it
    app.console.print(f"Database ready: {shown(settings.database.url)}")
    created: list[str] = []
    load_secret(settings.base_dir, announce=created.append)
    if created:
        app.console.print(shown(created[0]))
    elif os.environ.get(SECRET_ENV, "").strip():
        app.console.print(f"The token-signing key comes from ${SECRET_ENV}.")
    else:
        app.console.print(f"The token-signing key is in {shown(str(settings.base_dir / SECRET_FILE))} (kept).")
    go = f"cd {folder} && " if folder is not None and folder.resolve() != Path.cwd() else ""
    app.console.print(
        "Next (README, \"Quick start\"):\n"
        f"  {go}newsletter essays import essays\n"
        "  newsletter subscribers add you@example.org --name \"You\"\n"
        "  newsletter issues new && newsletter preview latest --open\n"
        "  newsletter send-test latest --to you@example.org\n"
        "  newsletter send --latest",
        soft_wrap=True, markup=False,
    )


def _ask(name: str | None, site_url: str | None, sender: str | None, base_url: str | None,
         postal_address: str, interactive: bool) -> Answers:
    """The four values (and the postal address, which may wait): from the options, else asked
    for; with --yes the first three must be given."""
    if interactive:
        try:
            # Each answer checked as it is given: a wrong one is asked again, not refused at the
            # end with every answer lost.
            name = name or click.prompt("Newsletter name")
            site_url = site_url or click.prompt("Site URL (where the essays live, https://...)",
                                                value_proc=_checked(url_problem))
            sender = sender or click.prompt("Sender address (From:)", value_proc=_checked(address_problem))
            base_url = base_url or click.prompt("Public base URL of `newsletter serve`", default=LOCAL_BASE_URL,
                                                value_proc=_checked(url_problem))
            postal_address = postal_address or click.prompt(
                "Postal address for every footer (empty: set it later)", default="", show_default=False)
        except click.Abort:
            if sys.stdin is None or sys.stdin.isatty():
                raise  # Ctrl-C at the prompt
            # Nobody to answer (cron, a pipe that ran out): say what to give instead of "Aborted!".
            raise click.UsageError("no terminal to ask on: give --yes with --name, --site-url and "
                                   "--sender (and --base-url, --postal-address as needed)") from None
    missing = [opt for opt, value in (("--name", name), ("--site-url", site_url), ("--sender", sender))
               if not value]
    if missing:
        raise click.UsageError(f"give {', '.join(missing)} (or leave out --yes to be asked)")
    assert name and site_url and sender
    return Answers(name, site_url, sender, base_url or LOCAL_BASE_URL, postal_address.strip())


def _checked(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    """A prompt's check: the answer, stripped, or BadParameter (Click says why and asks again)."""
    def check(value: str) -> str:
        why = problem(value.strip())
        if why:
            raise click.BadParameter(why)
        return value.strip()
    return check


commands = [init]
