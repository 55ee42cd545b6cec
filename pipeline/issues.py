"""Compose an issue (a digest) from the essays not sent yet, or from essays named by slug.

`compose` is what `newsletter issues new`, the scheduler and `newsletter send` call. An issue has
a unique key: the scheduler passes its period (`weekly-2026-W48`) so that two schedulers firing
at once still make one issue (the database's unique index decides, not a check-then-insert); by
hand it is the day, `2026-11-30`, then `2026-11-30-2` (issues composed before keep their
`manual-<uuid>`). compose flushes; the caller's session scope commits.

This module owns the issue's life: draft -> sending -> sent (reopened by a requeue), or
skipped / expired. Every status change is one of the named functions at the end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, not_, nulls_last, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from pipeline import glance, history, ledger
from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import ConfigError, NotFound, Refused
from pipeline.excerpt import excerpt
from pipeline.models import Essay, Issue, IssueEssay, IssueStatus
from subscribers.model import utcnow

if TYPE_CHECKING:
    from pipeline.render import RenderedIssue

# Mail clients show roughly this much of the preheader beside the subject.
PREHEADER_LENGTH = 140
_SPACE = re.compile(r"\s+")


def compose(
    session: Session,
    settings: Settings,
    slugs: Sequence[str] | None = None,
    key: str | None = None,
    *,
    resend: bool = False,
    existing_ok: bool = True,
) -> Issue:
    """A draft issue of the oldest unsent essays (or of `slugs`, in that order).

    With `key`, an issue that already has that key is returned unchanged (the scheduler's race
    for a week), or, with `existing_ok=False`, Refused says it exists. An essay named in `slugs`
    being sent right now is Refused unless `resend`; one that went out is carried (the send
    leaves out readers who had it, unless the issue is composed `resend`). Raises NotFound for an
    unknown slug, and when there is nothing to send.
    """
    if key is not None:
        existing = find_by_key(session, key)
        if existing is not None:
            return _existing(existing, existing_ok)
    essays = essays_by_slug(session, slugs) if slugs else unsent_essays(session, settings)
    if slugs and not resend:
        refuse_sent(session, essays)
    if not essays:
        raise NotFound(_nothing_to_send(session))
    for _ in range(5):  # a rival taking the day's next key makes this one try the one after
        issue = Issue(key=key or next_day_key(session, utcnow()), subject=subject_for(settings, essays),
                      preheader=excerpt(essays[0], PREHEADER_LENGTH), status=IssueStatus.DRAFT.value,
                      resend=resend)
        try:
            return _insert(session, issue, essays)
        except IntegrityError:
            winner = find_by_key(session, issue.key)
            if winner is None:  # the conflict was not on the key: a real error
                raise
            if key is not None:
                return _existing(winner, existing_ok)
    raise Refused("could not find a free key for a new issue today: pass --key")


def adopt_draft(session: Session, key: str) -> Issue | None:
    """The newest draft composed by hand that carries an essay not sent yet, given `key` (the
    week's): the issue an essayist prepared (a subject, an intro of their own) is the week's
    issue, not a second one of the same essays composed beside it. None when there is none, and
    never one that carries an essay kept back (held, or going out in another issue now)."""
    carrying = (select(IssueEssay.issue_id).join(Essay, col(Essay.id) == col(IssueEssay.essay_id))
                .where(col(Essay.sent_in_issue_id).is_(None)))
    clashing = (select(IssueEssay.issue_id).join(Essay, col(Essay.id) == col(IssueEssay.essay_id))
                .where(kept_back()))
    draft = session.exec(
        select(Issue).where(Issue.status == IssueStatus.DRAFT.value, col(Issue.id).in_(carrying),
                            col(Issue.id).not_in(clashing), col(Issue.key).not_like("weekly-%"))
        .order_by(col(Issue.created_at).desc(), col(Issue.id).desc()).limit(1)).first()
    if draft is not None:
        draft.key = key
        session.add(draft)
        session.flush()
    return draft


def next_day_key(session: Session, now: datetime) -> str:
    """The day's key for an issue composed by hand: `2026-11-30`, then `2026-11-30-2`, ..."""
    day = f"{now:%Y-%m-%d}"
    taken = session.exec(select(Issue.key).where(col(Issue.key).startswith(day))).all()
    numbers = [int(m.group(1) or 1) for k in taken if (m := re.fullmatch(rf"{day}(?:-(\d+))?", k))]
    return day if not numbers else f"{day}-{max(numbers) + 1}"


def _nothing_to_send(session: Session) -> str:
    """Why no essay is left to compose, true to the database: none came in ("every essay has
    gone out" would be false on a fresh database), the ones left are held, or all went out."""
    counted = backlog(session)
    if not counted.total:
        return "nothing to send: there are no essays yet (import some with `newsletter essays import PATH`)"
    if counted.held:
        return ("nothing to send: the essays not sent yet are held (`newsletter essays list` shows them; "
                "`newsletter essays release SLUG` lets the next digest take one)")
    return ("nothing to send: every essay has gone out in an issue already "
            "(import new ones with `newsletter essays import PATH`)")


def _insert(session: Session, issue: Issue, essays: Sequence[Essay]) -> Issue:
    # A savepoint, so that losing the race for a key rolls back only this insert.
    with session.begin_nested():
        session.add(issue)
        session.flush()
        assert issue.id is not None
        for position, essay in enumerate(essays):
            assert essay.id is not None
            session.add(IssueEssay(issue_id=issue.id, position=position, essay_id=essay.id))
        session.flush()
    return issue


def _existing(issue: Issue, existing_ok: bool) -> Issue:
    if existing_ok:
        return issue
    raise Refused(f"an issue with the key {issue.key!r} exists already (id {issue.id}, {issue.status}): "
                  f"nothing was composed; see it with `newsletter issues show {issue.key}`, or "
                  f"pick another --key")


def refuse_sent(session: Session, essays: Sequence[Essay]) -> None:
    """Refused naming every essay an issue is sending right now: its readers are not known to
    have had it yet, so a second issue could not leave them out. (An essay that went out is
    allowed: the send leaves out the readers who had it; see pipeline/history.py.)"""
    sending = _sending_now(session)
    problems = [f"{e.slug!r} is being sent in issue {sending[e.id]}" for e in essays if e.id in sending]
    if problems:
        raise Refused("not composed: " + "; ".join(problems) + ". Wait until it is sent (readers "
                      "who had it are then left out), or pass --resend to mail it to everyone.")


def refuse_in_flight(session: Session, issue: Issue, essays: Sequence[Essay] | None = None) -> None:
    """Refused when the draft carries an essay another issue is sending now: that issue's readers
    still waiting for it are not left out (only those who had it are), so they would get it
    twice. A draft composed `resend` goes out, as refuse_sent lets it be composed: it mails
    everyone, those readers included, as asked. `essays`: the draft's, when already loaded."""
    if issue.resend:
        return
    sending = _sending_now(session, but=issue.id)
    slugs_by_key: dict[str, list[str]] = {}
    for essay in issue_essays(session, issue) if essays is None else essays:
        if essay.id in sending:
            slugs_by_key.setdefault(sending[essay.id], []).append(essay.slug)
    if not slugs_by_key:
        return
    slugs = [slug for found in slugs_by_key.values() for slug in found]
    it, keys = listed(slugs)[1], " and ".join(slugs_by_key)
    raise Refused(
        f"issue {issue.key} was not sent: "
        + "; ".join(f"issue {key} is sending {', '.join(found)} now" for key, found in slugs_by_key.items())
        + f", and readers still waiting for {it} there would get {it} twice. Wait until issue {keys} "
        f"{'finishes' if len(slugs_by_key) == 1 else 'finish'}, then send {issue.key} again (readers "
        f"who had {it} are left out then), or take {it} out ({taking_out(issue.key, slugs)})")


def listed(slugs: Sequence[str]) -> tuple[str, str]:
    """Essays named in a sentence, and the pronoun for them: ("a", "it"), ("a, b and c", "them")."""
    if len(slugs) == 1:
        return slugs[0], "it"
    return ", ".join(slugs[:-1]) + " and " + slugs[-1], "them"


def taking_out(key: str, slugs: Sequence[str]) -> str:
    """The command that takes these essays out of the draft `key`."""
    return f"`newsletter issues edit {key} " + " ".join(f"--remove-essay {slug}" for slug in slugs) + "`"


def _sending_now(session: Session, but: int | None = None) -> dict[int, str]:
    """essay id -> the key of the issue (not `but`) sending it now."""
    return {row[0]: row[1] for row in session.exec(
        select(IssueEssay.essay_id, Issue.key)
        .join(Issue, col(Issue.id) == col(IssueEssay.issue_id))
        .where(Issue.status == IssueStatus.SENDING.value, Issue.id != (but or 0)))}


def unsent_essays(session: Session, settings: Settings) -> list[Essay]:
    """Essays no issue has carried yet, oldest first (essay date, then import order), but for
    those imported as the archive (published before the newsletter) and those kept back (see
    `kept_back`). Essays that some readers had (an issue that expired half-sent) are never mixed
    with new ones.
    """
    query = (
        select(Essay)
        .where(owed(), not_(kept_back()))
        .order_by(nulls_last(col(Essay.published_on).asc()), col(Essay.imported_at), col(Essay.id))
        .limit(settings.digest.max_essays)
    )
    essays = list(session.exec(query))
    had = history.had_by_some(session, [e.id for e in essays if e.id is not None])
    if had and len(had) < len(essays):
        # Some readers had some of these (an issue that expired half-sent): mixed with new
        # essays, those readers would be left out of the whole issue and never get the new
        # ones. The essays they had go out first, alone; the new ones in the next issue.
        essays = [e for e in essays if e.id in had]
    return essays


def owed() -> Any:
    """Whether the digests owe an essay to the readers: no issue has sent it, and it was not
    imported as the archive (published before the newsletter, never mailed by itself)."""
    return and_(col(Essay.sent_in_issue_id).is_(None), col(Essay.archive).is_(False))


@dataclass(frozen=True)
class Backlog:
    """The essays counted: what `essays list` sums up, and why `compose` found nothing to send."""

    total: int
    owed: int  # not sent yet, not the archive (see `owed`)
    held: int  # of those owed, held back with `essays hold`
    archive: int  # imported as the archive and not sent


def backlog(session: Session) -> Backlog:
    """How many essays there are, are owed, are owed but held, and are the archive not sent."""
    def number(where: Any) -> Any:
        return func.coalesce(func.sum(case((where, 1), else_=0)), 0)

    row = session.exec(select(func.count(), number(owed()), number(and_(owed(), col(Essay.held).is_(True))),
                              number(and_(col(Essay.sent_in_issue_id).is_(None), col(Essay.archive).is_(True))))
                       .select_from(Essay)).one()
    return Backlog(*(int(n) for n in row))


def kept_back() -> Any:
    """Whether an essay is out of reach of every issue that picks its essays by itself: the one
    rule of `unsent_essays` (what `compose` takes without slugs: the scheduler, `send --latest`,
    `issues new`, the preview's next digest) and `adopt_draft` (the draft the scheduler sends).
    Held by the essayist (`essays hold`: an issue may still name it), or carried by an issue
    sending now (marked sent only when that finishes: a second issue meanwhile sends it twice)."""
    return or_(col(Essay.held).is_(True), col(Essay.id).in_(_in_flight()))


def _in_flight() -> Any:
    """The ids of the essays an issue is sending now (marked sent only when it finishes)."""
    return (select(IssueEssay.essay_id).join(Issue, col(Issue.id) == col(IssueEssay.issue_id))
            .where(Issue.status == IssueStatus.SENDING.value))


def essays_by_slug(session: Session, slugs: Sequence[str]) -> list[Essay]:
    """The essays named, in the order named; NotFound names the first unknown slug."""
    found = {e.slug: e for e in session.exec(select(Essay).where(col(Essay.slug).in_(slugs)))}
    essays: list[Essay] = []
    for slug in dict.fromkeys(slugs):  # a slug named twice is carried once
        if slug not in found:
            raise NotFound(f"no essay with the slug {slug!r} (see `newsletter essays list`)")
        essays.append(found[slug])
    return essays


@dataclass(frozen=True)
class Carriers:
    """The issues that carry or carried an essay, oldest first: those that started (sending,
    sent, expired: readers may have it) and the drafts (still the essayist's to change)."""

    started: list[Issue]
    drafts: list[Issue]


def carriers(session: Session, essay_id: int) -> Carriers:
    """Every issue that carries or carried the essay, whatever its status, split as Carriers."""
    found = list(session.exec(
        select(Issue).join(IssueEssay, col(IssueEssay.issue_id) == col(Issue.id))
        .where(IssueEssay.essay_id == essay_id).order_by(col(Issue.id))))
    drafts = [i for i in found if i.status == IssueStatus.DRAFT.value]
    return Carriers([i for i in found if i.status != IssueStatus.DRAFT.value], drafts)


def held_in(session: Session, issue: Issue) -> list[str]:
    """The slugs of the held essays (`essays hold`) the issue carries, in its order. The scheduler
    and `send --latest` refuse a draft that carries one (see publish.py); a named send mails it."""
    return [e.slug for e in issue_essays(session, issue) if e.held]


def subject_for(settings: Settings, essays: Sequence[Essay]) -> str:
    """The subject from digest.subject_one / subject_many; one line, whatever the titles hold."""
    title = _SPACE.sub(" ", essays[0].title).strip()
    key, pattern = (
        ("digest.subject_one", settings.digest.subject_one)
        if len(essays) == 1
        else ("digest.subject_many", settings.digest.subject_many)
    )
    try:
        subject = pattern.format(title=title, more=len(essays) - 1, count=len(essays))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{settings.path}: {key}: {pattern!r} can use only {{title}}, {{more}} and {{count}} "
            f"({exc})"
        ) from None
    return _SPACE.sub(" ", subject).strip()


