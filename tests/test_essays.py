"""Importing essay files into the database, and the `essays` commands, on real files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.config import PROJECT_ROOT, load_settings
from pipeline.essays import MAX_BYTES, ImportReport, import_paths
from pipeline.issues import compose
from pipeline.models import Essay, Issue
from pipeline.render import Recipient
from tests.conftest import CLI, PUBLIC_WEB, write_config
from tests.digest_fixtures import mark_sent, render_issue

EXAMPLES = PROJECT_ROOT / "examples" / "essays"

ESSAY_MD = """---
title: Proofing in the cellar
date: 2026-10-01
dek: The cellar stays at twelve degrees all year.
---
The cellar is the best proofing room in the house. Nobody believes it until they taste the loaf.

## Why cold helps

Slow yeast, busy bacteria.
"""


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A copy of the sample essays that a test may edit."""
    return Path(shutil.copytree(EXAMPLES, tmp_path / "essays"))


def essays(engine: Engine) -> dict[str, Essay]:
    with Session(engine) as session:
        return {e.slug: e for e in session.exec(select(Essay)).all()}


def failed_files(report: ImportReport) -> dict[str, str]:
    return {f.path.name: f.reason for f in report.failed}


def test_imports_every_sample_essay_in_both_formats(engine: Engine, examples: Path) -> None:
    report = import_paths(engine, [examples])
    assert report.ok and report.warnings == []
    files = sorted(p.stem for p in examples.iterdir())
    assert sorted(report.added) == files
    stored = essays(engine)
    assert sorted(stored) == files
    scraped = stored["the-long-way-to-the-bakery"]
    assert scraped.title == "The long way to the bakery"
    assert scraped.published_on.isoformat() == "2026-10-12"
    assert [b["text"] for b in scraped.body if b["kind"] == "h"] == [
        "Arriving hungry is part of it"
    ]
    assert [r["date"] for r in scraped.source_related] == ["2026-09-14", "2026-11-02"]
    assert stored["stairs-as-shortcuts"].tags == ["walking", "city", "maps"]
    assert len({e.published_on for e in stored.values()}) == len(stored), "distinct dates"


def test_reimporting_unchanged_files_changes_nothing(engine: Engine, examples: Path) -> None:
    import_paths(engine, [examples])
    before = {slug: (e.content_hash, e.updated_at, e.id) for slug, e in essays(engine).items()}
    report = import_paths(engine, [examples])
    assert (report.added, report.updated, len(report.unchanged)) == ([], [], len(before))
    after = {slug: (e.content_hash, e.updated_at, e.id) for slug, e in essays(engine).items()}
    assert after == before


def test_an_edited_file_updates_the_same_essay_and_stays_sent(
    engine: Engine, examples: Path
) -> None:
    import_paths(engine, [examples])
    with Session(engine) as session:
        issue = Issue(key="manual-test", subject="x")
        session.add(issue)
        session.flush()
        essay = session.exec(select(Essay).where(Essay.slug == "walking-the-canal-at-dawn")).one()
        essay.sent_in_issue_id = issue.id
        session.add(essay)
        session.commit()
        issue_id, essay_id = issue.id, essay.id

    path = examples / "walking-the-canal-at-dawn.md"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "title: Walking the canal at dawn", "title: The canal at dawn"
        ),
        encoding="utf-8",
    )
    report = import_paths(engine, [examples])
    assert report.updated == ["walking-the-canal-at-dawn"]
    assert any("sent already" in w for w in report.warnings)
    stored = essays(engine)
    assert len(stored) == 10
    edited = stored["walking-the-canal-at-dawn"]
    assert (edited.id, edited.title, edited.sent_in_issue_id) == (
        essay_id,
        "The canal at dawn",
        issue_id,
    )


def test_front_matter_slug_keeps_the_essay_when_the_file_is_renamed(
    engine: Engine, examples: Path
) -> None:
    import_paths(engine, [examples])
    (examples / "stairs-as-shortcuts.md").rename(examples / "2026-11-02-stairs.md")
    report = import_paths(engine, [examples / "2026-11-02-stairs.md"])
    assert report.updated == ["stairs-as-shortcuts"]  # the path changed; the essay is the same
    assert any("came from" in w for w in report.warnings)
    assert len(essays(engine)) == 10


def test_a_second_live_file_with_the_same_slug_is_refused(engine: Engine, tmp_path: Path) -> None:
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.md").write_text(ESSAY_MD.replace("cellar", folder))
    assert import_paths(engine, [tmp_path / "one"]).added == ["notes"]
    report = import_paths(engine, [tmp_path / "two"])
    assert "belongs to" in failed_files(report)["notes.md"]
    assert essays(engine)["notes"].title == "Proofing in the one"


