"""Benchmark: a whole send to a relay a network hop away (`make bench`).

The relay is the latency sink (tests/benchmarks/sink.py: aiosmtpd, 10 ms before each reply to
MAIL, RCPT and DATA). `newsletter send` of a fresh issue to 2,400 subscribers with
`delivery.connections = 8` runs as a whole process (start-up, render, freeze, claims, sends,
records), against raw smtplib pushing the same number of prebuilt messages over 8 reused
connections, one thread each, into the same sink in the same run. Aim (issue 13): >= 0.9.
It prints; it asserts no time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.sink import start_latency_sink
from tests.benchmarks.whole_send import whole_send

SUBSCRIBERS = 2_400
CONNECTIONS = 8
LATENCY = 0.010
AIM = 0.9


@pytest.fixture(scope="module")
def relay() -> Iterator[int]:
    process, port = start_latency_sink(LATENCY)
    yield port
    process.terminate()
    process.wait(10)


def test_bench_send_2400_over_8_connections_to_a_slow_relay(tmp_path: Path, relay: int) -> None:
    run = whole_send(tmp_path, relay, SUBSCRIBERS, CONNECTIONS)
    raw, ours, delivery = run.raw, run.ours, run.delivery
    floor = SUBSCRIBERS / CONNECTIONS * 3 * LATENCY
    verdict = "meets" if raw / ours >= AIM else "MISSES"
    print(f"\n{SUBSCRIBERS:,} messages over {CONNECTIONS} connections to a relay answering MAIL, RCPT "
          f"and DATA after {LATENCY * 1000:.0f} ms each (floor {floor:.1f} s)")
    print(f"  newsletter send, whole process: {SUBSCRIBERS / ours:7.0f} msgs/s ({ours:.1f} s)")
    print(f"  raw smtplib, prebuilt bytes:    {SUBSCRIBERS / raw:7.0f} msgs/s ({raw:.1f} s; "
          f"runs {run.before:.1f} s before, {run.after:.1f} s after)")
    print(f"  ratio send / raw: {raw / ours:.2f} (aim >= {AIM}: {verdict})")
    print(f"  delivery stage alone (render already made, in process): {SUBSCRIBERS / delivery:7.0f} msgs/s "
          f"({delivery:.1f} s), ratio to raw {raw / delivery:.2f}")
