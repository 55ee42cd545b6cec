"""CSV import and export: every shape people export, the consent rules, the report, formula cells."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from subscribers import consent
from subscribers.errors import UnreadableFile
from subscribers.importer import export_csv, import_csv
from subscribers.model import Subscriber, utcnow


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def people(session: Session) -> dict[str, tuple[str, str]]:
    """email -> (name, status) of everyone on the list."""
    session.expire_all()
    return {s.email: (s.name, s.status) for s in session.exec(select(Subscriber)) if s.email}


def write(tmp_path: Path, data: bytes, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


SHAPES = {
    "utf8": "email,name\r\nzoe@example.org,Zoë Ørsted\r\nli@example.org,李雷\r\n".encode(),
    "utf8-bom": "\ufeffemail,name\nzoe@example.org,Zoë Ørsted\nli@example.org,李雷\n".encode("utf-8"),
    "semicolon": "E-Mail;Name\nzoe@example.org;Zoë Ørsted\nli@example.org;李雷\n".encode(),
    "utf16-tab": "Email Address\tName\r\nzoe@example.org\tZoë Ørsted\r\nli@example.org\t李雷\r\n".encode("utf-16"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_encoding_and_separator_imports_the_same_list(db: Session, tmp_path: Path, shape: str) -> None:
    report = import_csv(db, write(tmp_path, SHAPES[shape]))
    assert (report.added, report.refused) == (2, [])
    assert people(db) == {"zoe@example.org": ("Zoë Ørsted", "active"), "li@example.org": ("李雷", "active")}


def test_windows_1252_with_semicolons_as_excel_saves_it(db: Session, tmp_path: Path) -> None:
    data = "E-mail;Name;Betrag\r\nmueller@example.de;Jürgen Müller;5 €\r\nfrancois@example.fr;François Lefèvre;3 €\r\n"
    report = import_csv(db, write(tmp_path, data.encode("cp1252")))
    assert report.encoding == "cp1252" and report.delimiter == ";"
    assert people(db) == {
        "mueller@example.de": ("Jürgen Müller", "active"),
        "francois@example.fr": ("François Lefèvre", "active"),
    }


def test_quoted_names_with_commas_extra_columns_and_blank_lines(db: Session, tmp_path: Path) -> None:
    data = (
        b'id,Email,Name,Signed up,Notes\n'
        b'1,ann@example.org,"Lee, Ann",2024-01-01,"likes ""essays"", a lot"\n'
        b'\n'
        b',,,,\n'
        b'2,bob@example.org,"Okafor, Bob ""The Reader""",2024-02-02,\n'
        b'\n'
    )
    report = import_csv(db, write(tmp_path, data))
    assert (report.rows, report.added, report.refused) == (2, 2, [])
    assert people(db) == {
        "ann@example.org": ("Lee, Ann", "active"),
        "bob@example.org": ('Okafor, Bob "The Reader"', "active"),
    }


def test_columns_can_be_mapped_by_their_header(db: Session, tmp_path: Path) -> None:
    data = b"Contact,Full name,Mail of record\nignored,Ann Lee,ann@example.org\n"
    report = import_csv(db, write(tmp_path, data), columns={"email": "mail of record", "name": "Full name"})
    assert report.added == 1
    assert people(db) == {"ann@example.org": ("Ann Lee", "active")}


def test_a_mapped_column_that_does_not_exist_names_the_header(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, b"Mail,Name\nann@example.org,Ann\n")
    with pytest.raises(UnreadableFile, match=r"no column 'E-mail'.*Mail, Name"):
        import_csv(db, path, columns={"email": "E-mail"})


def test_a_file_without_an_address_column_is_refused_whole(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, b"who,what\nAnn,reader\n")
    with pytest.raises(UnreadableFile, match="list.csv: no address column"):
        import_csv(db, path)
    assert people(db) == {}


def test_first_and_last_name_columns_are_joined(db: Session, tmp_path: Path) -> None:
    data = b'"Email Address","First Name","Last Name","MEMBER_RATING"\nann@example.org,Ann,Lee,2\nbob@example.org,,Okafor,1\n'
    import_csv(db, write(tmp_path, data))
    assert people(db) == {"ann@example.org": ("Ann Lee", "active"), "bob@example.org": ("Okafor", "active")}


