"""Benchmark: how long the commands a person or a cron job runs most take, start to exit (`make bench`).

Each command runs as a whole process (what the `newsletter` script does), several times; the
median is printed beside the median of a bare `python -c pass` measured in the same run, and
their ratio. The aims (issue 13): `--help` under 6x a bare interpreter, and `issues list`,
`sends status`, `schedule next` and a `schedule run-due` with nothing due each under 0.5 s.
It prints; it asserts no time (only that each command succeeded).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
NEWSLETTER = "from pipeline.cli import main; main()"  # what the installed `newsletter` script runs
COMMANDS: list[tuple[str, ...]] = [
    ("--help",),
    ("issues", "list"),
    ("sends", "status", "1"),
    ("schedule", "next"),
    ("schedule", "run-due"),
]
HELP_AIM = 6.0
READ_AIM = 0.5


def run(args: list[str], codes: tuple[int, ...] = (0,)) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, env=env, cwd=ROOT, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode in codes, result.stderr.decode()
    return elapsed


def test_command_start_up(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    def newsletter(*args: str, codes: tuple[int, ...] = (0,)) -> float:
        return run([sys.executable, "-c", NEWSLETTER, "--config", str(config), *args], codes)

    # A small project whose digest for this week is settled: a cron run finds nothing due.
    newsletter("essays", "import", str(ROOT / "examples" / "essays"))
    newsletter("subscribers", "import", str(ROOT / "examples" / "subscribers.csv"))
    newsletter("issues", "new")
    newsletter("schedule", "run-due", codes=(0, 3))  # sent now, or past its grace and expired

    samples: dict[str, list[float]] = {"python -c pass": []}
    for _ in range(RUNS):  # interleaved, so a burst of load on the machine hits every command alike
        samples["python -c pass"].append(run([sys.executable, "-c", "pass"]))
        for args in COMMANDS:
            samples.setdefault(" ".join(args), []).append(newsletter(*args))
    bare = statistics.median(samples["python -c pass"])

    print(f"\ncommand start-up, whole processes, median of {RUNS} runs ({os.cpu_count()} cores)")
    print(f"  {'python -c pass':<22} {bare:6.3f} s")
    for name, times in samples.items():
        if name == "python -c pass":
            continue
        median = statistics.median(times)
        aim = (f"aim < {HELP_AIM:.0f}x: {'meets' if median / bare < HELP_AIM else 'MISSES'}" if name == "--help"
               else f"aim < {READ_AIM} s: {'meets' if median < READ_AIM else 'MISSES'}")
        print(f"  {'newsletter ' + name:<22} {median:6.3f} s  x{median / bare:5.1f} bare python   {aim}")