def newest_id(session: Session) -> int:
    """The highest issue id so far (0 when there is none): an issue above it is new since."""
    return int(session.exec(select(func.max(Issue.id))).one() or 0)


def find_by_key(session: Session, key: str) -> Issue | None:
    """The issue with this key, or None."""
    return session.exec(select(Issue).where(Issue.key == key)).first()


def find_issue(session: Session, ref: str | int) -> Issue:
    """An issue by numeric id, by key, or "latest" (the newest); NotFound says which was asked for.
    The rules are glance.find_issue's, so the quick commands and these agree."""
    session.flush()  # the look-up sees this session's own changes
    found = session.get(Issue, glance.find_issue(session.connection(), ref).id)
    assert found is not None  # just found by the same connection
    return found


def latest_issue(session: Session) -> Issue:
    """The most recently created issue; NotFound when there is none."""
    issue = session.exec(select(Issue).order_by(col(Issue.created_at).desc(), col(Issue.id).desc())).first()
    if issue is None:
        raise NotFound("there is no issue yet (compose one with `newsletter issues new`)")
    return issue


def list_issues(session: Session) -> list[Issue]:
    """Every issue, newest first."""
    return list(session.exec(select(Issue).order_by(col(Issue.created_at).desc(), col(Issue.id).desc())))


