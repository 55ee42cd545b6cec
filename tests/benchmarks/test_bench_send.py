"""Benchmark: a send of 10,000 in this process, into an SMTP sink in another process (`make bench`).

Prints, measured in the same run: messages per second for the publish story run in this process,
libraries already loaded (render and freeze, claim, build, send, record), against raw smtplib
sending the same prebuilt bytes over the same number of connections, and their ratio; and the
per-message build time of the fast path against the stdlib EmailMessage. No process start-up is
in it, so it has no aim of its own: issue 13's aim for a send (>= 0.9 of raw smtplib over one
connection, start-up and render included) is printed by test_bench_whole_send.py, and the
memory of a whole send by test_bench_memory.py. It prints; it asserts no time.
BENCH_CONNECTIONS=1 measures over one connection (default 2).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
from pipeline.config import Settings
from pipeline.issues import compose
from pipeline.message import MessageFactory, new_message_id
from pipeline.publish import Ending, publish
from pipeline.render import Recipient
from tests.benchmarks.sink import raw_smtplib, start_sink
from tests.digest_fixtures import add_essays, add_readers, digest_essays, reader_name, render_issue
from tests.reference_message import reference_message
from tests.smtp_faults import smtp_settings

CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "2"))
SUBSCRIBERS = 10_000
BASE = "https://letters.example.org"


@pytest.fixture(scope="module")
def sink() -> Iterator[int]:
    process, port = start_sink()
    yield port
    process.terminate()
    process.wait(10)


def prepare(tmp_path: Path, port: int, subscribers: int, **delivery: Any) -> tuple[Settings, Engine, str]:
    """A database with a 5-essay issue and `subscribers` active subscribers (bulk-inserted)."""
    settings = smtp_settings(tmp_path, port, connections=CONNECTIONS, **delivery)
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as session:
        add_essays(session, *digest_essays(5))
        add_readers(session, subscribers)
        issue = compose(session, settings, key="bench")
        session.commit()
    return settings, engine, issue.key


def test_bench_send_10000_against_raw_smtplib(tmp_path: Path, sink: int) -> None:
    settings, engine, key = prepare(tmp_path, sink, SUBSCRIBERS, batch_size=200)
    with Session(engine) as session:
        issue = compose(session, settings, key=key)
        rendered = render_issue(session, settings, issue)
    factory = MessageFactory(settings, rendered)
    when = datetime.now(UTC)
    people = [Recipient(reader_name(n), f"reader{n}@example.org", f"{BASE}/u/t{n}")
              for n in range(SUBSCRIBERS)]
    prebuilt = [(p.email, factory.build(p, new_message_id(settings), when)) for p in people]

    # The baseline runs before and after, and its faster run counts: on a shared machine the
    # load changes under a benchmark, and this keeps the ratio on the conservative side.
    before = raw_smtplib(sink, prebuilt, CONNECTIONS)
    start, cpu = time.perf_counter(), time.process_time()
    report = publish(settings, engine, key)
    ours, our_cpu = time.perf_counter() - start, time.process_time() - cpu
    raw_seconds, raw_cpu = min(before, raw_smtplib(sink, prebuilt, CONNECTIONS))
    assert report.sent == SUBSCRIBERS and report.ending is Ending.FINISHED

    raw_rate, our_rate = SUBSCRIBERS / raw_seconds, SUBSCRIBERS / ours
    fast = statistics.median(_time(lambda p=p: factory.build(p, "<b@x.org>", when)) for p in people[:2000])
    slow = statistics.median(_time(lambda p=p: reference_message(settings, rendered, p, "<b@x.org>", when))
                             for p in people[:200])
    size = statistics.mean(len(raw) for _, raw in prebuilt[:100]) / 1024
    print(f"\n{SUBSCRIBERS:,} messages of {size:.0f} KB over {CONNECTIONS} connections to an SMTP sink:")
    print(f"  publish (render, freeze, claim, build, send, record):{our_rate:8.0f} msgs/s ({ours:.1f} s)")
    print(f"  raw smtplib, prebuilt bytes:                         {raw_rate:8.0f} msgs/s ({raw_seconds:.1f} s)")
    print(f"  ratio publish / raw: {our_rate / raw_rate:.2f} (in process, no start-up; no aim of its own)")
    # Both run their connections as threads of this process, so under the GIL the CPU this
    # process spends per message bounds the rate: what publish adds to smtplib's own work.
    print(f"  CPU of this process per message: publish {our_cpu / SUBSCRIBERS * 1e6:.0f} us, "
          f"raw smtplib {raw_cpu / SUBSCRIBERS * 1e6:.0f} us")
    print(f"  build one message: fast path {fast * 1000:.3f} ms, EmailMessage {slow * 1000:.3f} ms "
          f"(EmailMessage / fast = {slow / fast:.0f}x)")
    engine.dispose()


def _time(step: object) -> float:
    start = time.perf_counter()
    step()  # type: ignore[operator]
    return time.perf_counter() - start
