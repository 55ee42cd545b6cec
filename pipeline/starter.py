"""The files `newsletter init` writes into a new folder: config.toml, .gitignore, a first essay."""

from __future__ import annotations

import json
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipeline.config import PACKAGE_DIR, parse_settings
from pipeline.errors import ConfigError

STARTER = PACKAGE_DIR / "skeleton"  # shipped as package data, so a wheel install has it too
SAMPLE_ESSAY = Path("essays") / "first-essay.md"


@dataclass(frozen=True)
class Answers:
    """The four values a newsletter cannot do without; every other key has a default."""

    name: str
    site_url: str
    sender_address: str
    base_url: str
    postal_address: str = ""  # may be left for later: a send over SMTP then refuses to go


def config_text(answers: Answers, target: Path) -> str:
    """The commented config.toml for `answers`, checked by the same parser every command uses.

    Raises ConfigError (naming every wrong value) before anything is written.
    """
    template = (STARTER / "config.toml").read_text(encoding="utf-8")
    # json.dumps gives a TOML basic string: quotes, backslashes and controls escaped alike.
    text = template.format(
        name=answers.name.replace("{", "{{").replace("}", "}}"),
        name_toml=json.dumps(answers.name, ensure_ascii=False),
        site_url_toml=json.dumps(answers.site_url, ensure_ascii=False),
        sender_toml=json.dumps(answers.sender_address, ensure_ascii=False),
        base_url_toml=json.dumps(answers.base_url, ensure_ascii=False),
        postal_line=(f"postal_address = {json.dumps(answers.postal_address, ensure_ascii=False)}"
                     if answers.postal_address else '# postal_address = "Your Name, 1 Street, 1000 City"'),
    )
    # Parsed as if it lived in the temporary folder: the target folder may not exist yet, and
    # the only path the file resolves (the default SQLite file) needs an existing folder.
    stand_in = Path(tempfile.gettempdir()) / "config.toml"
    try:
        parse_settings(tomllib.loads(text), stand_in)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(str(stand_in), str(target))) from None
    return text


def write_starter(folder: Path, answers: Answers, today: date) -> list[Path]:
    """Write config.toml, .gitignore and a sample essay into `folder`; what was written.

    config.toml must not exist (the caller checks); .gitignore and the essay are left alone
    when present, so running init in a folder that has them loses nothing.
    """
    text = config_text(answers, folder / "config.toml")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    config = folder / "config.toml"
    with config.open("x", encoding="utf-8") as handle:  # "x": never overwrite a config
        handle.write(text)
    written.append(config)
    gitignore = folder / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text((STARTER / "gitignore").read_text(encoding="utf-8"), encoding="utf-8")
        written.append(gitignore)
    essay = folder / SAMPLE_ESSAY
    if not essay.exists():
        essay.parent.mkdir(parents=True, exist_ok=True)
        sample = (STARTER / "first-essay.md").read_text(encoding="utf-8")
        essay.write_text(sample.replace("{today}", today.isoformat()).replace("{name}", answers.name),
                         encoding="utf-8")
        written.append(essay)
    return written
