"""`newsletter subscribers ...` and `newsletter init` on an existing config, run as a user runs them (Click's runner)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
from pipeline.cli import cli
from pipeline.config import load_settings
from subscribers import consent
from subscribers.model import Subscriber
from subscribers.tokens import SECRET_ENV, load_secret
from tests.conftest import CLI, SMTPServer, write_config


def listed(run_cli: CLI, *args: str) -> dict:
    result = run_cli("subscribers", "list", "--json", "--limit", "0", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def statuses(run_cli: CLI) -> dict[str, str]:
    return {s["email"]: s["status"] for s in listed(run_cli)["subscribers"]}


def test_add_then_list_with_counts(run_cli: CLI) -> None:
    result = run_cli("subscribers", "add", "Ann@Example.org", "--name", "Ann Lee")
    assert result.exit_code == 0 and "Added: Ann@example.org (active)" in result.output
    assert "Unchanged" in run_cli("subscribers", "add", "ann@example.org", "--name", "Ann Lee").output
    assert run_cli("subscribers", "add", "p@example.org", "--pending").exit_code == 0
    data = listed(run_cli)
    assert data["counts"]["active"] == 1 and data["counts"]["pending"] == 1
    assert {s["email"]: s["name"] for s in data["subscribers"]} == {"Ann@example.org": "Ann Lee", "p@example.org": ""}
    table = run_cli("subscribers", "list", "--status", "active").output
    assert "Ann Lee" in table and "p@example.org" not in table and "1 active" in table


def test_add_refuses_an_invalid_address_with_a_readable_error(run_cli: CLI) -> None:
    result = run_cli("subscribers", "add", "ann at example.org")
    assert result.exit_code == 1
    assert "Error:" in result.output and "not a valid address" in result.output
    assert "Traceback" not in result.output


def test_an_unsubscribed_address_cannot_be_added_or_imported_back(run_cli: CLI, tmp_path: Path) -> None:
    run_cli("subscribers", "add", "gone@example.org")
    assert "Unsubscribed gone@example.org" in run_cli("subscribers", "unsubscribe", "gone@example.org", "--yes").output
    assert "already off the list" in run_cli("subscribers", "unsubscribe", "GONE@example.org", "--yes").output
    result = run_cli("subscribers", "add", "gone@example.org")
    assert result.exit_code == 1 and "only the person can re-subscribe" in result.output
    path = tmp_path / "old.csv"
    path.write_text("email\nGone@Example.org\nnew@example.org\n")
    result = run_cli("subscribers", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "line 2: Gone@Example.org" in result.output and "1 left alone" in result.output
    assert statuses(run_cli) == {"gone@example.org": "unsubscribed", "new@example.org": "active"}


def test_import_reports_every_row_and_exits_1_after_importing_the_good_ones(run_cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        "\ufeffE-mail;Full name;Notes\r\n"
        "ann@example.org;Lee, Ann;x\r\n"
        "\r\n"
        "not-an-address;Nobody;y\r\n"
        "ANN@example.org;Ann again;z\r\n"
        "bob@example.org;Bob;\r\n".encode("utf-8")
    )
    dry = run_cli("subscribers", "import", str(path), "--dry-run", "--column", "email=E-mail", "--column", "name=Full name")
    assert dry.exit_code == 1
    assert "Dry run" in dry.output and "nothing was written" in dry.output
    assert listed(run_cli)["subscribers"] == []
    result = run_cli("subscribers", "import", str(path), "--column", "email=E-mail", "--column", "name=Full name")
    assert result.exit_code == 1
    assert "line 4: not-an-address" in result.output
    assert "line 5: ANN@example.org: same address as line 2" in result.output
    assert "4 rows: 2 added, 0 updated, 0 unchanged, 1 duplicates, 0 left alone, 1 refused" in result.output
    assert statuses(run_cli) == {"ann@example.org": "active", "bob@example.org": "active"}


def test_import_json_report(run_cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("email,name\nann@example.org,Ann\nbad,Bad\n")
    result = run_cli("subscribers", "import", str(path), "--json")
    report = json.loads(result.output)
    assert report["added"] == 1 and report["refused"] == [
        {"line": 3, "email": "bad", "reason": report["refused"][0]["reason"]}
    ]
    assert "@-sign" in report["refused"][0]["reason"]


def test_import_names_a_missing_column_and_a_bad_mapping(run_cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("Mail,Name\nann@example.org,Ann\n")
    result = run_cli("subscribers", "import", str(path), "--column", "email=E-mail")
    assert result.exit_code == 1 and "no column 'E-mail'" in result.output and "list.csv" in result.output
    result = run_cli("subscribers", "import", str(path), "--column", "phone=Tel")
    assert result.exit_code == 2 and "email=HEADER, name=HEADER or status=HEADER" in result.output


def test_export_is_formula_safe_and_filters_by_status(run_cli: CLI, tmp_path: Path) -> None:
    run_cli("subscribers", "add", "ann@example.org", "--name", "=1+2")
    run_cli("subscribers", "add", "bob@example.org", "--name", "Bob")
    run_cli("subscribers", "unsubscribe", "bob@example.org", "--yes")
    result = run_cli("subscribers", "export")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["email"]: (r["name"], r["status"]) for r in rows} == {
        "ann@example.org": ("'=1+2", "active"),
        "bob@example.org": ("Bob", "unsubscribed"),
    }
    out = tmp_path / "left.csv"
    assert run_cli("subscribers", "export", "--status", "unsubscribed", "-o", str(out)).exit_code == 0
    assert [r["email"] for r in csv.DictReader(out.open(encoding="utf-8"))] == ["bob@example.org"]


def test_remove_asks_first_then_erases(run_cli: CLI) -> None:
    run_cli("subscribers", "add", "erase@example.org", "--name", "Erase Me")
    result = run_cli("subscribers", "remove", "erase@example.org", input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert "erase@example.org" in statuses(run_cli)
    result = run_cli("subscribers", "remove", "erase@example.org", input="y\n")
    assert result.exit_code == 0 and "personal data erased" in result.output
    data = listed(run_cli)
    assert data["subscribers"] == [] and data["counts"]["removed"] == 1
    assert "Erase" not in run_cli("subscribers", "export").stdout
    assert run_cli("subscribers", "add", "erase@example.org").exit_code == 1


def test_init_writes_a_private_key_once_and_says_so(run_cli: CLI, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = run_cli("init")
    key = config_file.parent / ".secret_key"
    assert first.exit_code == 0 and "Created a new token-signing key" in first.output
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600
    second = run_cli("init")
    assert "Created" not in second.output and "(kept)" in second.output
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    assert f"${SECRET_ENV}" in run_cli("init").output


def test_add_confirm_sends_a_working_link_over_smtp(
    tmp_path: Path, smtp_server: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    config = write_config(
        tmp_path,
        delivery={"transport": "smtp", "smtp_tls": "none", "smtp_host": smtp_server.host, "smtp_port": smtp_server.port},
    )
    run = CLI(config, CliRunner())
    run("subscribers", "add", "gone@example.org")
    run("subscribers", "unsubscribe", "gone@example.org", "--yes")
    result = run("subscribers", "add", "Gone@example.org", "--name", "Back\r\nBcc: x@example.com", "--confirm")
    assert result.exit_code == 0, result.output
    assert "Sent a confirmation link to gone@example.org" in result.output
    [received] = smtp_server.received
    assert received.rcpt_tos == ["gone@example.org"]
    message = received.message
    assert "Bcc" not in message and "\n" not in str(message["To"])
    body = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    settings = load_settings(config)
    url = re.search(re.escape(settings.web.base_url) + r"/confirm/(\S+)", body)
    assert url, body
    engine = db.connect(settings.database.url)
    with Session(engine) as session:
        assert consent.find(session, "gone@example.org").status == "unsubscribed"  # type: ignore[union-attr]
        consent.confirm_by_token(session, load_secret(settings.base_dir), url.group(1))
        assert consent.find(session, "gone@example.org").status == "active"  # type: ignore[union-attr]
    engine.dispose()


def test_help_shows_examples(run_cli: CLI) -> None:
    result = CliRunner().invoke(cli, ["subscribers", "import", "--help"])
    assert "newsletter subscribers import" in result.output and "--column" in result.output


def test_moving_a_list_by_export_and_import_keeps_every_opt_out(run_cli: CLI, tmp_path: Path) -> None:
    run_cli("subscribers", "add", "stay@example.org", "--name", "Stay")
    run_cli("subscribers", "add", "left@example.org", "--name", "Left")
    run_cli("subscribers", "unsubscribe", "left@example.org", "--yes")
    exported = tmp_path / "all.csv"
    assert run_cli("subscribers", "export", "-o", str(exported)).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = CLI(write_config(elsewhere), CliRunner())
    result = other("subscribers", "import", str(exported))
    assert result.exit_code == 0, result.output
    assert "1 added" in result.output and "1 opt-outs recorded" in result.output
    assert statuses(other) == {"stay@example.org": "active", "left@example.org": "unsubscribed"}
    assert other("subscribers", "add", "left@example.org").exit_code == 1


def test_export_into_a_missing_folder_is_an_error_not_a_traceback(run_cli: CLI, tmp_path: Path) -> None:
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    target = tmp_path / "no-such-folder" / "list.csv"
    result = run_cli("subscribers", "export", "-o", str(target))  # catch_exceptions=False
    assert result.exit_code == 1
    assert f"Error: cannot write {target}: No such file or directory" in result.output
    one = run_cli("subscribers", "export", "-o", str(tmp_path / "[one].csv"))  # not markup either
    assert one.exit_code == 0 and f"Exported 1 subscriber to {tmp_path / '[one].csv'}." in one.output  # not "1 subscribers"


def test_list_shows_whole_addresses_and_statuses_in_80_columns(run_cli: CLI) -> None:
    # An address cut to "felix.walker@ex…" cannot be copied into `unsubscribe` or `remove`.
    long = "felix.walker.the.second@example.com"
    for email in (long, "dmitri@example.com"):
        assert run_cli("subscribers", "add", email, "--name", "Дмитрий Соколов Felix Walker").exit_code == 0
    assert run_cli("subscribers", "unsubscribe", "dmitri@example.com", "--yes").exit_code == 0
    shown = run_cli("subscribers", "list")
    assert shown.exit_code == 0
    assert long in shown.output and "unsubscribed " in shown.output
    assert max(len(line) for line in shown.output.splitlines()) <= 80


def test_import_names_the_statuses_it_knows_when_a_row_has_another(run_cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "st.csv"
    path.write_text("email,name,status\nst1@example.org,A,active\nst2@example.org,B,weird\n", encoding="utf-8")
    result = run_cli("subscribers", "import", str(path), "--dry-run")
    flat = " ".join(result.output.split())
    assert result.exit_code == 1
    assert "line 3: st2@example.org: unknown status 'weird' (expected one of active, subscribed," in flat
    assert "Dry run: 2 rows: 1 added," in flat
    one = tmp_path / "one.csv"
    one.write_text("email\nst1@example.org\n", encoding="utf-8")
    assert "1 row: 1 added, 0 updated, 0 unchanged, 0 duplicates," in run_cli("subscribers", "import", str(one)).output


def test_list_of_removed_subscribers_does_not_promise_more_with_limit_0(run_cli: CLI) -> None:
    assert run_cli("subscribers", "add", "gone@example.org").exit_code == 0
    assert run_cli("subscribers", "remove", "gone@example.org", "--yes").exit_code == 0
    shown = run_cli("subscribers", "list", "--status", "removed")
    flat = " ".join(shown.output.split())
    assert shown.exit_code == 0 and "--limit 0 shows all" not in flat  # it would show nothing either
    assert "1 removed: their addresses and names are erased" in flat


def test_a_row_the_csv_reader_gives_up_on_is_refused_alone_with_its_line(run_cli: CLI, tmp_path: Path) -> None:
    # A cell over the csv module's 128 KiB limit (a pasted blob, a broken export): that row is
    # refused and named; the rows around it still import, and the exit status says one failed.
    path = tmp_path / "junk.csv"
    path.write_text("email,name\nok@example.org,Ok\nbig@example.org," + "x" * 200_000
                    + "\nafter@example.org,After\n", encoding="utf-8")
    result = run_cli("subscribers", "import", str(path))  # catch_exceptions=False: no traceback
    assert result.exit_code == 1
    assert "line 3: (empty): not readable as CSV: field larger than field limit" in " ".join(result.output.split())
    assert sorted(s["email"] for s in listed(run_cli)["subscribers"]) == ["after@example.org", "ok@example.org"]


@pytest.mark.parametrize("content", ["", "\n \n\n"])
def test_importing_an_empty_file_says_so_and_fails(run_cli: CLI, tmp_path: Path, content: str) -> None:
    # Most likely the wrong file, or an export that wrote nothing: "0 rows" and success hid it.
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    result = run_cli("subscribers", "import", str(path))
    assert result.exit_code == 1
    assert f"Error: {path}: the file is empty: no header and no rows" in result.output


def test_a_header_naming_a_column_twice_is_refused_not_half_read(run_cli: CLI, tmp_path: Path) -> None:
    # With two "email" columns, one would be read and the other dropped without a word.
    path = tmp_path / "twice.csv"
    path.write_text("email,name,Email\nann@example.org,Ann,ann@work.example.org\n", encoding="utf-8")
    result = run_cli("subscribers", "import", str(path))
    assert result.exit_code == 1
    assert f"Error: {path}: the header has 'email' twice (columns 1, 3)" in result.output
    assert listed(run_cli)["subscribers"] == []


def test_import_of_utf8_with_one_stray_byte_names_the_line_instead_of_garbling_every_name(
    run_cli: CLI, tmp_path: Path
) -> None:
    # Read as Windows-1252 (the fallback), every "Näme" in such a file became "NÃ¤me", silently.
    path = tmp_path / "mixed.csv"
    rows = "".join(f"u{i}@example.org,Näme {i}\n" for i in range(50))
    path.write_bytes(("email,name\n" + rows).encode("utf-8") + b"late@example.org,Jos\xe9\n")
    result = run_cli("subscribers", "import", str(path))
    flat = " ".join(result.output.split())
    assert result.exit_code == 1
    assert f"Error: {path}: line 52: byte 0xe9 is not UTF-8, though the rest of the file is" in flat
    assert listed(run_cli)["subscribers"] == []
    cp1252 = tmp_path / "excel.csv"  # a real Windows-1252 file still imports
    cp1252.write_bytes("email,name\njose@example.org,José\n".encode("cp1252"))
    assert run_cli("subscribers", "import", str(cp1252)).exit_code == 0
    assert listed(run_cli)["subscribers"][0]["name"] == "José"


def test_list_prints_names_literally_and_bidi_marks_never_get_in(
    run_cli: CLI, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    added = run_cli("subscribers", "add", "mark@example.org", "--name", "Ann\u200fLee\u061c")
    assert added.exit_code == 0
    assert listed(run_cli)["subscribers"][0]["name"] == "AnnLee"
    # A row from before that rule, or written by another tool: shown, never obeyed.
    with Session(engine) as session:
        session.add(Subscriber(email="eve@example.org", email_normalized="eve@example.org",
                               name="\x1b[2J[red]Eve[/red] \u202egnp.exe", source="[link=https://x]y"))
        session.commit()
    out = run_cli("subscribers", "list").output
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\x1b[2J[red]Eve[/red] \\u202egnp.exe" in out and "[link=https://x]y" in out


def test_import_reads_standard_input_and_a_pipe(run_cli: CLI, tmp_path: Path) -> None:
    """`export | import -` and a named pipe (/dev/stdin, a FIFO) work: the file is read twice
    (once to find its encoding and separator), which a pipe cannot be, so it is kept aside first.
    It said "cannot read it: None"."""
    piped = run_cli("subscribers", "import", "-", input="email,name\npia@example.org,Pia\n")
    assert piped.exit_code == 0, piped.output
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("w") as out:
            out.write("email,name\nfay@example.org,Fay\n")

    writer = threading.Thread(target=feed)
    writer.start()
    named = run_cli("subscribers", "import", str(fifo))
    writer.join(10)
    assert named.exit_code == 0, named.output
    listed = run_cli("subscribers", "list").output
    assert "pia@example.org" in listed and "fay@example.org" in listed



def test_unsubscribe_asks_first_as_remove_does(run_cli: CLI) -> None:
    """Only the reader can come back from an unsubscribe: a mistyped address was unsubscribed at
    once, and `add` then refused it."""
    assert run_cli("subscribers", "add", "kim@example.org").exit_code == 0
    declined = run_cli("subscribers", "unsubscribe", "kim@example.org", input="n\n")
    assert declined.exit_code == 1 and "Only they can come back" in declined.output
    assert "kim@example.org" in run_cli("subscribers", "list", "--status", "active").output
    assert run_cli("subscribers", "unsubscribe", "kim@example.org", input="y\n").exit_code == 0


@pytest.mark.parametrize("command", [("remove", "--yes"), ("unsubscribe", "--yes"), ("show",)])
def test_an_address_nobody_has_is_named_and_the_command_fails(run_cli: CLI, command: tuple[str, ...]) -> None:
    """`remove` of an address not on the list said "was not on the list" and exited 0: a script
    erasing a mistyped address never learned that the person's data was still there."""
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    name, *flags = command
    result = run_cli("subscribers", name, "anne@example.org", *flags)
    assert result.exit_code == 1, result.output
    assert "Error: no subscriber with the address 'anne@example.org'" in result.output
    assert statuses(run_cli) == {"ann@example.org": "active"}


