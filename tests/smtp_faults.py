"""A real SMTP server (aiosmtpd) that misbehaves on purpose, and helpers the sending tests share."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
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
    ("mail" | "rcpt", "450 4.2.0 busy") answers RCPT TO; ("command", "451 ...") answers the DATA
    command itself; ("data", "451 ...") answers the end of DATA (after the final dot);
    ("cut", "") closes the connection at the DATA command, before the message went out;
    ("drop", "") closes it after the message came in, before the reply, keeping nothing;
    ("store-drop", "") keeps the message, then closes without a reply; ("store-hang", "") keeps
    it and never replies (the client must time out)."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    faults: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    peers: set[Any] = field(default_factory=set)  # one per connection
    attempts: dict[str, int] = field(default_factory=dict)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if r.rcpt_tos == [address]]

    hang_seconds: float = 30.0  # how long a store-hang stays silent
    pipelining: bool = False  # advertise PIPELINING (RFC 2920), as Postfix and Exim do
    # One entry per MAIL command: whether the client had already sent its RCPT and DATA (in the
    # same write) when the server read MAIL, i.e. did not wait for the reply to MAIL.
    grouped: list[bool] = field(default_factory=list)
    # With hold_final_reply, the reply to each final dot waits (up to that many seconds) for the
    # client's next command; next_came_first says, per message, whether it came meanwhile.
    hold_final_reply: float = 0.0
    next_came_first: list[bool] = field(default_factory=list)

    def _fault(self, address: str, step: str) -> str | None:
        planned = self.faults.get(address)
        if planned and planned[0][0] == step:
            return planned.pop(0)[1] or step
        return None


class FaultHandler:
    def __init__(self, server: FaultServer) -> None:
        self.server = server

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that answers EHLO
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

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
        if self.server.hold_final_reply:
            loop = asyncio.get_running_loop()
            until = loop.time() + self.server.hold_final_reply
            while not server._reader._buffer and loop.time() < until:
                await asyncio.sleep(0.005)
            self.server.next_came_first.append(bool(server._reader._buffer))
        if self.server._fault(address, "drop"):
            server.transport.close()  # mid-message, as far as the client can tell
            return "250 never seen"
        if self.server._fault(address, "store-drop"):
            self._keep(envelope)
            server.transport.close()  # stored, then gone before the 250
            return "250 never seen"
        if self.server._fault(address, "store-hang"):
            self._keep(envelope)
            await asyncio.sleep(self.server.hang_seconds)  # stored, then silent
            return "250 too late"
        fault = self.server._fault(address, "data")
        if fault:
            return fault
        self._keep(envelope)
        return "250 OK"

    def _keep(self, envelope: Any) -> None:
        self.server.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                              envelope.original_content))


class FaultSMTP(SMTP):
    """aiosmtpd's protocol with the DATA command itself open to faults (before the 354)."""

    def __init__(self, handler: FaultHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.faults = handler.server

    async def smtp_MAIL(self, arg: str) -> None:
        # What the client wrote after MAIL and before reading its reply is in the read buffer.
        self.faults.grouped.append(b"DATA" in bytes(self._reader._buffer))
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        address = self.envelope.rcpt_tos[0] if self.envelope and self.envelope.rcpt_tos else ""
        if self.faults._fault(address, "cut"):
            self.transport.close()  # gone before the message went out
            return
        fault = self.faults._fault(address, "command")
        if fault:
            await self.push(fault)
            return
        await super().smtp_DATA(arg)


class FaultController(Controller):
    def factory(self) -> SMTP:
        return FaultSMTP(self.handler, **self.SMTP_kwargs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def fault_server(login: tuple[str, str] | None = None, pipelining: bool = False) -> Iterator[FaultServer]:
    """A FaultServer on loopback; with `login`, it demands AUTH with that user and password;
    with `pipelining`, it advertises PIPELINING."""
    server = FaultServer(port=_free_port(), pipelining=pipelining)
    options: dict[str, Any] = {}
    if login is not None:
        def authenticator(_server: Any, _session: Any, _envelope: Any, _mechanism: str, auth: Any) -> AuthResult:
            ok = (auth.login.decode(), auth.password.decode()) == login
            return AuthResult(success=ok, handled=False)

        options = dict(authenticator=authenticator, auth_require_tls=False, auth_required=True)
    controller = FaultController(FaultHandler(server), hostname=server.host, port=server.port, **options)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def smtp_settings(directory: Path, port: int, database_url: str | None = None,
                  schedule: dict[str, Any] | None = None, **delivery: Any) -> Settings:
    """Settings that send through the SMTP server on `port` (plain, no TLS: loopback only)."""
    values = {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none",
              "smtp_timeout": 5, **delivery}
    sections: dict[str, Any] = {"schedule": schedule} if schedule else {}
    return load_settings(write_config(directory, database_url=database_url, delivery=values,
                                      web={"base_url": "https://letters.example.org"}, **sections))


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


def engine_for(settings: Settings) -> Engine:
    """The migrated database of `settings`."""
    return db.connect(settings.database.url)