def issue_essays(session: Session, issue: Issue) -> list[Essay]:
    """The essays an issue carries, in their order in the digest."""
    query = (
        select(Essay)
        .join(IssueEssay, col(IssueEssay.essay_id) == col(Essay.id))
        .where(IssueEssay.issue_id == issue.id)
        .order_by(col(IssueEssay.position))
    )
    return list(session.exec(query))


def sending_issues(session: Session, now: datetime) -> list[tuple[int, str]]:
    """(id, key) of the issues in `sending` status that may still be sent, oldest first: those
    `past_deadline` lets through (no not_after, or `now` before it)."""
    found = session.exec(
        select(Issue.id, Issue.key)
        .where(Issue.status == IssueStatus.SENDING.value,
               or_(col(Issue.not_after).is_(None), col(Issue.not_after) > now))
        .order_by(col(Issue.started_at), col(Issue.id))
    ).all()
    return [(int(i), str(k)) for i, k in found if i is not None]


def open_issues(session: Session, prefix: str, but: str | None = None) -> list[Issue]:
    """Issues whose key starts with `prefix` (not `but`) that are still draft or sending."""
    return list(session.exec(select(Issue).where(
        col(Issue.key).startswith(prefix),
        col(Issue.status).in_([IssueStatus.DRAFT.value, IssueStatus.SENDING.value]),
        Issue.key != (but or ""))).all())