def bad_files(folder: Path) -> None:
    (folder / "empty.md").write_text("", encoding="utf-8")
    (folder / "blank.txt").write_text("  \n\n \t\n", encoding="utf-8")
    (folder / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "latin.txt").write_bytes("A title\nCaf\xe9 au lait, cr\xe8me.\n".encode("latin-1"))
    (folder / "huge.txt").write_bytes(b"word " * (MAX_BYTES // 5 + 1))
    (folder / "broken.md").write_text(
        "---\ntitle: T\nsummary: a: b\n---\nBody.\n", encoding="utf-8"
    )
    (folder / "header-only.md").write_text("---\ntitle: Nothing else\n---\n", encoding="utf-8")


def test_each_bad_file_is_named_and_the_others_still_import(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.md").write_text(ESSAY_MD, encoding="utf-8")
    bad_files(folder)
    (folder / "notes.html").write_text("<p>Not an essay format</p>", encoding="utf-8")
    report = import_paths(engine, [folder, tmp_path / "missing.md", folder / "notes.html"])
    reasons = failed_files(report)
    assert reasons.keys() == {
        "empty.md",
        "blank.txt",
        "image.md",
        "latin.txt",
        "huge.txt",
        "broken.md",
        "header-only.md",
        "missing.md",
        "notes.html",
    }
    assert reasons["empty.md"] == reasons["blank.txt"] == "empty file"
    assert "binary" in reasons["image.md"]
    assert "not UTF-8" in reasons["latin.txt"] and "line 2" in reasons["latin.txt"]
    assert "too large" in reasons["huge.txt"]
    assert "front matter line 3: mapping values" in reasons["broken.md"]
    assert "no essay text" in reasons["header-only.md"]
    assert "no such file" in reasons["missing.md"]
    assert "not an essay file" in reasons["notes.html"]
    assert all(str(folder) in str(f) or str(tmp_path) in str(f) for f in report.failed)
    assert report.added == ["good"]
    assert list(essays(engine)) == ["good"]


def test_utf8_with_bom_and_utf16_are_read(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "bom.md").write_bytes(b"\xef\xbb\xbf" + ESSAY_MD.encode("utf-8"))
    (tmp_path / "wide.md").write_bytes(
        ESSAY_MD.replace("Proofing", "Café proofing").encode("utf-16")
    )
    report = import_paths(engine, [tmp_path])
    assert report.ok, report.failed
    stored = essays(engine)
    assert stored["bom"].title == "Proofing in the cellar"
    assert stored["wide"].title == "Café proofing in the cellar"


def test_a_file_the_database_refuses_leaves_nothing_and_the_rest_import(
    engine: Engine, tmp_path: Path
) -> None:
    # A real refusal from SQLite itself, not a stand-in: a trigger aborts one slug's insert.
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON essay WHEN NEW.slug = 'b-refused' "
                "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
        )
    for name in ("a-first", "b-refused", "c-last"):
        (tmp_path / f"{name}.md").write_text(ESSAY_MD, encoding="utf-8")
    report = import_paths(engine, [tmp_path])
    assert failed_files(report) == {"b-refused.md": "the database refused it: refused by trigger"}
    assert sorted(essays(engine)) == ["a-first", "c-last"]


def test_two_files_with_one_slug_in_one_import(engine: Engine, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / f"{name}.md").write_text(
            ESSAY_MD.replace("---\ntitle", "---\nslug: cellar\ntitle")
        )
    report = import_paths(engine, [tmp_path])
    assert report.added == ["cellar"]
    assert "also the slug of" in failed_files(report)["two.md"]


def test_readme_in_a_folder_is_skipped_and_index_takes_its_folder_name(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "README.md").write_text("# About these essays\n\nNotes for me.\n")
    (tmp_path / "cellar-bread").mkdir()
    (tmp_path / "cellar-bread" / "index.md").write_text(ESSAY_MD, encoding="utf-8")
    assert import_paths(engine, [tmp_path]).added == ["cellar-bread"]
    assert import_paths(engine, [tmp_path / "README.md"]).added == ["readme"]  # named: imported


def test_files_named_twice_hidden_files_and_progress(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "essay.md").write_text(ESSAY_MD, encoding="utf-8")
    (tmp_path / ".draft.md").write_text(ESSAY_MD, encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.md").write_text(ESSAY_MD, encoding="utf-8")
    seen: list[tuple[int, int, str]] = []
    report = import_paths(
        engine,
        [tmp_path, tmp_path / "essay.md"],
        progress=lambda d, t, p: seen.append((d, t, p.name)),
    )
    assert report.added == ["essay"]
    assert seen == [(1, 1, "essay.md")]


def test_import_and_reimport_on_sqlite_and_postgresql(any_engine: Engine, examples: Path) -> None:
    first = import_paths(any_engine, [examples])
    assert len(first.added) == 10 and first.ok
    path = examples / "crust-and-the-oven-spring.md"
    path.write_text(path.read_text(encoding="utf-8") + "\nA new closing line.\n", encoding="utf-8")
    second = import_paths(any_engine, [examples])
    assert (second.added, second.updated, len(second.unchanged)) == (
        [],
        ["crust-and-the-oven-spring"],
        9,
    )
    assert essays(any_engine)["crust-and-the-oven-spring"].body[-1]["text"] == "A new closing line."


# --- the commands -------------------------------------------------------------------------


def test_cli_import_list_show(run_cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = run_cli("essays", "import", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert "10 added, 0 updated, 0 unchanged, 0 failed" in result.output
    again = run_cli("essays", "import", str(EXAMPLES))
    assert "0 added, 0 updated, 10 unchanged, 0 failed" in again.output

    listing = run_cli("essays", "list")
    assert listing.exit_code == 0
    assert (
        "reading-contour-lines" in listing.output
        and "Reading contour lines on a Sunday" in listing.output
    )
    assert "10 essays, 10 not sent yet" in listing.output
    rows = json.loads(run_cli("essays", "list", "--json").output)
    assert [r["slug"] for r in rows][:2] == [
        "reading-contour-lines",
        "stairs-as-shortcuts",
    ]  # newest first
    assert set(rows[0]) == {"slug", "title", "date", "sent", "archive", "held"}
    assert rows[0]["date"] == "2026-11-09" and rows[0]["sent"] is None

    shown = run_cli("essays", "show", "why-i-weigh-the-water")
    assert shown.exit_code == 0
    for expected in (
        "Why I weigh the water",
        "2026-10-05",
        "Small changes you can trust",
        "Related on the source page (2)",
    ):
        assert expected in shown.output
    info = json.loads(run_cli("essays", "show", "why-i-weigh-the-water", "--json").output)
    assert info["headings"] == ["Small changes you can trust"]
    assert info["excerpt"] == info["dek"]
    assert 250 < info["word_count"] < 450
    assert info["related"][0]["date"] == "2026-09-07"


def test_cli_import_with_a_bad_file_exits_1_and_imports_the_rest(
    run_cli: CLI, tmp_path: Path
) -> None:
    (tmp_path / "good.md").write_text(ESSAY_MD, encoding="utf-8")
    (tmp_path / "bad.md").write_bytes(b"\x00\x01binary")
    result = run_cli("essays", "import", str(tmp_path))
    assert result.exit_code == 1
    assert "bad.md: binary file" in result.stderr
    assert "1 added, 0 updated, 0 unchanged, 1 failed" in result.stdout
    report = json.loads(run_cli("essays", "import", str(tmp_path), "--json").stdout)
    assert report["unchanged"] == ["good"] and report["failed"][0]["file"].endswith("bad.md")


def test_cli_show_unknown_slug(run_cli: CLI) -> None:
    result = run_cli("essays", "show", "no-such-essay")
    assert result.exit_code == 1
    assert "no essay with slug 'no-such-essay'" in result.output


def test_cli_list_when_empty(run_cli: CLI) -> None:
    result = run_cli("essays", "list")
    assert result.exit_code == 0 and "No essays yet" in result.output
    # The hint names the folder `init` makes, not one only this repository has.
    assert "newsletter essays import essays" in result.output and "examples/" not in result.output
    assert json.loads(run_cli("essays", "list", "--json").output) == []


def test_dry_run_reports_what_would_change_and_writes_nothing(
    engine: Engine, examples: Path, run_cli: CLI
) -> None:
    import_paths(engine, [examples / "stairs-as-shortcuts.md"])
    path = examples / "stairs-as-shortcuts.md"
    path.write_text(path.read_text(encoding="utf-8").replace("231", "232"), encoding="utf-8")
    before = {slug: e.content_hash for slug, e in essays(engine).items()}
    report = import_paths(engine, [examples], dry_run=True)
    assert len(report.added) == 9 and report.updated == ["stairs-as-shortcuts"]
    assert {slug: e.content_hash for slug, e in essays(engine).items()} == before

    # run_cli uses the same database as `engine`.
    result = run_cli("essays", "import", "--dry-run", str(examples))
    assert result.exit_code == 0
    assert "9 would be added, 1 would be updated, 0 unchanged" in result.stdout
    assert "Dry run: nothing was written." in result.stdout
    rows = json.loads(run_cli("essays", "list", "--json").stdout)
    assert [row["slug"] for row in rows] == ["stairs-as-shortcuts"]


def test_cli_import_ignores_a_front_matter_url_that_is_no_web_address(run_cli: CLI, tmp_path: Path) -> None:
    # It becomes the digest's "Read the essay" href: "javascript:..." or a scheme-less
    # "essays.example.org/x" (a relative link in a mail client) must not get there.
    for name, url in (("js", "javascript:alert(1)"), ("bare", "essays.example.org/bare"),
                      ("good", "https://essays.example.org/good")):
        (tmp_path / f"{name}.md").write_text(f"---\ntitle: {name}\nurl: \"{url}\"\n---\nBody text.\n",
                                             encoding="utf-8")
    result = run_cli("essays", "import", str(tmp_path / "js.md"), str(tmp_path / "bare.md"),
                     str(tmp_path / "good.md"))
    flat = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "js.md: front matter: url 'javascript:alert(1)' is not an http(s) address; ignored" in flat
    assert "bare.md: front matter: url 'essays.example.org/bare' is not an http(s) address" in flat
    urls = {slug: json.loads(run_cli("essays", "show", slug, "--json").stdout)["url"] for slug in ("js", "bare", "good")}
    assert urls == {"js": None, "bare": None, "good": "https://essays.example.org/good"}


# --- hostile files and hostile text ---------------------------------------------------------

BOMB_MD = """---
title: Laughs
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
tags: [*c, *c, *c, *c, *c, *c, *c, *c, *c]
---
Body text.
"""


def test_hostile_front_matter_fails_its_file_and_the_rest_import(run_cli: CLI, tmp_path: Path) -> None:
    files = {
        "bomb.md": BOMB_MD,
        "long-title.md": f"---\ntitle: {'word ' * 100}\n---\nBody text.\n",
        "long-dek.md": f"---\ntitle: T\ndek: {'x' * 1001}\n---\nBody text.\n",
        "many-tags.md": f"---\ntitle: T\ntags: [{', '.join(f't{n}' for n in range(51))}]\n---\nBody.\n",
        "long-tag.md": f"---\ntitle: T\ntags: [ok, {'y' * 65}]\n---\nBody text.\n",
        "huge-front.md": "---\ntitle: T\n" + "pad: padding padding\n" * 1000 + "---\nBody text.\n",
        "deep.md": "---\ntitle: " + "[" * 3000 + "\n---\nBody text.\n",
        "good.md": ESSAY_MD,
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    result = run_cli("essays", "import", str(tmp_path))
    assert result.exit_code == 1
    assert "1 added, 0 updated, 0 unchanged, 7 failed" in result.stdout
    errors = " ".join(result.stderr.split())
    for expected in (
        "bomb.md: front matter line 3: anchors and aliases (&name, *name) are not allowed",
        "long-title.md: title is 499 characters long (the limit is 300)",
        "long-dek.md: dek is 1,001 characters long (the limit is 1,000)",
        "many-tags.md: 51 tags (the limit is 50)",
        "long-tag.md: tag 'yyyyyyyyyyyyyyyyyyyy'… is 65 characters long (the limit is 64)",
        "huge-front.md: front matter is 21,009 bytes (the limit is 16,384)",
        "deep.md: front matter line 2: nested more than 8 levels deep",
    ):
        assert expected in errors
    rows = json.loads(run_cli("essays", "list", "--json").stdout)
    assert [row["slug"] for row in rows] == ["good"]


def test_markdown_of_brackets_that_never_close_fails_its_file_and_the_rest_import(
    run_cli: CLI, tmp_path: Path
) -> None:
    # Each "[" makes Markdown look ahead for where a link's text ends: 100,000 of them are
    # well over the file's budget of steps (a real essay takes a few hundred).
    (tmp_path / "brackets.md").write_text("---\ntitle: T\n---\nBody text.\n\n" + "[" * 100_000 + "\n",
                                          encoding="utf-8")
    (tmp_path / "good.md").write_text(ESSAY_MD, encoding="utf-8")
    result = run_cli("essays", "import", str(tmp_path))
    assert result.exit_code == 1
    assert "1 added, 0 updated, 0 unchanged, 1 failed" in result.stdout
    errors = " ".join(result.stderr.split())
    assert "brackets.md: line 6: too many [ that never close" in errors
    assert "put a backslash before each [ that is text" in errors
    rows = json.loads(run_cli("essays", "list", "--json").stdout)
    assert [row["slug"] for row in rows] == ["good"]


def test_control_characters_never_reach_the_database_from_either_format(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "page.txt").write_text(
        "\x1b]8;;https://evil.example\x07Bread\x1b]8;;\x07 at \u202edawn\x1b[0m\n"
        "A dek\x08 with a backspace\x7f.\n"
        "July 19, 2025\n"
        "The first paragraph of the essay, which is long enough to be a paragraph and says "
        "something about bread, the oven and the \x1b[2Jmorning light that comes in late.\n",
        encoding="utf-8",
    )
    (tmp_path / "note.md").write_text(
        '---\ntitle: "Walk\\e[8m hidden\\u202E"\ntags: ["\\e[31mred"]\n---\nBody \x1b[1mtext.\n',
        encoding="utf-8",
    )
    report = import_paths(engine, [tmp_path])
    assert report.failed == [] and sorted(report.added) == ["note", "page"]
    stored = essays(engine)
    assert stored["page"].title == "Bread at dawn" and stored["page"].dek == "A dek with a backspace."
    assert stored["note"].title == "Walk hidden" and stored["note"].tags == ["red"]
    assert stored["note"].body == [{"kind": "p", "text": "Body text."}]
    hostile = ("\x1b", "\x08", "\x7f", "\x07", "\u202e")
    for essay in stored.values():
        text = json.dumps([essay.title, essay.dek, essay.tags, essay.body], ensure_ascii=False)
        assert not any(char in text for char in hostile), text


def test_list_and_show_print_stored_hostile_text_literally(
    run_cli: CLI, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row written before the import stripped such characters (or by another tool).
    monkeypatch.setenv("COLUMNS", "200")
    title = "\x1b[2J\x1b]0;owned\x07[red]Loud[/red] \u202egnp.exe [link=https://evil.example]x"
    with Session(engine) as session:
        session.add(Essay(slug="hostile", title=title, dek="dek\x00\u2066", tags=["\x1b[5mt"],
                          body=[{"kind": "h", "text": "Part \x1b[31mtwo"}, {"kind": "p", "text": "Body."}],
                          content_hash="x"))
        session.commit()
    for args in (("essays", "list"), ("essays", "show", "hostile")):
        result = run_cli(*args)
        assert result.exit_code == 0, result.output
        out = result.output
        assert not any(char in out for char in ("\x1b", "\x00", "\x07", "\u202e", "\u2066")), out
        assert "\\x1b[2J\\x1b]0;owned\\x07[red]Loud[/red] \\u202egnp.exe [link=https://evil.example]x" in out
    shown = run_cli("essays", "show", "hostile").output
    assert "dek\\x00\\u2066" in shown and "tags: \\x1b[5mt" in shown and "• Part \\x1b[31mtwo" in shown


def test_cli_a_lone_surrogate_in_front_matter_fails_its_file_only(run_cli: CLI, tmp_path: Path) -> None:
    # It crashed the whole import with a traceback; files sorting after it were never read.
    (tmp_path / "a-good.md").write_text(ESSAY_MD, encoding="utf-8")
    (tmp_path / "surr.md").write_text('---\ntitle: "\\ud800 x"\n---\nBody.\n', encoding="utf-8")
    (tmp_path / "z-good.md").write_text(ESSAY_MD, encoding="utf-8")
    result = run_cli("essays", "import", str(tmp_path))
    assert result.exit_code == 1
    assert "surr.md: front matter title: " in " ".join(result.stderr.split())
    assert "2 added, 0 updated, 0 unchanged, 1 failed" in result.stdout
    rows = json.loads(run_cli("essays", "list", "--json").stdout)
    assert sorted(row["slug"] for row in rows) == ["a-good", "z-good"]


@pytest.mark.timeout(30)  # before the fix the FIFO's open waited for a writer, for ever
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="POSIX only")
def test_a_fifo_or_a_device_named_as_an_essay_fails_its_file_only(run_cli: CLI, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.md")
    (tmp_path / "zero.md").symlink_to("/dev/zero")  # endless: it ate gigabytes in seconds
    (tmp_path / "good.md").write_text(ESSAY_MD, encoding="utf-8")
    result = run_cli("essays", "import", *(str(tmp_path / n) for n in ("fifo.md", "zero.md", "good.md")))
    assert result.exit_code == 1
    errors = " ".join(result.stderr.split())
    assert "fifo.md: not a regular file (a FIFO)" in errors
    assert "zero.md: not a regular file (a device)" in errors
    assert "1 added, 0 updated, 0 unchanged, 2 failed" in result.stdout


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_a_file_is_read_with_a_hard_cap_whatever_its_size_says(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A /proc file says it holds 0 bytes and holds more; a file may also grow after its stat.
    monkeypatch.setattr("pipeline.essays.MAX_BYTES", 100)
    (tmp_path / "proc.txt").symlink_to("/proc/self/status")
    report = import_paths(engine, [tmp_path / "proc.txt"])
    assert failed_files(report) == {"proc.txt": "too large: more than 100 bytes (the limit)"}


def test_line_endings_of_every_kind_are_read_alike(engine: Engine, tmp_path: Path) -> None:
    # A file with CR-only line endings (classic Mac) lost its front matter into the body.
    (tmp_path / "cr.md").write_bytes(ESSAY_MD.replace("\n", "\r").encode())
    (tmp_path / "crlf.md").write_bytes(ESSAY_MD.replace("\n", "\r\n").encode())
    (tmp_path / "lf.md").write_bytes(ESSAY_MD.encode())
    report = import_paths(engine, [tmp_path])
    assert report.ok and report.warnings == [], (report.failed, report.warnings)
    stored = essays(engine)
    assert {stored[n].title for n in ("cr", "crlf", "lf")} == {"Proofing in the cellar"}
    assert stored["cr"].body == stored["crlf"].body == stored["lf"].body
    assert stored["cr"].published_on == stored["lf"].published_on is not None


def test_an_unclosed_front_matter_block_fails_its_file(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "open.md").write_text("---\ntitle: Unclosed\ndate: 2026-01-01\nBody text.\n")
    report = import_paths(engine, [tmp_path])
    assert failed_files(report)["open.md"].startswith("front matter line 1: the --- ")
    assert essays(engine) == {}


def test_essays_in_other_scripts_keep_their_letters_in_the_slug(engine: Engine, tmp_path: Path) -> None:
    """Titles and file names with no Latin letters made no slug at all, so the essay could not be
    imported. Their slug keeps their own letters; slugs ASCII can make stay as they always were."""
    (tmp_path / "walk.md").write_text("---\ntitle: Прогулка\nslug: Прогулка на рассвете\n---\nЯ шёл вдоль канала.\n",
                                      encoding="utf-8")
    (tmp_path / "نزهة.md").write_text("---\ntitle: نزهة عند الفجر\n---\nمشيت على طول القناة عند الفجر.\n",
                                      encoding="utf-8")
    (tmp_path / "夜明け.md").write_text("---\ntitle: 夜明けの散歩\n---\n夜明けに運河沿いを歩いた。\n", encoding="utf-8")
    (tmp_path / "Café Walks, 2.md").write_text("---\ntitle: Walks\n---\nA walk past the café.\n", encoding="utf-8")
    report = import_paths(engine, [tmp_path])
    assert sorted(report.added) == sorted(["прогулка-на-рассвете", "نزهة", "夜明け", "cafe-walks-2"])
    assert report.failed == []
    assert import_paths(engine, [tmp_path / "walk.md"]).added == []  # the same essay, found again


def test_a_feed_entry_in_another_script_gets_a_slug_from_its_link_or_title() -> None:
    from pipeline.polling import entry_slug
    from pipeline.readers.parsed_essay import ParsedEssay, slugify

    # Digits alone are not a slug of such a title: "1" made every chapter collide.
    assert (slugify("Глава 1"), slugify("東京 2024 夏"), slugify("2024")) == ("глава-1", "東京-2024-夏", "2024")
    linked = ParsedEssay(title="x", body=[], url="https://example.ru/2026/%D0%BF%D1%80%D0%BE%D0%B3%D1%83%D0%BB%D0%BA%D0%B0/")
    assert entry_slug(linked) == "прогулка"
    untitled = ParsedEssay(title="نزهة عند الفجر", body=[], url="https://example.org/?p=12")
    assert entry_slug(untitled) == "نزهة-عند-الفجر"


def test_a_folder_scan_names_every_file_it_cannot_take(engine: Engine, tmp_path: Path) -> None:
    """A broken link, a link loop, a pipe, and a link leading out of the folder were skipped
    without a word (or, the last, imported: any file the link named became an essay)."""
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "cellar.md").write_text(ESSAY_MD, encoding="utf-8")
    (folder / "broken.md").symlink_to(tmp_path / "gone.md")
    (folder / "loop.md").symlink_to(folder / "loop.md")
    os.mkfifo(folder / "pipe.md")
    outside = tmp_path / "private.txt"
    outside.write_text("Not an essay of this folder, but a file of its own.\n", encoding="utf-8")
    (folder / "private.txt").symlink_to(outside)
    (folder / "inside.md").symlink_to(folder / "cellar.md")  # a link within the folder is fine
    report = import_paths(engine, [folder])
    assert report.added == ["cellar"]
    failed = failed_files(report)
    assert set(failed) == {"broken.md", "loop.md", "pipe.md", "private.txt"}
    assert "broken link" in failed["broken.md"] and "loop" in failed["loop.md"]
    assert "not a regular file" in failed["pipe.md"]
    assert "outside" in failed["private.txt"] and "name it" in failed["private.txt"]
    assert import_paths(engine, [folder / "private.txt"]).added == ["private"]  # named: taken


def test_a_file_the_system_will_not_let_us_check_fails_alone(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError while importing one file (here: checking whether a slug's old file still exists)
    ended the whole import with a traceback; it is that file's failure, and the next is imported."""
    (tmp_path / "a.md").write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: shared\ntitle"), encoding="utf-8")
    assert import_paths(engine, [tmp_path / "a.md"]).added == ["shared"]
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "b.md").write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: shared\ntitle"), encoding="utf-8")
    (moved / "c.md").write_text(ESSAY_MD, encoding="utf-8")
    real_exists = Path.exists

    def exists(self: Path, *args: object, **kwargs: object) -> bool:
        if self.name == "a.md":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    report = import_paths(engine, [moved / "b.md", moved / "c.md"])
    assert report.added == ["c"]
    assert "Permission denied" in failed_files(report)["b.md"]


def test_a_file_with_the_slug_of_an_essay_from_a_feed_is_refused(engine: Engine, tmp_path: Path) -> None:
    """The feed made walking-at-dawn; a file of that name (say, draft notes) replaced the post and
    dropped its link, and the next poll put the feed's text back: they overwrote each other."""
    from pipeline.models import Feed, FeedEntry

    with Session(engine) as session:
        feed = Feed(url="https://blog.example.org/feed.xml")
        essay = Essay(slug="walking-at-dawn", title="Walking at dawn", content_hash="x",
                      url="https://blog.example.org/walking-at-dawn/", body=[{"kind": "p", "text": "From the feed."}])
        session.add(feed)
        session.add(essay)
        session.flush()
        session.add(FeedEntry(feed_id=feed.id or 0, guid="https://blog.example.org/?p=1", essay_id=essay.id))
        session.commit()
    (tmp_path / "walking-at-dawn.md").write_text("---\ntitle: Notes\n---\nMy draft notes.\n", encoding="utf-8")
    report = import_paths(engine, [tmp_path])
    reason = failed_files(report)["walking-at-dawn.md"]
    assert "https://blog.example.org/feed.xml" in reason and "slug:" in reason
    with Session(engine) as session:
        kept = session.exec(select(Essay).where(Essay.slug == "walking-at-dawn")).one()
        assert kept.url == "https://blog.example.org/walking-at-dawn/" and kept.source_path is None


def test_correcting_a_file_s_slug_renames_its_essay(engine: Engine, tmp_path: Path) -> None:
    """A typo in `slug:` fixed in the same file made a second essay, and the next digest carried
    both (or, after a send, mailed the essay again as new)."""
    essay = tmp_path / "rivers.md"
    essay.write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: on-rivres\ntitle"), encoding="utf-8")
    assert import_paths(engine, [essay]).added == ["on-rivres"]
    essay.write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: on-rivers\ntitle"), encoding="utf-8")
    report = import_paths(engine, [essay])
    assert report.updated == ["on-rivers"] and report.added == []
    assert any("on-rivres" in w and "on-rivers" in w for w in report.warnings)
    with Session(engine) as session:
        assert [e.slug for e in session.exec(select(Essay))] == ["on-rivers"]


# Raw HTML as it turns up in Markdown essays moved from an older blog: text in p and div tags,
# and an analytics snippet whose blank line ends CommonMark's <div> block mid-script.
HTML_IN_MARKDOWN = """---
title: Notes from the mill
---
The wheel turned slowly that spring.

<p>A paragraph kept in p tags from the old site.</p>

<div class="aside">A note in a div that readers should see.</div>

<div class="tracking">
<script>
  var queue = queue || [];

  queue.push(['track', 'TOKEN-9F3A']);
</script>
</div>

<div>
<style>
.aside { outline-color: #0ff1ce }

body { background: url(https://pixel.example/x.gif) }
</style>
</div>

<div class="embed">
    <script>
        var first = 1;

        var hidden = 'TOKEN-INDENTED';
    </script>
</div>

The miller kept his own counsel.
"""


def test_raw_html_in_markdown_keeps_its_text_and_mails_no_script_or_style(
    engine: Engine, tmp_path: Path
) -> None:
    # The p and div text was dropped; the script's and the style's text after the blank line
    # reached the issue's text and HTML parts as if it were a paragraph.
    (tmp_path / "mill.md").write_text(HTML_IN_MARKDOWN, encoding="utf-8")
    report = import_paths(engine, [tmp_path])
    assert report.ok and report.warnings == [], (report.failed, report.warnings)
    paragraphs = [
        "The wheel turned slowly that spring.",
        "A paragraph kept in p tags from the old site.",
        "A note in a div that readers should see.",
        "The miller kept his own counsel.",
    ]
    assert essays(engine)["mill"].body == [{"kind": "p", "text": text} for text in paragraphs]

    settings = load_settings(write_config(tmp_path, web=PUBLIC_WEB, digest={"excerpt_length": 2000}))
    with Session(engine) as session:
        issue = compose(session, settings, key="mill")
        session.commit()
        rendered = render_issue(session, settings, issue)
    html, plain = rendered.personalise(Recipient("Ana", "ana@example.org", "https://letters.example.org/u/t"))
    for part in (html, plain):
        assert " ".join(paragraphs) in " ".join(part.split())
        for leaked in ("TOKEN-9F3A", "TOKEN-INDENTED", "queue.push", "pixel.example", "0ff1ce"):
            assert leaked not in part


def test_front_matter_titles_slugs_and_tags_are_stored_as_written(engine: Engine, tmp_path: Path) -> None:
    # YAML 1.1 typing stored "False", "570", "3.1" and tags ["True", "False"], and the essay of
    # `slug: 010` under the slug "8".
    fronts = {
        "answer": "title: No\ntags: [on, off, yes, no]",
        "clock": "title: 9:30",
        "release": "title: 3.10\nslug: 010",
    }
    for name, front in fronts.items():
        (tmp_path / f"{name}.md").write_text(f"---\n{front}\n---\nA body sentence of its own.\n", encoding="utf-8")
    report = import_paths(engine, [tmp_path])
    assert report.ok and report.warnings == [], (report.failed, report.warnings)
    stored = {slug: (e.title, e.tags) for slug, e in essays(engine).items()}
    assert stored == {
        "answer": ("No", ["on", "off", "yes", "no"]),
        "clock": ("9:30", []),
        "010": ("3.10", []),
    }


def test_drafts_and_section_pages_of_a_site_are_not_imported(engine: Engine, tmp_path: Path) -> None:
    """`draft: true` (Hugo, Jekyll, Eleventy) or `published: false` said only "ignored unknown
    key", and the draft was mailed in the next issue; Hugo's _index.md (a section's page)
    became an essay titled like the site."""
    site = tmp_path / "content"
    (site / "posts").mkdir(parents=True)
    (site / "_index.md").write_text("---\ntitle: Home\n---\nWelcome to the site.\n", encoding="utf-8")
    (site / "posts" / "_index.md").write_text("---\ntitle: Posts\n---\nAll the posts.\n", encoding="utf-8")
    (site / "posts" / "ready.md").write_text(ESSAY_MD, encoding="utf-8")
    (site / "posts" / "later.md").write_text("---\ntitle: Later\ndraft: true\n---\nNot yet.\n", encoding="utf-8")
    (site / "posts" / "hidden.md").write_text("---\ntitle: Hidden\npublished: false\n---\nNot yet.\n",
                                              encoding="utf-8")
    (site / "posts" / "toml.md").write_text('+++\ntitle = "Toml"\ndraft = true\n+++\nNot yet.\n', encoding="utf-8")
    (site / "posts" / "shown.md").write_text("---\ntitle: Shown\ndraft: false\n---\nOut now.\n", encoding="utf-8")
    report = import_paths(engine, [site])
    assert sorted(report.added) == ["ready", "shown"] and report.ok
    drafts = [w for w in report.warnings if "not imported" in w]
    assert sorted(Path(w.split(":")[0]).name for w in drafts) == ["hidden.md", "later.md", "toml.md"]
    assert not any("unknown key" in w for w in report.warnings)


def test_an_archive_imported_as_published_is_linked_to_but_never_mailed(run_cli: CLI, tmp_path: Path) -> None:
    """An essayist with years of essays imports them all: the first digests mailed the oldest,
    five a week, for months. `--archive` takes them as published before the newsletter: related
    links point to them, no digest carries them, and `issues new --essay` still can."""
    old = tmp_path / "archive"
    old.mkdir()
    for n, year in enumerate((2017, 2019, 2021)):
        (old / f"old-{n}.md").write_text(f"---\ntitle: Old {n}\ndate: {year}-05-01\n---\nAn older essay, {n}.\n",
                                         encoding="utf-8")
    imported = run_cli("essays", "import", str(old), "--archive")
    assert imported.exit_code == 0, imported.output
    new = tmp_path / "new.md"
    new.write_text("---\ntitle: New\ndate: 2026-11-30\n---\nThis week's essay.\n", encoding="utf-8")
    assert run_cli("essays", "import", str(new)).exit_code == 0
    listed = {row["slug"]: row for row in json.loads(run_cli("essays", "list", "--json").output)}
    assert [listed[f"old-{n}"]["archive"] for n in range(3)] == [True, True, True]
    assert listed["new"]["archive"] is False
    composed = json.loads(run_cli("issues", "new", "--json").output)
    assert [e["slug"] for e in composed["essays"]] == ["new"]
    # Re-importing the archive without the option leaves it archived; asking for one carries it.
    assert run_cli("essays", "import", str(old)).exit_code == 0
    again = json.loads(run_cli("issues", "new", "--essay", "old-0", "--json").output)
    assert [e["slug"] for e in again["essays"]] == ["old-0"]


def test_archive_never_marks_an_essay_that_was_sent(engine: Engine, tmp_path: Path) -> None:
    """Review: a corrected slug renames a sent essay, which --archive then marked as never mailed."""
    essay = tmp_path / "rivers.md"
    essay.write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: on-rivres\ntitle"), encoding="utf-8")
    import_paths(engine, [essay])
    with Session(engine) as session:
        mark_sent(session, session.exec(select(Essay)).one(), "sent-one")
    essay.write_text(ESSAY_MD.replace("---\ntitle", "---\nslug: on-rivers\ntitle"), encoding="utf-8")
    assert import_paths(engine, [essay], archive=True).updated == ["on-rivers"]
    with Session(engine) as session:
        assert session.exec(select(Essay.archive)).one() is False


def write_essays(folder: Path, *slugs: str) -> Path:
    """One Markdown essay per slug, dated in the order given (the first is the oldest)."""
    folder.mkdir(exist_ok=True)
    for day, slug in enumerate(slugs, start=1):
        (folder / f"{slug}.md").write_text(
            f"---\ntitle: On {slug}\ndate: 2026-10-{day:02d}\n---\nA few words on {slug}.\n", encoding="utf-8")
    return folder


def composed(run_cli: CLI, *args: str) -> list[str]:
    """The slugs `issues new --dry-run ARGS` would carry."""
    result = run_cli("issues", "new", "--dry-run", "--json", *args)
    assert result.exit_code == 0, result.output
    return [e["slug"] for e in json.loads(result.stdout)["essays"]]


def test_cli_hold_keeps_an_essay_out_of_the_digests_until_released(run_cli: CLI, tmp_path: Path) -> None:
    """The essayist wants to rework an essay before it goes out: held, no digest takes it by
    itself, `essays list` and `essays show` say so, and naming it still carries it."""
    assert run_cli("essays", "import", str(write_essays(tmp_path / "e", "rivers", "bread", "clocks"))).exit_code == 0
    held = run_cli("essays", "hold", "rivers", "no-such-essay", "bread")
    assert held.exit_code == 1
    assert "no essay with slug 'no-such-essay'" in held.stderr
    assert "held rivers" in held.stdout and "held bread" in held.stdout  # the others still held
    listed = {row["slug"]: row for row in json.loads(run_cli("essays", "list", "--json").stdout)}
    assert {slug: row["held"] for slug, row in listed.items()} == {"rivers": True, "bread": True, "clocks": False}
    table = run_cli("essays", "list").stdout
    assert "3 essays, 3 not sent yet, 2 held" in table and table.count("held") >= 3
    assert "held" in run_cli("essays", "show", "rivers").stdout
    assert json.loads(run_cli("essays", "show", "rivers", "--json").stdout)["held"] is True
    assert composed(run_cli) == ["clocks"]
    named = run_cli("issues", "new", "--essay", "rivers", "--dry-run")
    assert named.exit_code == 0 and "rivers is held: carried because it was named" in named.stdout
    again = run_cli("essays", "hold", "rivers")
    assert again.exit_code == 0 and "rivers was held already" in again.stdout

    released = run_cli("essays", "release", "rivers", "nothing-here")
    assert released.exit_code == 1 and "no essay with slug 'nothing-here'" in released.stderr
    assert "released rivers" in released.stdout
    assert composed(run_cli) == ["rivers", "clocks"]
    assert run_cli("essays", "release", "clocks").stdout.startswith("clocks was not held")


def test_cli_hold_names_the_draft_that_still_carries_the_essay(run_cli: CLI, tmp_path: Path) -> None:
    assert run_cli("essays", "import", str(write_essays(tmp_path / "e", "rivers", "bread"))).exit_code == 0
    assert run_cli("issues", "new", "--key", "by-hand").exit_code == 0
    held = run_cli("essays", "hold", "rivers")
    assert held.exit_code == 0
    assert "the draft by-hand carries it" in held.stdout
    assert "newsletter issues edit by-hand --remove-essay rivers" in held.stdout


def test_cli_list_and_compose_count_the_held_and_the_archive_by_one_rule(run_cli: CLI, tmp_path: Path) -> None:
    """`essays list` sums the essays up, and `issues new` explains finding none, by the rule the
    digests pick by: held essays are owed but wait, the archive is never owed."""
    assert run_cli("essays", "import", str(write_essays(tmp_path / "e", "rivers", "bread"))).exit_code == 0
    assert run_cli("essays", "import", "--archive", str(write_essays(tmp_path / "old", "clocks"))).exit_code == 0
    assert run_cli("essays", "hold", "rivers", "bread").exit_code == 0
    table = " ".join(run_cli("essays", "list").stdout.split())
    assert ("3 essays, 2 not sent yet, 2 held (no digest takes them until `essays release`), 1 in the archive "
            "(never mailed by themselves)") in table
    nothing = run_cli("issues", "new")
    assert nothing.exit_code == 1 and "the essays not sent yet are held" in " ".join(nothing.output.split())
