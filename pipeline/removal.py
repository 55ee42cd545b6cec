"""Removing essays imported by mistake: only those no issue has carried or carries, and nothing left naming them.

    remove_essays(session, ["typo-essay"], dry_run=True) -> Removal   # what would go, and what may not

An essay an issue carried stays, whatever became of that issue: readers had it (or may have),
the web archive shows it, a subscriber's history names it. One that a draft carries stays too,
until the draft no longer does (`issues edit --remove-essay`, `issues discard`): a draft is
never changed behind the essayist's back. A feed entry the essay came from stays recorded as
seen, so no poll brings it back; its file, if it came from one, is left alone.

The related-links index and the render cache are keyed by every essay's identity
(pipeline/related_cache.py, pipeline/render_cache.py): once the row is gone, no stored index or
render of the archive as it was can be read again, so no later render links to the essay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlmodel import Session

from pipeline.errors import NotFound
from pipeline.essays import delete_essay, get_essay, sent_key
from pipeline.feed_list import forget_essay
from pipeline.issues import carriers, taking_out
from pipeline.models import Essay


@dataclass
class Removal:
    """The essays removed (or, in a dry run, that would be), and why each of the others stays."""

    removed: list[Essay] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def remove_essays(session: Session, slugs: Sequence[str], dry_run: bool = False) -> Removal:
    """Remove the essays named that no issue has carried or carries; each other one (and an
    unknown slug) is refused with the reason, and the rest still go. The caller commits."""
    report = Removal()
    for slug in dict.fromkeys(slugs):
        try:
            essay = get_essay(session, slug)
        except NotFound as exc:
            report.refused.append(str(exc))
            continue
        why = why_it_stays(session, essay)
        if why:
            report.refused.append(why)
        else:
            report.removed.append(essay)
    if not dry_run:
        for essay in report.removed:
            forget_essay(session, essay.id or 0)
            delete_essay(session, essay)
    return report


def why_it_stays(session: Session, essay: Essay) -> str | None:
    """Why the essay may not be removed (None: it may): an issue carried it, or a draft does."""
    slug = essay.slug
    sent_in = sent_key(session, essay)
    if sent_in is not None:
        return (f"cannot remove {slug!r}: it went out in issue {sent_in}, and readers' history and the web "
                f"archive keep it. No digest takes it again by itself; to keep an essay not sent yet out of "
                f"the digests, hold it (`newsletter essays hold SLUG`), and import essays published before "
                f"the newsletter with `newsletter essays import --archive`")
    found = carriers(session, essay.id or 0)
    if found.started:
        started = found.started[0]
        return (f"cannot remove {slug!r}: issue {started.key} ({started.status}) carried it, and some "
                f"readers may have it. `newsletter essays hold {slug}` keeps it out of the digests instead")
    drafts = found.drafts
    if drafts:
        first = drafts[0].key
        which = f"the draft {first} carries" if len(drafts) == 1 else \
            f"the drafts {', '.join(i.key for i in drafts)} carry"
        return (f"cannot remove {slug!r}: {which} it. Take it out first "
                f"({taking_out(first, [slug])}, or `newsletter issues discard "
                f"{first}`), then remove it")
    return None
