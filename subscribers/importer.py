"""CSV import and export of subscribers, under the consent rules, fast enough for large lists.

Import applies consent.operator_decision to every row of a file read by csvfile: new addresses
become active (the operator vouches for them) or pending, known ones get their name updated,
addresses that left are left alone, and a status column that says "unsubscribed", "bounced" or
"complained" is recorded as such (an export from another tool carries its opt-outs over). It
streams the file, loads the existing addresses and suppression hashes once, and writes in batches
inside one transaction: a failed import leaves the list as it was.

Export writes every subscriber (or those of one status) through csvfile.guard, so no cell is run
as a formula by a spreadsheet; import undoes the guard, so an export imports back unchanged.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from subscribers.addresses import clean_name, parse_address, suppression_hash
from subscribers.consent import ACTIVE, PENDING, operator_decision
from subscribers.csvfile import FILE_STATUSES, guard, read_rows, sniff
from subscribers.errors import InvalidEmail, SubscriberError
from subscribers.model import OPTED_OUT, Subscriber, SubscriberStatus, Suppression, utcnow

BATCH = 5000
EXPORT_FIELDS = ("email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")
_table: Any = Subscriber.__table__  # type: ignore[attr-defined]
_suppression: Any = Suppression.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RowProblem:
    """One row worth a word in the report: its line in the file, the address as written, why."""

    line: int
    email: str
    reason: str


@dataclass
class ImportReport:
    source: str
    dry_run: bool = False
    encoding: str = ""
    delimiter: str = ","
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: list[RowProblem] = field(default_factory=list)  # same address earlier in the file
    opted_out: list[RowProblem] = field(default_factory=list)  # consent rule 1: left alone
    opt_outs_recorded: list[RowProblem] = field(default_factory=list)  # the file's status said so
    refused: list[RowProblem] = field(default_factory=list)  # not an address: fix the file
    names_cleaned: int = 0


@dataclass
class _Batch:
    """Writes waiting for the next flush."""

    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    leaves: list[dict[str, Any]] = field(default_factory=list)
    suppress: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates) + len(self.leaves)


def import_csv(
    session: Session, path: Path, *, columns: dict[str, str] | None = None, pending: bool = False,
    dry_run: bool = False, check_deliverability: bool = False, progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file under the consent rules; the report says what happened.

    `columns` maps "email", "name", "status" to header names. `progress` is called with the
    line reached, every thousand rows. Raises UnreadableFile for a file that has no address
    column or cannot be read.
    """
    shape = sniff(path)
    report = ImportReport(source=f"import:{path.name}", dry_run=dry_run, encoding=shape.encoding,
                          delimiter=shape.delimiter)
    existing = {row.email_normalized: row for row in session.execute(
        select(_table.c.email_normalized, _table.c.id, _table.c.status, _table.c.name)
    )}
    suppressed = set(session.execute(select(_suppression.c.email_hash)).scalars())
    seen: dict[str, tuple[int, str, str | None]] = {}  # key -> (line, its count, its status)
    batch = _Batch()
    now = utcnow()

    def opt_out(key: str, digest: str, line: int, email: str, file_status: str,
                new: tuple[Any, ...] | None = None) -> None:
        """Record the file's opt-out (`digest`: the suppression hash of `key`): of a `new` row, or
        of an address on the list (or going on it)."""
        report.opt_outs_recorded.append(RowProblem(line, email, f"{file_status} in the file: recorded so"))
        if new is not None:
            batch.inserts.append(new)
        else:
            batch.leaves.append({"_key": key, "_status": file_status})
        if digest not in suppressed:
            suppressed.add(digest)
            batch.suppress.append({"email_hash": digest, "reason": file_status, "created_at": now})

    for row in read_rows(path, shape, columns):
        line = row.line
        report.rows += 1
        if progress is not None and report.rows % 1000 == 0:
            progress(line)
        if row.problem or not row.email:
            report.refused.append(RowProblem(line, "", row.problem or "no address in this row"))
            continue
        if row.status not in FILE_STATUSES:
            known = ", ".join(name for name in FILE_STATUSES if name)
            report.refused.append(RowProblem(line, row.email, f"unknown status {row.status!r} "
                                                              f"(expected one of {known}, or empty)"))
            continue
        try:
            address = parse_address(row.email, check_deliverability)
        except InvalidEmail as exc:
            report.refused.append(RowProblem(line, row.email, str(exc)))
            continue
        key = address.normalized
        file_status = FILE_STATUSES[row.status]
        if key in seen:
            first, counted, became = seen[key]
            if file_status in OPTED_OUT and became in (ACTIVE, PENDING):
                # The stricter status wins, whichever row comes first: an opt-out must never be
                # lost as a duplicate of a row that put the address on the list.
                setattr(report, counted, getattr(report, counted) - 1)
                seen[key] = (first, "opt_outs_recorded", file_status)
                opt_out(key, suppression_hash(key), line, row.email, file_status)
                why = f"same address as line {first}; its opt-out counts (the stricter status wins)"
            else:
                why = f"same address as line {first}"
            report.duplicates.append(RowProblem(line, row.email, why))
            continue
        name = clean_name(row.name)
        if name != row.name:
            report.names_cleaned += 1
        current = existing.get(key)
        # Hashed once, and only when it is needed: most rows of a first import need it for nothing.
        digest = suppression_hash(key) if suppressed or file_status in OPTED_OUT else ""
        is_suppressed = digest in suppressed
        if file_status in OPTED_OUT:
            if (current is not None and current.status in OPTED_OUT) or (current is None and is_suppressed):
                # Opted out already; or removed (erased), when only its suppression hash is left:
                # the file must not put that address and name back on the list.
                report.unchanged += 1
                seen[key] = (line, "unchanged", None)
                continue
            seen[key] = (line, "opt_outs_recorded", file_status)
            opt_out(key, digest, line, row.email, file_status, None if current is not None else
                    (address.email, key, name, file_status, report.source, False, True))
            continue
        want = PENDING if pending or file_status == PENDING else ACTIVE
        status, why = operator_decision(current.status if current else None, is_suppressed, want)
        if status is None:
            report.opted_out.append(RowProblem(line, row.email, why))
            seen[key] = (line, "opted_out", None)
        elif current is None:
            report.added += 1
            seen[key] = (line, "added", status)
            batch.inserts.append((address.email, key, name, status, report.source, status == ACTIVE, False))
        elif status != current.status or (name and name != current.name):
            report.updated += 1
            seen[key] = (line, "updated", status)
            batch.updates.append({
                "_id": current.id, "_status": status, "_name": name or current.name,
                "_confirmed": now if status != current.status else None,
            })
        else:
            report.unchanged += 1
            seen[key] = (line, "unchanged", status)
        if not dry_run and len(batch) >= BATCH:
            _write(session, batch, now)
    if progress is not None:
        progress(shape.lines)
    if not dry_run:
        _write(session, batch, now)
        session.commit()
    return report


