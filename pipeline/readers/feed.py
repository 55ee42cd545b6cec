"""A reader for RSS and Atom feeds: fetch one with a conditional GET, parse it, map its entries.

    fetched = fetch(url, etag, last_modified, timeout=20)           # HTTP, the only I/O here
    document = parse_feed(fetched.body, url, location=fetched.url)  # pure
    document.entries -> [FeedItem(guid, published, essay | problem)]

Each entry becomes the ParsedEssay the other readers make: title, link as the essay's url, date,
summary as dek, content (else summary) as body, its HTML reduced to paragraphs and headings by
pipeline/readers/html_blocks.py. An entry is known by its id/guid, else its link (a relative one
resolved against the feed's own URL, wherever a redirect led); when two entries of one feed share
it, the first is taken and the later one skipped with a warning. A feed that cannot be fetched
(timeout, HTTP error, too large) or read (not RSS/Atom, malformed XML) raises FeedError with the
reason. feedparser enters the project here and nowhere else.

The timeout bounds the whole fetch (the name lookup, connecting, redirects, headers and body),
not each socket read: a server that sends a byte now and then would otherwise hold a poll, and
the digest waiting on it, forever; so would a DNS server that never answers. Redirects are
followed only to http:// and https:// URLs, and a redirect's own body is never read
(MAX_FEED_BYTES bounds only the feed itself).
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from time import struct_time
from typing import IO, Any
from urllib.parse import urljoin, urlsplit
from xml.sax import SAXParseException

import feedparser

from pipeline.errors import FeedError, ImportProblem
from pipeline.excerpt import shorten
from pipeline.readers.html_blocks import html_blocks, html_text
from pipeline.readers.parsed_essay import (
    MAX_DEK,
    MAX_TAG,
    MAX_TAGS,
    ParsedEssay,
    check_limits,
    clean,
    title_from_body,
)

MAX_FEED_BYTES = 10 * 1024 * 1024  # a feed of full posts is a few MB at most
USER_AGENT = "newsletter-feeds/1 (+https://pypi.org/project/feedparser/)"
ACCEPT = ("application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, "
          "*/*;q=0.1")
# Problems feedparser notes that leave a well-formed feed readable (a charset label that was
# wrong, an XML feed served as text/plain): the feed is fine.
HARMLESS = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType,
            feedparser.UndeclaredNamespace)
Lookup = Callable[[str], list[str]]  # a host name -> its addresses, best first


def system_addresses(host: str) -> list[str]:
    """The addresses of `host` as the system finds them (its hosts file, then DNS), in its order."""
    found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(address[0]) for *_, address in found))


@dataclass
class Fetched:
    """One response: the feed's bytes, or not_modified (304) when the validators matched."""

    url: str
    not_modified: bool = False
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class FeedItem:
    """One entry: its identity and date, and the ParsedEssay it makes or why it makes none."""

    guid: str
    published: datetime | None
    essay: ParsedEssay | None = None
    problem: str | None = None
    # The guid resolved against where the feed was fetched from, as entries were recorded before
    # their identity was resolved against the feed's own URL: a record under it is this entry.
    located_guid: str = ""


