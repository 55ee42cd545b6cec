"""Feeds in: poll every feed, store each new or changed entry as an Essay, remember what was seen.

    poll_feeds(settings, engine) -> PollReport

- The feeds are those in config.toml's [sources] feeds and those added with `feeds add`.
- Each feed is fetched with its stored ETag / Last-Modified; a 304 costs nothing more.
- An entry is new once, by its id/guid (else its link): it becomes an essay (slug from the
  link's last path segment, else the title; made unique with -2, -3). An entry seen before
  updates its essay when it changed; a sent essay stays sent, so it is never offered again.
- On a feed's first successful poll only entries dated within sources.first_poll_days are new;
  older (or undated) ones are recorded as skipped, so they never become essays or mail, even
  one that could not be taken then (no text): it is not retried as if it were new.
- A feed that fails (timeout, HTTP error, not a feed, malformed XML) is recorded and reported
  with the reason; the other feeds still poll. One feed's entries and its new state are
  written in one transaction; one entry that cannot be taken rolls back only itself, and then
  the validators are not stored, so the next poll reads that entry again.
- `dry_run` fetches and compares everything and writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError
from sqlmodel import Session

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import FeedError, ImportProblem
from pipeline.essays import fill, slugs_starting
from pipeline.feed_list import cli_feed_urls, feed_to_poll, find_feed, seen_entry, unclaimed_essay_at
from pipeline.issues import find_by_key
from pipeline.models import Essay, Feed, FeedEntry
from pipeline.periods import Action, Period, decide
from pipeline.readers.feed import FeedDocument, FeedItem, Lookup, fetch, parse_feed, system_addresses
from pipeline.readers.parsed_essay import ParsedEssay, slugify
from pipeline.related_cache import warm
from subscribers.model import utcnow

log = logging.getLogger("newsletter.feeds")
EntryChange = Literal["added", "updated", "unchanged", "skipped"]


@dataclass
class FeedResult:
    """What one feed's poll did; `error` says why a failed feed failed."""

    url: str
    status: str = "ok"  # ok | not-modified | failed
    error: str | None = None
    title: str = ""
    added: list[str] = field(default_factory=list)  # slugs
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # "guid: reason"
    failed: list[str] = field(default_factory=list)  # "guid: reason"
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed" and not self.failed


@dataclass
class PollReport:
    feeds: list[FeedResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.feeds)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "feeds": [vars(result) for result in self.feeds]}


def poll_feeds(
    settings: Settings, engine: Engine, now: datetime | None = None, dry_run: bool = False,
    lookup: Lookup = system_addresses,
) -> PollReport:
    """Poll every feed once, each on its own; see the module docstring for the rules. `lookup`
    finds the feeds' hosts' addresses (the system's resolver unless a test gives its own)."""
    now = now or utcnow()
    report = PollReport()
    for url in feed_urls(settings, engine):
        report.feeds.append(poll_feed(settings, engine, url, now, dry_run, lookup))
    if not dry_run and any(result.added or result.updated for result in report.feeds):
        with Session(engine) as session:  # the archive changed: its related links, built now
            warm(session, settings)
    return report


def poll_before_compose(settings: Settings, engine: Engine, period: Period, now: datetime) -> None:
    """The scheduler's call: poll when this run will compose, so the digest has the new essays.

    Outside any transaction (the network is slow); a failed feed is logged, never fatal: the
    digest goes out with what the other sources have.
    """
    with Session(engine) as session:
        issue = find_by_key(session, period.key)
    if decide(settings.schedule, period, issue.status if issue else None, now) is Action.COMPOSE:
        for result in poll_feeds(settings, engine, now).feeds:
            if not result.ok:
                log.warning("feed %s: %s", result.url, result.error or "; ".join(result.failed))


def feed_urls(settings: Settings, engine: Engine) -> list[str]:
    """The config's feeds, then those added with `feeds add`, each once."""
    with Session(engine) as session:
        return list(dict.fromkeys([*settings.sources.feeds, *cli_feed_urls(session)]))


def poll_feed(settings: Settings, engine: Engine, url: str, now: datetime,
              dry_run: bool = False, lookup: Lookup = system_addresses) -> FeedResult:
    """Fetch, parse and store one feed; a failure is recorded on the feed, never raised."""
    result = FeedResult(url=url)
    with Session(engine) as session:
        known = find_feed(session, url)
        etag, modified = (known.etag, known.last_modified) if known else (None, None)
    try:
        fetched = fetch(url, etag, modified, settings.sources.timeout_seconds, lookup)
        document = None if fetched.not_modified else parse_feed(
            fetched.body, url, fetched.content_type, fetched.url)
    except FeedError as exc:
        result.status, result.error = "failed", str(exc)
        if not dry_run:
            with session_scope(engine) as session:
                feed = feed_to_poll(session, settings, url)
                feed.last_polled_at, feed.last_status, feed.last_error = now, "failed", str(exc)
        return result
    with session_scope(engine) as session:
        feed = feed_to_poll(session, settings, url)
        result.title = feed.title
        if document is None:
            result.status = "not-modified"
        else:
            _store_document(session, settings, feed, document, now, result)
            if result.ok:  # else the next poll must read the entries that failed again
                feed.etag, feed.last_modified = fetched.etag, fetched.last_modified
            feed.first_polled_at = feed.first_polled_at or now
        feed.last_polled_at, feed.last_status, feed.last_error = now, result.status, None
        if dry_run:
            session.rollback()
    return result


