"""The related-links index kept on disk, keyed by the archive's content, so a send does not rebuild it.

Building the index (pipeline/related.py) imports scikit-learn and SciPy (about two seconds) and
reads the whole archive; yet related links change only when the archive does: an essay imported
or edited, a feed polled. So the import and the poll build it (`warm`) and a render reads it back.

An entry holds, for every essay, the essays its source page hints at (in page order) and every
other essay scoring at least MIN_SCORE, with its score. That is all `RelatedIndex.suggestions`
looks at for any set of excluded essays: the floor is at least MIN_SCORE, so an essay below it
can neither be linked nor raise the floor. Whether an essay has a page (a tie-breaker) changes
when an issue is sent, so it is read from the live essays, not stored.

The key hashes the archive fingerprint (every essay's identity and content hash), the code that
computes links and the versions of the libraries it uses: a key found is that exact index, and
any edit makes a new key, so a stale index is never served; a key not found is built and kept.
Entries live in `.cache/related/` beside the config, written to a temporary file and renamed
into place like the render cache (pipeline/render_cache.py); an unreadable entry counts as missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from sqlmodel import Session

from pipeline.cache_files import read_entry, write_entry
from pipeline.config import Settings
from pipeline.essays import all_essays, archive_fingerprint, essays_by_id
from pipeline.models import Essay
from pipeline.related import MIN_SCORE, RelatedIndex, Suggestion, merge_suggestions, rank_similar

KEEP = 4  # entries: the archive as it is now and a few recent states
PACKAGE = Path(__file__).resolve().parent
CODE = (PACKAGE / "related.py", PACKAGE / "related_cache.py", PACKAGE / "excerpt.py")
LIBRARIES = ("scikit-learn", "numpy", "scipy")

Entry = dict[int, tuple[list[int], list[tuple[int, float]]]]  # essay id -> (hinted ids, scored ids)


def folder(settings: Settings) -> Path:
    return settings.base_dir / ".cache" / "related"


def index_key(session: Session) -> str:
    """The hash of everything the archive's related-links index depends on."""
    digest = hashlib.sha256()
    for row in archive_fingerprint(session):
        digest.update(repr(row).encode("utf-8") + b"\0")
    for path in CODE:
        digest.update(path.read_bytes() + b"\0")
    for library in LIBRARIES:
        try:
            digest.update(metadata.version(library).encode("utf-8") + b"\0")
        except metadata.PackageNotFoundError:  # a build without it has its own key
            digest.update(b"-\0")
    return digest.hexdigest()


class CachedIndex:
    """A stored index: the same suggestions as RelatedIndex, without rebuilding it."""

    def __init__(self, session: Session, entry: Entry) -> None:
        self.session = session
        self.entry = entry

    def suggestions(self, essay: Essay, exclude: Iterable[int | None] = ()) -> list[Suggestion]:
        """Every essay worth linking from `essay`, best first (see RelatedIndex.suggestions)."""
        hinted_ids, scored_ids = self.entry.get(essay.id or 0, ([], []))
        essays = essays_by_id(self.session, [*hinted_ids, *(i for i, _ in scored_ids)])
        skip = {essay.id, *exclude}
        hinted = [Suggestion(essays[i], None) for i in hinted_ids if i in essays]
        scored = [(essays[i], score) for i, score in scored_ids if i in essays]
        return merge_suggestions(hinted, rank_similar(scored, skip), skip)


def cached_index(session: Session, where: Path) -> CachedIndex:
    """The archive's index from `where`, or built now and stored there for next time."""
    path = where / f"{index_key(session)}.json"
    entry = _read(path)
    if entry is None:
        entry = build_entry(RelatedIndex(all_essays(session)))
        _write(path, entry)
    return CachedIndex(session, entry)


def warm(session: Session, settings: Settings) -> None:
    """Make sure the archive as it is now has its index stored: after an import or a poll."""
    cached_index(session, folder(settings))


def build_entry(index: RelatedIndex) -> Entry:
    entry: Entry = {}
    for essay in index.archive:
        if essay.id is None:
            continue
        hinted = [e.id for e in index.hinted(essay) if e.id is not None]
        scored = [(e.id, s) for e, s in index.scored(essay, MIN_SCORE) if e.id is not None]
        entry[essay.id] = (hinted, scored)
    return entry


def _read(path: Path) -> Entry | None:
    data = read_entry(path)
    try:
        return {
            int(essay_id): ([int(i) for i in hinted], [(int(i), float(s)) for i, s in scored])
            for essay_id, (hinted, scored) in data.items()
        }
    except (ValueError, TypeError, AttributeError):  # missing, or written by an older version
        return None


def _write(path: Path, entry: Entry) -> None:
    write_entry(path, {str(essay_id): [hinted, scored] for essay_id, (hinted, scored) in entry.items()}, KEEP)
