"""Benchmark: peak memory of a whole `newsletter send` at 2,000, 20,000 and 100,000 subscribers (`make bench`).

The figure a machine's owner sees: the peak resident set (RSS) of the send process, from the
kernel's accounting of that one child (os.wait4), with the interpreter, the libraries, the
render and the audience all counted. Linux carries a process's peak across exec, and a child
forked from this pytest process starts with all of its pages mapped, so its peak could never read
below pytest's own; a small launcher process forks each measured command instead (the launcher
is a bare interpreter, so nothing measured can read below about one bare interpreter). Each size is a fresh issue in its own SQLite database,
sent into the hand-written sink over CONNECTIONS connections. The floors beside it, measured the
same way: a bare interpreter, one that imports sqlmodel (the database layer every command
needs), and `newsletter --help`. Aim (issue 13): flat from 2,000 to 100,000; the ratio
100,000 / 2,000 is printed. It asserts no memory or time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session

from pipeline import db, related_cache
from pipeline.issues import compose
from tests.benchmarks.sink import start_sink
from tests.digest_fixtures import add_essays, add_readers, digest_essays
from tests.smtp_faults import smtp_settings

ROOT = Path(__file__).resolve().parents[2]
SIZES = (2_000, 20_000, 100_000)
CONNECTIONS = 4
NEWSLETTER = [sys.executable, "-c", "from pipeline.cli import main; main()"]
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as peak:
    peak.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(args: list[str], folder: Path) -> tuple[float, float]:
    """Run `args` to its end, forked by the launcher: (seconds, peak RSS in MiB of `args` alone)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peak = folder / "peak-rss"
    with (folder / "stdout.log").open("wb") as out, (folder / "stderr.log").open("wb") as err:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", LAUNCHER, str(peak), *args],
                                stdout=out, stderr=err, env=env, cwd=ROOT, timeout=900)
        seconds = time.perf_counter() - start
    assert result.returncode == 0, (folder / "stderr.log").read_text()[-2000:]
    return seconds, int(peak.read_text()) / 1024  # ru_maxrss is in kilobytes on Linux


def populate(folder: Path, port: int, subscribers: int) -> Path:
    """A 5-essay issue `bench` to `subscribers` active subscribers, the archive's related-links
    index stored as an import leaves it; the config's path."""
    settings = smtp_settings(folder, port, connections=CONNECTIONS)
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        add_essays(session, *digest_essays(5))
        add_readers(session, subscribers)
        compose(session, settings, key="bench")
        session.commit()
        # What `essays import` does after changing the archive: the related-links index is built
        # then, not by the send (which then never loads scikit-learn).
        related_cache.warm(session, settings)
    engine.dispose()
    return settings.path


def test_bench_peak_rss_of_a_whole_send(tmp_path: Path) -> None:
    sink, port = start_sink()
    try:
        floors = {what: peak_rss([sys.executable, *args], tmp_path)[1] for what, args in [
            ("python -c pass", ["-c", "pass"]),
            ("python -c 'import sqlmodel'", ["-c", "import sqlmodel"])]}
        floors["newsletter --help"] = peak_rss([*NEWSLETTER, "--help"], tmp_path)[1]
        sends: dict[int, tuple[float, float]] = {}
        for size in SIZES:
            folder = tmp_path / str(size)
            folder.mkdir()
            config = populate(folder, port, size)
            sends[size] = peak_rss([*NEWSLETTER, "--config", str(config), "send", "bench", "--yes"], folder)
    finally:
        sink.terminate()
        sink.wait(10)

    print(f"\npeak RSS of whole processes (os.wait4, MiB), send into the hand-written sink over "
          f"{CONNECTIONS} connections, SQLite")
    for what, mib in floors.items():
        print(f"  {what:<30} {mib:6.1f} MiB")
    for size, (seconds, mib) in sends.items():
        print(f"  {'newsletter send, ' + f'{size:,}':<30} {mib:6.1f} MiB  ({seconds:.1f} s, "
              f"{size / seconds:.0f} msgs/s)")
    small, large = sends[SIZES[0]][1], sends[SIZES[-1]][1]
    middle = sends[SIZES[1]][1]
    print(f"  ratio {SIZES[1]:,} / {SIZES[0]:,}: {middle / small:.2f}; "
          f"ratio {SIZES[-1]:,} / {SIZES[0]:,}: {large / small:.2f} (aim: flat)")