# --- status changes: the only writes of Issue.status ------------------------------------------


def start_sending(session: Session, issue_id: int, rendered: RenderedIssue, now: datetime) -> Issue | None:
    """draft -> sending, the render frozen onto the issue (row locked); None when it had
    started already (an earlier run or a rival process); Refused when another issue is sending
    one of its essays now (`refuse_in_flight`). The caller freezes the audience."""
    current = session.exec(select(Issue).where(Issue.id == issue_id).with_for_update()).one()
    if current.status != IssueStatus.DRAFT.value:
        return None
    # Its essays' rows locked too (in id order), so that of two drafts sharing an essay started
    # at once, the second waits for the first and sees it sending (SQLite's write lock does so).
    session.exec(select(Essay.id).where(col(Essay.id).in_(
        select(IssueEssay.essay_id).where(IssueEssay.issue_id == issue_id))).order_by(col(Essay.id))
        .with_for_update()).all()
    refuse_in_flight(session, current)
    current.html_template, current.text_template = rendered.html, rendered.text
    current.frozen_render = {"html_unnamed": rendered.html_unnamed,
                             "text_unnamed": rendered.text_unnamed,
                             "placeholders": rendered.placeholders}
    current.status, current.started_at = IssueStatus.SENDING.value, now
    session.add(current)
    session.flush()
    return current


