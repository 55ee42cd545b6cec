"""Editorial changes to a draft issue: its subject, the intro note above the essays, which
essays it carries; and discarding a draft. Only a draft changes: what is sending or sent is
what readers got (or are getting), so it is refused with the reason."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import Refused
from pipeline.excerpt import excerpt
from pipeline.issues import PREHEADER_LENGTH, essays_by_slug, find_issue, issue_essays, refuse_sent, subject_for
from pipeline.models import Delivery, Issue, IssueEssay, IssueStatus
from subscribers.text import has_controls

MAX_INTRO = 20_000  # characters of Markdown: a note, not a second essay


def draft(session: Session, ref: str | int, doing: str) -> Issue:
    """The issue, which must be a draft (locked until the caller commits); Refused otherwise."""
    issue = find_issue(session, ref)
    issue = session.exec(select(Issue).where(Issue.id == issue.id).with_for_update()).one()
    if issue.status == IssueStatus.DRAFT.value:
        return issue
    why = {IssueStatus.SENT.value: "it has been sent: readers have it as it is",
           IssueStatus.SENDING.value: "it is being sent: its audience and its text are frozen"}.get(
        issue.status, f"it is {issue.status}")
    raise Refused(f"issue {issue.key} cannot be {doing}: {why}. Only a draft can be "
                  f"(compose a new one with `newsletter issues new`).")


def edit(session: Session, settings: Settings, ref: str | int, *, subject: str | None = None,
         intro: str | None = None, add: Sequence[str] = (), remove: Sequence[str] = (),
         resend: bool | None = None) -> Issue:
    """Change a draft. A subject (or preheader) that was the composed one follows the essays;
    `resend` (None: unchanged) says whether readers who had one of its essays get it too."""
    issue = draft(session, ref, "edited")
    if resend is not None:
        issue.resend = resend
    before = issue_essays(session, issue)
    slugs = [e.slug for e in before]
    for slug in remove:
        if slug not in slugs:
            raise Refused(f"issue {issue.key} does not carry {slug!r} (it carries: {', '.join(slugs)})")
        slugs.remove(slug)
    added = [e for e in essays_by_slug(session, add) if e.slug not in slugs]
    if added and not issue.resend:
        refuse_sent(session, added)
    slugs += [e.slug for e in added]
    if not slugs:
        raise Refused(f"issue {issue.key} would carry no essays: discard it instead "
                      f"(`newsletter issues discard {issue.key}`)")
    after = essays_by_slug(session, slugs)
    if [e.slug for e in after] != [e.slug for e in before]:
        if subject is None and issue.subject == subject_for(settings, before):
            issue.subject = subject_for(settings, after)
        if issue.preheader == excerpt(before[0], PREHEADER_LENGTH):
            issue.preheader = excerpt(after[0], PREHEADER_LENGTH)
        session.execute(delete(IssueEssay).where(col(IssueEssay.issue_id) == issue.id))
        session.flush()
        for position, essay in enumerate(after):
            session.add(IssueEssay(issue_id=issue.id or 0, position=position, essay_id=essay.id or 0))
    if subject is not None:
        if not subject.strip() or has_controls(subject):
            # Control characters too: the subject goes into headers and the archive's Atom feed,
            # whose XML refuses most of them; and a bidi control would make it read otherwise in
            # every inbox, as one in a title would (titles lose them when they are imported).
            raise Refused("--subject must be one line of text, not empty, without control characters "
                          "or bidi controls")
        issue.subject = subject.strip()
    if intro is not None:
        if len(intro) > MAX_INTRO:
            raise Refused(f"the intro note is {len(intro)} characters: keep it under {MAX_INTRO}")
        issue.intro = intro.strip()
    session.add(issue)
    session.flush()
    return issue


def discard(session: Session, ref: str | int) -> Issue:
    """Delete a draft and its list of essays (the essays stay); returns what was deleted."""
    issue = draft(session, ref, "discarded")
    if session.exec(select(Delivery.id).where(Delivery.issue_id == issue.id).limit(1)).first():
        raise Refused(f"issue {issue.key} has deliveries in the ledger: it is kept")
    session.execute(delete(IssueEssay).where(col(IssueEssay.issue_id) == issue.id))
    session.delete(issue)
    session.flush()
    return issue