def test_a_file_without_a_header_takes_the_cell_with_an_at(db: Session, tmp_path: Path) -> None:
    data = b"Ann Lee,ann@example.org\nBob,bob@example.org\n"
    report = import_csv(db, write(tmp_path, data))
    assert report.added == 2
    assert people(db)["ann@example.org"] == ("Ann Lee", "active")


def test_the_same_address_twice_in_different_case_is_one_subscriber(db: Session, tmp_path: Path) -> None:
    data = b"email,name\nAnn@Example.org,Ann\nbob@example.org,Bob\nANN@EXAMPLE.ORG,Annie\n"
    report = import_csv(db, write(tmp_path, data))
    assert report.added == 2
    assert [(d.line, d.reason) for d in report.duplicates] == [(4, "same address as line 2")]
    assert people(db)["Ann@example.org"] == ("Ann", "active")


def test_refused_rows_carry_their_line_and_reason_and_good_rows_are_kept(db: Session, tmp_path: Path) -> None:
    data = (
        b"email,name\n"
        b"ok@example.org,Ok\n"
        b'broken,"Multi\nline name"\n'
        b",No Address\n"
        b"two@@example.org,Two\n"
        b"fine@example.org,Fine\n"
    )
    report = import_csv(db, write(tmp_path, data))
    assert report.added == 2
    assert [(r.line, r.email) for r in report.refused] == [(3, "broken"), (5, ""), (6, "two@@example.org")]
    assert "@-sign" in report.refused[0].reason and report.refused[1].reason == "no address in this row"
    assert set(people(db)) == {"ok@example.org", "fine@example.org"}


def test_names_that_would_break_a_header_are_cleaned(db: Session, tmp_path: Path) -> None:
    data = b'email,name\neve@example.org,"Eve\r\nBcc: victim@example.org"\n'
    report = import_csv(db, write(tmp_path, data))
    assert report.names_cleaned == 1
    assert people(db)["eve@example.org"] == ("Eve Bcc: victim@example.org", "active")


def test_a_second_import_reports_unchanged_and_updates_names(db: Session, tmp_path: Path) -> None:
    import_csv(db, write(tmp_path, b"email,name\nann@example.org,Ann\nbob@example.org,Bob\n"))
    report = import_csv(db, write(tmp_path, b"email,name\nann@example.org,Ann Lee\nbob@example.org,Bob\n"))
    assert (report.added, report.updated, report.unchanged) == (0, 1, 1)
    assert people(db)["ann@example.org"] == ("Ann Lee", "active")


def test_dry_run_reports_and_writes_nothing(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, b"email,name\nann@example.org,Ann\nbad,Bad\nANN@example.org,Ann\n")
    report = import_csv(db, path, dry_run=True)
    assert (report.added, len(report.refused), len(report.duplicates)) == (1, 1, 1)
    assert people(db) == {}


def test_pending_import_and_a_later_import_activates_them(db: Session, tmp_path: Path) -> None:
    path = write(tmp_path, b"email\nann@example.org\n")
    import_csv(db, path, pending=True)
    assert people(db)["ann@example.org"][1] == "pending"
    assert import_csv(db, path).updated == 1
    assert people(db)["ann@example.org"][1] == "active"
    assert db.exec(select(Subscriber)).one().confirmed_at is not None


@pytest.fixture
def any_db(any_engine: Engine) -> Iterator[Session]:
    with Session(any_engine, expire_on_commit=False) as session:
        yield session