def _write(session: Session, batch: _Batch, now: Any) -> None:
    """Flush a batch: one executemany per kind of write."""
    try:
        if batch.inserts:
            _insert_many(session, batch.inserts, now)
        if batch.updates:
            session.execute(
                update(_table).where(_table.c.id == bindparam("_id")).values(
                    status=bindparam("_status"), name=bindparam("_name"), updated_at=now,
                    # Set when a pending subscriber becomes active; otherwise kept as it was.
                    confirmed_at=func.coalesce(bindparam("_confirmed"), _table.c.confirmed_at),
                ),
                batch.updates,
            )
        if batch.leaves:
            session.execute(
                # By address: the row may be one this import inserted a moment ago.
                update(_table).where(_table.c.email_normalized == bindparam("_key")).values(
                    status=bindparam("_status"), updated_at=now, unsubscribed_at=now,
                ),
                batch.leaves,
            )
        if batch.suppress:
            session.execute(insert(_suppression), batch.suppress)
    except IntegrityError:
        session.rollback()
        raise SubscriberError(
            "the list changed while importing (another process added one of these addresses); "
            "nothing was imported: run the import again"
        ) from None
    for pending_writes in (batch.inserts, batch.updates, batch.leaves, batch.suppress):
        pending_writes.clear()


INSERT_COLUMNS = (
    "email", "email_normalized", "name", "status", "source",
    "created_at", "updated_at", "confirmed_at", "unsubscribed_at",
)


def _insert_many(session: Session, rows: list[tuple[Any, ...]], now: Any) -> None:
    """INSERT the rows with the driver's own executemany.

    The speed of a large import: SQLAlchemy's executemany converts every value of every row
    through its column type, which costs more than the insert itself. Here the one timestamp
    of the batch is converted once, by the column type's own bind processor (so it is stored
    exactly as the ORM stores it), and the strings go to the driver as they are.
    """
    connection = session.connection()
    dialect = connection.dialect
    processor = _table.c.created_at.type.bind_processor(dialect)
    stamp = processor(now) if processor else now
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {_table.name} ({', '.join(INSERT_COLUMNS)}) "
        f"VALUES ({', '.join([marker] * len(INSERT_COLUMNS))})"
    )
    connection.exec_driver_sql(sql, [
        (e, k, n, st, src, stamp, stamp, stamp if confirmed else None, stamp if left else None)
        for e, k, n, st, src, confirmed, left in rows
    ])


def export_csv(session: Session, out: TextIO, status: str | None = None) -> int:
    """Write subscribers (of `status`, or all) as CSV to `out`; the number of rows written.

    Removed subscribers have no data left and are never exported.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_FIELDS)
    query = select(*(_table.c[name] for name in EXPORT_FIELDS)).where(
        _table.c.status != SubscriberStatus.REMOVED.value
    ).order_by(_table.c.id)
    if status is not None:
        query = query.where(_table.c.status == status)
    written = 0
    for row in session.execute(query.execution_options(yield_per=2000)):
        writer.writerow([guard(value) for value in row])
        written += 1
    return written
