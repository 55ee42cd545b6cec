"""Shared fixtures: a config and database per test, a real SMTP server, the CLI runner."""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
from pipeline.cli import cli
from pipeline.config import PROJECT_ROOT, Settings, load_settings

CORPUS = PROJECT_ROOT.parent / "shared" / "corpus" / "essays"
PG_ADMIN_URL = os.environ.get("NEWSLETTER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="Rewrite the golden files of rendered email instead of comparing against them.",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture
def corpus_dir() -> Path:
    """The scraped essay pages in ../shared/corpus/essays; the test skips when they are absent."""
    if not (CORPUS / "INDEX.tsv").is_file():
        pytest.skip(f"the essay corpus is not here ({CORPUS})")
    return CORPUS


# A public https web.base_url: over SMTP the send gate refuses the default loopback http one.
PUBLIC_WEB = {"base_url": "https://letters.example.org"}


def write_config(directory: Path, database_url: str | None = None, **sections: dict[str, Any]) -> Path:
    """A copy of the project's config.toml in `directory`, with values replaced per section."""
    text = (PROJECT_ROOT / "config.toml").read_text(encoding="utf-8")
    if database_url:
        sections.setdefault("database", {})["url"] = database_url
    for section, values in sections.items():
        for key, value in values.items():
            literal = _toml_literal(value)
            pattern = re.compile(rf"(\[{section}\][^\[]*?^){key} = .*?$", re.S | re.M)
            text, count = pattern.subn(lambda m: m.group(1) + f"{key} = {literal}", text, count=1)
            if not count:  # not in the file: add it to the section
                text = text.replace(f"[{section}]\n", f"[{section}]\n{key} = {literal}\n", 1)
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config.toml in a fresh folder: SQLite file and outbox there, everything else default."""
    return write_config(tmp_path)


@pytest.fixture
def settings(config_file: Path) -> Settings:
    return load_settings(config_file)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    """The test's own SQLite database, migrated to the newest schema."""
    engine = db.connect(settings.database.url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def postgres_available() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    try:
        import psycopg  # noqa: PLC0415  (only the PostgreSQL tests need it)

        with psycopg.connect(_libpq_url(PG_ADMIN_URL), connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: skip, and say why
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}"


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL server, dropped afterwards."""
    import psycopg  # noqa: PLC0415

    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_url(postgres_admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_admin.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(_libpq_url(postgres_admin), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def any_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on SQLite and again on PostgreSQL: for tests whose guarantees must hold on both."""
    if request.param == "sqlite":
        return load_settings(write_config(tmp_path))
    url = request.getfixturevalue("postgres_url")
    return load_settings(write_config(tmp_path, database_url=url))


@pytest.fixture
def any_engine(any_settings: Settings) -> Iterator[Engine]:
    engine = db.connect(any_settings.database.url)
    yield engine
    engine.dispose()


@dataclass
class Received:
    """One message the test SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


@dataclass
class SMTPServer:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on loopback that keeps every message it accepts."""
    from aiosmtpd.controller import Controller  # noqa: PLC0415  (test-only dependency)

    server = SMTPServer(host="127.0.0.1", port=0)

    class Handler:
        async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
            server.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
            return "250 OK"

    # aiosmtpd's start() connects to the port it was given to check the server is up, so
    # port 0 cannot be passed through: ask the OS for a free port first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        server.port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=server.port)
    controller.start()
    yield server
    controller.stop()


@dataclass
class CLI:
    """Runs `newsletter --config <the test's config> ARGS` in-process with Click's runner."""

    config_file: Path
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(
            cli, ["--config", str(self.config_file), *args], input=input, catch_exceptions=False
        )


@pytest.fixture
def run_cli(config_file: Path) -> CLI:
    return CLI(config_file, CliRunner())
