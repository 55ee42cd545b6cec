"""Shared fixtures: a config and database per test, a real SMTP server, the CLI runner."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, time
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


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the tests that send it, however the suite was started.

    A shell starts a background job with SIGINT ignored, and a process keeps that for itself
    and the servers it starts; the tests that press Ctrl-C on a send or on `serve` would then
    wait for a signal that never arrives. The suite puts Python's own handler back.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
            line = f"{key} = {literal}"
            text, count = pattern.subn(lambda m, line=line: m.group(1) + line, text, count=1)
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
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    if isinstance(value, (date, time)):  # TOML's own dates and times: unquoted (a datetime is a date)
        return value.isoformat()
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the newest schema once per test session, copied by each test.

    Migrating a fresh file costs more than a whole typical test; a copy costs a millisecond and
    is the same schema, since it was made by the same migrations.
    """
    path = tmp_path_factory.mktemp("template") / "newsletter.db"
    db.connect(f"sqlite:///{path}").dispose()  # the last connection folds the WAL into the file
    return path


def migrated_config(directory: Path, template: Path) -> Path:
    """write_config(directory), with the default SQLite database already migrated."""
    shutil.copyfile(template, directory / "newsletter.db")
    return write_config(directory)


@pytest.fixture
def config_file(tmp_path: Path, migrated_sqlite: Path) -> Path:
    """A config.toml in a fresh folder: SQLite file and outbox there, everything else default."""
    return migrated_config(tmp_path, migrated_sqlite)


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


@contextmanager
def _postgres_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    """A database of its own on the test PostgreSQL server (a copy of `template`), then dropped."""
    import psycopg  # noqa: PLC0415

    name = f"nl_test_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy_of}')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(_libpq_url(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_postgres(postgres_admin: str) -> Iterator[str]:
    """The name of a PostgreSQL database migrated once per session, the template of each test's."""
    with _postgres_database(postgres_admin) as url:
        engine = db.connect(url)
        engine.dispose()  # a template database must have no connections when it is copied
        yield url.rsplit("/", 1)[1]


@pytest.fixture
def postgres_url(postgres_admin: str, migrated_postgres: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL server, at the newest schema, dropped afterwards."""
    with _postgres_database(postgres_admin, template=migrated_postgres) as url:
        yield url


@pytest.fixture
def empty_postgres_url(postgres_admin: str) -> Iterator[str]:
    """A new, empty database (no schema yet) on the test PostgreSQL server, dropped afterwards."""
    with _postgres_database(postgres_admin) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings on SQLite and again on PostgreSQL: for tests whose guarantees must hold on both."""
    if request.param == "sqlite":
        return load_settings(migrated_config(tmp_path, request.getfixturevalue("migrated_sqlite")))
    url = request.getfixturevalue("postgres_url")
    return load_settings(write_config(tmp_path, database_url=url))


@pytest.fixture
def any_engine(any_settings: Settings) -> Iterator[Engine]:
    engine = db.connect(any_settings.database.url)
    yield engine
    engine.dispose()


@pytest.fixture
def server() -> Iterator[Any]:
    """A real SMTP server on loopback whose faults a test scripts (tests/smtp_faults.py)."""
    from tests.smtp_faults import fault_server  # noqa: PLC0415  (it imports this module)

    with fault_server() as running:
        yield running


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
