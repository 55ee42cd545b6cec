"""Related essays for an essay: the ones its source page listed first, then the most similar by text.

Rules, for each essay of an issue, up to `limit` links:
1. Source hints: the summaries the essay's source page listed as related (Essay.source_related)
   are matched fuzzily against other essays' dek (or opening excerpt); a match above
   HINT_THRESHOLD is taken, in the order the page listed them.
2. Then text similarity: TF-IDF over title (counted twice), dek and body, cosine similarity.
   Candidates below MIN_SIMILARITY are never linked (no link is better than a random one).
   Essays that already have a page (their own URL, or sent in an issue) come before those that
   do not, then the most similar first, ties broken by slug: the same archive gives the same links.
Never the essay itself, never another essay of the same issue, never the same essay twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher

from sklearn.feature_extraction.text import TfidfVectorizer
from sqlmodel import Session, col, select

from pipeline.excerpt import excerpt
from pipeline.models import Essay

HINT_THRESHOLD = 0.8  # SequenceMatcher ratio of a source summary and an essay's dek
MIN_SIMILARITY = 0.05  # cosine similarity below which two essays share only common words
_WORDS = re.compile(r"[^\w]+")


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
            vectorizer = TfidfVectorizer(
                stop_words="english", sublinear_tf=True, strip_accents="unicode"
            )
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
        """Other essays at or above MIN_SIMILARITY: with a page first, then most similar, then slug."""
        row = self.position.get(essay.id)
        if self.matrix is None or row is None:
            return []
        scores = (self.matrix @ self.matrix[row].T).toarray().ravel()  # rows are L2-normalised
        ranked = [
            (not has_page(self.archive[i]), -round(float(score), 9), self.archive[i].slug, i)
            for i, score in enumerate(scores)
            if i != row and score >= MIN_SIMILARITY
        ]
        return [self.archive[i] for *_, i in sorted(ranked)]


def has_page(essay: Essay) -> bool:
    """Published already: the source gave it a URL, or an issue carried it to readers."""
    return bool(essay.url) or essay.sent_in_issue_id is not None


def document_text(essay: Essay) -> str:
    """What similarity looks at: the title twice (it says most per word), the dek, the body."""
    body = " ".join(block.get("text", "") for block in essay.body or [])
    return f"{essay.title}\n{essay.title}\n{essay.dek}\n{body}"


def _normalise(text: str) -> str:
    return _WORDS.sub(" ", text.lower()).strip()
