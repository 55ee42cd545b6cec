"""The addresses a digest links to."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.links import essay_url, site_url, unsubscribe_url, webview_url
from pipeline.models import Issue
from subscribers.tokens import read_token
from tests.digest_fixtures import make_essay


def test_essay_url_is_its_own_page_else_site_plus_slug(settings: Settings) -> None:
    assert essay_url(settings, make_essay(1)) == "https://essays.example.org/essay-001"
    own = make_essay(2, url="https://elsewhere.example.net/p/2")
    assert essay_url(settings, own) == "https://elsewhere.example.net/p/2"
    assert essay_url(settings, make_essay(3, slug="ça va")) == "https://essays.example.org/%C3%A7a%20va"
    assert site_url(settings) == "https://essays.example.org/"


def test_unsubscribe_url_carries_a_signed_token_for_that_subscriber(settings: Settings) -> None:
    url = unsubscribe_url(settings, "s3cret", 42)
    prefix = settings.web.base_url + "/u/"
    assert url.startswith(prefix)
    assert read_token("s3cret", "unsubscribe", url[len(prefix):]) == 42
    assert unsubscribe_url(settings, "s3cret", 43) != url


def test_webview_url_is_per_issue_and_carries_no_personal_data(settings: Settings) -> None:
    assert webview_url(settings, Issue(key="weekly-2026-W48")) == settings.web.base_url + "/archive/weekly-2026-W48"