@dataclass
class FeedDocument:
    title: str
    entries: list[FeedItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def fetch(url: str, etag: str | None, last_modified: str | None, timeout: float,
          lookup: Lookup = system_addresses) -> Fetched:
    """GET the feed, sending the stored validators; FeedError says why it could not be had.
    `lookup` finds a host's addresses (a test points it at a DNS server of its own)."""
    if urlsplit(url).scheme not in ("http", "https"):  # urllib would also open file:// paths
        raise FeedError(f"not an http:// or https:// URL: {url}")
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)
    deadline = Deadline(timeout)
    opener = urllib.request.build_opener(DeadlineHandler(deadline, lookup), WebRedirectHandler())
    try:
        with opener.open(request, timeout=timeout) as response:
            try:
                body = response.read(MAX_FEED_BYTES + 1)
            except TimeoutError:  # the headers came in time, the body did not
                raise FeedError(f"not received in full within {timeout:g} seconds (the server "
                                "sent too slowly)") from None
            if len(body) > MAX_FEED_BYTES:
                raise FeedError(f"larger than {MAX_FEED_BYTES:,} bytes; not read")
            return Fetched(
                url=response.geturl(),
                body=body,
                content_type=response.headers.get("Content-Type", ""),
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Fetched(url=url, not_modified=True, etag=etag, last_modified=last_modified)
        raise FeedError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, NameLookupTimeout):
            raise FeedError(str(reason)) from None
        if isinstance(reason, TimeoutError):
            raise FeedError(f"no answer within {timeout:g} seconds (timed out)") from None
        raise FeedError(f"cannot connect: {getattr(reason, 'strerror', None) or reason}") from None
    except TimeoutError:  # connected, but the response stalled
        raise FeedError(f"no answer within {timeout:g} seconds (timed out)") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FeedError(f"the connection failed: {exc}") from None


class Deadline:
    """The moment by which a whole fetch must be done; each socket wait gets only what is left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not done within {self.seconds:g} seconds")
        return left

    def addresses(self, lookup: Lookup, host: str) -> list[str]:
        """`lookup(host)`, waited for only the time left.

        The system's getaddrinfo takes no timeout (a socket's does not reach it), so a slow DNS
        held a poll past its deadline. It runs on a thread of its own, which is left to end by
        itself when the time runs out: a daemon, it holds up no exit.
        """
        left = self.remaining()
        found: list[list[str]] = []
        failed: list[Exception] = []

        def look_up() -> None:
            try:
                found.append(lookup(host))
            except Exception as exc:  # noqa: BLE001  (handed to the caller below)
                failed.append(exc)

        thread = threading.Thread(target=look_up, name=f"lookup {host}", daemon=True)
        thread.start()
        thread.join(left)
        if thread.is_alive():
            raise NameLookupTimeout(f"no address for {host} within {self.seconds:g} seconds "
                                    "(the name lookup timed out)")
        if failed and isinstance(failed[0], OSError):
            raise failed[0]
        if failed:  # a lookup of another kind's own error: as an OSError, which urllib reports
            raise OSError(f"cannot look up {host}: {failed[0]}") from failed[0]
        return found[0]


class NameLookupTimeout(TimeoutError):
    """A host's addresses were not found before the deadline."""


class DeadlineReader(io.RawIOBase):
    """A response's socket reads, each allowed only the time left until the deadline.

    http.client reads the status line, headers and body through one buffered reader; giving
    each read the time that is left (not the full timeout again) bounds them all together.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self.sock = sock
        self.raw = sock.makefile("rb", buffering=0)  # counted by the socket, which stays open
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:  # any writable buffer, as RawIOBase takes
        self.sock.settimeout(self.deadline.remaining())
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


def deadline_response(deadline: Deadline) -> type[http.client.HTTPResponse]:
    """An HTTPResponse class that reads through a DeadlineReader (http.client makes the instance)."""

    class DeadlineResponse(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                     url: str | None = None) -> None:
            super().__init__(sock, debuglevel, method, url)
            self.fp.close()  # the plain reader, not read from yet: replaced before the headers
            self.fp = io.BufferedReader(DeadlineReader(sock, deadline))

    return DeadlineResponse


class DeadlineConnection(http.client.HTTPConnection):
    """Connects within the time left, and answers through a deadline-keeping response."""

    def __init__(self, *args: Any, deadline: Deadline, lookup: Lookup, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.lookup = lookup
        self.response_class = deadline_response(deadline)
        self._create_connection = self._open_socket  # http.client's own: getaddrinfo, then connect

    def connect(self) -> None:
        self.timeout = self.deadline.remaining()  # a redirect's new connection gets what is left
        super().connect()

    def _open_socket(self, address: tuple[str, int], timeout: float,
                     source_address: tuple[str, int] | None = None) -> socket.socket:
        """A socket connected to the first of the host's addresses that answers."""
        host, port = address
        failure = OSError(f"no address for {host}")
        for ip in self.deadline.addresses(self.lookup, host):
            try:
                return socket.create_connection((ip, port), self.deadline.remaining(), source_address)
            except OSError as exc:  # refused, unreachable: the next address (if time is left)
                failure = exc
        raise failure


