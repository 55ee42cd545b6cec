"""Web addresses: whether a URL can be stored (essays, feeds), whether a host is this machine."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)
MAX_URL = 500  # Essay.url's and Feed.url's columns


def url_problem(url: str) -> str | None:
    """Why `url` (stripped) cannot be stored as an essay's or a feed's address; None: it can."""
    if not url.startswith(("https://", "http://")) or not _host(url):
        return "expected an http:// or https:// URL"
    if len(url) > MAX_URL:
        return f"the URL is {len(url):,} characters long (the limit is {MAX_URL})"
    return None


def _host(url: str) -> str:
    """The host name of `url`; "" when it has none ("http://", "http://:80") or cannot be read."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # a malformed port or bracket ("http://[::1")
        return ""


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8, [::1]: the preview server and a plain IMAP login accept only these."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
