"""Database: migrations match the models, SQLite runs in WAL, two writers do not collide."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from pipeline import db
from pipeline.config import Settings
from pipeline.errors import DatabaseError
from pipeline.models import Essay
from tests.conftest import CLI


def test_migrations_match_the_models(any_engine: Engine) -> None:
    with any_engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_sqlite_is_in_wal_mode_with_busy_timeout(engine: Engine) -> None:
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == db.SQLITE_BUSY_MS


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    db.upgrade(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def _write_essays(url: str, start: int) -> None:
    engine = db.connect(url)
    for n in range(start, start + 40):
        with db.session_scope(engine) as session:
            session.add(Essay(slug=f"essay-{n}", title=f"Essay {n}", content_hash=str(n)))


def test_two_processes_write_without_database_locked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_essays, args=(url, n * 1000)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    with db.make_engine(url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM essay")).scalar() == 80


def test_a_file_that_is_no_database_is_a_readable_error(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("shopping list: flour, water, salt\n" * 200)
    with pytest.raises(DatabaseError, match="cannot upgrade the database") as info:
        db.connect(f"sqlite:///{not_a_database}")
    assert "notes.txt" in str(info.value)


def test_the_head_read_from_the_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    scripts = ScriptDirectory.from_config(db.alembic_config(db.make_engine("sqlite://")))
    assert db.head_revisions() == frozenset(scripts.get_heads())


def test_a_database_behind_the_head_is_still_upgraded(tmp_path: Path) -> None:
    from alembic import command  # noqa: PLC0415

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:  # a database created by an older release
        cfg = db.alembic_config(engine)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0003_claim_index")
    assert db.stored_revisions(engine) == {"0003_claim_index"}
    db.upgrade(engine)
    assert db.stored_revisions(engine) == db.head_revisions()
    with engine.connect() as connection:  # a table a later migration adds is there
        assert connection.execute(text("SELECT count(*) FROM essay")).scalar() == 0
        assert {"bounceevent", "processedmessage"} <= set(inspect(connection).get_table_names())
    engine.dispose()


def test_a_database_in_use_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    """A migration that adds a column to the essay table copies it into a new one on SQLite
    (batch mode); with foreign keys on, dropping the old table failed while an issue carried an
    essay: every database that had sent an issue stopped at 0008 ("FOREIGN KEY constraint failed")."""
    from alembic import command  # noqa: PLC0415

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:
        cfg = db.alembic_config(engine)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0008_issue_intro")
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO essay (id, slug, title, dek, body, source_related, tags, content_hash, imported_at,"
            " updated_at) VALUES (1, 'on-rivers', 'On rivers', '', '[]', '[]', '[]', 'h', '2026-11-01',"
            " '2026-11-01')",
            "INSERT INTO issue (id, key, subject, preheader, status, created_at, intro, resend)"
            " VALUES (1, '2026-11-02', 'On rivers', '', 'sent', '2026-11-02', '', 0)",
            "INSERT INTO issueessay (issue_id, position, essay_id) VALUES (1, 0, 1)",
            "UPDATE essay SET sent_in_issue_id = 1",
            "INSERT INTO feed (id, url, origin, title, added_at) VALUES (1, 'https://example.org/feed', 'cli',"
            " '', '2026-11-01')",
            "INSERT INTO feedentry (feed_id, guid, essay_id, first_seen_at) VALUES (1, 'g1', 1, '2026-11-01')",
        ):
            connection.execute(text(statement))
    db.upgrade(engine)
    assert db.stored_revisions(engine) == db.head_revisions()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT slug, sent_in_issue_id, archive FROM essay")).all() == [
            ("on-rivers", 1, 0)]
        assert connection.execute(text("SELECT essay_id FROM issueessay")).scalar() == 1
        assert connection.execute(text("PRAGMA foreign_key_check")).all() == []
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1  # on again after the upgrade
    engine.dispose()


def test_a_database_whose_path_holds_a_percent_sign_is_migrated(tmp_path: Path) -> None:
    # Alembic's config parser read "%" as interpolation: a traceback that printed the URL
    # (with a PostgreSQL password in it).
    folder = tmp_path / "100%-letters"
    folder.mkdir()
    engine = db.connect(f"sqlite:///{folder}/newsletter.db")
    assert "delivery" in inspect(engine).get_table_names()
    engine.dispose()


def test_a_database_from_a_newer_version_is_named_not_a_traceback(run_cli: CLI, settings: Settings) -> None:
    # A revision this version does not know (a newer version upgraded it): Alembic's own
    # CommandError went out as a traceback, from every command and from doctor.
    engine = db.connect(settings.database.url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffff9999future'"))
    engine.dispose()
    result = run_cli("issues", "list")
    assert result.exit_code == 1
    assert "Can't locate revision identified by 'ffff9999future'" in result.output
    assert "a newer version of newsletter may have upgraded it" in " ".join(result.output.split())


def test_a_write_the_database_refuses_is_its_reason_without_the_statement(run_cli: CLI, settings: Settings) -> None:
    # The database refusing mid-command (read-only, full, a rule of its own; here a trigger):
    # SQLAlchemy's error went out as a traceback carrying the SQL and its values (the address).
    engine = db.connect(settings.database.url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TRIGGER frozen BEFORE INSERT ON subscriber "
                                "BEGIN SELECT RAISE(ABORT, 'the list is frozen'); END"))
    engine.dispose()
    result = run_cli("subscribers", "add", "ann@example.org")
    assert result.exit_code == 1
    assert "Error: the database failed: the list is frozen" in result.output
    assert "ann@example.org" not in result.output and "INSERT" not in result.output
