"""The database: engine and sessions, SQLite pragmas, and Alembic upgrades to the newest schema."""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError

from pipeline.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlmodel import Session

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_MS = 30_000


# Every engine this process made, for close_all.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def make_engine(url: str) -> Engine:
    """An engine for `url`; on SQLite, WAL mode, a busy timeout and immediate write locks."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    _ENGINES.add(engine)
    return engine


def close_all() -> None:
    """Close the pooled connections of every database this process opened: for a process about
    to leave without its teardown (cli.main). PostgreSQL then sees each session end instead of
    a dropped connection; SQLite's last connection to close writes the WAL back into the
    database file, so that file alone (a backup's copy) holds every commit."""
    for engine in list(_ENGINES):
        engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below: pysqlite's own implicit
    # BEGIN is deferred, and two deferred writers deadlock into "database is locked".
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no commit
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so a writer waits (busy_timeout) instead of
    # failing halfway through when another process wrote first.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config  # noqa: PLC0415  (only when the schema must change)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is a ConfigParser: a "%" in the URL (an escaped password, a folder name)
    # would be read as interpolation and fail, printing the URL. Doubled, it stands for itself.
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


_REVISION = re.compile(r"""^(down_)?revision\s*=\s*(?:['"]([^'"]+)['"]|None)""", re.M)


@cache
def head_revisions() -> frozenset[str]:
    """The newest revision(s), read from the migration files' `revision` and `down_revision`
    lines rather than through Alembic, whose import costs more than most commands' whole work."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("[0-9]*.py"):
        for down, name in _REVISION.findall(path.read_text(encoding="utf-8")):
            if name:
                (parents if down else revisions).add(name)
    return frozenset(revisions - parents)


def stored_revisions(engine: Engine) -> frozenset[str]:
    """The revision(s) the database says it is at (empty when it has no schema yet)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return frozenset()
        return frozenset(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe when several processes start at once.

    A database already at the head is left alone without loading Alembic: read-only commands
    start in a fraction of the time. Anything else (no schema, an older one) goes to Alembic,
    which decides under the lock below, so two processes never both migrate.
    """
    try:
        if head_revisions() and stored_revisions(engine) == head_revisions():
            return
    except SQLAlchemyDatabaseError as exc:
        raise DatabaseError(f"cannot upgrade the database at {engine.url!r}: {exc.orig}") from None
    from alembic import command  # noqa: PLC0415  (only when the schema must change)
    from alembic.util.exc import CommandError  # noqa: PLC0415

    cfg = alembic_config(engine)
    try:
        with engine.connect() as connection, _foreign_keys_unchecked(connection), connection.begin():
            if connection.dialect.name == "postgresql":
                # Serialise concurrent upgrades; SQLite's BEGIN IMMEDIATE already does.
                connection.execute(text("SELECT pg_advisory_xact_lock(4224242)"))
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "heads")
            if connection.dialect.name == "sqlite" and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                raise DatabaseError(f"cannot upgrade the database at {engine.url!r}: a migration left rows "
                                    "referring to rows that are gone; nothing was changed")
    except SQLAlchemyDatabaseError as exc:  # cannot connect, locked, or not a database at all
        raise DatabaseError(f"cannot upgrade the database at {engine.url!r}: {exc.orig}") from None
    except CommandError as exc:  # most likely a revision a newer version of the program wrote
        raise DatabaseError(
            f"cannot upgrade the database at {engine.url!r}: {exc}; a newer version of newsletter "
            "may have upgraded it: use that version (or restore a backup made before)") from None


@contextmanager
def _foreign_keys_unchecked(connection: Connection) -> Iterator[None]:
    """SQLite: foreign keys off while the migrations run, as SQLite's own recipe for changing a
    table has it. Alembic's batch mode copies the table and drops the old one, and with them on
    that drop fails while any row refers to the table (an essay an issue carried). The caller
    checks them all before its commit. Set on the driver's connection, outside any transaction:
    inside one SQLite ignores it."""
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:  # the connection goes back to the pool: every later use checks them again
        raw.execute("PRAGMA foreign_keys=ON")


def connect(url: str) -> Engine:
    """An engine whose schema is up to date: what every command that needs the database uses."""
    engine = make_engine(url)
    upgrade(engine)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error."""
    from sqlmodel import Session  # noqa: PLC0415  (the ORM: not for the quick reads, see glance.py)

    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def open_session(engine: Engine, expire_on_commit: bool = True) -> Session:
    """A plain session (nothing committed on exit), for the shells: reads, and library calls that
    commit their own work; they open it here so that none of them imports the ORM."""
    from sqlmodel import Session  # noqa: PLC0415  (the ORM: not for the quick reads, see glance.py)

    return Session(engine, expire_on_commit=expire_on_commit)


@contextmanager
def scratch_session(engine: Engine) -> Iterator[Session]:
    """A session never committed: its changes are thrown away, what it loaded stays readable."""
    from sqlmodel import Session  # noqa: PLC0415  (the ORM: not for the quick reads, see glance.py)

    with Session(engine) as session:
        try:
            yield session
        finally:
            session.expunge_all()  # keep what was loaded: a rollback would expire it
            session.rollback()
