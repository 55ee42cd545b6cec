"""A real SMTP server (aiosmtpd) that misbehaves on purpose, and helpers the sending tests share."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline.config import Settings, load_settings
from pipeline.issues import compose
from pipeline.models import Issue
from subscribers import consent
from subscribers.model import Subscriber
from tests.conftest import Received, write_config
from tests.digest_fixtures import add_essays, make_essay


@dataclass
class FaultServer:
    """`faults[address]`: what to do on that address's next attempts, one entry per attempt:
    ("mail" | "rcpt" | "data", "450 4.2.0 busy") answers that step, ("drop", "") closes the
    connection after the message data came in, before the reply."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    faults: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    peers: set[Any] = field(default_factory=set)  # one per connection
    attempts: dict[str, int] = field(default_factory=dict)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if r.rcpt_tos == [address]]

    def _fault(self, address: str, step: str) -> str | None:
        planned = self.faults.get(address)
        if planned and planned[0][0] == step:
            return planned.pop(0)[1] or step
        return None


class FaultHandler:
    def __init__(self, server: FaultServer) -> None:
        self.server = server

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.server.peers.add(session.peer)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        self.server.attempts[address] = self.server.attempts.get(address, 0) + 1
        fault = self.server._fault(address, "mail") or self.server._fault(address, "rcpt")
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        address = envelope.rcpt_tos[0]
        if self.server._fault(address, "drop"):
            server.transport.close()  # mid-message, as far as the client can tell
            return "250 never seen"
        fault = self.server._fault(address, "data")
        if fault:
            return fault
        self.server.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def fault_server(login: tuple[str, str] | None = None) -> Iterator[FaultServer]:
    """A FaultServer on loopback; with `login`, it demands AUTH with that user and password."""
    server = FaultServer(port=_free_port())
    options: dict[str, Any] = {}
    if login is not None:
        def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str, auth: Any) -> AuthResult:
            ok = (auth.login.decode(), auth.password.decode()) == login
            return AuthResult(success=ok, handled=False)

        options = dict(authenticator=authenticator, auth_require_tls=False, auth_required=True)
    controller = Controller(FaultHandler(server), hostname=server.host, port=server.port, **options)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def smtp_settings(directory: Path, port: int, database_url: str | None = None, **delivery: Any) -> Settings:
    """Settings that send through the SMTP server on `port` (plain, no TLS: loopback only)."""
    values = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none",
              "smtp_timeout": 5, **delivery}
    return load_settings(write_config(directory, database_url=database_url, delivery=values,
                                      web={"base_url": "https://letters.example.org"}))


def add_audience(engine: Engine, active: int, essays: int = 3, prefix: str = "reader") -> list[Subscriber]:
    """Essays to send and `active` active subscribers (every third without a name)."""
    with Session(engine, expire_on_commit=False) as session:
        if essays:
            add_essays(session, *[make_essay(n) for n in range(essays)])
        people = [consent.add(session, f"{prefix}{n}@example.org", "" if n % 3 == 0 else f"Reader Nº{n}")[0]
                  for n in range(active)]
    return people


def new_issue(engine: Engine, settings: Settings, key: str, slugs: list[str] | None = None,
              resend: bool = False) -> Issue:
    """A draft of `slugs` (or the unsent essays); `resend` lets essays sent already go again."""
    with Session(engine, expire_on_commit=False) as session:
        issue = compose(session, settings, slugs=slugs, key=key, resend=resend)
        session.commit()
        return issue