def test_remove_of_an_address_nobody_has_fails_but_still_blocks_it(run_cli: CLI) -> None:
    """The hash is recorded all the same (a request to be forgotten by someone not on the list
    keeps them off it), and the error says so; a second `remove` of an erased address says it
    was suppressed already."""
    first = run_cli("subscribers", "remove", "never@example.org", "--yes")
    assert first.exit_code == 1 and "nothing to erase" in first.output and "suppressed now" in first.output
    assert run_cli("subscribers", "add", "never@example.org").exit_code == 1
    assert run_cli("subscribers", "add", "gone@example.org").exit_code == 0
    assert run_cli("subscribers", "remove", "gone@example.org", "--yes").exit_code == 0
    again = run_cli("subscribers", "remove", "gone@example.org", "--yes")
    assert again.exit_code == 1 and "suppressed already" in again.output


def test_an_erased_subscriber_is_not_found_by_its_tombstone_key(run_cli: CLI) -> None:
    """An erased row keeps `removed:ID` as its key, and a lookup by address matched it: `show
    removed:1` printed the tombstone and `remove removed:1` erased it again, exit 0."""
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    assert run_cli("subscribers", "remove", "ann@example.org", "--yes").exit_code == 0
    for command in (("show",), ("unsubscribe", "--yes"), ("remove", "--yes")):
        result = run_cli("subscribers", command[0], "removed:1", *command[1:])
        assert result.exit_code == 1 and "no subscriber with the address 'removed:1'" in result.output