def test_import_never_brings_back_anyone_who_left(any_db: Session, tmp_path: Path) -> None:
    """Consent rule 1 on the import path, on SQLite and PostgreSQL, for every way of leaving."""
    for who in ("unsub", "bounce", "complain", "removed", "stays"):
        consent.add(any_db, f"{who}@example.org", name=who)
    consent.unsubscribe(any_db, "unsub@example.org")
    consent.mark_bounced(any_db, consent.find(any_db, "bounce@example.org").id)  # type: ignore[union-attr]
    consent.mark_complained(any_db, consent.find(any_db, "complain@example.org").id)  # type: ignore[union-attr]
    consent.remove(any_db, "removed@example.org")
    before = people(any_db)
    data = (
        b"email,name\nUNSUB@example.org,U\nbounce@example.org,B\ncomplain@example.org,C\n"
        b"Removed@Example.org,R\nstays@example.org,stays\nnew@example.org,New\n"
    )
    started = utcnow()
    report = import_csv(any_db, write(tmp_path, data))
    finished = utcnow()
    assert [(o.line, o.email) for o in report.opted_out] == [
        (2, "UNSUB@example.org"), (3, "bounce@example.org"), (4, "complain@example.org"), (5, "Removed@Example.org")
    ]
    assert report.refused == [] and report.added == 1 and report.unchanged == 1
    assert people(any_db) == {**before, "new@example.org": ("New", "active")}
    assert [s.email for s in consent.active_subscribers(any_db)] == ["stays@example.org", "new@example.org"]
    # The bulk insert stores dates exactly as the ORM does: aware UTC, read back equal.
    new = consent.find(any_db, "new@example.org")
    assert new is not None and new.created_at.tzinfo is not None
    assert new.created_at == new.confirmed_at and started <= new.created_at <= finished  # stamped by the import


def test_export_neutralises_formulas_and_round_trips(db: Session, tmp_path: Path) -> None:
    data = (
        'email,name\n'
        '-dash@example.org,"=HYPERLINK(""http://evil.example"",""click"")"\n'
        'plus@example.org,+1 555 0100\n'
        'at@example.org,@SUM(A1)\n'
        'plain@example.org,Plain\n'
    )
    import_csv(db, write(tmp_path, data.encode()))
    out = io.StringIO()
    assert export_csv(db, out) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert {r["email"]: r["name"] for r in rows}["'-dash@example.org"].startswith("'=HYPERLINK")
    # Importing the export into a fresh list gives the same people back.
    before = people(db)
    for subscriber in db.exec(select(Subscriber)).all():
        db.delete(subscriber)
    db.commit()
    report = import_csv(db, write(tmp_path, out.getvalue().encode(), "export.csv"))
    assert report.added == 4 and report.refused == []
    assert people(db) == before


def test_export_by_status_leaves_out_removed_people(db: Session) -> None:
    consent.add(db, "a@example.org")
    consent.add(db, "b@example.org")
    consent.unsubscribe(db, "b@example.org")
    consent.add(db, "c@example.org")
    consent.remove(db, "c@example.org")
    out = io.StringIO()
    assert export_csv(db, out, status="unsubscribed") == 1
    assert "b@example.org" in out.getvalue() and "a@example.org" not in out.getvalue()
    out = io.StringIO()
    assert export_csv(db, out) == 2
    assert "removed" not in out.getvalue()


def test_the_example_subscribers_file_imports_cleanly(db: Session) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "subscribers.csv"
    report = import_csv(db, path)
    assert report.added >= 5 and report.refused == [] and report.duplicates == []


def test_a_status_column_carries_opt_outs_over_to_a_new_list(any_db: Session, tmp_path: Path) -> None:
    """An export (ours or another tool's) imported elsewhere must not re-activate anyone who left."""
    consent.add(any_db, "known@example.org", name="Known")
    data = (
        "Email Address,Name,Status\n"
        "stay@example.org,Stay,subscribed\n"
        "left@example.org,Left,unsubscribed\n"
        "gone@example.org,Gone,cleaned\n"
        "wait@example.org,Wait,pending\n"
        "known@example.org,Known,Unsubscribed\n"
        "odd@example.org,Odd,archived\n"
    )
    report = import_csv(any_db, write(tmp_path, data.encode()))
    assert report.added == 2
    assert [(r.line, r.email) for r in report.opt_outs_recorded] == [
        (3, "left@example.org"), (4, "gone@example.org"), (6, "known@example.org")
    ]
    assert [(r.line, r.reason.split(" (")[0]) for r in report.refused] == [(7, "unknown status 'archived'")]
    assert {email: status for email, (_, status) in people(any_db).items()} == {
        "stay@example.org": "active", "left@example.org": "unsubscribed", "gone@example.org": "bounced",
        "wait@example.org": "pending", "known@example.org": "unsubscribed",
    }
    for email in ("left@example.org", "gone@example.org", "known@example.org"):
        assert consent.is_suppressed(any_db, email)
    assert consent.find(any_db, "left@example.org").unsubscribed_at is not None  # type: ignore[union-attr]
    # A later import without the status column cannot bring them back.
    again = import_csv(any_db, write(tmp_path, b"email\nleft@example.org\nknown@example.org\n", "again.csv"))
    assert len(again.opted_out) == 2 and again.added == again.updated == 0
    assert [s.email for s in consent.active_subscribers(any_db)] == ["stay@example.org"]


