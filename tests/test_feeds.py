"""Feeds: real-shaped feeds from a real HTTP server on loopback become essays, once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline import db, related_cache
from pipeline.config import Settings, load_settings
from pipeline.dns_records import Records
from pipeline.errors import ConfigError, NotFound
from pipeline.issues import compose, unsent_essays
from pipeline.models import Essay, Feed, FeedEntry, Issue
from pipeline.polling import poll_feeds
from pipeline.readers.feed import MAX_FEED_BYTES
from pipeline.weekly import run_due
from subscribers.model import Subscriber, SubscriberStatus
from tests.conftest import write_config
from tests.feed_server import DRIP_BYTES, DRIP_SECONDS, FIXTURES, FeedServer, serve_feeds

UTC = UTC
# Monday 23 November 2026, 07:00 Berlin: week 48's digest is due (config.toml's schedule).
NOW = datetime(2026, 11, 23, 6, 1, tzinfo=UTC)


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with serve_feeds() as server:
        yield server


def configure(config_file: Path, server: FeedServer, *names: str, days: int = 7) -> Settings:
    """The test's config with [sources] feeds pointing at `names` on the local server."""
    write_config(config_file.parent, sources={
        "feeds": [server.url(name) for name in names],
        "first_poll_days": days,
        "timeout_seconds": 1,
    })
    return load_settings(config_file)


def essays(engine: Engine) -> dict[str, Essay]:
    with Session(engine) as session:
        return {essay.slug: essay for essay in session.exec(select(Essay))}