class DeadlineHTTPSConnection(DeadlineConnection, http.client.HTTPSConnection):
    pass


class DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens http:// and https:// URLs over deadline-keeping connections. A subclass of both
    stock handlers, so that build_opener adds neither of them beside it."""

    def __init__(self, deadline: Deadline, lookup: Lookup) -> None:
        super().__init__()
        self.deadline = deadline
        self.lookup = lookup

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(DeadlineConnection, deadline=self.deadline, lookup=self.lookup), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(partial(DeadlineHTTPSConnection, deadline=self.deadline, lookup=self.lookup), req)


class WebRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another http(s) URL, unread, and names a loop in one plain line.

    urllib also follows redirects to ftp://, which is no place a feed is served from (and
    which this reader refuses as a URL of its own); its loop error is three lines of text.
    """

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: http.client.HTTPMessage) -> Any:
        location = headers.get("location") or headers.get("uri")
        target = urljoin(req.full_url, location) if location else ""
        # urllib reads a redirect's body in full before it follows, with no limit: a server
        # could send gigabytes, or no end, with its 302. Only the headers are needed; closed,
        # the response reads as empty (urllib's read gets b"") and its connection is let go.
        fp.close()
        if target and urlsplit(target).scheme not in ("http", "https"):
            raise FeedError(f"redirected to {target}, which is not an http:// or https:// URL; "
                            "not followed")
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as exc:
            if not str(exc.msg).startswith(self.inf_msg):
                raise  # the answer at the end of the redirects: the caller reports it
            exc.close()
            raise FeedError(f"redirected in a loop or too many times (the last: HTTP {code} "
                            f"{msg} to {target})") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def parse_feed(body: bytes, url: str, content_type: str = "", location: str = "") -> FeedDocument:
    """The feed's entries as FeedItems (or problems); FeedError when it is no readable feed.

    `url` is the feed's own URL, as configured; `location` is where the document came from after
    redirects (`url` when there were none). Links in the document resolve against `location`, as
    a reader's browser would; an entry's identity resolves against `url`: feedparser takes a
    guid such as "1234" for a relative URL, and an entry must stay the same entry (and not be
    mailed again) when the site starts redirecting its feed elsewhere.
    """
    location = location or url
    parsed = _parse(body, location, content_type)
    document = FeedDocument(title=clean(parsed.feed.get("title", "")),
                            warnings=_problems(parsed, content_type))
    # feedparser resolves every relative URL against one base: read against the feed's own
    # URL too (only when it was redirected, else the two are one) for the entries' identities.
    own = parsed.entries if location == url else _parse(body, url, content_type).entries
    seen: set[str] = set()
    for entry, as_own in zip(parsed.entries, own, strict=True):
        item = feed_item(entry, url, entry_id(as_own))
        item.located_guid = entry_id(entry)
        if item.guid and item.guid in seen:
            # The guid is the entry's identity: a second entry with it would overwrite the
            # first's essay, and flip it back and forth on every poll. The first one wins.
            name = item.essay.title if item.essay else clean(entry.get("title", "")) or "(untitled)"
            document.warnings.append(f"{url}: the guid {item.guid!r} of an earlier entry is used "
                                     f"again by {name!r}; that later entry is skipped")
            continue
        seen.add(item.guid)
        document.entries.append(item)
    return document


