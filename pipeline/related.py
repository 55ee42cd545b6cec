"""Related essays for an essay: the ones its source page listed first, then the most similar by text.

Rules, for each essay of an issue, up to `limit` links:
1. Source hints: the summaries the essay's source page listed as related (Essay.source_related)
   are matched fuzzily against other essays' dek (or opening excerpt); a match above
   HINT_THRESHOLD is taken, in the order the page listed them.
2. Then text similarity: TF-IDF over word stems of title (counted twice), dek and the body's
   opening, compared by cosine similarity after centring (see `centred_cosine`): essays closer
   than the archive's average first, then the rest that share words at all. Candidates below
   MIN_SIMILARITY are never linked (no link is better than a random one). Within those groups,
   essays that already have a page (their own URL, or sent in an issue) come first, then the
   most similar, ties broken by slug: the same archive gives the same links.
Never the essay itself, never another essay of the same issue, never the same essay twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

from functools import cache
from types import ModuleType

import numpy as np
from sqlmodel import Session, col, select

from pipeline.excerpt import excerpt
from pipeline.models import Essay

HINT_THRESHOLD = 0.8  # SequenceMatcher ratio of a source summary and an essay's dek
MIN_SIMILARITY = 0.05  # cosine below which two essays share only common words
BODY_CHARS = 2500  # of the body, for similarity
_WORDS = re.compile(r"[^\w]+")
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_SUFFIXES = tuple(
    (suffix, "y" if suffix in ("ies", "ied", "ily") else "")
    for suffix in "fully ingly ations ation ments ment ness ities ity ings ing ers er ies ied ily ly ed es s".split()
)


@cache
def _sklearn_text() -> ModuleType:
    """scikit-learn's text module, imported on first use: importing it costs about a second of
    CPU, which every `newsletter` command and worker start would pay though few compute links."""
    import sklearn.feature_extraction.text  # noqa: PLC0415  (deferred for start-up time, see above)

    return sklearn.feature_extraction.text


def related_for_issue(session: Session, essays: Sequence[Essay], limit: int) -> dict[int, list[Essay]]:
    """For each essay of an issue (by id), its related essays from the whole archive."""
    if limit <= 0 or not essays:
        return {}
    archive = list(session.exec(select(Essay).order_by(col(Essay.id))))
    index = RelatedIndex(archive)
    in_issue = {e.id for e in essays if e.id is not None}
    return {e.id: index.related(e, limit, exclude=in_issue) for e in essays if e.id is not None}


class RelatedIndex:
    """The archive's TF-IDF matrix and hint texts, built once per issue."""

    def __init__(self, archive: Sequence[Essay]) -> None:
        self.archive = list(archive)
        self.position = {e.id: i for i, e in enumerate(self.archive)}
        self.hint_texts = [_normalise(e.dek or excerpt(e, 300)) for e in self.archive]
        documents = [document_text(e) for e in self.archive]
        self.matrix = None
        if len(self.archive) > 1 and any(d.strip() for d in documents):
            vectorizer = _sklearn_text().TfidfVectorizer(analyzer=stems, sublinear_tf=True)
            try:
                self.matrix = vectorizer.fit_transform(documents)
            except ValueError:  # only stop words everywhere: no vocabulary, no similarity
                self.matrix = None

    def related(self, essay: Essay, limit: int, exclude: Iterable[int | None] = ()) -> list[Essay]:
        """Up to `limit` essays: source hints first, then by similarity (see the module rules)."""
        skip = {essay.id, *exclude}
        picked: list[Essay] = []
        for candidate in self.hinted(essay):
            if candidate.id not in skip:
                picked.append(candidate)
                skip.add(candidate.id)
        for candidate in self.similar(essay):
            if len(picked) >= limit:
                break
            if candidate.id not in skip:
                picked.append(candidate)
                skip.add(candidate.id)
        return picked[:limit]

    def hinted(self, essay: Essay) -> list[Essay]:
        """The archive's essays that the source page's related summaries describe, in page order."""
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
            if best is not None and best not in found:
                found.append(best)
        return found

    def similar(self, essay: Essay) -> list[Essay]:
        """Other essays by similarity: first those closer than the archive's average (centred
        cosine > 0), then those sharing words at all (plain cosine >= MIN_SIMILARITY); within
        each, essays with a page first, then the most similar, then by slug."""
        row = self.position.get(essay.id)
        if self.matrix is None or row is None:
            return []
        centred = self.centred_cosine(row)
        plain = (self.matrix @ self.matrix[row].T).toarray().ravel()  # rows are L2-normalised
        ranked = []
        for i in range(len(self.archive)):
            if i == row or plain[i] < MIN_SIMILARITY:
                continue
            tier, score = (0, centred[i]) if centred[i] > 0 else (1, plain[i])
            ranked.append((tier, not has_page(self.archive[i]), -round(float(score), 9),
                           self.archive[i].slug, i))
        return [self.archive[i] for *_, i in sorted(ranked)]

    def centred_cosine(self, row: int) -> np.ndarray:
        """Cosine similarity of the rows after subtracting the archive's mean vector.

        Centring removes what every essay shares (on a film-heavy archive, "film-ness"), so an
        essay on travel is not pulled towards the crowd just because the crowd is big (hub
        reduction; Suzuki et al. 2013). Computed on the sparse matrix, never densified:
        (a-m).(b-m) = a.b - a.m - b.m + m.m.
        """
        matrix = self.matrix
        assert matrix is not None
        mean = np.asarray(matrix.mean(axis=0)).ravel()
        dot_mean = matrix @ mean  # a.m for every row
        dots = (matrix @ matrix[row].T).toarray().ravel()
        mean_sq = float(mean @ mean)
        norms_sq = np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel() - 2 * dot_mean + mean_sq
        norms = np.sqrt(np.clip(norms_sq, 1e-12, None))
        centred = dots - dot_mean - dot_mean[row] + mean_sq
        return centred / (norms * norms[row])


def has_page(essay: Essay) -> bool:
    """Published already: the source gave it a URL, or an issue carried it to readers."""
    return bool(essay.url) or essay.sent_in_issue_id is not None


def document_text(essay: Essay) -> str:
    """What similarity looks at: the title twice (it says most per word), the dek, the body."""
    body = " ".join(block.get("text", "") for block in essay.body or [])
    # Only the opening: an essay says what it is about early, and a long essay's tail would
    # otherwise match everything a little (many small overlaps beat one strong one).
    return f"{essay.title}\n{essay.title}\n{essay.dek}\n{body[:BODY_CHARS]}"


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
