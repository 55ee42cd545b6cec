"""Relevance of related links on the essay corpus and the examples, before and after: run with
`make bench` (prints the figures; labels in tests/data/related_topics.tsv)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.config import PROJECT_ROOT
from pipeline.essays import import_paths
from pipeline.models import Essay
from pipeline.related import (
    RelatedIndex,
    _sklearn_text,
    document_text,
    has_page,
    pick_for_issue,
    stems,
)
from tests.related_measure import Relevance, measure

EXAMPLES = PROJECT_ROOT / "examples" / "essays"
ISSUE_SIZE = 5
OLD_MIN_SIMILARITY = 0.05


def old_related(
    index: RelatedIndex, essay: Essay, limit: int, exclude: Sequence[int | None] = ()
) -> list[Essay]:
    """The rules before the score floor (the baseline): hints, then essays closer than average,
    then any sharing words (plain cosine >= 0.05), essays with a page first in each group; always
    `limit` links when the archive has them; per essay, with no look at the rest of the issue."""
    skip = {essay.id, *exclude}
    picked = [e for e in index.hinted(essay) if e.id not in skip]
    skip |= {e.id for e in picked}
    row = index.position[essay.id]
    assert index.matrix is not None
    centred = index.centred_cosine(row)
    plain = (index.matrix @ index.matrix[row].T).toarray().ravel()
    ranked = []
    for i, other in enumerate(index.archive):
        if i != row and plain[i] >= OLD_MIN_SIMILARITY:
            tier, score = (0, centred[i]) if centred[i] > 0 else (1, plain[i])
            ranked.append((tier, not has_page(other), -round(float(score), 9), other.slug, i))
    ranked.sort()
    picked += [index.archive[i] for *_, i in ranked if index.archive[i].id not in skip]
    return picked[:limit]


def in_issues(
    archive: Sequence[Essay], links_of_issue: Callable[[list[Essay]], list[list[Essay]]]
) -> tuple[Relevance, int, int]:
    """Issues of five consecutive essays: their links' relevance (an essay can link only outside
    its issue), the issues and those repeating a title."""
    essays: list[Essay] = []
    links: dict[str, list[Essay]] = {}
    outside: dict[str, list[Essay]] = {}
    repeating = issues = 0
    for start in range(0, len(archive) - ISSUE_SIZE + 1, ISSUE_SIZE):
        issue = list(archive[start : start + ISSUE_SIZE])
        shown = links_of_issue(issue)
        titles = [e.title for essay_links in shown for e in essay_links]
        repeating += len(titles) != len(set(titles))
        issues += 1
        essays += issue
        links.update((essay.slug, essay_links) for essay, essay_links in zip(issue, shown, strict=True))
        outside.update((essay.slug, [e for e in archive if e not in issue]) for essay in issue)
    return measure(essays, partial(_by_slug, links), partial(_by_slug, outside)), issues, repeating


def old_index(archive: list[Essay]) -> RelatedIndex:
    """The index with the old vectorizer: every word, also those of a single essay."""
    index = RelatedIndex(archive)
    vectorizer = _sklearn_text().TfidfVectorizer(analyzer=stems, sublinear_tf=True)
    index.matrix = vectorizer.fit_transform([document_text(e) for e in archive])
    return index


def _report(name: str, archive: list[Essay]) -> None:
    index, old = RelatedIndex(archive), old_index(archive)
    before = measure(archive, lambda e: old_related(old, e, 3))
    after = measure(archive, lambda e: index.related(e, 3))

    def old_issue(issue: list[Essay]) -> list[list[Essay]]:
        ids = [e.id for e in issue]
        return [old_related(old, e, 3, ids) for e in issue]

    def new_issue(issue: list[Essay]) -> list[list[Essay]]:
        ids = [e.id for e in issue]
        candidates = {e.id: index.suggestions(e, ids) for e in issue if e.id is not None}
        picked = pick_for_issue(issue, candidates, 3)
        return [[s.essay for s in chosen] for chosen in picked.values()]

    print(f"\n{name} ({len(archive)} essays)")
    print(f"  before: {before.line()}")
    print(f"  after:  {after.line()}")
    for label, links_of_issue in (("before", old_issue), ("after", new_issue)):
        result, issues, repeating = in_issues(archive, links_of_issue)
        print(f"  in issues of {ISSUE_SIZE}, {label}: {result.line()}; "
              f"{repeating} of {issues} issues repeat a title")
    assert after.on_topic / max(after.links, 1) >= before.on_topic / max(before.links, 1)


def _by_slug(essays: dict[str, list[Essay]], essay: Essay) -> list[Essay]:
    return essays[essay.slug]


def _archive(engine: Engine, *paths: Path) -> list[Essay]:
    assert import_paths(engine, list(paths)).ok
    with Session(engine) as session:
        return list(session.exec(select(Essay).order_by(col(Essay.id))))


def test_relevance_on_the_examples(engine: Engine) -> None:
    _report("examples", _archive(engine, EXAMPLES))


def test_relevance_on_the_corpus_and_examples(engine: Engine, corpus_dir: Path) -> None:
    _report("corpus + examples", _archive(engine, corpus_dir, EXAMPLES))
