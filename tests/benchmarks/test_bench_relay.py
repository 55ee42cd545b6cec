"""Benchmark: a whole send to a relay a network hop away (`make bench`).

The relay is the latency sink (tests/benchmarks/sink.py: aiosmtpd, 10 ms before each reply to
MAIL, RCPT and DATA). `newsletter send` of a fresh issue to 2,400 subscribers with
`delivery.connections = 8` runs as a whole process (start-up, render, freeze, claims, sends,
records), against raw smtplib pushing the same number of prebuilt messages over 8 reused
connections, one thread each, into the same sink in the same run. Aim (issue 13): >= 0.9.
It prints; it asserts no time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlmodel import Session

from pipeline import db
from pipeline.copies import rendered_issue
from pipeline.issues import compose
from pipeline.message import MessageFactory, new_message_id
from pipeline.publish import publish
from pipeline.render import Recipient
from subscribers.model import Subscriber, utcnow
from tests.benchmarks.sink import raw_smtplib, start_latency_sink
from tests.digest_fixtures import add_essays, digest_essays, render_issue
from tests.smtp_faults import smtp_settings

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIBERS = 2_400
CONNECTIONS = 8
LATENCY = 0.010
AIM = 0.9
BASE = "https://letters.example.org"


@pytest.fixture(scope="module")
def relay() -> Iterator[int]:
    process, port = start_latency_sink(LATENCY)
    yield port
    process.terminate()
    process.wait(10)


def test_bench_send_2400_over_8_connections_to_a_slow_relay(tmp_path: Path, relay: int) -> None:
    settings = smtp_settings(tmp_path, relay, connections=CONNECTIONS)
    engine = db.connect(settings.database.url)
    now = utcnow()
    with Session(engine, expire_on_commit=False) as session:
        slugs = [essay.slug for essay in add_essays(session, *digest_essays(5))]
        session.execute(insert(Subscriber), [
            dict(email=f"reader{n}@example.org", email_normalized=f"reader{n}@example.org",
                 name=f"Reader Nº{n}" if n % 3 else "", status="active", source="bench",
                 created_at=now, updated_at=now, confirmed_at=now)
            for n in range(SUBSCRIBERS)])
        issue = compose(session, settings, key="relay")
        session.commit()
        rendered = render_issue(session, settings, issue)
    engine.dispose()
    factory = MessageFactory(settings, rendered)
    when = datetime.now(UTC)
    prebuilt = [(f"reader{n}@example.org",
                 factory.build(Recipient(f"Reader Nº{n}", f"reader{n}@example.org", f"{BASE}/u/t{n}"),
                               new_message_id(settings), when)) for n in range(SUBSCRIBERS)]

    # The baseline runs before and after; its faster run counts (the conservative ratio).
    before, _ = raw_smtplib(relay, prebuilt, CONNECTIONS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "--config", str(settings.path),
         "send", "relay", "--yes"], capture_output=True, env=env, cwd=ROOT, timeout=900)
    ours = time.perf_counter() - start
    raw = min(before, raw_smtplib(relay, prebuilt, CONNECTIONS)[0])
    assert result.returncode == 0, result.stderr.decode()[-2000:]

    # The same send in this process with the render already made: the delivery stage alone
    # (claims, builds, sends, records), to tell it apart from start-up and the first render.
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        again = compose(session, settings, slugs=slugs, key="relay-again", resend=True)
        session.commit()
        rendered_issue(session, settings, again)
    start = time.perf_counter()
    report = publish(settings, engine, "relay-again")
    delivery = time.perf_counter() - start
    engine.dispose()
    assert report.sent == SUBSCRIBERS

    floor = SUBSCRIBERS / CONNECTIONS * 3 * LATENCY
    print(f"\n{SUBSCRIBERS:,} messages over {CONNECTIONS} connections to a relay answering MAIL, RCPT "
          f"and DATA after {LATENCY * 1000:.0f} ms each (floor {floor:.1f} s)")
    print(f"  newsletter send, whole process: {SUBSCRIBERS / ours:7.0f} msgs/s ({ours:.1f} s)")
    print(f"  raw smtplib, prebuilt bytes:    {SUBSCRIBERS / raw:7.0f} msgs/s ({raw:.1f} s)")
    print(f"  ratio send / raw: {raw / ours:.2f} (aim >= {AIM})")
    print(f"  delivery stage alone (render already made, in process): {SUBSCRIBERS / delivery:7.0f} msgs/s "
          f"({delivery:.1f} s), ratio to raw {raw / delivery:.2f}")
