"""A minimal SMTP sink for benchmarks, run in its own process: accepts everything, keeps nothing.

aiosmtpd would be the bottleneck of every sender measured against it; this one only parses
verbs. `python tests/benchmarks/sink.py PORT [DELAY]` waits DELAY seconds before answering each
message's data (a slow relay); `start_sink` runs it and returns once it listens.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys


async def _session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
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
            break
        elif verb == b"EHLO":
            writer.write(b"250-sink\r\n250 8BITMIME\r\n")
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()


async def _serve(port: int, delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: _session(r, w, delay), "127.0.0.1", port, limit=2**24
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def start_sink(delay: float = 0.0) -> tuple[subprocess.Popen[bytes], int]:
    """The sink in another process on a free loopback port, once it is listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen([sys.executable, __file__, str(port), str(delay)], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process, port


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
