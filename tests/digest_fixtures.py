"""Essays written for the digest tests (never corpus text), and helpers to store them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from pipeline.config import Settings
from pipeline.issue_view import issue_view
from pipeline.models import Essay, Issue
from pipeline.render import Recipient, RenderedIssue, render_view, render_view_for, render_web_page
from subscribers.model import Subscriber, utcnow

TOPICS = [
    ("Bread", "sourdough starter flour water crust oven loaf rise dough fermentation"),
    ("Rivers", "river current bank delta water flow bridge ferry estuary flood"),
    ("Clocks", "clock pendulum gear spring escapement minute hour watchmaker dial"),
    ("Gardens", "garden soil compost seed bed weeds tomato spade harvest mulch"),
    ("Trains", "train station platform timetable carriage rail locomotive signal track"),
]


def paragraph(topic_words: str, n: int, variant: int = 0) -> str:
    words = topic_words.split()
    sentences = []
    for i in range(n):
        picked = " ".join(words[(i + variant + k) % len(words)] for k in range(6))
        sentences.append(f"The {picked} matter more than we admit, sentence {i + 1}.")
    return " ".join(sentences)


def make_essay(number: int, **fields: Any) -> Essay:
    """A self-written essay; `number` picks a topic and a date, fields override anything."""
    topic, words = TOPICS[number % len(TOPICS)]
    values: dict[str, Any] = {
        "slug": f"essay-{number:03d}",
        "title": f"On {topic.lower()}, part {number}",
        "dek": f"A short walk through {topic.lower()}: what the {words.split()[0]} teaches.",
        "body": [
            {"kind": "p", "text": paragraph(words, 4, number)},
            {"kind": "h", "text": f"More on {topic.lower()}"},
            {"kind": "p", "text": paragraph(words, 3, number + 1)},
        ],
        "published_on": date(2025, 1, 1 + number % 28),
        "content_hash": f"hash-{number}",
        "imported_at": datetime(2025, 2, 1, 12, number % 60, tzinfo=UTC),
    }
    values.update(fields)
    return Essay(**values)


def add_essays(session: Session, *essays: Essay) -> list[Essay]:
    session.add_all(essays)
    session.commit()
    for essay in essays:
        session.refresh(essay)
    return list(essays)


def mark_sent(session: Session, essay: Essay, key: str) -> Issue:
    """`essay` as a finished send leaves it: carried by a sent issue of `key` (committed)."""
    issue = Issue(key=key, status="sent")
    session.add(issue)
    session.flush()
    essay.sent_in_issue_id = issue.id
    session.add(essay)
    session.commit()
    return issue


LONG_TITLE = (
    "Why the slow work of proofing dough on a cold kitchen counter through a long northern winter "
    "teaches more about patience, timing and the stubborn chemistry of yeast than any recipe does"
)
NON_ASCII = [
    ("Über Brot, Wasser und Zeit: ein Versuch", "Ölig, süß und ein wenig säuerlich — so schmeckt der Winter."),
    ("Ψωμί και θάλασσα", "Μια σύντομη ιστορία για το αλάτι, το νερό και τον χρόνο."),
    ("خبز المدينة القديمة", "قصة قصيرة عن الفرن والماء والصبر في الشتاء."),
    ("東京の朝のパン屋", "冬の朝、パン屋の窓から見える湯気と人々の話。"),
    ("Crème brûlée & <the> \"quoted\" 'oven'", "Ampersands & angle <brackets> must survive escaping."),
]


def digest_essays(count: int, long: bool = False) -> list[Essay]:
    """`count` essays for digest tests: some with long titles, non-ASCII and HTML specials."""
    essays = []
    for n in range(count):
        fields: dict[str, Any] = {}
        if n % 3 == 1:
            title, dek = NON_ASCII[n % len(NON_ASCII)]
            fields.update(title=f"{title} ({n})", dek=dek)
        if long or n % 4 == 2:
            fields["title"] = f"{LONG_TITLE} ({n})"
        if long:
            fields["dek"] = ""
            fields["body"] = [{"kind": "p", "text": paragraph(TOPICS[n % 5][1], 120, n)}]
        essays.append(make_essay(n, **fields))
    return essays


def render_issue(session: Session, settings: Settings, issue: Issue) -> RenderedIssue:
    """The placeholder render of a stored issue: its view gathered, then rendered (as the story does)."""
    return render_view(settings, issue_view(session, settings, issue))


def render_web_copy(session: Session, settings: Settings, issue: Issue) -> str:
    """The web page of a stored issue, as the archive serves it."""
    return render_web_page(settings, issue_view(session, settings, issue))


def render_personal(session: Session, settings: Settings, issue: Issue, recipient: Recipient) -> tuple[str, str]:
    """The slow path: a full Jinja2 + premailer render for one subscriber (the oracle of personalise)."""
    view = issue_view(session, settings, issue)
    return render_view_for(settings, view, recipient, render_view(settings, view).shape)


def reader_name(n: int) -> str:
    """The name of bulk reader `n`: every third has none, so both variants of a copy are made."""
    return f"Reader Nº{n}" if n % 3 else ""


def add_readers(session: Session, count: int, page: int = 10_000) -> None:
    """`count` active subscribers reader0@example.org ... inserted in bulk (benchmarks: the
    audience of a send, without consent's per-address checks), in the caller's transaction."""
    now = utcnow()
    for first in range(0, count, page):
        session.execute(insert(Subscriber), [
            dict(email=f"reader{n}@example.org", email_normalized=f"reader{n}@example.org",
                 name=reader_name(n), status="active", source="bench",
                 created_at=now, updated_at=now, confirmed_at=now)
            for n in range(first, min(first + page, count))])
