"""The absolute addresses an issue links to: essays, the web copy, and a subscriber's unsubscribe page."""

from __future__ import annotations

from urllib.parse import quote

from pipeline.config import Settings
from pipeline.models import Essay, Issue
from subscribers.tokens import make_token


def essay_url(settings: Settings, essay: Essay) -> str:
    """The essay's own page when the source gave one, else site_url + "/" + slug."""
    if essay.url:
        return essay.url
    return f"{settings.newsletter.site_url}/{quote(essay.slug)}"


def unsubscribe_url(settings: Settings, secret: str, subscriber_id: int) -> str:
    """The one-click unsubscribe page for one subscriber: web.base_url + "/u/" + signed token."""
    token = make_token(secret, "unsubscribe", subscriber_id)
    return f"{settings.web.base_url}/u/{token}"


def webview_url(settings: Settings, issue: Issue) -> str:
    """The issue's web copy (the "view in browser" link): the same for every subscriber."""
    return f"{settings.web.base_url}/archive/{quote(issue.key)}"


def site_url(settings: Settings) -> str:
    """The home of all essays: where a shortened digest sends readers for the rest."""
    return settings.newsletter.site_url + "/"
