"""Related links: source hints first, then text similarity; never itself, the issue, or twice."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.essays import import_paths
from pipeline.models import Essay
from pipeline.related import RelatedIndex, related_for_issue, stem
from tests.digest_fixtures import add_essays, make_essay

BREAD = "sourdough starter flour water crust oven loaf rise dough fermentation"


def test_most_similar_first_never_itself_the_issue_or_twice(session: Session) -> None:
    essays = add_essays(session, *[make_essay(n) for n in range(10)])  # topics repeat every 5
    related = related_for_issue(session, essays[:2], 3)
    first = related[essays[0].id]  # type: ignore[index]
    assert first[0].slug == "essay-005"  # the other bread essay
    for essay_id, links in related.items():
        ids = [e.id for e in links]
        assert essay_id not in ids
        assert not {essays[0].id, essays[1].id} & set(ids)
        assert len(ids) == len(set(ids)) <= 3


def test_the_source_pages_related_list_comes_first(session: Session) -> None:
    essays = add_essays(
        session,
        make_essay(0),
        make_essay(5),  # the text twin
        make_essay(7, dek="Why the pendulum clock taught a village to keep appointments."),
        make_essay(8, dek="Late trains and the people who wait for them on cold platforms."),
    )
    essays[0].source_related = [
        {"summary": "Late trains, and the people who wait for them on cold platforms", "date": None},
        {"summary": "Something the archive does not have at all, about volcanoes", "date": None},
        {"summary": "Why a pendulum clock taught the village to keep its appointments.", "date": None},
    ]
    session.add(essays[0])
    session.commit()
    links = related_for_issue(session, [essays[0]], 3)[essays[0].id]  # type: ignore[index]
    assert [e.slug for e in links] == ["essay-008", "essay-007", "essay-005"]


def test_unrelated_essays_are_not_linked_at_all(session: Session) -> None:
    essays = add_essays(
        session,
        make_essay(0),
        make_essay(1, title="Zebra", dek="Quagga okapi.", body=[{"kind": "p", "text": "Ibex yak gnu."}]),
    )
    assert related_for_issue(session, [essays[0]], 3)[essays[0].id] == []  # type: ignore[index]


def test_essays_with_a_page_are_preferred_among_the_similar(session: Session) -> None:
    essays = add_essays(session, make_essay(0), make_essay(5), make_essay(10, url="https://x.example.org/10"))
    links = related_for_issue(session, [essays[0]], 2)[essays[0].id]  # type: ignore[index]
    assert [e.slug for e in links] == ["essay-010", "essay-005"]


def test_the_same_archive_gives_the_same_links(session: Session) -> None:
    add_essays(session, *[make_essay(n) for n in range(12)])
    archive = list(session.exec(select(Essay).order_by(col(Essay.id))))
    runs = [[[e.slug for e in RelatedIndex(archive).related(x, 3)] for x in archive] for _ in range(2)]
    shuffled = RelatedIndex(list(reversed(archive)))
    assert runs[0] == runs[1]
    assert runs[0] == [[e.slug for e in shuffled.related(x, 3)] for x in archive]


def test_limit_zero_and_an_archive_of_one(session: Session) -> None:
    essays = add_essays(session, make_essay(0))
    assert related_for_issue(session, essays, 0) == {}
    assert related_for_issue(session, essays, 3) == {essays[0].id: []}


def test_word_forms_share_a_stem() -> None:
    assert stem("travelers") == stem("traveling") == stem("travel") == "travel"
    assert stem("histories") == "history"
    assert stem("gas") == "gas"  # short words are left alone


def _corpus(engine: Engine, corpus_dir: Path) -> tuple[list[Essay], dict[str, str]]:
    report = import_paths(engine, [corpus_dir])
    assert report.ok, report.failed
    topics = {row["file"]: row["topic"] for row in
              csv.DictReader((corpus_dir / "INDEX.tsv").open(encoding="utf-8"), delimiter="\t")}
    with Session(engine) as session:
        archive = list(session.exec(select(Essay).order_by(col(Essay.id))))
    return archive, {e.slug: topics[Path(e.source_path or "").name] for e in archive}


def _kind(topic: str) -> str:
    return topic.split(":")[0].split("/")[0].split(" ")[0].strip().lower()


def test_on_the_corpus_film_essays_link_to_film_essays(engine: Engine, corpus_dir: Path) -> None:
    archive, topics = _corpus(engine, corpus_dir)
    index = RelatedIndex(archive)
    film = [e for e in archive if _kind(topics[e.slug]).startswith("film")]
    links = [r for e in film for r in index.related(e, 3)]
    assert len(film) >= 10 and len(links) >= 2 * len(film)  # the test has something to judge
    share = sum(_kind(topics[r.slug]).startswith("film") for r in links) / len(links)
    assert share >= 0.8, f"only {share:.0%} of film essays' related links are film essays"


def test_on_the_corpus_a_small_topic_is_not_pulled_into_film(engine: Engine, corpus_dir: Path) -> None:
    archive, topics = _corpus(engine, corpus_dir)
    index = RelatedIndex(archive)
    checked = 0
    for essay in archive:
        kind = _kind(topics[essay.slug])
        if kind not in {"finance", "travel", "nutrition"}:
            continue
        same = [e for e in archive if e is not essay and _kind(topics[e.slug]) == kind]
        if not same:
            continue
        kinds = [_kind(topics[r.slug]) for r in index.related(essay, 3)]
        assert kinds and kinds[0] == kind, f"{essay.slug}: {kinds}"
        checked += 1
    assert checked >= 2