def _parse(body: bytes, base: str, content_type: str) -> Any:
    # Not sanitised here: feedparser's sanitiser keeps the text inside the elements it drops
    # (an iframe's fallback text), and only text is taken from the HTML (html_blocks drops them).
    return feedparser.parse(body, response_headers={"content-type": content_type,
                                                    "content-location": base},
                            sanitize_html=False)


def _problems(parsed: Any, content_type: str) -> list[str]:
    """FeedError when the document is no feed or malformed XML; else what the parser read past."""
    problem = parsed.get("bozo_exception") if parsed.get("bozo") else None
    if not parsed.get("version") and not parsed.entries:
        kind = content_type.split(";")[0].strip() or "unknown content"
        raise FeedError(f"not an RSS or Atom feed (the server sent {kind}; is this the site's "
                        "page rather than its feed?)")
    if isinstance(problem, SAXParseException):
        raise FeedError(f"malformed XML at line {problem.getLineNumber()}, column "
                        f"{problem.getColumnNumber()}: {problem.getMessage()}")
    if problem is not None and not isinstance(problem, HARMLESS):
        return [f"the feed has a problem the parser read past: {problem}"]
    return []


def entry_id(entry: Any) -> str:
    """An entry's identity: its id/guid, else its link."""
    return clean(entry.get("id") or web_link(entry))


def web_link(entry: Any) -> str:
    """The entry's link, when it is an http(s) URL."""
    link = entry.get("link") or ""
    # "javascript:" or a bare path must not become the digest's link
    return link if urlsplit(link).scheme in ("http", "https") else ""


def feed_item(entry: Any, feed_url: str, guid: str) -> FeedItem:
    """One parsed entry, known by `guid`; a problem instead of a parsed essay when it cannot be taken."""
    published = _when(entry.get("published_parsed") or entry.get("updated_parsed"))
    if not guid:
        return FeedItem(guid="", published=published, problem="the entry has no id and no link")
    try:
        essay = entry_essay(entry, web_link(entry), feed_url, published)
        return FeedItem(guid=guid, published=published, essay=essay)
    except ImportProblem as exc:
        return FeedItem(guid=guid, published=published, problem=str(exc))


def entry_essay(entry: Any, link: str, feed_url: str, published: datetime | None) -> ParsedEssay:
    """The ParsedEssay of one entry: content (else summary) as body, summary as dek when both exist."""
    contents = entry.get("content") or []
    html = next((c.get("value", "") for c in contents if "html" in c.get("type", "")), "")
    html = html or (contents[0].get("value", "") if contents else "")
    summary = entry.get("summary", "")
    body = html_blocks(html or summary)
    if not any(block["kind"] == "p" for block in body):
        raise ImportProblem("no text in the entry's content or summary")
    dek = shorten(html_text(summary, skip_links_to=link or None), MAX_DEK) if html and summary else ""
    if dek and body and dek == body[0]["text"]:
        dek = ""  # a summary that only repeats the opening paragraph says nothing new
    title = _plain(entry.get("title", ""), entry.get("title_detail", {}).get("type", ""))
    parsed = ParsedEssay(
        title=title or title_from_body(body),
        dek=dek,
        body=body,
        published_on=published.date() if published else None,
        url=link or None,
        source_url=feed_url,
        tags=_tags(entry),
    )
    check_limits(parsed)
    return parsed


def _plain(text: str, kind: str) -> str:
    return html_text(text) if "html" in kind else clean(text)


def _tags(entry: Any) -> list[str]:
    terms = (clean(tag.get("term") or tag.get("label") or "") for tag in entry.get("tags", []))
    return list(dict.fromkeys(t for t in terms if t and len(t) <= MAX_TAG))[:MAX_TAGS]


def _when(value: struct_time | None) -> datetime | None:
    """feedparser's dates are UTC struct_times."""
    if not value:
        return None
    try:
        return datetime(*value[:6], tzinfo=UTC)
    except (TypeError, ValueError):
        return None