def finish(session: Session, issue_id: int, now: datetime) -> bool:
    """sending -> sent, its essays marked sent in it; False when it is not sending. The caller
    checks that nothing is owed."""
    issue = session.get(Issue, issue_id)
    if issue is None or issue.status != IssueStatus.SENDING.value:
        return False
    issue.status, issue.finished_at = IssueStatus.SENT.value, now
    session.add(issue)
    essay_ids = select(IssueEssay.essay_id).where(IssueEssay.issue_id == issue_id)
    session.execute(update(Essay).where(col(Essay.id).in_(essay_ids),
                                        col(Essay.sent_in_issue_id).is_(None))
                    .values(sent_in_issue_id=issue_id))
    return True


def reopen(session: Session, issue: Issue) -> None:
    """sent -> sending: deliveries are owed again (a requeue)."""
    if issue.status == IssueStatus.SENT.value:
        issue.status, issue.finished_at = IssueStatus.SENDING.value, None
        session.add(issue)


def past_deadline(issue: Issue, now: datetime) -> str | None:
    """Why `issue` may not be sent at `now` (its not_after has come), or None. Publish checks
    it before a run, the sender before every batch, a requeue before it reopens anything.

    Sending stops at not_after itself, as `sending_issues` has it: at that instant a worker
    would not pick the issue up, so the sender must not go on with it either."""
    if issue.not_after is not None and now >= issue.not_after:
        return f"issue {issue.key} may not be sent after {issue.not_after:%Y-%m-%d %H:%M} UTC"
    return None


def requeue(engine: Engine, ref: int | str, failed: bool, unknown: bool, now: datetime | None = None) -> int:
    """`sends retry`: failed and/or unknown rows become owed again (same Message-ID), and the
    issue is open for sending again; the caller then runs publish."""
    statuses = [s for s, wanted in ((ledger.FAILED, failed), (ledger.UNKNOWN, unknown)) if wanted]
    now = now or utcnow()
    with session_scope(engine) as session:
        target = find_issue(session, ref)
        late = past_deadline(target, now)
        if late is not None:
            # Reopened, it could not be sent (publish refuses it), and the next run would expire a
            # sent issue, taking its web copy out of the archive: refused before any change.
            raise Refused(f"{late}: nothing was changed")
        count = ledger.requeue(session, target.id or 0, statuses, now)
        if count:
            reopen(session, target)
        return count


def expire(session: Session, issue: Issue | None, key: str, not_after: datetime, now: datetime) -> Issue:
    """draft/sending -> expired; with no issue yet, the period's key is claimed as expired so
    that no later run starts it."""
    if issue is None:
        issue = Issue(key=key, not_after=not_after.astimezone(UTC))
    issue.status, issue.finished_at = IssueStatus.EXPIRED.value, now.astimezone(UTC)
    session.add(issue)
    session.flush()
    return issue


def skip(session: Session, key: str, now: datetime) -> Issue:
    """A period with nothing to send, recorded as a `skipped` issue under its key."""
    issue = Issue(key=key, status=IssueStatus.SKIPPED.value, finished_at=now.astimezone(UTC))
    session.add(issue)
    session.flush()
    return issue


def bound(session: Session, issue: Issue, not_after: datetime) -> None:
    """Sending stops at `not_after` even inside a long run (set once)."""
    if issue.not_after is None:
        issue.not_after = not_after.astimezone(UTC)
        session.add(issue)
        session.flush()


def issue_by_id(session: Session, issue_id: int) -> Issue | None:
    """The issue with this id, or None."""
    return session.get(Issue, issue_id)


def sent_issues(session: Session) -> list[Issue]:
    """The issues that went out, the latest finished first: what the public archive lists."""
    query = (select(Issue).where(Issue.status == IssueStatus.SENT.value)
             .order_by(col(Issue.finished_at).desc(), col(Issue.id).desc()))
    return list(session.exec(query))


def last_started(session: Session) -> Issue | None:
    """The issue whose sending started last (sending or sent), or None."""
    return session.exec(select(Issue).where(col(Issue.status).in_(
        (IssueStatus.SENT.value, IssueStatus.SENDING.value))).order_by(
        col(Issue.started_at).desc(), col(Issue.id).desc())).first()
