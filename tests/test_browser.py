"""The pages in a real browser: Debian's Chromium driven by Playwright against a live server.

Each test saves a screenshot under tests/output/screenshots/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import db
from pipeline.config import load_settings
from pipeline.issues import compose
from pipeline.models import Delivery, IssueStatus
from pipeline.web import make_server
from subscribers import consent
from subscribers.tokens import UNSUBSCRIBE, load_secret, make_token
from tests.conftest import write_config
from tests.digest_fixtures import add_essays, make_essay

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent / "output" / "screenshots"
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install -y chromium; .ci/run does)"
)


@dataclass
class Site:
    url: str
    engine: Engine
    issue_id: int
    subject: str
    first_title: str
    first_dek: str
    unsubscribe_token: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """`newsletter serve`'s server on a free loopback port, with a sent issue and a subscriber."""
    folder = tmp_path_factory.mktemp("site")
    settings = load_settings(write_config(folder))
    engine = db.connect(settings.database.url)
    with Session(engine, expire_on_commit=False) as s:
        essays = add_essays(s, *(make_essay(n) for n in range(1, 4)))
        s.commit()
        issue = compose(s, settings, slugs=[e.slug for e in essays], key="weekly-2025-W06")
        issue.status = IssueStatus.SENT.value
        for essay in essays:
            essay.sent_in_issue_id = issue.id
        add_essays(s, make_essay(4, slug="next-one", title="Clocks for the next digest"))
        s.commit()
        ada, _ = consent.add(s, "ada@example.org", name="Ada")
        for n, (status, code, error) in enumerate([("sent", None, None), ("sent", None, None),
                                                    ("failed", 550, "550 5.1.1 no such mailbox"),
                                                    ("unknown", None, "lease ran out mid-attempt")]):
            s.add(Delivery(issue_id=issue.id or 0, email=f"reader{n}@example.org", status=status,
                           message_id=f"<b{n}@essays.example.org>", smtp_code=code, last_error=error))
        s.commit()
        assert issue.id is not None and ada.id is not None
        token = make_token(load_secret(settings.base_dir), UNSUBSCRIBE, ada.id)
        first = essays[0]
    server = make_server(settings, "127.0.0.1", 0, engine=engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Site(f"http://127.0.0.1:{server.server_port}", engine, issue.id, issue.subject, first.title, first.dek, token)
    server.shutdown()
    server.server_close()
    engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(10_000)  # a local server answers in milliseconds
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_index_lists_the_issue_and_the_next_digest(site: Site, page: object) -> None:
    page.goto(site.url + "/")  # type: ignore[attr-defined]
    assert page.url.endswith("/preview/")  # type: ignore[attr-defined]
    row = page.get_by_role("row").filter(has_text=site.subject)  # type: ignore[attr-defined]
    assert row.get_by_role("link", name=site.subject).is_visible()
    assert row.get_by_text("sent", exact=True).is_visible()
    next_card = page.locator(".card").filter(has_text="Clocks for the next digest")  # type: ignore[attr-defined]
    assert next_card.get_by_role("link", name="Preview the next digest").is_visible()
    shot(page, "01-preview-index")


def test_open_an_issue_and_read_it_in_the_sandboxed_frame(site: Site, page: object) -> None:
    page.goto(site.url + "/preview/")  # type: ignore[attr-defined]
    page.get_by_role("table").get_by_role("link", name=site.subject).click()  # type: ignore[attr-defined]
    assert page.url.endswith(f"/preview/issue/{site.issue_id}")  # type: ignore[attr-defined]
    frame = page.frame_locator("iframe.email")  # type: ignore[attr-defined]
    title = frame.get_by_text(site.first_title, exact=True).first
    title.wait_for()
    assert title.is_visible()
    shot(page, "02-issue-desktop")


def test_mobile_width_shows_the_first_excerpt(site: Site, page: object) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[attr-defined]
    page.goto(f"{site.url}/preview/issue/{site.issue_id}")  # type: ignore[attr-defined]
    page.get_by_role("link", name="Mobile").click()  # type: ignore[attr-defined]
    box = page.locator("iframe.email").bounding_box()  # type: ignore[attr-defined]
    assert box is not None and box["width"] <= 375
    excerpt = page.frame_locator("iframe.email").get_by_text(site.first_dek).filter(visible=True).first  # type: ignore[attr-defined]
    excerpt.wait_for()
    assert excerpt.is_visible() and site.first_dek in excerpt.inner_text()
    shot(page, "03-issue-mobile")


def test_text_tab_shows_the_plain_text_part(site: Site, page: object) -> None:
    page.goto(f"{site.url}/preview/issue/{site.issue_id}")  # type: ignore[attr-defined]
    page.get_by_role("tab", name="Text").click()  # type: ignore[attr-defined]
    text = page.locator("#text-part")  # type: ignore[attr-defined]
    text.wait_for()
    assert site.first_title in text.inner_text() and "/u/" in text.inner_text()
    shot(page, "04-issue-text")


def test_headers_checks_and_send_status_tabs(site: Site, page: object) -> None:
    page.goto(f"{site.url}/preview/issue/{site.issue_id}?as=ada@example.org")  # type: ignore[attr-defined]
    page.get_by_role("tab", name="Headers").click()  # type: ignore[attr-defined]
    row = page.locator("tr.list-header").filter(has_text="List-Unsubscribe-Post")  # type: ignore[attr-defined]
    assert "One-Click" in row.inner_text()
    shot(page, "05-issue-headers")
    page.get_by_role("tab", name="Checks").click()  # type: ignore[attr-defined]
    page.get_by_role("tab", name="Checks", selected=True).wait_for()  # type: ignore[attr-defined]
    shot(page, "06-issue-checks")
    page.get_by_role("tab", name="Send status").click()  # type: ignore[attr-defined]
    failed = page.get_by_role("row").filter(has_text="reader2@example.org")  # type: ignore[attr-defined]
    assert "550 5.1.1 no such mailbox" in failed.inner_text()
    assert page.get_by_text("2 sent").is_visible()  # type: ignore[attr-defined]
    shot(page, "07-issue-send-status")


def test_unsubscribe_through_the_page(site: Site, page: object) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[attr-defined]
    page.goto(f"{site.url}/u/{site.unsubscribe_token}")  # type: ignore[attr-defined]
    shot(page, "08-unsubscribe-page")
    with Session(site.engine) as s:
        assert consent.find(s, "ada@example.org").status == "active"  # type: ignore[union-attr]
    page.get_by_role("button", name="Unsubscribe").click()  # type: ignore[attr-defined]
    page.get_by_role("heading", name="You are unsubscribed").wait_for()  # type: ignore[attr-defined]
    with Session(site.engine) as s:
        assert consent.find(s, "ada@example.org").status == "unsubscribed"  # type: ignore[union-attr]
    shot(page, "09-unsubscribed")


def test_archive_and_subscribe_pages_on_a_phone(site: Site, page: object) -> None:
    page.set_viewport_size(PHONE)  # type: ignore[attr-defined]
    page.emulate_media(color_scheme="dark")  # type: ignore[attr-defined]
    page.goto(site.url + "/archive/")  # type: ignore[attr-defined]
    shot(page, "10-archive-phone-dark")
    page.emulate_media(color_scheme="light")  # type: ignore[attr-defined]
    page.goto(site.url + "/archive/")  # type: ignore[attr-defined]
    page.get_by_role("link", name=site.subject).click()  # type: ignore[attr-defined]
    page.get_by_text(site.first_title, exact=True).first.wait_for()  # type: ignore[attr-defined]
    shot(page, "11-web-copy-phone")
    page.goto(site.url + "/subscribe")  # type: ignore[attr-defined]
    width = page.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    assert width <= PHONE["width"]  # nothing sticks out sideways on a phone
    shot(page, "12-subscribe-phone")