def test_a_cut_json_list_says_it_is_cut(run_cli: CLI) -> None:
    """`subscribers list --json` gave the first 50 (the default --limit) with nothing to tell a
    script more exist; `sends list --json` says so on stderr, and so does this now."""
    for n in range(3):
        assert run_cli("subscribers", "add", f"r{n}@example.org").exit_code == 0
    cut = run_cli("subscribers", "list", "--limit", "2", "--json")
    data = json.loads(cut.stdout)
    assert len(data["subscribers"]) == 2 and data["truncated"] is True
    assert "Showing 2 of 3; --limit 0 shows all." in cut.stderr
    whole = json.loads(run_cli("subscribers", "list", "--limit", "0", "--json").stdout)
    assert len(whole["subscribers"]) == 3 and whole["truncated"] is False


def test_unsubscribe_of_an_address_nobody_has_fails_before_asking(run_cli: CLI) -> None:
    """A mistyped address was asked about ("Unsubscribe anne@...? ") and only after a yes was it
    refused: the question is for an address that is on the list, so the typo is named first."""
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    result = run_cli("subscribers", "unsubscribe", "anne@example.org", input="y\n")
    assert result.exit_code == 1, result.output
    assert "Error: no subscriber with the address 'anne@example.org'" in result.output
    assert "Unsubscribe anne@example.org?" not in result.output
    assert statuses(run_cli) == {"ann@example.org": "active"}


