"""Every page of the shared corpus imports with the title, date and dek its INDEX.tsv implies.

The expected values come from INDEX.tsv and the raw files, never from the parser: the title and
date columns directly; the dek as the raw line right after the title line (pages whose stored
copy has no header must come out with no dek, and with a title taken from the first sentence).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from pipeline.essays import import_paths, read_essay, slug_for
from pipeline.models import Essay

NO_HEADER = "(none"  # INDEX.tsv's title column for pages stored without their header
NOISE = [
    re.compile(p, re.I)
    for p in (
        r"^advertisement$",
        r"^((facebook|x|reddit|whatsapp|linkedin|email|pinterest|twitter)\s*){3,6}$",
        r"^published\b",
        r"\bmin read$",
        r"^related articles$",
        r"^(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}, \d{4}$",
    )
]


@dataclass
class Row:
    file: str
    title: str
    date: str
    complete: bool


def index(corpus: Path) -> list[Row]:
    with (corpus / "INDEX.tsv").open(encoding="utf-8", newline="") as f:
        return [
            Row(r["file"], r["title"], r["date"], r["complete"] == "yes")
            for r in csv.DictReader(f, delimiter="\t")
        ]


def expected_date(column: str) -> str | None:
    """ "Published August 05, 2025" or "August 12, 2025 - 3 min Read" -> "2025-08-05"."""
    match = re.search(r"[A-Z][a-z]+ \d{2}, \d{4}", column)
    return datetime.strptime(match.group(), "%B %d, %Y").date().isoformat() if match else None


@pytest.fixture
def imported(corpus_dir: Path, engine: Engine) -> dict[str, Essay]:
    report = import_paths(engine, [corpus_dir])
    assert report.ok, report.failed
    with Session(engine) as session:
        by_path = {Path(e.source_path).name: e for e in session.exec(select(Essay)).all()}
    return by_path


def test_every_indexed_page_imports(corpus_dir: Path, imported: dict[str, Essay]) -> None:
    assert sorted(imported) == sorted(row.file for row in index(corpus_dir))


def test_title_date_and_dek_match_the_index(corpus_dir: Path, imported: dict[str, Essay]) -> None:
    for row in index(corpus_dir):
        essay = imported[row.file]
        lines = [
            line.strip() for line in (corpus_dir / row.file).read_text(encoding="utf-8").splitlines()
        ]
        date = essay.published_on.isoformat() if essay.published_on else None
        assert date == expected_date(row.date), row.file
        if row.title.startswith(NO_HEADER):
            first_paragraph = next(b["text"] for b in essay.body if b["kind"] == "p")
            assert essay.dek == "", row.file
            assert first_paragraph.startswith(essay.title.rstrip("…")), row.file
            assert lines[0] == first_paragraph, f"{row.file}: the body starts at the first line"
        else:
            assert essay.title == row.title, row.file
            assert essay.dek == lines[lines.index(row.title) + 1], row.file
            assert essay.dek not in [b["text"] for b in essay.body], row.file


def test_no_noise_line_survives_in_any_body(imported: dict[str, Essay]) -> None:
    for name, essay in imported.items():
        for block in essay.body:
            for pattern in NOISE:
                assert not pattern.search(block["text"]), f"{name}: {block['text']!r}"


def test_headings_are_short_lines_between_paragraphs(imported: dict[str, Essay]) -> None:
    for name, essay in imported.items():
        kinds = [b["kind"] for b in essay.body]
        assert kinds[0] == "p" and kinds[-1] == "p", name
        assert "hh" not in "".join(kinds), name
        for block in essay.body:
            if block["kind"] == "h":
                assert len(block["text"]) < 100, (name, block["text"])


def test_the_complete_seed_page(corpus_dir: Path, imported: dict[str, Essay]) -> None:
    seed = next(row for row in index(corpus_dir) if row.complete)
    essay = imported[seed.file]
    assert len([b for b in essay.body if b["kind"] == "h"]) == 4
    assert len(essay.source_related) == 20
    assert all(
        item["date"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", item["date"])
        for item in essay.source_related
    )
    raw = (corpus_dir / seed.file).read_text(encoding="utf-8")
    related_part = raw.split("Related Articles", 1)[1]
    assert all(item["summary"] in related_part for item in essay.source_related)
    assert all(
        item["summary"] not in [b["text"] for b in essay.body] for item in essay.source_related
    )


def test_slugs_come_from_file_names_and_are_stable(corpus_dir: Path, engine: Engine) -> None:
    path = next(corpus_dir.glob("000_*.txt"))
    assert slug_for(read_essay(path), path) == slug_for(read_essay(path), path)
    assert slug_for(read_essay(path), path).startswith("000-seed-")
    import_paths(engine, [corpus_dir])
    again = import_paths(engine, [corpus_dir])
    assert (
        again.added == [] and again.updated == [] and len(again.unchanged) == len(index(corpus_dir))
    )
