"""`newsletter init`: a newsletter started in an empty folder, as a new user starts one."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import load_settings
from subscribers.tokens import SECRET_ENV

VALUES = ["--name", "Notes", "--site-url", "https://notes.example.org",
          "--sender", "me@notes.example.org", "--base-url", "https://letters.example.org"]


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture(autouse=True)
def empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEWSLETTER_CONFIG", raising=False)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    return tmp_path


def test_init_in_an_empty_folder_writes_a_minimal_working_newsletter(empty_folder: Path) -> None:
    result = run("init", "letters", "--yes", *VALUES)
    assert result.exit_code == 0, result.output
    folder = empty_folder / "letters"
    raw = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
    # Only what must be decided is set; every other key is there commented out, documented.
    assert raw == {"newsletter": {"name": "Notes", "site_url": "https://notes.example.org",
                                  "sender_address": "me@notes.example.org"},
                   "web": {"base_url": "https://letters.example.org"},
                   "database": {}, "schedule": {}, "digest": {}, "subscribers": {}, "delivery": {}}
    text = (folder / "config.toml").read_text(encoding="utf-8")
    for key in ("# postal_address", "# transport = \"outbox\"", "# timezone", "# dkim_selector"):
        assert key in text
    ignored = (folder / ".gitignore").read_text(encoding="utf-8").split()
    assert {"*.db", ".secret_key", "outbox/", ".cache/"} <= set(ignored)
    assert (folder / "essays" / "first-essay.md").is_file()
    assert (folder / "newsletter.db").is_file()
    assert stat.S_IMODE((folder / ".secret_key").stat().st_mode) == 0o600
    assert "cd letters && newsletter essays import essays" in result.output
    # Followed as written, the steps end in a send: a subscriber comes before it.
    assert result.output.index("newsletter subscribers add") < result.output.index("newsletter send --latest")
    settings = load_settings(folder / "config.toml")
    assert settings.newsletter.sender_name == "Notes"

    imported = run("--config", "letters/config.toml", "essays", "import", "letters/essays")
    assert imported.exit_code == 0 and "1 added" in imported.output


def test_init_asks_for_the_values_when_not_given(empty_folder: Path) -> None:
    result = run("init", input="Field Notes\nhttps://essays.example.org\nletters@essays.example.org\n\n"
                               "1 Mill Lane, Riverton\n")
    assert result.exit_code == 0, result.output
    settings = load_settings(empty_folder / "config.toml")
    assert settings.newsletter.name == "Field Notes"
    assert settings.web.base_url == "http://127.0.0.1:8025"  # the default offered
    assert settings.newsletter.postal_address == "1 Mill Lane, Riverton"


def test_init_asks_again_for_an_answer_it_cannot_take(empty_folder: Path) -> None:
    """A bare host for the site URL was taken, all five questions asked, then refused with
    nothing written: every answer had to be typed again. Each is checked as it is given."""
    result = run("init", input="Field Notes\nessays.example.org\nhttps://essays.example.org\nletters\n"
                               "letters@essays.example.org\n\n\n")
    assert result.exit_code == 0, result.output
    assert "expected an http:// or https:// URL" in result.output
    assert "an email address like" in result.output
    settings = load_settings(empty_folder / "config.toml")
    assert settings.newsletter.site_url == "https://essays.example.org"
    assert settings.newsletter.sender_address == "letters@essays.example.org"

def test_init_with_a_postal_address_writes_it_and_the_footer_check_passes(empty_folder: Path) -> None:
    result = run("init", "letters", "--yes", *VALUES, "--postal-address", "Notes, 1 Mill Lane, Riverton")
    assert result.exit_code == 0, result.output
    assert load_settings(empty_folder / "letters" / "config.toml").newsletter.postal_address == (
        "Notes, 1 Mill Lane, Riverton")
    config = ("--config", "letters/config.toml")
    assert run(*config, "essays", "import", "letters/essays").exit_code == 0
    assert run(*config, "issues", "new").exit_code == 0
    lint = run(*config, "lint", "latest")
    assert "H21" not in lint.output, lint.output


def test_init_never_overwrites_a_config(empty_folder: Path) -> None:
    config = empty_folder / "config.toml"
    config.write_text("# mine\n", encoding="utf-8")
    result = run("init", "--yes", *VALUES)
    assert result.exit_code == 1 and "exists: not overwritten" in result.output
    assert config.read_text(encoding="utf-8") == "# mine\n"


def test_init_without_the_values_and_with_yes_names_what_is_missing(empty_folder: Path) -> None:
    result = run("init", "letters", "--yes", "--name", "Notes")
    assert result.exit_code == 2 and "give --site-url, --sender" in result.output
    assert not (empty_folder / "letters").exists()


def test_init_with_wrong_values_reports_them_all_and_writes_nothing(empty_folder: Path) -> None:
    result = run("init", "--yes", "--name", "Notes", "--site-url", "notes.example.org",
                 "--sender", "me", "--base-url", "ftp://x")
    assert result.exit_code == 1
    for key in ("newsletter.site_url", "newsletter.sender_address", "web.base_url"):
        assert key in result.output
    assert "config.toml: 3 problems" in result.output
    assert list(empty_folder.iterdir()) == []


def test_without_a_config_other_commands_point_to_init(empty_folder: Path) -> None:
    result = run("essays", "list")
    assert result.exit_code == 1 and "`newsletter init` writes one here" in result.output


def test_init_with_nobody_to_answer_says_which_options_to_give(tmp_path: Path) -> None:
    # From a script with nothing on stdin it printed a bare "Aborted!".
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "letters")])
    assert result.exit_code == 2
    assert "no terminal to ask on: give --yes with --name, --site-url and --sender" in " ".join(result.output.split())
    assert not (tmp_path / "letters" / "config.toml").exists()