def test_unsubscribe_of_an_address_already_off_the_list_does_not_ask(run_cli: CLI) -> None:
    assert run_cli("subscribers", "add", "kim@example.org").exit_code == 0
    assert run_cli("subscribers", "unsubscribe", "kim@example.org", "--yes").exit_code == 0
    again = run_cli("subscribers", "unsubscribe", "kim@example.org")  # no input: a question would abort
    assert again.exit_code == 0 and "already off the list" in again.output and "?" not in again.output


def test_remove_of_an_address_nobody_has_says_so_in_its_question(run_cli: CLI) -> None:
    """`remove anne@...` asked "Erase anne@... and its name from the list and the send history?",
    and only after a yes said there was nothing to erase (and suppressed it). The question now
    says what a yes does to an address not on the list; a no leaves it unsuppressed."""
    assert run_cli("subscribers", "add", "ann@example.org").exit_code == 0
    declined = run_cli("subscribers", "remove", "anne@example.org", input="n\n")
    assert declined.exit_code == 1
    assert "anne@example.org is not on the list: there is nothing to erase." in declined.output
    assert "Erase anne@example.org" not in declined.output
    assert run_cli("subscribers", "add", "anne@example.org").exit_code == 0  # not suppressed by the no
    assert run_cli("subscribers", "remove", "anne@example.org", "--yes").exit_code == 0
    accepted = run_cli("subscribers", "remove", "nobody@example.org", input="y\n")
    assert accepted.exit_code == 1 and "suppressed now" in accepted.output
    assert run_cli("subscribers", "add", "nobody@example.org").exit_code == 1
