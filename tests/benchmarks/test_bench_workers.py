"""Benchmark: throughput of 1, 2 and 4 `newsletter worker` processes against one SMTP sink in
another process (`make bench`).

Each run enqueues an issue to the same subscribers and times it from the hand-over to the
moment the workers have marked it sent; worker start-up is not counted (they are started and
idle first). Two sinks: one that answers at once (the machine's CPU is the limit: on 2 cores
more workers barely help) and one that takes a few milliseconds per message, like a relay
across a network, where workers overlap the waiting. It prints ratios to one worker measured
in the same run; it asserts no time. PostgreSQL when the test server is up, else SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import db
from pipeline.config import Settings
from tests.benchmarks.sink import start_sink
from tests.conftest import postgres_available
from tests.smtp_faults import new_issue, smtp_settings
from tests.test_worker import NEWSLETTER, SECRET, add_readers, counts, hand_over, issue_status, wait_until

MESSAGES = 4000
WORKERS = (1, 2, 4)
DELAYS = (0.0, 0.005)  # seconds the sink takes per message

@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield None if postgres_available() else request.getfixturevalue("postgres_url")


def start_workers(settings: Settings, count: int, folder: Path) -> list[subprocess.Popen[str]]:
    """`count` worker processes, returned once every one of them is up and idle."""
    logs = [folder / f"worker-{count}-{n}.log" for n in range(count)]
    workers = [subprocess.Popen([NEWSLETTER, "--config", str(settings.path), "worker", "--idle", "0.1"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **SECRET})
               for log in logs]
    wait_until(lambda: all("started" in log.read_text() for log in logs), 120, "the workers to start")
    return workers


def stop_workers(workers: list[subprocess.Popen[str]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(60)


def test_bench_throughput_with_1_2_and_4_workers(tmp_path: Path, database_url: str | None) -> None:
    backend = "PostgreSQL" if database_url else "SQLite"
    print(f"\n{MESSAGES:,} messages per run, {backend}, one SMTP sink in another process, "
          f"batches of 50, one connection per worker:")
    for delay in DELAYS:
        sink, port = start_sink(delay)
        folder = tmp_path / f"delay-{delay}"
        folder.mkdir()
        settings = smtp_settings(folder, port, database_url=database_url, batch_size=50)
        engine = db.connect(settings.database.url)
        if delay == DELAYS[0]:
            add_readers(engine, MESSAGES, essays=3)
        rates: dict[int, float] = {}
        try:
            for count in WORKERS:
                workers = start_workers(settings, count, folder)
                key = f"bench-{delay}-{count}"
                issue = new_issue(engine, settings, key, slugs=["essay-000", "essay-001", "essay-002"],
                                  resend=True)
                started = time.perf_counter()
                hand_over(settings, engine, issue)
                wait_until(lambda key=key, engine=engine: issue_status(engine, key) == "sent", 600, f"{key} to be sent")
                rates[count] = MESSAGES / (time.perf_counter() - started)
                stop_workers(workers)
                assert counts(engine, key)["sent"] == MESSAGES
        finally:
            sink.terminate()
            sink.wait(10)
            engine.dispose()
        what = "answers at once" if not delay else f"takes {delay * 1000:g} ms a message"
        line = ", ".join(f"{n} worker{'s' if n > 1 else ''} {rates[n]:5.0f} msgs/s "
                         f"({rates[n] / rates[1]:.2f}x)" for n in WORKERS)
        print(f"  sink {what}: {line}")
