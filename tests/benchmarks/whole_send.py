"""A whole `newsletter send` of a fresh issue against raw smtplib into the same sink, in one run.

What the send benchmarks share: an issue of five essays to `subscribers` readers, sent by the
`newsletter` command as a whole process (start-up, render, gate, freeze, delivery) between two
runs of raw smtplib pushing the same number of prebuilt messages over the same number of
connections (the faster counts: the conservative ratio); then the delivery stage alone, in
process with the render already made, to tell it apart from start-up and the first render.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session

from pipeline import db
from pipeline.copies import rendered_issue
from pipeline.issues import compose
from pipeline.message import MessageFactory, new_message_id
from pipeline.publish import publish
from pipeline.render import Recipient
from tests.benchmarks.sink import raw_smtplib
from tests.digest_fixtures import add_essays, add_readers, digest_essays, reader_name, render_issue
from tests.smtp_faults import smtp_settings

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://letters.example.org"


@dataclass(frozen=True)
class WholeSend:
    """Seconds: raw smtplib before and after, the whole send, the delivery stage alone."""

    before: float
    after: float
    ours: float
    delivery: float

    @property
    def raw(self) -> float:
        return min(self.before, self.after)


# What every send loads before its first message, whatever else it does: the storage library
# (SQLModel, with SQLAlchemy and pydantic), Jinja2 and premailer, the last without requests, as
# pipeline/render.py loads it. None of the project's own modules.
LIBRARIES = ("import sys, types\nsys.modules['requests'] = types.ModuleType('requests')\n"
             "import sqlmodel, jinja2, premailer")


def library_floor(runs: int = 5) -> float:
    """Seconds (median of `runs`) a fresh interpreter takes to load only LIBRARIES: the least
    start-up any `newsletter send` built on them can have, before any work of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", LIBRARIES], check=True, env=env, cwd=ROOT, timeout=120)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def whole_send(folder: Path, port: int, subscribers: int, connections: int) -> WholeSend:
    settings = smtp_settings(folder, port, connections=connections)
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        slugs = [essay.slug for essay in add_essays(session, *digest_essays(5))]
        add_readers(session, subscribers)
        issue = compose(session, settings, key="whole")
        session.commit()
        # Not through the render cache (the send renders its issue itself); the related-links
        # index it builds is stored, as `essays import` would have stored it.
        rendered = render_issue(session, settings, issue)
    engine.dispose()
    factory = MessageFactory(settings, rendered)
    when = datetime.now(UTC)
    prebuilt = [(f"reader{n}@example.org",
                 factory.build(Recipient(reader_name(n), f"reader{n}@example.org", f"{BASE}/u/t{n}"),
                               new_message_id(settings), when)) for n in range(subscribers)]

    before, _ = raw_smtplib(port, prebuilt, connections)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "--config", str(settings.path),
         "send", "whole", "--yes"], capture_output=True, env=env, cwd=ROOT, timeout=900)
    ours = time.perf_counter() - start
    after, _ = raw_smtplib(port, prebuilt, connections)
    assert result.returncode == 0, result.stderr.decode()[-2000:]

    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        again = compose(session, settings, slugs=slugs, key="whole-again", resend=True)
        session.commit()
        rendered_issue(session, settings, again)
    start = time.perf_counter()
    report = publish(settings, engine, "whole-again")
    delivery = time.perf_counter() - start
    engine.dispose()
    assert report.sent == subscribers
    return WholeSend(before, after, ours, delivery)
