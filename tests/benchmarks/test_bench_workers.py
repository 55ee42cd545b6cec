"""Benchmark: throughput of 1, 2 and 4 `newsletter worker` processes against one SMTP sink in
another process (`make bench`).

Each run enqueues an issue to the same subscribers and times it from the hand-over to the
moment the workers have marked it sent; worker start-up is not counted (they are started and
idle first), nor is the issue's render (made before the clock starts, so the hand-over finds it
in the render cache): what is timed is the workers' delivery. It prints rates and ratios to one
worker measured in the same run, beside the ideal (linear) ratios; it asserts no time.

Two cases. The relay a network hop away (issue 13, aim 6): the latency sink (aiosmtpd, 10 ms
before each reply to MAIL, RCPT and DATA), on PostgreSQL only (skipped, with the reason, when the
test server is down), each worker with `delivery.connections = 2`, so the connections add up: 2,
4, 8, and the relay's ceiling is connections / 30 ms. Then the hand-written sink answering at once
(the machine's CPU is the limit: on 2 cores more workers barely help) and taking 5 ms a message,
one connection per worker, on PostgreSQL when the test server is up, else SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
from pipeline.config import Settings
from pipeline.copies import rendered_issue
from tests.benchmarks.sink import start_latency_sink, start_sink
from tests.conftest import postgres_available
from tests.smtp_faults import new_issue, smtp_settings
from tests.test_worker import NEWSLETTER, SECRET, add_readers, counts, hand_over, issue_status, wait_until

WORKERS = (1, 2, 4)
SLUGS = ["essay-000", "essay-001", "essay-002"]
RELAY_MESSAGES = 2_000  # per run: 30 s at 1 worker, 7.5 s at 4 on the relay's ceiling (whole test ~1.5 min)
RELAY_LATENCY = 0.010
RELAY_CONNECTIONS = 2  # per worker
MESSAGES = 3_000
DELAYS = (0.0, 0.005)  # seconds the hand-written sink takes per message


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield None if postgres_available() else request.getfixturevalue("postgres_url")


def start_workers(settings: Settings, count: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    """`count` worker processes, returned once every one of them is up and idle."""
    logs = [folder / f"worker-{count}-{n}.log" for n in range(count)]
    workers = [subprocess.Popen([NEWSLETTER, "--config", str(settings.path), "worker", "--idle", "0.1"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **SECRET})
               for log in logs]
    wait_until(lambda: all("started" in log.read_text() for log in logs), 120, "the workers to start")
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(60)


def rates(settings: Settings, engine: Engine, folder: Path, messages: int, name: str) -> dict[int, float]:
    """Messages per second of an issue to `messages` readers with 1, 2 and 4 workers."""
    found: dict[int, float] = {}
    for count in WORKERS:
        workers = start_workers(settings, count, folder)
        try:
            key = f"{name}-{count}"
            issue = new_issue(engine, settings, key, slugs=SLUGS, resend=True)
            with Session(engine) as session:
                rendered_issue(session, settings, issue)  # into the render cache, off the clock
            started = time.perf_counter()
            hand_over(settings, engine, issue)
            wait_until(lambda key=key: issue_status(engine, key) == "sent", 900, f"{key} to be sent")
            found[count] = messages / (time.perf_counter() - started)
            assert counts(engine, key)["sent"] == messages
        finally:
            stop_workers(workers)
    return found


def line(found: dict[int, float]) -> str:
    return ", ".join(f"{n} worker{'s' if n > 1 else ''} {found[n]:5.0f} msgs/s ({found[n] / found[1]:.2f}x)"
                     for n in WORKERS)


def test_bench_workers_against_a_relay_with_10_ms_latency(tmp_path: Path, postgres_url: str) -> None:
    relay, port = start_latency_sink(RELAY_LATENCY)
    settings = smtp_settings(tmp_path, port, database_url=postgres_url, batch_size=50,
                             connections=RELAY_CONNECTIONS)
    engine = db.connect(settings.database.url)
    try:
        add_readers(engine, RELAY_MESSAGES, essays=3)
        found = rates(settings, engine, tmp_path, RELAY_MESSAGES, "relay")
    finally:
        relay.terminate()
        relay.wait(10)
        engine.dispose()
    per_connection = 1 / (3 * RELAY_LATENCY)
    print(f"\n{RELAY_MESSAGES:,} messages per run, PostgreSQL, relay answering MAIL, RCPT and DATA after "
          f"{RELAY_LATENCY * 1000:g} ms each, {RELAY_CONNECTIONS} connections per worker, batches of 50:")
    print(f"  {line(found)}")
    print("  ideal (linear):  " + ", ".join(f"{n}: {n:.2f}x" for n in WORKERS)
          + f"; measured / ideal at {WORKERS[-1]} workers: {found[WORKERS[-1]] / found[1] / WORKERS[-1]:.2f}")
    print("  relay ceiling (connections / 30 ms): " + ", ".join(
        f"{n * RELAY_CONNECTIONS} connections {n * RELAY_CONNECTIONS * per_connection:.0f} msgs/s "
        f"(measured {found[n] / (n * RELAY_CONNECTIONS * per_connection):.2f} of it)" for n in WORKERS))


def test_bench_throughput_with_1_2_and_4_workers(tmp_path: Path, database_url: str | None) -> None:
    backend = "PostgreSQL" if database_url else "SQLite"
    print(f"\n{MESSAGES:,} messages per run, {backend}, the hand-written sink in another process, "
          f"batches of 50, one connection per worker:")
    for delay in DELAYS:
        sink, port = start_sink(delay)
        folder = tmp_path / f"delay-{delay}"
        folder.mkdir()
        settings = smtp_settings(folder, port, database_url=database_url, batch_size=50)
        engine = db.connect(settings.database.url)
        try:
            if delay == DELAYS[0] or database_url is None:  # SQLite: a file per folder
                add_readers(engine, MESSAGES, essays=3)
            found = rates(settings, engine, folder, MESSAGES, f"bench-{delay}")
        finally:
            sink.terminate()
            sink.wait(10)
            engine.dispose()
        what = "answers at once" if not delay else f"takes {delay * 1000:g} ms a message"
        print(f"  sink {what}: {line(found)}")
