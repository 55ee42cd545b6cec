"""Related essays for an essay: the ones its source page listed first, then the most similar by text.

Rules, for each essay of an issue, up to `limit` links, and fewer rather than unrelated ones:
1. Source hints: the summaries the essay's source page listed as related (Essay.source_related)
   are matched fuzzily against other essays' dek (or opening excerpt); a match above
   HINT_THRESHOLD is taken, in the order the page listed them, when the text backs it: its
   similarity (rule 2) reaches HINT_SHARE of MIN_SCORE. Some pages list a whole section of the
   site (one lists twenty essays on film), and the page's word alone would put an essay on
   costume under one on actors' reactions.
2. Then text similarity: TF-IDF over word stems of title (counted twice), dek and the body's
   opening (stems found in at least two essays), compared by cosine similarity after centring
   (see `centred_cosine`). A candidate is linked only when its score reaches MIN_SCORE and
   RELATIVE_SCORE of the best score among the essays that may be linked: an essay unlike the
   others gets no link, and a strong match does not drag weak ones along. The most similar
   first; ties go to essays that already have a page, then by slug, so the same archive gives
   the same links.
3. Across an issue (`pick_for_issue`): in turns, each essay takes its best candidate whose
   title is not already linked or shown in the issue, so no title appears twice in one digest
   and every essay gets its first link before any gets a second. An essay that two want goes to
   the one it is closer to (a source hint counts as closest).
Never the essay itself, never another essay of the same issue, never the same essay twice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from sqlmodel import Session

from pipeline.essays import all_essays
from pipeline.excerpt import excerpt
from pipeline.models import Essay

if TYPE_CHECKING:  # NumPy loads with scikit-learn, when an index is built; a stored one needs neither
    import numpy as np

HINT_THRESHOLD = 0.8  # SequenceMatcher ratio of a source summary and an essay's dek
# MIN_SCORE and BODY_CHARS are tuned on the essay corpus and the examples with the labels in
# tests/data/related_topics.tsv (tests/benchmarks/test_bench_related.py also tunes them on half
# the essays and reports the other half). With the shift by 1/(n-1) (see `scored`), the essays
# alone on their topic find nothing above 0.12, and every other essay's closest same-topic
# essay scores 0.156 or more: the floor sits between the two.
MIN_SCORE = 0.14
RELATIVE_SCORE = 0.7  # of the essay's best score: the third link must be nearly as close as the first
HINT_SHARE = 0.5  # of the floor, for a source hint: the page's word is half the evidence, the text the rest
# Of the body, for similarity: about its first three paragraphs. With 2,500 the two lonely
# essays' best and the weakest true pair were 0.119 and 0.135, too close for one floor.
BODY_CHARS = 1500


@dataclass(frozen=True)
class Tuning:
    """The numbers of rules 1 and 2; other values only to tune them (tests/benchmarks)."""

    body_chars: int = BODY_CHARS
    min_score: float = MIN_SCORE
    hint_share: float | None = HINT_SHARE  # None: a source hint needs no backing by the text


_WORDS = re.compile(r"[^\w]+")
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_SUFFIXES = tuple(
    (suffix, "y" if suffix in ("ies", "ied", "ily") else "")
    for suffix in "fully ingly ations ation ments ment ness ities ity ings ing ers er ies ied ily ly ed es s".split()
)


@dataclass(frozen=True)
class Suggestion:
    """An essay worth linking and why: the source page listed it (score None), or its similarity."""

    essay: Essay
    score: float | None

    @property
    def reason(self) -> str:
        return "source hint" if self.score is None else "similarity"


@cache
def _sklearn_text() -> ModuleType:
    """scikit-learn's text module, imported on first use: importing it costs about a second of
    CPU, which every `newsletter` command and worker start would pay though few compute links."""
    import sklearn.feature_extraction.text  # noqa: PLC0415  (deferred for start-up time, see above)

    text_module: ModuleType = sklearn.feature_extraction.text
    return text_module


class Suggester(Protocol):
    """What picks links: the index built now (RelatedIndex) or one kept from an earlier build."""

    def suggestions(self, essay: Essay, exclude: Iterable[int | None] = ()) -> list[Suggestion]: ...


def related_for_issue(
    session: Session, essays: Sequence[Essay], limit: int, index_for: Callable[[], Suggester] | None = None
) -> dict[int, list[Essay]]:
    """For each essay of an issue (by id), its related essays from the whole archive
    (`index_for` gives the archive's index; by default it is built from the database now)."""
    if limit <= 0 or not essays:
        return {}
    index = index_for() if index_for else RelatedIndex(all_essays(session))
    in_issue = {e.id for e in essays if e.id is not None}
    candidates = {e.id: index.suggestions(e, exclude=in_issue) for e in essays if e.id is not None}
    picked = pick_for_issue(essays, candidates, limit)
    return {essay_id: [s.essay for s in chosen] for essay_id, chosen in picked.items()}


def related_for_essay(
    session: Session, essay: Essay, limit: int, index_for: Callable[[], Suggester] | None = None
) -> list[Suggestion]:
    """What the essay would link to in an issue of its own, with the reason for each link."""
    if limit <= 0 or essay.id is None:
        return []
    index = index_for() if index_for else RelatedIndex(all_essays(session))
    return pick_for_issue([essay], {essay.id: index.suggestions(essay)}, limit)[essay.id]


def pick_for_issue(
    essays: Sequence[Essay], candidates: Mapping[int, Sequence[Suggestion]], limit: int
) -> dict[int, list[Suggestion]]:
    """Up to `limit` links per essay, no title twice in the issue (see the module rules, 3)."""
    used = {_title_key(e.title) for e in essays}
    picked: dict[int, list[Suggestion]] = {e.id: [] for e in essays if e.id is not None}
    queues = {essay_id: list(candidates.get(essay_id, [])) for essay_id in picked}
    position = {essay_id: i for i, essay_id in enumerate(picked)}
    for _ in range(limit):
        waiting = set(picked)  # the essays that have not had their link of this turn
        while waiting:
            for essay_id in list(waiting):
                queue = queues[essay_id]
                while queue and _title_key(queue[0].essay.title) in used:
                    queue.pop(0)
                if not queue:
                    waiting.discard(essay_id)
            if not waiting:
                break
            # An essay two of the issue want goes where it fits best: a source hint first, then
            # the higher score, then the earlier essay; the other takes its next candidate.
            essay_id = min(waiting, key=lambda i: (_rank(queues[i][0]), position[i]))
            picked[essay_id].append(queues[essay_id].pop(0))
            used.add(_title_key(picked[essay_id][-1].essay.title))
            waiting.discard(essay_id)
    return picked


def merge_suggestions(hinted: Iterable[Suggestion], similar: Iterable[Suggestion],
                      skip: set[int | None]) -> list[Suggestion]:
    """Source hints, then the similar essays, each essay once and none in `skip`: what a built
    index and a stored one (related_cache.py) both answer."""
    found: list[Suggestion] = []
    for suggestion in [*hinted, *similar]:
        if suggestion.essay.id not in skip:
            found.append(suggestion)
            skip.add(suggestion.essay.id)
    return found


def _rank(suggestion: Suggestion) -> tuple[int, float]:
    return (0, 0.0) if suggestion.score is None else (1, -suggestion.score)


def _title_key(title: str) -> str:
    """Titles as a reader tells them apart: case, punctuation and spacing do not count."""
    return _normalise(title)


class RelatedIndex:
    """The archive's TF-IDF matrix and hint texts, built once per issue."""

    def __init__(self, archive: Sequence[Essay], tuning: Tuning = Tuning()) -> None:
        self.archive = list(archive)
        self.tuning = tuning
        self.position = {e.id: i for i, e in enumerate(self.archive)}
        self._centring: tuple[np.ndarray, np.ndarray, float, np.ndarray] | None = None
        self._last: tuple[int, np.ndarray] | None = None  # the last row scored (see _scores)
        self.hint_texts = [_normalise(e.dek or excerpt(e, 300)) for e in self.archive]
        documents = [document_text(e, tuning.body_chars) for e in self.archive]
        self.matrix = None
        if len(self.archive) > 1 and any(d.strip() for d in documents):
            # A word in one essay only cannot link two essays; kept, it would only dilute the
            # shared words and shrink every score the smaller the archive (min_df=2).
            vectorizer = _sklearn_text().TfidfVectorizer(analyzer=stems, sublinear_tf=True, min_df=2)
            try:
                self.matrix = vectorizer.fit_transform(documents)
            except ValueError:  # only stop words everywhere: no vocabulary, no similarity
                self.matrix = None

    def related(self, essay: Essay, limit: int, exclude: Iterable[int | None] = ()) -> list[Essay]:
        """Up to `limit` essays: source hints first, then by similarity (see the module rules)."""
        return [s.essay for s in self.suggestions(essay, exclude)[:limit]]

    def suggestions(self, essay: Essay, exclude: Iterable[int | None] = ()) -> list[Suggestion]:
        """Every essay worth linking from `essay`, best first: source hints, then the similar."""
        skip = {essay.id, *exclude}
        hinted = [Suggestion(e, None) for e in self.hinted(essay)]
        return merge_suggestions(hinted, self.similar(essay, skip), skip)

    def hinted(self, essay: Essay) -> list[Essay]:
        """The archive's essays that the source page's related summaries describe and the text
        backs (a score of at least half the floor), in page order."""
        share = self.tuning.hint_share
        needed = -math.inf if share is None else share * self.tuning.min_score
        row = self.position.get(essay.id)
        scores = self._scores(row) if essay.source_related and row is not None else None
        found: list[Essay] = []
        for hint in essay.source_related or []:
            summary = _normalise(str(hint.get("summary") or ""))
            if not summary:
                continue
            best, best_ratio = None, HINT_THRESHOLD
            for i, text in enumerate(self.hint_texts):
                if not text or self.archive[i].id == essay.id:
                    continue
                matcher = SequenceMatcher(None, summary, text, autojunk=False)
                if matcher.real_quick_ratio() < best_ratio or matcher.quick_ratio() < best_ratio:
                    continue
                ratio = matcher.ratio()
                if ratio >= best_ratio and (best is None or ratio > best_ratio):
                    best, best_ratio = self.archive[i], ratio
            if best is None or best in found:
                continue
            score = -math.inf if scores is None else round(float(scores[self.position[best.id]]), 9)
            if score >= needed:
                found.append(best)
        return found

    def similar(self, essay: Essay, exclude: Iterable[int | None] = ()) -> list[Suggestion]:
        """Other essays, not excluded, scoring at least MIN_SCORE and RELATIVE_SCORE of the best
        of them (centred cosine), the most similar first; ties to essays with a page, then by slug."""
        return rank_similar(self.scored(essay), {essay.id, *exclude}, self.tuning.min_score)

    def scored(self, essay: Essay, floor: float | None = None) -> list[tuple[Essay, float]]:
        """Every other essay of the archive with its similarity score, in archive order; with
        `floor`, only those scoring at least that (what a stored index keeps)."""
        row = self.position.get(essay.id)
        scores = self._scores(row) if row is not None else None
        if scores is None or row is None:
            return []
        import numpy as np  # noqa: PLC0415  (with scikit-learn: only when an index is built)

        # Building a stored index asks this of every essay: pick the few candidates in NumPy
        # rather than walking the whole archive in Python for each (n² steps on a big archive).
        rows = range(len(self.archive)) if floor is None else np.flatnonzero(scores >= floor - 1e-9)
        # Rounded so that float noise from the archive's order cannot reorder equal scores.
        found = [(self.archive[i], round(float(scores[i]), 9)) for i in rows if i != row]
        return found if floor is None else [(other, score) for other, score in found if score >= floor]

    def _scores(self, row: int) -> np.ndarray | None:
        """Row `row`'s similarity to every essay (None without a matrix). The last row is kept:
        an essay's source hints and its similar essays ask for the same row one after the other."""
        if self.matrix is None:
            return None
        if self._last is None or self._last[0] != row:
            # Centred vectors sum to zero, so unrelated essays average -1/(n-1): shifted by that,
            # a score means the same on an archive of ten essays and of a thousand.
            self._last = row, self.centred_cosine(row) + 1 / (len(self.archive) - 1)
        return self._last[1]

    def centred_cosine(self, row: int) -> np.ndarray:
        """Cosine similarity of the rows after subtracting the archive's mean vector.

        Centring removes what every essay shares (on a film-heavy archive, "film-ness"), so an
        essay on travel is not pulled towards the crowd just because the crowd is big (hub
        reduction; Suzuki et al. 2013). Computed on the sparse matrix, never densified:
        (a-m).(b-m) = a.b - a.m - b.m + m.m.
        """
        import numpy as np  # noqa: PLC0415  (with scikit-learn: only when an index is built)

        matrix = self.matrix
        assert matrix is not None
        if self._centring is None:  # the same for every row: once per index, not once per essay
            mean = np.asarray(matrix.mean(axis=0)).ravel()
            dot_mean = matrix @ mean  # a.m for every row
            mean_sq = float(mean @ mean)
            norms_sq = np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel() - 2 * dot_mean + mean_sq
            self._centring = mean, dot_mean, mean_sq, np.sqrt(np.clip(norms_sq, 1e-12, None))
        mean, dot_mean, mean_sq, norms = self._centring
        dots = (matrix @ matrix[row].T).toarray().ravel()
        centred = dots - dot_mean - dot_mean[row] + mean_sq
        similarity: np.ndarray = centred / (norms * norms[row])
        return similarity


def rank_similar(
    scored: Sequence[tuple[Essay, float]], skip: set[int | None], min_score: float = MIN_SCORE
) -> list[Suggestion]:
    """The scored essays not skipped that reach the floor, the most similar first (scores below
    `min_score` never count: the floor is at least that, so they can be left out of `scored`)."""
    allowed = [(i, other, score) for i, (other, score) in enumerate(scored) if other.id not in skip]
    # Relative to the best essay that can be linked: an essay's twin in the same issue is
    # shown anyway and must not push the next best below the floor.
    floor = max(min_score, RELATIVE_SCORE * max((score for _, _, score in allowed), default=-math.inf))
    ranked = sorted(
        (-score, not has_page(other), other.slug, i, other) for i, other, score in allowed if score >= floor
    )
    return [Suggestion(other, -negated) for negated, _, _, _, other in ranked]


def has_page(essay: Essay) -> bool:
    """Published already: the source gave it a URL, an issue carried it to readers, or it came
    in as the archive (published before the newsletter)."""
    return bool(essay.url) or essay.sent_in_issue_id is not None or essay.archive


def document_text(essay: Essay, body_chars: int = BODY_CHARS) -> str:
    """What similarity looks at: the title twice (it says most per word), the dek, the body."""
    body = " ".join(block.get("text", "") for block in essay.body or [])
    # Only the opening: an essay says what it is about early, and a long essay's tail would
    # otherwise match everything a little (many small overlaps beat one strong one).
    return f"{essay.title}\n{essay.title}\n{essay.dek}\n{body[:body_chars]}"


def stems(text: str) -> list[str]:
    """Lower-case word stems without stop words: "travelers" and "traveling" both count as "travel"."""
    text_module = _sklearn_text()
    stop_words = text_module.ENGLISH_STOP_WORDS
    words = (w for w in _TOKEN.findall(text_module.strip_accents_unicode(text.lower())) if w not in stop_words)
    return [stem(w) for w in words if not w.isdigit()]


def stem(word: str) -> str:
    """A crude suffix stripper (English): enough to join a word's common forms, never below 4 letters."""
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)] + replacement
    return word


def _normalise(text: str) -> str:
    return _WORDS.sub(" ", text.lower()).strip()
