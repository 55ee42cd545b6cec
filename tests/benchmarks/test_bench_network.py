"""Benchmark: a whole send to a relay a network round trip away, with and without PIPELINING.

The relay is the network sink (tests/benchmarks/sink.py): each reply reaches the client 5 ms
after its command, and the commands behind it are read meanwhile, as over a wire. smtplib waits
for every reply: four round trips a message (MAIL, RCPT, DATA, the message). `newsletter send`
does the same against a relay that does not offer PIPELINING; against one that does (Postfix and
Exim do by default) it sends each envelope in one write, behind the message before it, whose
reply it reads first: one round trip a message. `newsletter send` of a fresh issue to 1,200
subscribers over 4 connections runs as a whole process against raw smtplib over 4 reused
connections into the same relay in the same run. No aim of its own (issue 13 measured relays
that answer command by command: test_bench_relay.py). It prints; it asserts no time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmarks.sink import start_network_sink
from tests.benchmarks.whole_send import whole_send

SUBSCRIBERS = 1_200
CONNECTIONS = 4
RTT = 0.005


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep-relay", "pipelining-relay"])
def test_bench_send_1200_over_4_connections_a_round_trip_away(tmp_path: Path, pipelining: bool) -> None:
    sink, port = start_network_sink(RTT, pipelining=pipelining)
    try:
        run = whole_send(tmp_path, port, SUBSCRIBERS, CONNECTIONS)
    finally:
        sink.terminate()
        sink.wait(10)
    raw, ours, delivery = run.raw, run.ours, run.delivery
    trips = 1 if pipelining else 4
    floor = SUBSCRIBERS / CONNECTIONS * trips * RTT
    offer = "offering PIPELINING" if pipelining else "not offering PIPELINING"
    print(f"\n{SUBSCRIBERS:,} messages over {CONNECTIONS} connections to a relay {RTT * 1000:.0f} ms "
          f"away (round trip), {offer} (newsletter's floor: {trips} round trip(s) a message, {floor:.1f} s)")
    print(f"  newsletter send, whole process: {SUBSCRIBERS / ours:7.0f} msgs/s ({ours:.1f} s)")
    print(f"  raw smtplib, prebuilt bytes:    {SUBSCRIBERS / raw:7.0f} msgs/s ({raw:.1f} s; "
          f"runs {run.before:.1f} s before, {run.after:.1f} s after)")
    print(f"  ratio send / raw: {raw / ours:.2f}")
    print(f"  delivery stage alone (render already made, in process): {SUBSCRIBERS / delivery:7.0f} msgs/s "
          f"({delivery:.1f} s), ratio to raw {raw / delivery:.2f}")
