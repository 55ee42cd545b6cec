"""The public archive's Atom feed: one entry per sent issue, linking to its web copy (feedgen)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from feedgen.feed import FeedGenerator

from pipeline.config import Settings
from pipeline.links import webview_url
from pipeline.models import Issue
from subscribers.text import xml_text

FEED_PATH = "/archive/feed.xml"


def _utc(moment: datetime) -> datetime:
    # The ledger stores naive UTC on SQLite; Atom wants an offset.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def atom_feed(settings: Settings, issues: Sequence[Issue]) -> bytes:
    """The Atom document of `issues` (newest first, as the archive lists them)."""
    base = settings.web.base_url
    feed = FeedGenerator()
    feed.id(f"{base}/archive/")
    # Every text through xml_text: a subject stored before subjects were checked (or any other
    # text) must not take the feed down for every reader.
    name = xml_text(settings.newsletter.name)
    feed.title(name)
    feed.subtitle(f"Every issue of {name}, newest first")
    feed.author({"name": name})
    feed.link(href=f"{base}/archive/", rel="alternate")
    feed.link(href=f"{base}{FEED_PATH}", rel="self")
    feed.language(settings.newsletter.language)
    moments = [_utc(i.finished_at or i.started_at or i.created_at) for i in issues]
    feed.updated(max(moments) if moments else datetime(1970, 1, 1, tzinfo=UTC))
    for issue, moment in reversed(list(zip(issues, moments, strict=True))):  # feedgen prepends
        entry = feed.add_entry()
        entry.id(webview_url(settings, issue))
        entry.title(xml_text(issue.subject or issue.key))
        entry.link(href=webview_url(settings, issue), rel="alternate")
        entry.updated(moment)
        entry.published(moment)
        if issue.preheader:
            entry.summary(xml_text(issue.preheader))
    return bytes(feed.atom_str(pretty=True))