def _store_document(session: Session, settings: Settings, feed: Feed, document: FeedDocument,
                    now: datetime, result: FeedResult) -> None:
    feed.title = document.title or feed.title
    result.title = feed.title
    result.warnings.extend(document.warnings)
    cutoff = now - timedelta(days=settings.sources.first_poll_days)
    first_poll = feed.first_polled_at is None
    for item in document.entries:
        label = item.guid or "(an entry)"
        try:
            with session.begin_nested():  # a savepoint: a refused entry undoes only itself
                outcome, name = store_entry(session, feed, item, cutoff if first_poll else None)
        except ImportProblem as exc:
            result.failed.append(f"{label}: {exc}")
            continue
        except (IntegrityError, DataError) as exc:
            result.failed.append(f"{label}: the database refused it: {exc.orig}")
            continue
        if outcome == "unchanged":
            result.unchanged += 1
        elif outcome == "skipped":
            result.skipped.append(f"{label}: {name}")
        else:
            getattr(result, outcome).append(name)
        if item.essay is not None:
            result.warnings.extend(f"{name}: {warning}" for warning in item.essay.warnings)


def store_entry(session: Session, feed: Feed, item: FeedItem,
                cutoff: datetime | None) -> tuple[EntryChange, str]:
    """Add, update or skip one entry: (outcome, the essay's slug or why it was skipped).

    `cutoff` is set on a feed's first poll: entries older than it are not new. ImportProblem
    when the entry is to be taken but cannot be (no text, over a limit).
    """
    assert feed.id is not None
    seen = entry_record(session, feed.id, item)
    if seen is not None and seen.essay_id is None:
        return "unchanged", ""  # skipped when first seen; it stays out of the essays
    # Whether an entry is new is settled before whether it can be read: an old post that
    # cannot be taken on the first poll must still be recorded as old, or a later poll (with
    # no cutoff) would take it as new once it can be read, and mail a post from years ago.
    why = None if seen is not None or not item.guid else before_window(item, cutoff)
    if why is not None:
        session.add(FeedEntry(feed_id=feed.id, guid=item.guid, skipped_reason=why))
        return "skipped", why
    if item.problem is not None or item.essay is None:
        raise ImportProblem(item.problem or "the entry cannot be read")
    parsed = item.essay
    essay = session.get(Essay, seen.essay_id) if seen is not None else None
    if seen is None:
        essay = unclaimed_essay_at(session, parsed.url)
        if essay is not None and essay.source_path:
            why = f"already imported from {essay.source_path} (essay {essay.slug!r})"
            session.add(FeedEntry(feed_id=feed.id, guid=item.guid, skipped_reason=why))
            return "skipped", why
    outcome, essay = save_essay(session, essay, parsed)
    if seen is None:
        session.add(FeedEntry(feed_id=feed.id, guid=item.guid, essay_id=essay.id))
        session.flush()
    return outcome, essay.slug


def save_essay(session: Session, essay: Essay | None,
               parsed: ParsedEssay) -> tuple[EntryChange, Essay]:
    """The entry's essay, updated when its text changed, or new (with a slug no essay has)."""
    if essay is not None:
        digest = parsed.content_hash(essay.slug)
        if essay.content_hash == digest:
            return "unchanged", essay
        fill(essay, parsed, digest, None)
        outcome: EntryChange = "updated"
    else:
        slug = unique_slug(session, entry_slug(parsed))
        essay = Essay(slug=slug, title=parsed.title, content_hash="")
        fill(essay, parsed, parsed.content_hash(slug), None)
        outcome = "added"
    session.add(essay)
    session.flush()
    return outcome, essay


def entry_record(session: Session, feed_id: int, item: FeedItem) -> FeedEntry | None:
    """The record of this entry from an earlier poll, by its guid.

    Entries used to be recorded under their guid resolved where a redirect led: found by that,
    the record takes the guid as it is read now, and the entry is not taken for a new one.
    """
    if not item.guid:
        return None
    seen = seen_entry(session, feed_id, item.guid)
    if seen is None and item.located_guid not in ("", item.guid):
        seen = seen_entry(session, feed_id, item.located_guid)
        if seen is not None:
            seen.guid = item.guid
            session.add(seen)
    return seen


def before_window(item: FeedItem, cutoff: datetime | None) -> str | None:
    """Why a first poll does not take this entry as new (older than `cutoff`, or undated)."""
    if cutoff is None:
        return None
    if item.published is None:
        return "undated, on the feed's first poll"
    if item.published < cutoff:
        return f"published {item.published.date()}, before the first poll's window"
    return None


def entry_slug(parsed: ParsedEssay) -> str:
    """The link's last path segment ("/2026/10/why-bread/" -> "why-bread"), else the title."""
    path = urlsplit(parsed.url or "").path.rstrip("/")
    last = unquote(path.rsplit("/", 1)[-1]).rsplit(".", 1)[0]  # "post.html" -> "post"
    slug = slugify(last)
    if not slug or slug.isdigit() or slug in ("index", "p"):  # "?p=123", "/2026/10/05/"
        slug = slugify(parsed.title)
    if not slug:
        raise ImportProblem("cannot make a slug from the entry's link or title")
    return slug


def unique_slug(session: Session, base: str) -> str:
    """`base`, or `base-2`, `base-3`, ... the first no essay has."""
    taken = slugs_starting(session, base)
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    return slug