# slug, title, link, date, dek, headings, a paragraph, text that must not survive
SHAPES = {
    "wordpress.xml": (
        "walking-at-dawn", "Walking at dawn – notes from the river path",
        "https://walks.example.org/2026/11/walking-at-dawn/", date(2026, 11, 22),
        ("The river path is empty before six, and the light comes up grey before it comes up "
         "gold. …"),
        ["What the herons know"], "Solvitur ambulando: it is solved by walking.",
        ["tracker", "Watch the river", "Continue reading"],
    ),
    "ghost.xml": (
        "why-the-starter-wins", "Why the starter wins",
        "https://ledger.example.org/why-the-starter-wins/", date(2026, 11, 21),
        "A jar of paste runs my week.", ["The arithmetic"],
        "That is the whole secret, and it took me four years.", ["color:brown", "💡"],
    ),
    "hugo.xml": (
        "stairs-of-the-old-town", "Stairs of the old town",
        "https://notes.example.org/posts/stairs-of-the-old-town/", date(2026, 11, 20),
        "", ["Counting"], "I counted them three times. The third count was the one I believed.",
        ["<p>", "&lt;"],
    ),
    "substack.xml": (
        "on-notebooks-that-outlive-us", "On notebooks that outlive us",
        "https://themargin.substack.com/p/on-notebooks-that-outlive-us", date(2026, 11, 19),
        "What a stranger's notebook from 1962 taught me about paper.",
        ["Eleven years of onions"], "Paper outlives the hand; that is its whole job.",
        ["Subscribe", "Type your email"],
    ),
    "atom.xml": (
        "salt-and-silt", "Salt & silt: what the tide leaves",
        "https://tidewater.example.org/essays/salt-and-silt.html", date(2026, 11, 21),
        "Twice a day the estuary rewrites its own map.", ["Low water"],
        "At low water the mud shines like a mirror laid face up.", ["<em>", "maps.example.org"],
    ),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_kind_of_feed_becomes_an_essay_like_the_other_readers_make(
    name: str, config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    slug, title, link, day, dek, headings, paragraph, gone = SHAPES[name]
    settings = configure(config_file, feed_server, name)
    report = poll_feeds(settings, engine, NOW)
    assert report.ok, report.as_dict()
    essay = essays(engine)[slug]
    assert (essay.title, essay.url, essay.published_on, essay.dek) == (title, link, day, dek)
    assert [b["text"] for b in essay.body if b["kind"] == "h"] == headings
    assert {"kind": "p", "text": paragraph} in essay.body
    stored = " ".join(b["text"] for b in essay.body) + essay.dek + essay.title
    for text in gone:
        assert text not in stored
    assert essay.source_url == feed_server.url(name) and essay.source_path is None


def test_an_unchanged_feed_is_asked_conditionally_and_costs_a_304(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "ghost.xml")
    first = poll_feeds(settings, engine, NOW).feeds[0]
    second = poll_feeds(settings, engine, NOW + timedelta(hours=1)).feeds[0]
    assert (first.status, first.added) == ("ok", ["why-the-starter-wins"])
    assert (second.status, second.added, second.updated) == ("not-modified", [], [])
    assert feed_server.hits["/ghost.xml"] == 2
    sent = feed_server.headers[-1][1]
    assert sent["If-None-Match"].startswith('"')
    assert sent["If-Modified-Since"] == "Sat, 21 Nov 2026 10:00:00 GMT"
    with Session(engine) as session:
        feed = session.exec(select(Feed)).one()
        assert (feed.title, feed.last_status, feed.etag) == ("Kitchen Ledger", "not-modified",
                                                             sent["If-None-Match"])


def test_the_first_poll_takes_only_recent_entries_and_records_the_rest_as_skipped(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "wordpress.xml")
    result = poll_feeds(settings, engine, NOW).feeds[0]
    assert result.added == ["walking-at-dawn", "the-bench-by-the-lock"]
    assert [line.split(": ")[0] for line in result.skipped] == ["https://walks.example.org/?p=12"]
    assert "why-i-started-walking" not in essays(engine)
    # The old post is edited later: it stays out. A post added later is new even if back-dated.
    text = (FIXTURES / "wordpress.xml").read_text()
    text = text.replace("It began with a broken bicycle and", "It began, really, with a bicycle and")
    text = text.replace("<item>", """<item><title>A back-dated note</title>
        <link>https://walks.example.org/2025/01/a-back-dated-note/</link>
        <pubDate>Wed, 01 Jan 2025 09:00:00 +0000</pubDate><guid>https://walks.example.org/?p=9</guid>
        <description><![CDATA[<p>Written long ago, posted now.</p>]]></description></item><item>""", 1)
    feed_server.publish("/wordpress.xml", text.encode())
    again = poll_feeds(settings, engine, NOW + timedelta(days=1)).feeds[0]
    assert (again.added, again.updated, again.skipped) == (["a-back-dated-note"], [], [])
    assert "why-i-started-walking" not in essays(engine)


def test_an_edited_entry_updates_its_essay_and_a_sent_one_is_not_offered_again(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "substack.xml")
    with db.session_scope(engine) as session:
        session.add(Subscriber(email="ana@example.net", email_normalized="ana@example.net",
                               name="Ana", status=SubscriberStatus.ACTIVE.value, source="test"))
    # The scheduler polls before it composes: the feed's post goes out in week 48's digest.
    outcome = run_due(settings, engine, NOW)
    assert (outcome.key, outcome.status) == ("weekly-2026-W48", "sent")
    sent_in = essays(engine)["on-notebooks-that-outlive-us"].sent_in_issue_id
    assert sent_in == outcome.issue_id
    assert feed_server.hits["/substack.xml"] == 1

    edited = (FIXTURES / "substack.xml").read_text().replace(
        "Butter appears only in December.", "Butter appears only in December, and once in May.")
    feed_server.publish("/substack.xml", edited.encode())
    result = poll_feeds(settings, engine, NOW + timedelta(days=2)).feeds[0]
    assert (result.added, result.updated) == ([], ["on-notebooks-that-outlive-us"])
    essay = essays(engine)["on-notebooks-that-outlive-us"]
    assert {"kind": "p", "text": "Onions appear on every page. Butter appears only in "
                                 "December, and once in May."} in essay.body
    assert essay.sent_in_issue_id == sent_in
    with Session(engine) as session:
        assert unsent_essays(session, settings) == []
        with pytest.raises(NotFound):
            compose(session, settings)
    assert len(essays(engine)) == 1


def test_a_failing_feed_is_reported_with_its_reason_and_the_others_still_poll(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    names = ["missing.xml", "slow.xml", "not-a-feed.html", "broken.xml", "ghost.xml"]
    settings = configure(config_file, feed_server, *names)
    report = poll_feeds(settings, engine, NOW)
    assert not report.ok
    by_name = {result.url.rsplit("/", 1)[1]: result for result in report.feeds}
    assert by_name["missing.xml"].error == "HTTP 404 Not Found"
    assert by_name["slow.xml"].error == "no answer within 1 seconds (timed out)"
    assert "not an RSS or Atom feed (the server sent text/html" in by_name["not-a-feed.html"].error
    assert by_name["broken.xml"].error.startswith("malformed XML at line 9")
    assert (by_name["ghost.xml"].status, by_name["ghost.xml"].added) == (
        "ok", ["why-the-starter-wins"])
    with Session(engine) as session:
        failed = {f.url.rsplit("/", 1)[1]: f.last_error for f in session.exec(select(Feed))
                  if f.last_status == "failed"}
    assert set(failed) == set(names) - {"ghost.xml"}
    assert list(essays(engine)) == ["why-the-starter-wins"]


def test_a_feed_sent_too_slowly_fails_at_the_timeout_and_the_next_feed_still_polls(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    # drip.xml sends its last bytes one every 0.3 s: each read is quick, the whole download (6 s)
    # is not. A limit on each read alone would let it through; timeout_seconds = 1 bounds the whole.
    settings = configure(config_file, feed_server, "drip.xml", "ghost.xml")
    drip, ghost = poll_feeds(settings, engine, NOW).feeds
    assert (drip.status, drip.error) == (
        "failed", "not received in full within 1 seconds (the server sent too slowly)")
    assert (ghost.status, ghost.added) == ("ok", ["why-the-starter-wins"])
    assert list(essays(engine)) == ["why-the-starter-wins"]
    # The poll hung up on the drip rather than reading it out: the server never sent it all.
    waited = time.monotonic() + DRIP_BYTES * DRIP_SECONDS + 30
    while "/drip.xml" not in feed_server.written and time.monotonic() < waited:
        time.sleep(0.05)  # the server notices the hang-up at its next write
    assert feed_server.written["/drip.xml"] < DRIP_BYTES


def test_a_feed_host_whose_name_lookup_never_answers_fails_at_the_timeout_and_the_next_feed_still_polls(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    # The first feed's host is looked up at a DNS server on loopback that takes every query and
    # answers none; its own limit comes long after the fetch's, which must end the wait.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        dns = Records(f"127.0.0.1:{silent.getsockname()[1]}", timeout=10)
        unknown = f"http://blog.example:{feed_server.port}/ghost.xml"
        write_config(config_file.parent, sources={"feeds": [unknown, feed_server.url("ghost.xml")],
                                                  "timeout_seconds": 1})
        unresolved, ghost = poll_feeds(load_settings(config_file), engine, NOW, lookup=dns.addresses).feeds
        asked = silent.recv(512, socket.MSG_DONTWAIT)
    assert b"\x04blog\x07example\x00" in asked  # the lookup did go to that server
    assert (unresolved.url, unresolved.status, unresolved.error) == (
        unknown, "failed", "no address for blog.example within 1 seconds (the name lookup timed out)")
    assert (ghost.status, ghost.added) == ("ok", ["why-the-starter-wins"])
    with Session(engine) as session:
        assert [f.last_error for f in session.exec(select(Feed)) if f.url == unknown] == [unresolved.error]


def test_a_feed_at_a_host_name_is_fetched_from_an_address_of_that_name(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    # "localhost" is a name the system looks up (in its hosts file), not an address, and may
    # come first as ::1, where nothing listens: the next address is tried.
    url = f"http://localhost:{feed_server.port}/ghost.xml"
    write_config(config_file.parent, sources={"feeds": [url], "timeout_seconds": 1})
    result = poll_feeds(load_settings(config_file), engine, NOW).feeds[0]
    assert (result.status, result.added) == ("ok", ["why-the-starter-wins"])
    assert feed_server.headers[-1][1]["Host"] == f"localhost:{feed_server.port}"


def test_redirects_are_followed_only_to_web_addresses_and_a_loop_is_named_plainly(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "moved.xml", "to-ftp.xml", "loop.xml")
    moved, to_ftp, loop = poll_feeds(settings, engine, NOW).feeds
    assert (moved.status, moved.added) == ("ok", ["why-the-starter-wins"])
    assert to_ftp.error == ("redirected to ftp://127.0.0.1:1/feed.xml, which is not an http:// "
                            "or https:// URL; not followed")
    assert loop.error == (f"redirected in a loop or too many times (the last: HTTP 302 Found to "
                          f"{feed_server.url('loop.xml')})")
    assert feed_server.hits["/loop.xml"] <= 11


@pytest.mark.parametrize("name", ["heavy-redirect.xml", "endless-redirect.xml"])
def test_a_redirect_is_followed_without_reading_its_body(
    name: str, config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    # A 302 whose body is a gigabyte, or never ends: read, it would fill memory or the timeout.
    settings = configure(config_file, feed_server, name)
    result = poll_feeds(settings, engine, NOW).feeds[0]
    assert (result.status, result.error, result.added) == ("ok", None, ["why-the-starter-wins"])
    deadline = time.monotonic() + 5
    while f"/{name}" not in feed_server.written and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the hang-up at its next write
    # What the server got out before the client hung up: the socket buffers at most, never
    # what a feed may be, let alone the body.
    assert feed_server.written[f"/{name}"] < MAX_FEED_BYTES


def test_an_entry_that_cannot_be_taken_fails_alone_and_is_read_again_next_time(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    text = (FIXTURES / "hugo.xml").read_text().replace(
        "<item>", """<item><title>Only a picture</title>
      <link>https://notes.example.org/posts/only-a-picture/</link>
      <pubDate>Sun, 22 Nov 2026 00:00:00 +0000</pubDate>
      <description>&lt;img src=&#34;a.jpg&#34;&gt;</description></item><item>""", 1)
    feed_server.publish("/hugo.xml", text.encode())
    settings = configure(config_file, feed_server, "hugo.xml")
    result = poll_feeds(settings, engine, NOW).feeds[0]
    assert result.failed == [("https://notes.example.org/posts/only-a-picture/: no text in the "
                              "entry's content or summary")]
    assert result.added == ["stairs-of-the-old-town"] and not result.ok
    poll_feeds(settings, engine, NOW)
    assert "If-None-Match" not in feed_server.headers[-1][1]  # validators kept back: full read


def test_an_old_entry_that_cannot_be_taken_on_the_first_poll_stays_out_once_it_can(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    def with_old_post(body: str) -> bytes:
        return (FIXTURES / "hugo.xml").read_text().replace("<item>", f"""<item>
      <title>Photos from 2015</title><link>https://notes.example.org/posts/photos-2015/</link>
      <pubDate>Mon, 05 Jan 2015 10:00:00 +0000</pubDate>
      <guid>https://notes.example.org/posts/photos-2015/</guid>
      <description>{body}</description></item><item>""", 1).encode()

    # A gallery from 2015 with no text: outside the first poll's window, whatever its problem.
    feed_server.publish("/hugo.xml", with_old_post("&lt;img src=&#34;a.jpg&#34;&gt;"))
    settings = configure(config_file, feed_server, "hugo.xml")
    first = poll_feeds(settings, engine, NOW)
    assert first.ok, first.as_dict()
    result = first.feeds[0]
    assert (result.added, result.failed) == (["stairs-of-the-old-town"], [])
    assert result.skipped == [
        "https://notes.example.org/posts/photos-2015/: published 2015-01-05, before the first "
        "poll's window",
        "https://notes.example.org/posts/a-map-with-no-roads/: published 2024-01-01, before the "
        "first poll's window"]
    # The blogger adds a caption: the 2015 post is now readable, and still not new.
    feed_server.publish("/hugo.xml", with_old_post("&lt;p&gt;Photos, now with a caption.&lt;/p&gt;"))
    later = poll_feeds(settings, engine, NOW + timedelta(days=1))
    assert later.ok and (later.feeds[0].added, later.feeds[0].updated) == ([], [])
    assert sorted(essays(engine)) == ["stairs-of-the-old-town"]
    with Session(engine) as session:
        assert [essay.slug for essay in unsent_essays(session, settings)] == [
            "stairs-of-the-old-town"]
    # An entry recorded as skipped stays skipped: losing its text again fails nothing.
    feed_server.publish("/hugo.xml", with_old_post("&lt;img src=&#34;b.jpg&#34;&gt;"))
    assert poll_feeds(settings, engine, NOW + timedelta(days=2)).ok


def test_an_entry_without_guid_is_known_by_its_link(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    text = (FIXTURES / "hugo.xml").read_text().replace(
        "<guid>https://notes.example.org/posts/stairs-of-the-old-town/</guid>", "")
    feed_server.publish("/hugo.xml", text.encode())
    settings = configure(config_file, feed_server, "hugo.xml")
    poll_feeds(settings, engine, NOW)
    feed_server.publish("/hugo.xml", text.replace("three times", "four times").encode())
    result = poll_feeds(settings, engine, NOW).feeds[0]
    assert (result.added, result.updated) == ([], ["stairs-of-the-old-town"])
    with Session(engine) as session:
        guids = session.exec(select(FeedEntry.guid).where(col(FeedEntry.essay_id).is_not(None)))
        assert list(guids) == ["https://notes.example.org/posts/stairs-of-the-old-town/"]


def bare_guid_feed(*items: tuple[str, str, str]) -> bytes:
    """An RSS feed whose guids are bare numbers (no isPermaLink="false"), as some blogs write them."""
    entries = "".join(f"""<item><title>{title}</title><link>{link}</link><guid>{guid}</guid>
      <pubDate>Sun, 22 Nov 2026 00:00:00 +0000</pubDate>
      <description>&lt;p&gt;A walk called {title}.&lt;/p&gt;</description></item>"""
                      for guid, title, link in items)
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>Numbered walks</title>'
            f"<link>https://walks.example.org/</link>{entries}</channel></rss>").encode()


def test_an_entry_with_a_bare_guid_stays_one_entry_when_the_feed_starts_redirecting(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    old = [("1234", "Dawn", "https://walks.example.org/dawn/"),
           ("1235", "Dusk", "https://walks.example.org/dusk/")]
    feed_server.publish("/notes", bare_guid_feed(*old))
    settings = configure(config_file, feed_server, "notes")
    assert poll_feeds(settings, engine, NOW).feeds[0].added == ["dawn", "dusk"]
    # The site now answers /notes with a redirect to /notes/, where a new walk is out too.
    feed_server.publish("/notes/", bare_guid_feed(("1236", "Noon", "posts/noon/"), *old))
    feed_server.redirects["/notes"] = "/notes/"
    result = poll_feeds(settings, engine, NOW + timedelta(days=1)).feeds[0]
    assert (result.status, result.added, result.updated, result.unchanged) == ("ok", ["noon"], [], 2)
    found = essays(engine)
    assert sorted(found) == ["dawn", "dusk", "noon"]
    # A link in the feed is where a reader finds the post: resolved where the feed now is.
    assert found["noon"].url == feed_server.url("notes/posts/noon/")
    assert {essay.source_url for essay in found.values()} == {feed_server.url("notes")}


def test_entries_recorded_through_a_redirect_before_are_still_known(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    # Entries were once recorded under their guid resolved where the redirect led.
    walks = [("1234", "Dawn", "https://walks.example.org/dawn/")]
    feed_server.publish("/notes/", bare_guid_feed(*walks))
    feed_server.redirects["/notes"] = "/notes/"
    settings = configure(config_file, feed_server, "notes")
    assert poll_feeds(settings, engine, NOW).feeds[0].added == ["dawn"]
    with db.session_scope(engine) as session:
        entry = session.exec(select(FeedEntry)).one()
        assert entry.guid == feed_server.url("1234")
        entry.guid = feed_server.url("notes/1234")
    feed_server.publish("/notes/", bare_guid_feed(("1235", "Dusk", "https://walks.example.org/dusk/"),
                                                  *walks))
    result = poll_feeds(settings, engine, NOW + timedelta(days=1)).feeds[0]
    assert (result.added, result.updated, result.unchanged) == (["dusk"], [], 1)
    with Session(engine) as session:  # recorded again under its guid as it is read now
        assert sorted(session.exec(select(FeedEntry.guid))) == [
            feed_server.url("1234"), feed_server.url("1235")]


def test_a_guid_used_twice_in_one_feed_keeps_the_first_entry_and_warns(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    def item(name: str, text: str) -> str:
        return f"""<item><title>Dup {name}</title>
      <link>https://notes.example.org/posts/dup-{name.lower()}/</link>
      <pubDate>Sun, 22 Nov 2026 00:00:00 +0000</pubDate><guid isPermaLink="false">m-dup</guid>
      <description>&lt;p&gt;{text}&lt;/p&gt;</description></item>"""

    text = (FIXTURES / "hugo.xml").read_text().replace(
        "<item>", item("A", "The first.") + item("B", "The second.") + "<item>", 1)
    feed_server.publish("/hugo.xml", text.encode())
    settings = configure(config_file, feed_server, "hugo.xml")
    first = poll_feeds(settings, engine, NOW).feeds[0]
    assert (first.added, first.updated) == (["dup-a", "stairs-of-the-old-town"], [])
    warning = (f"{feed_server.url('hugo.xml')}: the guid 'm-dup' of an earlier entry is used "
               "again by 'Dup B'; that later entry is skipped")
    assert first.warnings == [warning] and first.ok
    essay = essays(engine)["dup-a"]
    assert (essay.title, essay.url) == ("Dup A", "https://notes.example.org/posts/dup-a/")
    assert {"kind": "p", "text": "The first."} in essay.body
    # Read in full again (another post was edited): the essay does not flip to the other entry.
    feed_server.publish("/hugo.xml", text.replace("three times", "four times").encode())
    again = poll_feeds(settings, engine, NOW + timedelta(hours=1)).feeds[0]
    assert (again.added, again.updated, again.warnings) == ([], ["stairs-of-the-old-town"],
                                                            [warning])
    assert essays(engine)["dup-a"].title == "Dup A" and "dup-b" not in essays(engine)


def test_a_dry_run_fetches_and_compares_but_writes_nothing(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "wordpress.xml", "missing.xml")
    report = poll_feeds(settings, engine, NOW, dry_run=True)
    assert report.feeds[0].added == ["walking-at-dawn", "the-bench-by-the-lock"]
    assert report.feeds[1].status == "failed"
    with Session(engine) as session:
        assert session.exec(select(Feed)).all() == []
        assert session.exec(select(FeedEntry)).all() == []
        assert session.exec(select(Issue)).all() == []
    assert essays(engine) == {}
    assert len(poll_feeds(settings, engine, NOW).feeds[0].added) == 2  # still a first poll


def test_the_same_slug_from_two_feeds_gets_a_suffix(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    copy = (FIXTURES / "ghost.xml").read_text().replace("ledger.example.org", "mirror.example.org")
    feed_server.publish("/mirror.xml", copy.encode())
    settings = configure(config_file, feed_server, "ghost.xml", "mirror.xml")
    poll_feeds(settings, engine, NOW)
    found = essays(engine)
    assert sorted(found) == ["why-the-starter-wins", "why-the-starter-wins-2"]
    assert found["why-the-starter-wins-2"].url == "https://mirror.example.org/why-the-starter-wins/"


@pytest.mark.parametrize(("value", "message"), [
    ('"https://example.org/feed"', "sources.feeds: expected a list of http:// or https:// URLs"),
    ('["ftp://example.org/feed"]', "got 'ftp://example.org/feed'"),
    # As `feeds add` refuses them: no host, or longer than a feed row holds.
    ('["https://"]', "(expected an http:// or https:// URL), got 'https://'"),
    (f'["https://example.org/{"x" * 500}"]', "(the URL is 520 characters long (the limit is 500))"),
])
def test_sources_feeds_must_be_a_list_of_web_addresses(
    config_file: Path, value: str, message: str
) -> None:
    text = config_file.read_text().replace("feeds = []", f"feeds = {value}")
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(config_file)


def test_sources_has_defaults_and_refuses_unknown_keys(config_file: Path) -> None:
    settings = load_settings(config_file)
    assert (settings.sources.feeds, settings.sources.first_poll_days,
            settings.sources.timeout_seconds) == ((), 7, 20.0)
    config_file.write_text(config_file.read_text().replace("first_poll_days", "first_pol_days"))
    with pytest.raises(ConfigError, match="sources.first_pol_days: unknown key"):
        load_settings(config_file)


def test_polling_stores_the_same_on_postgresql(
    postgres_url: str, tmp_path: Path, feed_server: FeedServer
) -> None:
    settings = load_settings(write_config(tmp_path, database_url=postgres_url, sources={
        "feeds": [feed_server.url("wordpress.xml"), feed_server.url("ghost.xml")]}))
    engine = db.connect(settings.database.url)
    try:
        first = poll_feeds(settings, engine, NOW)
        assert [(r.added, len(r.skipped)) for r in first.feeds] == [
            (["walking-at-dawn", "the-bench-by-the-lock"], 1), (["why-the-starter-wins"], 0)]
        edited = (FIXTURES / "ghost.xml").read_text().replace("four years", "five years")
        feed_server.publish("/ghost.xml", edited.encode())
        second = poll_feeds(settings, engine, NOW + timedelta(days=1))
        assert [(r.status, r.updated) for r in second.feeds] == [
            ("not-modified", []), ("ok", ["why-the-starter-wins"])]
        assert sorted(essays(engine)) == ["the-bench-by-the-lock", "walking-at-dawn",
                                          "why-the-starter-wins"]
    finally:
        engine.dispose()


def test_a_poll_that_stores_essays_keeps_the_related_index_of_the_new_archive(
    config_file: Path, engine: Engine, feed_server: FeedServer
) -> None:
    settings = configure(config_file, feed_server, "wordpress.xml")
    poll_feeds(settings, engine, NOW, dry_run=True)
    assert not related_cache.folder(settings).exists()  # a dry run changes nothing
    poll_feeds(settings, engine, NOW)
    with Session(engine) as session:  # the next render finds the index of the archive as it is now
        assert (related_cache.folder(settings) / f"{related_cache.index_key(session)}.json").is_file()
