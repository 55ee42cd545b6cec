"""`newsletter feeds`: add, list, poll, remove, end to end against a local HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pipeline import db
from pipeline.config import load_settings
from pipeline.models import Essay
from tests.conftest import CLI, write_config
from tests.feed_server import FeedServer, serve_feeds


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    with serve_feeds() as server:
        yield server


def configure(config_file: Path, *feeds: str) -> None:
    # The fixtures are dated November 2026: a wide window takes them whatever today is.
    write_config(config_file.parent, sources={"first_poll_days": 36500, "timeout_seconds": 1,
                                              "feeds": list(feeds)})


@pytest.fixture
def cli(run_cli: CLI, config_file: Path) -> CLI:
    configure(config_file)
    return run_cli


def slugs(config_file: Path) -> list[str]:
    engine = db.connect(load_settings(config_file).database.url)
    with Session(engine) as session:
        found = sorted(session.exec(select(Essay.slug)))
    engine.dispose()
    return found


def test_add_poll_list_and_poll_again(cli: CLI, config_file: Path, feed_server: FeedServer) -> None:
    added = cli("feeds", "add", feed_server.url("atom.xml"))
    assert added.exit_code == 0, added.output
    assert "Tidewater: 1 entries" in added.output
    assert slugs(config_file) == []  # adding imports nothing yet

    polled = cli("feeds", "poll")
    assert polled.exit_code == 0, polled.output
    assert "1 added, 0 updated, 0 unchanged" in polled.output and "salt-and-silt" in polled.output
    assert slugs(config_file) == ["salt-and-silt"]

    again = cli("feeds", "poll")
    assert "not modified" in again.output and again.exit_code == 0

    listed = json.loads(cli("feeds", "list", "--json").output)
    assert [(row["url"], row["origin"], row["title"], row["last_status"], row["essays"])
            for row in listed] == [(feed_server.url("atom.xml"), "cli", "Tidewater",
                                    "not-modified", 1)]
    table = cli("feeds", "list").output
    assert "Tidewater" in table and "not-modified" in table


def test_add_refuses_what_is_no_feed_and_what_is_there_already(
    cli: CLI, feed_server: FeedServer
) -> None:
    page = cli("feeds", "add", feed_server.url("not-a-feed.html"))
    assert page.exit_code == 1
    assert "not an RSS or Atom feed" in page.output
    assert cli("feeds", "add", "walks.example.org/feed").exit_code == 1
    assert cli("feeds", "add", feed_server.url("ghost.xml")).exit_code == 0
    twice = cli("feeds", "add", feed_server.url("ghost.xml"))
    assert twice.exit_code == 1 and "already added" in twice.output
    assert json.loads(cli("feeds", "list", "--json").output)[0]["url"] == feed_server.url("ghost.xml")


def test_poll_names_the_failed_feed_exits_1_and_still_polls_the_others(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    configure(config_file, feed_server.url("missing.xml"), feed_server.url("hugo.xml"))
    result = cli("feeds", "poll", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert [(f["status"], f["error"]) for f in report["feeds"]] == [
        ("failed", "HTTP 404 Not Found"), ("ok", None)]
    assert slugs(config_file) == ["a-map-with-no-roads", "stairs-of-the-old-town"]
    text = cli("feeds", "poll")
    assert text.exit_code == 1
    assert f"Failed: {feed_server.url('missing.xml')}: HTTP 404 Not Found" in text.output
    listed = cli("feeds", "list", "--json").output
    assert '"last_error": "HTTP 404 Not Found"' in listed


def test_poll_gives_up_on_a_feed_sent_too_slowly_and_polls_the_next(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    configure(config_file, feed_server.url("drip.xml"), feed_server.url("hugo.xml"))
    result = cli("feeds", "poll")
    assert result.exit_code == 1
    assert (f"Failed: {feed_server.url('drip.xml')}: not received in full within 1 seconds "
            "(the server sent too slowly)") in result.output
    assert slugs(config_file) == ["a-map-with-no-roads", "stairs-of-the-old-town"]


def test_poll_names_a_redirect_loop_on_one_line(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    configure(config_file, feed_server.url("loop.xml"))
    result = cli("feeds", "poll")
    assert result.exit_code == 1
    assert (f"Failed: {feed_server.url('loop.xml')}: redirected in a loop or too many times "
            f"(the last: HTTP 302 Found to {feed_server.url('loop.xml')})") in result.output
    assert "\\x0a" not in result.output


def test_poll_dry_run_says_what_would_be_added_and_adds_nothing(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    configure(config_file, feed_server.url("ghost.xml"))
    result = cli("feeds", "poll", "--dry-run")
    assert result.exit_code == 0
    assert "would be added     why-the-starter-wins" in result.output
    assert "Dry run: nothing was written." in result.output
    assert slugs(config_file) == []


def test_remove_asks_first_keeps_the_essays_and_a_readded_feed_makes_no_duplicates(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    url = feed_server.url("ghost.xml")
    cli("feeds", "add", url, "--no-check")
    cli("feeds", "poll")
    declined = cli("feeds", "remove", url, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert len(json.loads(cli("feeds", "list", "--json").output)) == 1

    removed = cli("feeds", "remove", url, "--yes")
    assert removed.exit_code == 0 and "essays kept" in removed.output
    assert json.loads(cli("feeds", "list", "--json").output) == []
    assert slugs(config_file) == ["why-the-starter-wins"]

    cli("feeds", "add", url)
    again = json.loads(cli("feeds", "poll", "--json").output)["feeds"][0]
    assert (again["added"], again["unchanged"]) == ([], 1)  # matched by its link
    assert slugs(config_file) == ["why-the-starter-wins"]


def test_an_essay_removed_from_a_feed_does_not_come_back_with_the_next_poll(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    """`essays remove` of an essay a feed brought: its entry stays recorded as seen (the
    database refuses to drop an essay an entry still names), so no poll imports it again."""
    cli("feeds", "add", feed_server.url("atom.xml"))
    cli("feeds", "poll")
    removed = cli("essays", "remove", "salt-and-silt", "--yes")
    assert removed.exit_code == 0, removed.output
    assert "removed salt-and-silt" in removed.output
    feed_server.publish("/atom.xml", feed_server.files["/atom.xml"] + b"\n")  # the feed changes
    polled = json.loads(cli("feeds", "poll", "--json").output)["feeds"][0]
    assert (polled["added"], polled["updated"]) == ([], [])
    assert slugs(config_file) == []
    assert json.loads(cli("feeds", "list", "--json").output)[0]["essays"] == 0


def test_a_feed_from_config_is_removed_there(
    cli: CLI, config_file: Path, feed_server: FeedServer
) -> None:
    configure(config_file, feed_server.url("hugo.xml"))
    result = cli("feeds", "remove", feed_server.url("hugo.xml"), "--yes")
    assert result.exit_code == 1
    assert "listed in config.toml [sources] feeds: remove it there" in result.output
    assert cli("feeds", "remove", "https://nowhere.example.org/feed", "--yes").exit_code == 1
