"""The feeds polled: add one, remove one, list them (`newsletter feeds`); every Feed/FeedEntry query.

Feeds come from two places: config.toml's [sources] feeds (changed by editing the file) and
`feeds add` (rows with origin "cli"). A config feed gets its row on its first poll.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from pipeline.config import Settings
from pipeline.db import session_scope
from pipeline.errors import ImportProblem, NotFound
from pipeline.models import Essay, Feed, FeedEntry
from pipeline.readers.feed import FeedDocument, fetch, parse_feed
from pipeline.web_addresses import MAX_URL, url_problem


def check_url(url: str) -> str:
    url = url.strip()
    problem = url_problem(url)
    if problem:
        raise ImportProblem(f"{url!r}: {problem}" if len(url) <= MAX_URL else problem)
    return url


def check_feed(settings: Settings, url: str) -> FeedDocument:
    """Fetch and parse the feed once without storing anything; FeedError when it is no feed."""
    fetched = fetch(url, None, None, settings.sources.timeout_seconds)
    return parse_feed(fetched.body, url, fetched.content_type, fetched.url)


def add_feed(settings: Settings, engine: Engine, url: str) -> Feed:
    """Register a feed for polling; ImportProblem when it is already there."""
    url = check_url(url)
    if url in settings.sources.feeds:
        raise ImportProblem(f"{url} is already polled: config.toml lists it in [sources] feeds")
    with session_scope(engine) as session:
        if find_feed(session, url) is not None:
            raise ImportProblem(f"{url} is already added (see `newsletter feeds list`)")
        feed = Feed(url=url, origin="cli")
        session.add(feed)
    return feed


def remove_feed(settings: Settings, engine: Engine, url: str) -> int:
    """Stop polling a feed added with `feeds add`; its essays stay. Returns entries forgotten."""
    if url in settings.sources.feeds:
        raise ImportProblem(f"{url} is listed in config.toml [sources] feeds: remove it there")
    with session_scope(engine) as session:
        feed = find_feed(session, url)
        if feed is None:
            raise NotFound(f"no feed {url!r} (see `newsletter feeds list`)")
        entries = session.exec(select(FeedEntry).where(FeedEntry.feed_id == feed.id)).all()
        for entry in entries:
            session.delete(entry)
        session.flush()
        session.delete(feed)
    return len(entries)


def list_feeds(settings: Settings, engine: Engine) -> list[dict[str, Any]]:
    """Every feed polled, with where it comes from, its last poll and how many essays it gave."""
    with Session(engine) as session:
        rows = {feed.url: feed for feed in session.exec(select(Feed))}
        counts = dict(session.exec(
            select(FeedEntry.feed_id, func.count())
            .where(col(FeedEntry.essay_id).is_not(None))
            .group_by(col(FeedEntry.feed_id))
        ).all())
    listed = []
    for url in [*settings.sources.feeds, *(u for u, f in rows.items() if f.origin == "cli")]:
        feed = rows.get(url)
        listed.append({
            "url": url,
            "origin": "config" if url in settings.sources.feeds else "cli",
            "title": feed.title if feed else "",
            "last_polled_at": feed.last_polled_at if feed else None,
            "last_status": feed.last_status if feed else None,
            "last_error": feed.last_error if feed else None,
            "essays": counts.get(feed.id or 0, 0) if feed else 0,
        })
    return list({row["url"]: row for row in listed}.values())


def cli_feed_urls(session: Session) -> list[str]:
    """The URLs of the feeds added with `feeds add`, in the order they were added."""
    return list(session.exec(select(Feed.url).where(Feed.origin == "cli").order_by(col(Feed.id))))


def find_feed(session: Session, url: str) -> Feed | None:
    return session.exec(select(Feed).where(Feed.url == url)).first()


def feed_to_poll(session: Session, settings: Settings, url: str) -> Feed:
    """The feed's row; a feed named in config.toml gets one on its first poll."""
    feed = find_feed(session, url)
    if feed is None:
        feed = Feed(url=url, origin="config" if url in settings.sources.feeds else "cli")
        session.add(feed)
        session.flush()
    return feed


def seen_entry(session: Session, feed_id: int, guid: str) -> FeedEntry | None:
    """The feed's entry with this id/guid, as recorded when it was first seen."""
    return session.exec(
        select(FeedEntry).where(FeedEntry.feed_id == feed_id, FeedEntry.guid == guid)).first()


def forget_essay(session: Session, essay_id: int) -> None:
    """The feed entries the essay came from stay recorded as seen, but no essay's: the essay is
    being removed (`essays remove`), and no later poll takes the entry again."""
    session.execute(update(FeedEntry).where(col(FeedEntry.essay_id) == essay_id)
                    .values(essay_id=None, skipped_reason="removed with `newsletter essays remove`"))


def unclaimed_essay_at(session: Session, url: str | None) -> Essay | None:
    """An essay already at this link that no feed entry owns (a re-added feed, or a file)."""
    if not url:
        return None
    owned = select(FeedEntry.essay_id).where(col(FeedEntry.essay_id).is_not(None))
    return session.exec(
        select(Essay).where(Essay.url == url, col(Essay.id).not_in(owned))
    ).first()