def test_a_status_column_can_be_mapped(db: Session, tmp_path: Path) -> None:
    data = b"E-mail;Abo\nann@example.org;unsubscribed\n"
    report = import_csv(db, write(tmp_path, data), columns={"email": "E-mail", "status": "Abo"})
    assert len(report.opt_outs_recorded) == 1
    assert people(db) == {"ann@example.org": ("", "unsubscribed")}


def test_an_opt_out_later_in_the_file_wins_over_an_earlier_row_of_the_same_address(
        any_db: Session, tmp_path: Path) -> None:
    """Two rows of one address: the stricter status counts, whichever comes first. An opt-out
    "skipped as duplicate" left the person active (and unsuppressed); here and across batches."""
    consent.add(any_db, "kept@example.org", name="Kept")
    data = (
        "email,name,status\n"
        "Gina@example.org,Gina,\n"
        "kept@example.org,Kept,subscribed\n"
        "gina@example.org,Gina,unsubscribed\n"
        "KEPT@example.org,Kept,cleaned\n"
        "hal@example.org,Hal,complained\n"
        "hal@example.org,Hal,subscribed\n"
    )
    report = import_csv(any_db, write(tmp_path, data.encode()))
    assert {email: status for email, (_, status) in people(any_db).items()} == {
        "Gina@example.org": "unsubscribed", "kept@example.org": "bounced", "hal@example.org": "complained"}
    for email in ("gina@example.org", "kept@example.org", "hal@example.org"):
        assert consent.is_suppressed(any_db, email)
    assert report.added == report.updated == report.unchanged == 0
    assert [(r.line, r.email) for r in report.opt_outs_recorded] == [
        (4, "gina@example.org"), (5, "KEPT@example.org"), (6, "hal@example.org")]
    assert [r.line for r in report.duplicates] == [4, 5, 7]


def test_a_file_without_a_header_still_carries_its_opt_outs(db: Session, tmp_path: Path) -> None:
    """No header, so no status column by name: a cell that says an opt-out is still one."""
    data = b"nora@example.org,Nora,unsubscribed\nned@example.org,Ned,bounced\nola@example.org,Ola,2024-01-02\n"
    report = import_csv(db, write(tmp_path, data))
    assert people(db) == {"nora@example.org": ("Nora", "unsubscribed"), "ned@example.org": ("Ned", "bounced"),
                          "ola@example.org": ("Ola", "active")}
    assert len(report.opt_outs_recorded) == 2 and report.refused == []


def test_an_opt_out_row_never_brings_back_a_removed_address(any_db: Session, tmp_path: Path) -> None:
    """Erased on request: only the suppression hash is left. A file listing them as unsubscribed
    must not put their address and name back on the list."""
    consent.add(any_db, "dave@example.org", name="Dave Doe")
    consent.remove(any_db, "dave@example.org")
    report = import_csv(any_db, write(tmp_path, b"email,name,status\ndave@example.org,Dave Doe,unsubscribed\n"))
    assert report.unchanged == 1 and report.opt_outs_recorded == []
    assert "dave@example.org" not in people(any_db)
    assert consent.is_suppressed(any_db, "dave@example.org")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_an_export_opened_with_another_separator_has_no_formula_cell(db: Session, tmp_path: Path, separator: str) -> None:
    """Excel in a German or French locale splits a .csv on semicolons: a name holding
    ";=cmd|..." became a cell of its own starting with "=". The guard covers a formula start
    after a separator inside a cell too, and import undoes it: the export round-trips."""
    consent.add(db, "mallory@example.org", name="Mallory;=cmd|' /C calc'!A0;")
    consent.add(db, "tab@example.org", name="Tab\t@SUM(A1)")
    out = io.StringIO()
    export_csv(db, out)
    for row in csv.reader(io.StringIO(out.getvalue()), delimiter=separator):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@")), (separator, cell)
    before = people(db)
    for subscriber in db.exec(select(Subscriber)).all():
        db.delete(subscriber)
    db.commit()
    import_csv(db, write(tmp_path, out.getvalue().encode(), "export.csv"))
    assert people(db) == before
