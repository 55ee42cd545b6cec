"""CSV import and export of subscribers, in the shapes spreadsheets and other tools really write.

Import reads UTF-8 (with or without BOM), UTF-16 with BOM, or else Windows-1252; comma,
semicolon or tab separated (taken from the header line); finds the address and name columns by
their usual headers (or `columns={"email": "E-mail", "name": "Full name"}`), joins first and last
name columns, skips blank lines, and applies the consent rules of consent.operator_decision to
every row. It streams the file, loads the existing addresses once, and writes in batches inside
one transaction: a failed import leaves the list as it was.

Export writes every subscriber (or those of one status) and neutralises cells a spreadsheet would
run as a formula by prefixing a `'`; import removes that prefix again, so an export round-trips.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import bindparam, func, select, update
from sqlmodel import Session

from subscribers.addresses import clean_name, parse_address, suppression_hash
from subscribers.consent import ACTIVE, PENDING, operator_decision
from subscribers.errors import InvalidEmail, UnreadableFile
from subscribers.model import Subscriber, SubscriberStatus, Suppression, utcnow

BATCH = 5000
EMAIL_HEADERS = ("email", "e-mail", "email address", "e-mail address", "emailaddress", "email_address", "mail", "address")
NAME_HEADERS = ("name", "full name", "fullname", "full_name", "display name", "display_name")
FIRST_HEADERS = ("first name", "firstname", "first_name", "given name", "forename")
LAST_HEADERS = ("last name", "lastname", "last_name", "surname", "family name")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORT_FIELDS = ("email", "name", "status", "source", "created_at", "confirmed_at", "unsubscribed_at")
_table: Any = Subscriber.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RowProblem:
    """One row that was not taken: its line in the file, the address as written, why."""

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
    refused: list[RowProblem] = field(default_factory=list)  # not an address: fix the file
    names_cleaned: int = 0


@dataclass(frozen=True)
class CsvShape:
    encoding: str
    delimiter: str
    lines: int


def sniff(path: Path) -> CsvShape:
    """The encoding, delimiter and line count of a CSV file (one quick pass over its bytes)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
            encoding = "utf-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
            handle.seek(0)
            decoder = codecs.getincrementaldecoder(encoding)()
            lines, first_line = 0, ""
            try:
                while chunk := handle.read(1 << 20):
                    text = decoder.decode(chunk)
                    lines += chunk.count(b"\n")
                    if not first_line.strip():
                        first_line = _first_nonblank(text)
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                # Not UTF-8: Excel on Windows saves "CSV" in the ANSI code page, Windows-1252.
                encoding = "cp1252"
                handle.seek(0)
                data = handle.read()
                lines = data.count(b"\n")
                first_line = _first_nonblank(data[: 1 << 16].decode(encoding, errors="replace"))
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it: {exc.strerror}") from None
    counts = {d: _unquoted(first_line).count(d) for d in (",", ";", "\t")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    return CsvShape(encoding, delimiter, lines + 1)


def _first_nonblank(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _unquoted(line: str) -> str:
    """`line` without its quoted parts, so a comma inside a quoted header does not count."""
    return "".join(part for i, part in enumerate(line.split('"')) if i % 2 == 0)


def read_rows(path: Path, shape: CsvShape, columns: dict[str, str] | None = None) -> Iterator[tuple[int, str, str]]:
    """(line number, address, name) for every non-blank data row of the file."""
    try:
        handle = path.open(encoding=shape.encoding, errors="replace" if shape.encoding == "cp1252" else "strict", newline="")
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle, delimiter=shape.delimiter)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            return
        pick = _columns(path, header, columns or {})
        if pick is None:  # no header: the first row is data; the address is its cell with an "@"
            email_at = next(i for i, cell in enumerate(header) if "@" in cell)
            pick = (email_at, [1 if email_at == 0 else 0] if len(header) > 1 else [])
            yield reader.line_num, *_cells(header, pick)
        ended = reader.line_num
        for row in reader:
            # A quoted cell may span lines: a row starts on the line after the previous one ended.
            start, ended = ended + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line, or one of empty cells
            yield start, *_cells(row, pick)


def _cells(row: list[str], pick: tuple[int, list[int]]) -> tuple[str, str]:
    email_at, name_at = pick
    email = row[email_at].strip() if email_at < len(row) else ""
    if len(name_at) == 1:  # the usual case, without the join
        name = row[name_at[0]].strip() if name_at[0] < len(row) else ""
    else:
        name = " ".join(row[i].strip() for i in name_at if i < len(row) and row[i].strip())
    return _unguard(email), _unguard(name)


def _columns(path: Path, header: list[str], mapping: dict[str, str]) -> tuple[int, list[int]] | None:
    """(address column, name columns) from the header; None when the first row is data."""
    names = [cell.strip().strip("\ufeff").lower() for cell in header]
    for key in mapping:
        if key not in ("email", "name"):
            raise UnreadableFile(f"--column {key}=...: only 'email' and 'name' can be mapped")

    def find(label: str, wanted: tuple[str, ...]) -> int | None:
        if label in mapping:
            target = mapping[label].strip().lower()
            if target not in names:
                raise UnreadableFile(f"{path}: no column {mapping[label]!r} (the header has: {', '.join(header)})")
            return names.index(target)
        return next((names.index(w) for w in wanted if w in names), None)

    email_at = find("email", EMAIL_HEADERS)
    if email_at is None:
        if any("@" in cell for cell in header) and not mapping:
            return None
        raise UnreadableFile(
            f"{path}: no address column (looked for {', '.join(EMAIL_HEADERS[:4])}; the header has: "
            f"{', '.join(header)}); name it with --column email=HEADER"
        )
    name_at = find("name", NAME_HEADERS)
    if name_at is not None:
        return email_at, [name_at]
    parts = [find("", FIRST_HEADERS), find("", LAST_HEADERS)]
    return email_at, [i for i in parts if i is not None]


def import_csv(
    session: Session, path: Path, *, columns: dict[str, str] | None = None, pending: bool = False,
    dry_run: bool = False, check_deliverability: bool = False, progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file under the consent rules; the report says what happened.

    New addresses become active (the operator vouches for consent) or, with `pending`, pending;
    an existing subscriber's name is updated; opted-out addresses are left alone; invalid rows are
    refused with their line number. `progress` is called with the number of lines done so far.
    """
    shape = sniff(path)
    report = ImportReport(source=f"import:{path.name}", dry_run=dry_run, encoding=shape.encoding, delimiter=shape.delimiter)
    existing = {row.email_normalized: row for row in session.execute(
        select(_table.c.email_normalized, _table.c.id, _table.c.status, _table.c.name)
    )}
    suppressed = set(session.execute(select(Suppression.email_hash)).scalars())  # type: ignore[call-overload]
    seen: dict[str, int] = {}
    inserts: list[tuple[Any, ...]] = []
    updates: list[dict[str, Any]] = []
    want = PENDING if pending else ACTIVE
    now = utcnow()
    for line, raw_email, raw_name in read_rows(path, shape, columns):
        report.rows += 1
        if progress is not None and report.rows % 1000 == 0:
            progress(line)
        if not raw_email:
            report.refused.append(RowProblem(line, "", "no address in this row"))
            continue
        try:
            address = parse_address(raw_email, check_deliverability)
        except InvalidEmail as exc:
            report.refused.append(RowProblem(line, raw_email, str(exc)))
            continue
        key = address.normalized
        if key in seen:
            report.duplicates.append(RowProblem(line, raw_email, f"same address as line {seen[key]}"))
            continue
        seen[key] = line
        name = clean_name(raw_name)
        if name != raw_name.strip():
            report.names_cleaned += 1
        current = existing.get(key)
        is_suppressed = bool(suppressed) and suppression_hash(key) in suppressed
        status, why = operator_decision(current.status if current else None, is_suppressed, want)
        if status is None:
            report.opted_out.append(RowProblem(line, raw_email, why))
        elif current is None:
            report.added += 1
            # A tuple in INSERT_COLUMNS order; the dates are filled in by _write, once per batch.
            inserts.append((address.email, key, name, status, report.source, status == ACTIVE))
        elif status != current.status or (name and name != current.name):
            report.updated += 1
            updates.append({
                "_id": current.id, "_status": status, "_name": name or current.name,
                "_confirmed": now if status != current.status else None,
            })
        else:
            report.unchanged += 1
        if not dry_run and len(inserts) + len(updates) >= BATCH:
            _write(session, inserts, updates, now)
    if progress is not None:
        progress(shape.lines)
    if not dry_run:
        _write(session, inserts, updates, now)
        session.commit()
    return report


def _write(session: Session, inserts: list[tuple[Any, ...]], updates: list[dict[str, Any]], now: Any) -> None:
    """Flush a batch: one executemany for new rows, one for changed ones."""
    if inserts:
        _insert_many(session, inserts, now)
        inserts.clear()
    if updates:
        statement = update(_table).where(_table.c.id == bindparam("_id")).values(
            status=bindparam("_status"), name=bindparam("_name"), updated_at=now,
            # Set when a pending subscriber becomes active; otherwise kept as it was.
            confirmed_at=func.coalesce(bindparam("_confirmed"), _table.c.confirmed_at),
        )
        session.execute(statement, updates)
        updates.clear()


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
    connection.exec_driver_sql(
        sql, [(e, k, n, st, src, stamp, stamp, stamp if active else None, None) for e, k, n, st, src, active in rows]
    )


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
        writer.writerow([_guard(value) for value in row])
        written += 1
    return written


def _guard(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading =, +, -, @, tab or CR gets a `'` before it."""
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _unguard(text: str) -> str:
    """Undo _guard on import, so an exported file imports the addresses it holds."""
    return text[1:] if text.startswith("'") and text[1:2] in FORMULA_START and len(text) > 1 else text
