"""Benchmark: importing 100,000 subscribers from CSV into SQLite (`make bench`).

Prints rows per second for a first import (every row new), a second import of the same file
(every row unchanged) and a dry run, each against two baselines measured in the same run on the
same file: the stdlib csv module only reading the rows, and a bare sqlite3 executemany of the
same rows into a table without indexes (the floor of what writing them costs). The issue aims
at 20,000 rows/s or more for the first import; this prints, it does not assert a time.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from pathlib import Path

from sqlmodel import Session

from pipeline import db
from pipeline.config import load_settings
from subscribers.importer import import_csv
from tests.conftest import write_config

ROWS = 100_000
AIM = 20_000


def make_file(path: Path) -> None:
    """A realistic export: BOM, quoted names with commas, extra columns, some mixed case."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Email Address", "Full name", "Signed up", "Notes"])
        for i in range(ROWS):
            local = f"Reader.{i}" if i % 7 == 0 else f"reader{i}"
            writer.writerow([f"{local}@mail{i % 997}.example.org", f"Lee, Ann {i}", "2024-05-01", "imported"])


def timed(step) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def test_import_100k_rows(tmp_path: Path) -> None:
    source = tmp_path / "subscribers.csv"
    make_file(source)

    def read_only() -> None:
        with source.open(encoding="utf-8-sig", newline="") as handle:
            for _ in csv.reader(handle):
                pass

    def bare_executemany() -> None:
        connection = sqlite3.connect(tmp_path / "bare.db")
        connection.execute("CREATE TABLE s (email TEXT, name TEXT, status TEXT, created TEXT)")
        with source.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            connection.executemany(
                "INSERT INTO s VALUES (?, ?, 'active', '2026-01-01')", ((r[0], r[1]) for r in reader)
            )
        connection.commit()
        connection.close()

    settings = load_settings(write_config(tmp_path))
    engine = db.connect(settings.database.url)
    reports = []

    def run(dry_run: bool = False) -> None:
        with Session(engine) as session:
            reports.append(import_csv(session, source, dry_run=dry_run))

    baseline_read = timed(read_only)
    baseline_write = timed(bare_executemany)
    dry = timed(lambda: run(dry_run=True))
    first = timed(run)
    second = timed(run)
    engine.dispose()

    assert reports[0].added == ROWS and reports[0].refused == []
    assert reports[1].added == ROWS  # the dry run wrote nothing
    assert reports[2].unchanged == ROWS

    def line(label: str, seconds: float) -> str:
        return (
            f"  {label:<34} {seconds:6.2f} s  {ROWS / seconds:>9,.0f} rows/s  "
            f"x{seconds / baseline_read:5.1f} csv-read  x{seconds / baseline_write:5.1f} bare-insert"
        )

    print(f"\nsubscribers import, {ROWS:,} rows, SQLite ({tmp_path})")
    print(line("baseline: csv module, read only", baseline_read))
    print(line("baseline: sqlite3 executemany", baseline_write))
    print(line("import --dry-run (validate only)", dry))
    print(line("import, all new", first))
    print(line("import again, all unchanged", second))
    verdict = "meets" if ROWS / first >= AIM else "MISSES"
    print(f"  first import {verdict} the aim of {AIM:,} rows/s")
