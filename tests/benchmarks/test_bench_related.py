"""Relevance of related links on the essay corpus and the examples, before and after: run with
`make bench` (prints the figures; labels in tests/data/related_topics.tsv).

Three rule sets: the older rules (three links each), the rules before this tuning ("main":
floor 0.15, the body's first 2,500 characters, source hints taken unchecked) and the rules now.
The numbers now (pipeline/related.py: MIN_SCORE, BODY_CHARS) were tuned on these labels, so the
figures on all essays flatter them; the split below tunes them on half the essays and reports
the other half, for ten random halves both ways."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import astuple
from functools import partial
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.config import PROJECT_ROOT
from pipeline.essays import import_paths
from pipeline.models import Essay
from pipeline.related import (
    RelatedIndex,
    Tuning,
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
MAIN = Tuning(body_chars=2500, min_score=0.15, hint_share=None)  # the rules before this tuning
# What the split tries: the body's opening (10**9: all of it) and the floor.
BODY_CHARS = (1000, 1500, 2000, 2500, 3000, 10**9)
MIN_SCORES = tuple(round(0.10 + 0.01 * i, 2) for i in range(9))
HALVES = 10
RANDOM_ISSUES = 60


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


def in_random_issues(
    archive: Sequence[Essay], links_of_issue: Callable[[list[Essay]], list[list[Essay]]]
) -> Relevance:
    """Relevance in issues of five essays drawn at random (the files are numbered by topic, so
    consecutive essays often share one and take each other's best links out of reach)."""
    total = Relevance(0, 0, 0, 0, 0, 0)
    for seed in range(RANDOM_ISSUES):
        issue = random.Random(seed).sample(list(archive), ISSUE_SIZE)
        links = {e.slug: shown for e, shown in zip(issue, links_of_issue(issue), strict=True)}
        outside = {e.slug: [o for o in archive if o not in issue] for e in issue}
        result = measure(issue, partial(_by_slug, links), partial(_by_slug, outside))
        total = Relevance(*(a + b for a, b in zip(astuple(total), astuple(result), strict=True)))
    return total


def old_index(archive: list[Essay]) -> RelatedIndex:
    """The index with the old vectorizer: every word, also those of a single essay."""
    index = RelatedIndex(archive, MAIN)
    vectorizer = _sklearn_text().TfidfVectorizer(analyzer=stems, sublinear_tf=True)
    index.matrix = vectorizer.fit_transform([document_text(e, MAIN.body_chars) for e in archive])
    return index


def _issue_links(index: RelatedIndex) -> Callable[[list[Essay]], list[list[Essay]]]:
    def links_of_issue(issue: list[Essay]) -> list[list[Essay]]:
        ids = [e.id for e in issue]
        candidates = {e.id: index.suggestions(e, ids) for e in issue if e.id is not None}
        picked = pick_for_issue(issue, candidates, 3)
        return [[s.essay for s in chosen] for chosen in picked.values()]

    return links_of_issue


def _report(name: str, archive: list[Essay]) -> None:
    old, main, index = old_index(archive), RelatedIndex(archive, MAIN), RelatedIndex(archive)

    def old_issue(issue: list[Essay]) -> list[list[Essay]]:
        ids = [e.id for e in issue]
        return [old_related(old, e, 3, ids) for e in issue]

    rules = (("older rules", lambda e: old_related(old, e, 3), old_issue),
             ("main", lambda e: main.related(e, 3), _issue_links(main)),
             ("now", lambda e: index.related(e, 3), _issue_links(index)))
    print(f"\n{name} ({len(archive)} essays)")
    alone = {label: measure(archive, links_of) for label, links_of, _ in rules}
    for label, result in alone.items():
        print(f"  {label + ':':12} {result.line()}")
    for label, _, links_of_issue in rules:
        result, issues, repeating = in_issues(archive, links_of_issue)
        print(f"  in issues of {ISSUE_SIZE}, {label}: {result.line()}; "
              f"{repeating} of {issues} issues repeat a title")
    for label, _, links_of_issue in rules:
        print(f"  in {RANDOM_ISSUES} random issues of {ISSUE_SIZE}, {label}: "
              f"{in_random_issues(archive, links_of_issue).line()}")
    before, after = alone["older rules"], alone["now"]
    assert after.on_topic / max(after.links, 1) >= before.on_topic / max(before.links, 1)


def _split(archive: list[Essay]) -> None:
    """Tune MIN_SCORE and BODY_CHARS on half the essays, report on the other half."""
    right = shown = on_topic = essays = 0
    chosen: list[tuple[int, float]] = []
    results = {}
    for body_chars in BODY_CHARS:
        built = RelatedIndex(archive, Tuning(body_chars=body_chars))
        for min_score in MIN_SCORES:
            index = RelatedIndex(archive, Tuning(body_chars=body_chars, min_score=min_score))
            index.matrix = built.matrix  # the floor does not change the text model
            results[body_chars, min_score] = {e.id: index.related(e, 3) for e in archive}

    def relevance(values: tuple[int, float], half: list[Essay]) -> Relevance:
        return measure(half, lambda e: results[values][e.id], partial(_others, archive))

    def goodness(values: tuple[int, float], half: list[Essay]) -> tuple[int, float, int]:
        result = relevance(values, half)  # first links right, then links on topic, then more links
        return result.first_right, round(result.on_topic / max(result.links, 1), 2), result.links

    for seed in range(HALVES):
        shuffled = random.Random(seed).sample(archive, len(archive))
        halves = shuffled[: len(archive) // 2], shuffled[len(archive) // 2 :]
        for tune, test in (halves, halves[::-1]):
            best = max(itertools.product(BODY_CHARS, MIN_SCORES), key=lambda values: goodness(values, tune))
            result = relevance(best, test)
            right, shown, on_topic = right + result.first_right, shown + result.links, on_topic + result.on_topic
            essays += result.essays
            chosen.append(best)
    print(f"  tuned on half, reported on the other ({HALVES} random halves, both ways): first link right "
          f"{right}/{essays} ({right / essays:.0%}), links on topic {on_topic}/{shown} ({on_topic / shown:.0%}); "
          f"chosen (body chars, floor): {', '.join(f'{b} {m}' for b, m in sorted(set(chosen)))}")


def _others(archive: list[Essay], essay: Essay) -> list[Essay]:
    return [e for e in archive if e.id != essay.id]


def _by_slug(essays: dict[str, list[Essay]], essay: Essay) -> list[Essay]:
    return essays[essay.slug]


def _archive(engine: Engine, *paths: Path) -> list[Essay]:
    assert import_paths(engine, list(paths)).ok
    with Session(engine) as session:
        return list(session.exec(select(Essay).order_by(col(Essay.id))))


def test_relevance_on_the_examples(engine: Engine) -> None:
    _report("examples", _archive(engine, EXAMPLES))


def test_relevance_on_the_corpus_and_examples(engine: Engine, corpus_dir: Path) -> None:
    archive = _archive(engine, corpus_dir, EXAMPLES)
    _report("corpus + examples", archive)
    _split(archive)
