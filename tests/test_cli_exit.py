"""The `newsletter` script leaves without tearing the interpreter down, and loses nothing by it:
every byte of its output arrives through a pipe, and its exit status is the command's."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import psycopg
from sqlalchemy import text

from pipeline import db
from pipeline.config import load_settings
from tests.conftest import CLI, PG_ADMIN_URL, _libpq_url, write_config
from tests.test_schedule import add_essays, utc_schedule_due

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = PROJECT_ROOT / "examples" / "essays"
SCRIPT = "from pipeline.cli import main; main()"  # what the installed `newsletter` script runs


def newsletter(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", SCRIPT, "--config", str(config), *args],
                          capture_output=True, cwd=PROJECT_ROOT, timeout=120)


def test_output_through_a_pipe_is_complete_and_the_exit_status_is_the_commands(run_cli: CLI) -> None:
    assert run_cli("essays", "import", str(EXAMPLES)).exit_code == 0
    expected = run_cli("essays", "list", "--json").output
    listed = newsletter(run_cli.config_file, "essays", "list", "--json")
    assert listed.returncode == 0
    assert listed.stdout.decode() == expected  # all of it, though the process skipped its teardown

    missing = newsletter(run_cli.config_file, "sends", "status", "no-such-issue")
    assert missing.returncode == 1
    assert b"no issue with the id or key 'no-such-issue'" in missing.stderr

    usage = newsletter(run_cli.config_file, "sends", "status")
    assert usage.returncode == 2 and b"Missing argument" in usage.stderr


def test_a_command_exit_status_of_its_own_survives(tmp_path: Path) -> None:
    # This week's digest fell due 13 hours ago, past its 12 hours of grace: run-due records it
    # expired and says so with exit status 3 (for cron mail), once.
    config = write_config(tmp_path, schedule=utc_schedule_due(timedelta(hours=13)))
    add_essays(db.connect(load_settings(config).database.url), 1)  # imported long before it fell due
    expired = newsletter(config, "schedule", "run-due", "--json")
    assert expired.returncode == 3, expired.stderr
    assert json.loads(expired.stdout)["status"] == "expired"
    again = newsletter(config, "schedule", "run-due")
    assert again.returncode == 0 and b"already expired" in again.stdout


def test_after_a_command_the_database_file_alone_holds_everything(tmp_path: Path) -> None:
    # A backup is often a copy of newsletter.db alone. SQLite in WAL mode keeps recent commits in
    # newsletter.db-wal until its last connection closes: a process leaving without closing it
    # would leave a copy of the file that says these readers are still owed the issue.
    (tmp_path / "site").mkdir()
    config = write_config(tmp_path / "site")
    for step in (("essays", "import", str(EXAMPLES)),
                 ("subscribers", "import", str(PROJECT_ROOT / "examples" / "subscribers.csv")),
                 ("send", "--latest", "--yes")):
        done = newsletter(config, *step)
        assert done.returncode == 0, done.stderr
    copy = tmp_path / "backup.db"
    shutil.copyfile(tmp_path / "site" / "newsletter.db", copy)
    with closing(sqlite3.connect(copy)) as backup:
        statuses = dict(backup.execute("SELECT status, count(*) FROM delivery GROUP BY status").fetchall())
        issues = backup.execute("SELECT status FROM issue").fetchall()
    assert set(statuses) == {"sent"} and statuses["sent"] > 0 and issues == [("sent",)]


def test_before_the_quick_exit_postgresql_sessions_are_ended_not_dropped(postgres_url: str) -> None:
    engine = db.connect(postgres_url)
    name = engine.url.database

    def sessions() -> int:
        with psycopg.connect(_libpq_url(PG_ADMIN_URL), autocommit=True) as admin:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            return int(row[0]) if row else 0

    with engine.connect() as connection:  # a pooled session, as a command leaves it
        connection.execute(text("SELECT 1"))
    assert sessions() == 1
    db.close_all()
    assert sessions() == 0
