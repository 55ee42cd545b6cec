"""The public archive's Atom feed: one entry per sent issue, linking to its web copy (feedgen)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from feedgen.feed import FeedGenerator

from pipeline.config import Settings
from pipeline.links import webview_url
from pipeline.models import Issue

FEED_PATH = "/archive/feed.xml"
# What XML 1.0 does not allow in text (lxml refuses it, and with it the whole feed).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    """`value` without the characters XML cannot carry: a subject stored before subjects were
    checked (or any other text) must not take the feed down for every reader."""
    return _NOT_XML.sub("", value)


def _utc(moment: datetime) -> datetime:
    # The ledger stores naive UTC on SQLite; Atom wants an offset.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def atom_feed(settings: Settings, issues: Sequence[Issue]) -> bytes:
    """The Atom document of `issues` (newest first, as the archive lists them)."""
    base = settings.web.base_url
    feed = FeedGenerator()
    feed.id(f"{base}/archive/")
    name = _text(settings.newsletter.name)
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
        entry.title(_text(issue.subject or issue.key))
        entry.link(href=webview_url(settings, issue), rel="alternate")
        entry.updated(moment)
        entry.published(moment)
        if issue.preheader:
            entry.summary(_text(issue.preheader))
    return bytes(feed.atom_str(pretty=True))
