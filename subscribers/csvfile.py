"""CSV files of subscribers as spreadsheets and mailing tools write them: shape, columns, rows.

Reads UTF-8 (with or without BOM), UTF-16 with BOM (Excel's "Unicode text"), or else
Windows-1252 (Excel's "CSV" on Windows); comma, semicolon or tab separated, taken from the
header line; finds the address, name and status columns by their usual headers or by an
explicit mapping; joins first and last name columns; skips blank lines. Also the formula guard
for cells written out (a leading =, +, -, @ gets a `'`) and its undoing on the way back in.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subscribers.errors import UnreadableFile
from subscribers.model import OPTED_OUT, SubscriberStatus

EMAIL_HEADERS = ("email", "e-mail", "email address", "e-mail address", "emailaddress", "email_address", "mail",
                 "address")
NAME_HEADERS = ("name", "full name", "fullname", "full_name", "display name", "display_name")
FIRST_HEADERS = ("first name", "firstname", "first_name", "given name", "forename")
LAST_HEADERS = ("last name", "lastname", "last_name", "surname", "family name")
STATUS_HEADERS = ("status", "subscription status", "member status")
MAPPABLE = ("email", "name", "status")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_S = SubscriberStatus
# What a status column may say (ours, and the words other mailing tools export); "" = no status.
FILE_STATUSES: dict[str, str | None] = {
    "": None, "active": _S.ACTIVE.value, "subscribed": _S.ACTIVE.value, "confirmed": _S.ACTIVE.value,
    "pending": _S.PENDING.value, "unconfirmed": _S.PENDING.value,
    "unsubscribed": _S.UNSUBSCRIBED.value, "bounced": _S.BOUNCED.value,
    "cleaned": _S.BOUNCED.value, "complained": _S.COMPLAINED.value,
}
# Its opt-out words: in a file without a header, a cell saying one is that row's status.
OPT_OUT_WORDS = frozenset(word for word, status in FILE_STATUSES.items() if status in OPTED_OUT)


@dataclass(frozen=True)
class CsvShape:
    encoding: str
    delimiter: str
    lines: int


@dataclass(frozen=True)
class Row:
    """One data row: the line it starts on, and its cells as written (formula guard removed)."""

    line: int
    email: str
    name: str
    status: str
    problem: str = ""  # why the row could not be read (its cells are then empty)


@dataclass(frozen=True)
class _Pick:
    email: int
    names: tuple[int, ...]
    status: int | None
    headerless: bool = False  # no status column by name: a cell saying an opt-out is one


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
                _refuse_mostly_utf8(path, data)
                lines = data.count(b"\n")
                first_line = _first_nonblank(data[: 1 << 16].decode(encoding, errors="replace"))
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it: {exc.strerror or exc}") from None
    counts = {d: _unquoted(first_line).count(d) for d in (",", ";", "\t")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    return CsvShape(encoding, delimiter, lines + 1)


# A valid UTF-8 multi-byte sequence: in a real Windows-1252 file these byte pairs ("Ã©") are rare.
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _refuse_mostly_utf8(path: Path, data: bytes) -> None:
    """UTF-8 with a stray byte or two: read as Windows-1252 every accented name would be garbled."""
    if not _UTF8_SEQUENCE.search(data):
        return
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UnreadableFile(
            f"{path}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8, though the rest of the "
            "file is: fix that line or save the file as UTF-8 (read as Windows-1252, every accented "
            "name would come out garbled)"
        ) from None


def _first_nonblank(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _unquoted(line: str) -> str:
    """`line` without its quoted parts, so a comma inside a quoted header does not count."""
    return "".join(part for i, part in enumerate(line.split('"')) if i % 2 == 0)


def read_rows(path: Path, shape: CsvShape, columns: dict[str, str] | None = None) -> Iterator[Row]:
    """Every non-blank data row of the file, streamed."""
    errors = "replace" if shape.encoding == "cp1252" else "strict"  # its 5 undefined bytes
    try:
        handle = path.open(encoding=shape.encoding, errors=errors, newline="")
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle, delimiter=shape.delimiter)
        try:
            yield from _rows(path, reader, columns)
        except csv.Error as exc:  # the header row itself (a bad data row is refused alone)
            raise UnreadableFile(f"{path}: line {reader.line_num}: not readable as CSV: {exc}") from None


def _rows(path: Path, reader: Any, columns: dict[str, str] | None) -> Iterator[Row]:
    """The rows of a csv.reader (`reader.line_num` gives the lines): header, then data."""
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:  # most likely the wrong file, or an export that wrote nothing
        raise UnreadableFile(f"{path}: the file is empty: no header and no rows")
    pick = _columns(path, header, columns or {})
    if pick is None:  # no header: the first row is data; the address is its cell with an "@"
        email_at = next(i for i, cell in enumerate(header) if "@" in cell)
        pick = _Pick(email_at, (1 if email_at == 0 else 0,) if len(header) > 1 else (), None, headerless=True)
        yield _row(reader.line_num, header, pick)
    ended = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a cell over the csv module's 128 KiB limit: this row only
            # The reader drops the rest of that line and carries on with the next one.
            start, ended = ended + 1, reader.line_num
            yield Row(start, "", "", "", problem=f"not readable as CSV: {exc}")
            continue
        # A quoted cell may span lines: a row starts on the line after the previous one ended.
        start, ended = ended + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line, or one of empty cells
        yield _row(start, cells, pick)


def _row(line: int, cells: list[str], pick: _Pick) -> Row:
    count = len(cells)
    email = cells[pick.email].strip() if pick.email < count else ""
    if len(pick.names) == 1:  # the usual case, without the join
        name = cells[pick.names[0]].strip() if pick.names[0] < count else ""
    else:
        name = " ".join(cells[i].strip() for i in pick.names if i < count and cells[i].strip())
    status = cells[pick.status].strip().lower() if pick.status is not None and pick.status < count else ""
    if pick.headerless:
        # Without a header, an export's status column has no name; the opt-outs in it must
        # still count (other cells, a date or a note, are ignored as extra columns are).
        taken = (pick.email, *pick.names)
        status = next((cell.strip().lower() for i, cell in enumerate(cells)
                       if i not in taken and cell.strip().lower() in OPT_OUT_WORDS), "")
    return Row(line, unguard(email), unguard(name), status)


def _columns(path: Path, header: list[str], mapping: dict[str, str]) -> _Pick | None:
    """Which columns hold what, from the header; None when the first row is data."""
    names = [cell.strip().strip("\ufeff").lower() for cell in header]
    for key in mapping:
        if key not in MAPPABLE:
            raise UnreadableFile(f"--column {key}=...: only {', '.join(MAPPABLE)} can be mapped")

    def find(label: str, wanted: tuple[str, ...]) -> int | None:
        if label in mapping:
            target = mapping[label].strip().lower()
            if target not in names:
                raise UnreadableFile(f"{path}: no column {mapping[label]!r} (the header has: {', '.join(header)})")
        else:
            target = next((w for w in wanted if w in names), "")
            if not target:
                return None
        at = [i for i, name in enumerate(names) if name == target]
        if len(at) > 1:  # which one holds the data is a guess: the other would be dropped unseen
            raise UnreadableFile(f"{path}: the header has {header[at[0]].strip()!r} twice (columns "
                                 f"{', '.join(str(i + 1) for i in at)}): rename one of them")
        return at[0]

    email_at = find("email", EMAIL_HEADERS)
    if email_at is None:
        if any("@" in cell for cell in header) and not mapping:
            return None
        raise UnreadableFile(
            f"{path}: no address column (looked for {', '.join(EMAIL_HEADERS[:4])}; the header has: "
            f"{', '.join(header)}); name it with --column email=HEADER"
        )
    status_at = find("status", STATUS_HEADERS)
    name_at = find("name", NAME_HEADERS)
    if name_at is not None:
        return _Pick(email_at, (name_at,), status_at)
    parts = (find("", FIRST_HEADERS), find("", LAST_HEADERS))
    return _Pick(email_at, tuple(i for i in parts if i is not None), status_at)


# A formula start right after a separator inside a cell, and the same with guard()'s `'` in it.
_INNER_FORMULA = re.compile(r"([;,])([=+\-@])")
_INNER_GUARDED = re.compile(r"([;,])'([=+\-@])")

def guard(value: object) -> str:
    """A cell a spreadsheet shows as text: a leading =, +, -, @, tab or CR gets a `'` before it,
    and so does one after a `;` or `,` inside it: a spreadsheet that splits the file on another
    separator than ours (Excel splits on ";" in many locales) would make that part a cell."""
    if value is None:
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    text = _INNER_FORMULA.sub(r"\1'\2", text)
    return "'" + text if text.startswith(FORMULA_START) else text


def unguard(text: str) -> str:
    """Undo guard() on import, so an exported file imports the addresses it holds."""
    text = text[1:] if len(text) > 1 and text[0] == "'" and text[1] in FORMULA_START else text
    return _INNER_GUARDED.sub(r"\1\2", text) if "'" in text else text
