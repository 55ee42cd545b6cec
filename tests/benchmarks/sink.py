"""SMTP sinks for benchmarks, each run in its own process: they accept everything, keep nothing.

The CPU-bound sink (`start_sink`): aiosmtpd would be the bottleneck of every sender measured
against it; this one only parses verbs. `python tests/benchmarks/sink.py PORT [DELAY]` waits
DELAY seconds before answering each message's data.

The latency sink (`start_latency_sink`): an aiosmtpd server whose handler sleeps before its
reply to MAIL, RCPT and DATA (10 ms by default), the shape of a real relay a network hop away,
where a sender's rate depends on how many connections it keeps busy rather than on its CPU.
`python tests/benchmarks/sink.py PORT LATENCY latency`.

The aiosmtpd sink (`start_aiosmtpd_sink`): aiosmtpd accepting everything with no sleep, the
CPU-bound sink issue 13 first measured against (aiosmtpd's own parsing is much of the cost per
message, so it narrows the gap between any two senders). `python tests/benchmarks/sink.py PORT 0 aiosmtpd`.

The network sink (`start_network_sink`): the CPU-bound sink a network hop away, its every reply
reaching the client `rtt` seconds (5 ms by default) after the command it answers, while the
commands behind it are read and answered meanwhile, as on a wire: a sender that waits for each
reply pays a round trip per command, one that pipelines pays one per group.
`python tests/benchmarks/sink.py PORT RTT network [pipelining]`.

aiosmtpd does not offer PIPELINING (RFC 2920); Postfix and Exim do by default. With
`pipelining=True` the CPU-bound sink and the aiosmtpd sink advertise it (a last argument
`pipelining`): a sender may then write MAIL, RCPT and DATA without waiting for each reply.
Both read commands from a buffered stream, so they take pipelined commands as they come.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import subprocess
import sys
import threading
import time
from typing import Any


class _Wire:
    """Replies to one client, each written `rtt` seconds after it was made (0: at once)."""

    def __init__(self, writer: asyncio.StreamWriter, rtt: float) -> None:
        self.writer, self.rtt = writer, rtt
        self.loop = asyncio.get_running_loop()

    def write(self, reply: bytes) -> None:
        if self.rtt:
            # Equal delays fire in the order they were set, so replies keep their order.
            self.loop.call_later(self.rtt, self._late, reply)
        else:
            self.writer.write(reply)

    def _late(self, reply: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(reply)

    async def drain(self) -> None:
        if not self.rtt:
            await self.writer.drain()


async def _session(reader: asyncio.StreamReader, socket_writer: asyncio.StreamWriter, delay: float,
                   pipelining: bool, rtt: float = 0.0) -> None:
    writer = _Wire(socket_writer, rtt)
    writer.write(b"220 sink\r\n")
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb == b"DATA":
            writer.write(b"354 go\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n.\r\n")
            if delay:
                await asyncio.sleep(delay)
            writer.write(b"250 ok\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            await asyncio.sleep(rtt)  # the 221 goes out before the connection closes
            break
        elif verb == b"EHLO":
            writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n" if pipelining
                         else b"250-sink\r\n250 8BITMIME\r\n")
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    socket_writer.close()


async def _serve(port: int, delay: float, pipelining: bool, rtt: float = 0.0) -> None:
    server = await asyncio.start_server(
        lambda r, w: _session(r, w, delay, pipelining, rtt), "127.0.0.1", port, limit=2**24
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class LatencyHandler:
    """aiosmtpd handler: accept every envelope and message, `latency` seconds after each command."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        await asyncio.sleep(self.latency)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        await asyncio.sleep(self.latency)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.latency)
        return "250 Message accepted"


class AcceptHandler:
    """aiosmtpd handler: accept every message at once (aiosmtpd itself accepts MAIL and RCPT)."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 Message accepted"


def _serve_aiosmtpd(port: int, handler: object) -> None:
    from aiosmtpd.controller import Controller  # noqa: PLC0415  (only this process needs it)

    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    threading.Event().wait()  # until the benchmark terminates the process


def _start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen([sys.executable, __file__, str(port), *args], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process, port


def start_sink(delay: float = 0.0, pipelining: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """The CPU-bound sink in another process on a free loopback port, once it is listening."""
    return _start(str(delay), "plain", *(["pipelining"] if pipelining else []))


def start_latency_sink(latency: float = 0.010) -> tuple[subprocess.Popen[bytes], int]:
    """The aiosmtpd latency sink in another process on a free loopback port, once it listens."""
    return _start(str(latency), "latency")


def start_network_sink(rtt: float = 0.005, pipelining: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """The network sink in another process on a free loopback port, once it is listening."""
    return _start(str(rtt), "network", *(["pipelining"] if pipelining else []))


def start_aiosmtpd_sink(pipelining: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """The aiosmtpd sink that never sleeps, in another process on a free loopback port."""
    return _start("0", "aiosmtpd", *(["pipelining"] if pipelining else []))


if __name__ == "__main__":
    mode = sys.argv[3] if len(sys.argv) > 3 else "plain"
    offers_pipelining = sys.argv[4:] == ["pipelining"]
    if mode == "latency":
        _serve_aiosmtpd(int(sys.argv[1]), LatencyHandler(float(sys.argv[2])))
    elif mode == "aiosmtpd":
        _serve_aiosmtpd(int(sys.argv[1]), AcceptHandler(offers_pipelining))
    elif mode == "network":
        asyncio.run(_serve(int(sys.argv[1]), 0.0, offers_pipelining, float(sys.argv[2])))
    else:
        asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
                           offers_pipelining))


def raw_smtplib(port: int, messages: list[tuple[str, bytes]], connections: int) -> tuple[float, float]:
    """The baseline every send benchmark compares against: plain smtplib sending prebuilt bytes
    over `connections` reused connections (one thread each). (seconds, CPU seconds of this
    process)."""
    def worker(part: list[tuple[str, bytes]]) -> None:
        smtp = smtplib.SMTP("127.0.0.1", port)
        for to, raw in part:
            smtp.sendmail("letters@essays.example.org", [to], raw)
        smtp.quit()

    threads = [threading.Thread(target=worker, args=(messages[i::connections],)) for i in range(connections)]
    start, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, time.process_time() - cpu
